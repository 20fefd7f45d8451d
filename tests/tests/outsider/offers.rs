//! Offers and frameworks, as a stranger's Mesos framework meets them:
//!
//! - **Offers carry no url**: every offer names how to reach its agent (`url`, as Mesos's
//!   master writes it); libmesos's driver aborts on an offer without one.
//! - **The agent's real address**: an agent whose hostname is no IP address is still offered
//!   with the IP address its link comes from (`url.address.ip`, and its `pid` in
//!   `/master/state`), as Mesos takes it from the agent's UPID.
//! - **One silent framework takes the cell**: a framework that subscribes and never reads
//!   (nor answers) is offered the whole agent; once its offer times out it must not get it
//!   again, so a native claim and a framework that answers get the agent (`--offer-timeout
//!   2s` here; the default is 60 s). The same with many silent frameworks at once.
//! - **Framework bounds**: a SUBSCRIBE with a 1.9 MB name or a 100 KB role is refused with
//!   400, a `failover_timeout` of 1e308 is capped at four weeks, and the framework past
//!   `--frameworks-max` is refused with 503.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use shoal_client::{command_task, ClaimRequest, PlacementRequest};
use shoal_core::{CommitMode, ConflictCheck, ResourceSet};
use shoal_tests::{
    held_resources, mesos_master_flags, start_mesos_agent, tail, unique, wait_agents_active,
    JsonSubscription, MasterProc, MesosAgentSpec, MesosCell,
};

const STEP: Duration = Duration::from_secs(10);
/// The offer timeout of these tests' masters.
const OFFER_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack for an allocation round, a commit and a claim on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(3);
/// Silent SUBSCRIBEs of the many-framework test (the issue's probe sent 2,000; bounded here).
const SILENT_FRAMEWORKS: usize = 200;

/// A SUBSCRIBE that is never read: the response (headers only) is kept so the stream stays
/// open, and no call is ever made.
async fn silent_subscribe(http: &reqwest::Client, master: &str, name: &str) -> reqwest::Response {
    let body = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "silent", "name": name}}});
    let resp = http
        .post(format!("{master}/api/v1/scheduler"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("silent SUBSCRIBE");
    assert_eq!(resp.status().as_u16(), 200, "silent SUBSCRIBE");
    resp
}

/// One native claim of `cpus` on `agent` at the current version: its HTTP status and answer.
async fn native_claim(
    http: &reqwest::Client,
    cell: &MesosCell,
    agent: &str,
    cpus: f64,
) -> (u16, Json) {
    let version = cell.master.client().state().await.expect("state").version;
    let id = unique("native");
    let res = ResourceSet::parse(&format!("cpus:{cpus};mem:32")).unwrap();
    let claim = ClaimRequest {
        claim_id: format!("claim-{id}"),
        role: "*".into(),
        owner: "outsider-native".into(),
        snapshot_version: version,
        mode: CommitMode::Incremental,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: vec![PlacementRequest::new(
            agent.to_string(),
            &command_task(&id, &id, &res, "sleep 30"),
        )],
    };
    let resp = http
        .post(format!("{}/api/shoal/v1/claims", cell.master.addr))
        .json(&claim)
        .send()
        .await
        .expect("claim");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Json::Null))
}

/// Whether a claim answer committed its placement.
fn committed(answer: &Json) -> bool {
    answer["placements"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x["committed"] == true))
}

/// Waits until offers hold all the cpus of the agent; when they first did.
async fn wait_held(cell: &MesosCell, agent: &str, cpus: f64) -> Instant {
    let until = Instant::now() + STEP;
    loop {
        let st = cell.master.client().state().await.expect("state");
        let held = held_resources(&st).expect("held");
        if held
            .get(agent)
            .is_some_and(|h| h.scalar("cpus").as_f64() >= cpus)
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < until,
            "no offer held the agent's {cpus} cpus within {STEP:?}: {held:?}\n{}",
            cell.logs(60, 0)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Native 1-cpu claims every 100 ms until one commits: how long after `since` that was, and
/// how many were refused (with their statuses).
async fn claim_until_committed(
    http: &reqwest::Client,
    cell: &MesosCell,
    agent: &str,
    since: Instant,
    deadline: Duration,
) -> Result<(Duration, Vec<u16>), (Vec<u16>, Json)> {
    let mut refused = Vec::new();
    let mut last = Json::Null;
    while since.elapsed() < deadline {
        let (status, answer) = native_claim(http, cell, agent, 1.0).await;
        if (200..300).contains(&status) && committed(&answer) {
            return Ok((since.elapsed(), refused));
        }
        refused.push(status);
        last = answer;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err((refused, last))
}

fn statuses(list: &[u16]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for s in list {
        *counts.entry(*s).or_insert(0) += 1;
    }
    format!("{counts:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_carry_no_url() {
    // An agent registered under an IP address, as Mesos agents usually are.
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), &mesos_master_flags());
    let _agent = start_mesos_agent(
        &master.addr,
        &dir.path().join("agent"),
        "127.0.0.1",
        MesosAgentSpec::process("cpus:1;mem:256"),
    );
    let ids = wait_agents_active(&master.client(), &["127.0.0.1"], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&master.log(), 40)));
    let mut sub = JsonSubscription::subscribe(
        &master.addr,
        json!({"user": "outsider", "name": "url"}),
        STEP,
    )
    .await
    .unwrap();
    let offers = sub.wait_for("OFFERS", STEP).await.unwrap();
    let offer = &offers["offers"]["offers"][0];
    eprintln!("offer: {offer}");
    assert_eq!(offer["agent_id"]["value"], ids[0].as_str());
    let url = &offer["url"];
    assert_eq!(url["scheme"], "http", "Offer.url.scheme: {offer}");
    assert_eq!(url["path"], "/slave(1)", "Offer.url.path: {offer}");
    assert_eq!(url["address"]["hostname"], "127.0.0.1", "{offer}");
    assert_eq!(
        url["address"]["ip"], "127.0.0.1",
        "Offer.url.address.ip (libmesos's driver parses it as IPv4): {offer}"
    );
    assert!(
        url["address"]["port"].is_u64(),
        "Offer.url.address.port: {offer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_name_the_address_the_agent_link_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), &mesos_master_flags());
    let hostname = unique("not-an-ip");
    let _agent = start_mesos_agent(
        &master.addr,
        &dir.path().join("agent"),
        &hostname,
        MesosAgentSpec::process("cpus:1;mem:256"),
    );
    let ids = wait_agents_active(&master.client(), &[&hostname], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tail(&master.log(), 40)));
    let mut sub = JsonSubscription::subscribe(
        &master.addr,
        json!({"user": "outsider", "name": "address"}),
        STEP,
    )
    .await
    .unwrap();
    let offers = sub.wait_for("OFFERS", STEP).await.unwrap();
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["agent_id"]["value"], ids[0].as_str());
    let address = &offer["url"]["address"];
    assert_eq!(address["hostname"], hostname.as_str(), "{offer}");
    assert_eq!(
        address["ip"], "127.0.0.1",
        "Offer.url.address.ip is where the agent's link comes from: {offer}"
    );

    let state: Json = reqwest::get(format!("{}/master/state", master.addr))
        .await
        .expect("GET /master/state")
        .json()
        .await
        .expect("state JSON");
    let slave = state["slaves"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == ids[0].as_str()))
        .unwrap_or_else(|| panic!("agent {} in /master/state: {state}", ids[0]))
        .clone();
    let port = slave["port"].as_u64().expect("slave port");
    assert_eq!(
        slave["pid"],
        format!("slave(1)@127.0.0.1:{port}").as_str(),
        "{slave}"
    );
    assert_eq!(slave["hostname"], hostname.as_str(), "{slave}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_framework_takes_the_cell() {
    let cell = MesosCell::start(
        "silent",
        &["--offer-timeout", "2s"],
        &[MesosAgentSpec::process("cpus:2;mem:1024")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = cell.agent_ids[0].clone();
    let http = reqwest::Client::new();
    let _silent = silent_subscribe(&http, &cell.master.addr, "silent").await;
    let held_at = wait_held(&cell, &agent, 2.0).await;

    let (status, answer) = native_claim(&http, &cell, &agent, 1.0).await;
    if held_at.elapsed() < OFFER_TIMEOUT {
        assert!(
            status == 409 || !committed(&answer),
            "a claim on held resources is refused: {status} {answer}"
        );
    }
    // Beyond the offer timeout, the silent framework holds nothing a native claim wants.
    let (after, refused) =
        match claim_until_committed(&http, &cell, &agent, held_at, OFFER_TIMEOUT + SLACK).await {
            Ok(x) => x,
            Err((refused, last)) => panic!(
                "no native claim committed within {:?} of the silent framework's offer \
                 (offer timeout {OFFER_TIMEOUT:?}); refused: {}; last answer: {last}\n{}",
                OFFER_TIMEOUT + SLACK,
                statuses(&refused),
                cell.logs(60, 0)
            ),
        };
    eprintln!(
        "native claim committed {after:?} after the silent framework's offer (refused before: {})",
        statuses(&refused)
    );

    // A framework that answers gets the rest of the agent, the silent one still subscribed.
    let mut sub = JsonSubscription::subscribe(
        &cell.master.addr,
        json!({"user": "outsider", "name": "answers"}),
        STEP,
    )
    .await
    .unwrap();
    // As frameworks do after subscribing: reconcile (implicitly).
    let (status, body) = sub
        .call(json!({"type": "RECONCILE", "reconcile": {"tasks": []}}))
        .await
        .unwrap();
    assert_eq!(status, 202, "RECONCILE: {body}");
    let started = Instant::now();
    let offers = sub
        .wait_for("OFFERS", OFFER_TIMEOUT + SLACK)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cell.logs(60, 0)));
    eprintln!(
        "the answering framework got an offer {:?} after subscribing",
        started.elapsed()
    );
    assert_eq!(
        offers["offers"]["offers"][0]["agent_id"]["value"],
        agent.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_silent_frameworks_take_the_cell() {
    let cell = MesosCell::start(
        "silent-many",
        &["--offer-timeout", "2s"],
        &[MesosAgentSpec::process("cpus:2;mem:1024")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let agent = cell.agent_ids[0].clone();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut silent = Vec::new();
    for i in 0..SILENT_FRAMEWORKS {
        silent.push(silent_subscribe(&http, &cell.master.addr, &format!("silent-{i}")).await);
    }
    eprintln!(
        "{SILENT_FRAMEWORKS} silent SUBSCRIBEs in {:?}",
        started.elapsed()
    );
    let held_at = wait_held(&cell, &agent, 2.0).await;
    match claim_until_committed(&http, &cell, &agent, held_at, OFFER_TIMEOUT + SLACK).await {
        Ok((after, refused)) => eprintln!(
            "with {SILENT_FRAMEWORKS} silent frameworks: a native 1-cpu claim committed {after:?} \
             after the first offer (refused before: {})",
            statuses(&refused)
        ),
        Err((refused, last)) => panic!(
            "with {SILENT_FRAMEWORKS} silent frameworks no native claim committed within {:?} of \
             the first offer (offer timeout {OFFER_TIMEOUT:?}); refused: {}; last: {last}\n{}",
            OFFER_TIMEOUT + SLACK,
            statuses(&refused),
            cell.logs(60, 0)
        ),
    }
    drop(silent);
}

/// A raw SUBSCRIBE: its status, and the body with the Retry-After header unless it was
/// accepted (then the open stream, unread).
async fn subscribe_raw(
    master: &str,
    framework_info: Json,
) -> (u16, String, Option<reqwest::Response>) {
    let http = reqwest::Client::new();
    let body = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}});
    let resp = http
        .post(format!("{master}/api/v1/scheduler"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("SUBSCRIBE");
    let status = resp.status().as_u16();
    if status == 200 {
        return (status, String::new(), Some(resp));
    }
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| format!(" (Retry-After: {})", v.to_str().unwrap_or("?")))
        .unwrap_or_default();
    (
        status,
        format!("{}{retry}", resp.text().await.unwrap_or_default()),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_framework_info_is_kept() {
    let cell = MesosCell::start("fwinfo", &[], &[MesosAgentSpec::process("cpus:1;mem:256")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = &cell.master.addr;

    let huge_name = "n".repeat(1_900_000);
    let (status, text, _) = subscribe_raw(
        addr,
        json!({"user": "u", "name": huge_name, "failover_timeout": 1e308}),
    )
    .await;
    eprintln!("1.9 MB name: {status} {}", &text[..text.len().min(200)]);
    assert_eq!(status, 400, "a SUBSCRIBE with a 1.9 MB name: {text}");
    assert!(
        text.contains("'framework_info.name'"),
        "the message names the field: {text}"
    );

    let (status, text, _) =
        subscribe_raw(addr, json!({"user": "u", "name": "r", "roles": ["r".repeat(100_000)], "capabilities": [{"type": "MULTI_ROLE"}]})).await;
    eprintln!("100 KB role: {status} {text}");
    assert_eq!(status, 400, "a SUBSCRIBE with a 100 KB role: {text}");
    assert!(text.contains("role"), "the message names the field: {text}");

    let mut sub = JsonSubscription::subscribe(
        addr,
        json!({"user": "u", "name": "forever", "failover_timeout": 1e308}),
        STEP,
    )
    .await
    .unwrap();
    let frameworks: Json = reqwest::get(format!("{addr}/master/frameworks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fw = frameworks["frameworks"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["id"] == sub.framework_id.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no framework {} in {frameworks}", sub.framework_id));
    eprintln!("failover_timeout 1e308 -> {}", fw["failover_timeout"]);
    assert_eq!(
        fw["failover_timeout"].as_f64(),
        Some(28.0 * 86_400.0),
        "failover_timeout is capped at four weeks: {fw}"
    );

    // UPDATE_FRAMEWORK is held to the same bounds.
    let info =
        json!({"id": {"value": sub.framework_id}, "user": "u", "name": "m".repeat(1_900_000)});
    let (status, text) = sub
        .call(json!({"type": "UPDATE_FRAMEWORK", "update_framework": {"framework_info": info}}))
        .await
        .unwrap();
    assert_eq!(status, 400, "UPDATE_FRAMEWORK with a 1.9 MB name: {text}");
    sub.wait_for("HEARTBEAT", STEP).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_number_of_frameworks() {
    let cell = MesosCell::start(
        "fwmax",
        &["--frameworks-max", "3"],
        &[MesosAgentSpec::process("cpus:1;mem:256")],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = &cell.master.addr;
    let mut subs = Vec::new();
    for i in 0..3 {
        subs.push(
            JsonSubscription::subscribe(addr, json!({"user": "u", "name": format!("fw{i}")}), STEP)
                .await
                .unwrap(),
        );
    }
    let (status, text, _) = subscribe_raw(addr, json!({"user": "u", "name": "fw3"})).await;
    eprintln!("the 4th framework past --frameworks-max 3: {status} {text}");
    assert_eq!(status, 503, "the framework past the cap is refused: {text}");
    assert!(text.contains("Retry-After"), "{text}");

    // A known framework subscribing again is not a new one.
    let first = json!({"id": {"value": subs[0].framework_id}, "user": "u", "name": "fw0"});
    let again = JsonSubscription::subscribe(addr, first, STEP).await;
    assert!(
        again.is_ok(),
        "re-subscription under the cap: {:?}",
        again.err()
    );

    // A framework torn down makes room.
    let (status, text) = subs[1].call(json!({"type": "TEARDOWN"})).await.unwrap();
    assert_eq!(status, 202, "TEARDOWN: {text}");
    let sub = JsonSubscription::subscribe(addr, json!({"user": "u", "name": "fw4"}), STEP).await;
    assert!(sub.is_ok(), "after a TEARDOWN: {:?}", sub.err());
}
