//! Shoal's Mesos v1 scheduler API against references other than our own code:
//!
//! - **mesos-go, protobuf end to end**: `tests/frameworks/go/protolaunch`, built with Debian's
//!   Go and Debian's mesos-go (`golang-github-mesos-mesos-go-dev`, `api/v1/lib/httpcli/httpsched`
//!   with the `application/x-protobuf` codec; GOPATH mode, no network), subscribes, launches
//!   `echo hi` from an offer, acknowledges TASK_RUNNING and TASK_FINISHED, and exits 0. Skipped
//!   (with a printed reason) when `go` or the mesos-go sources are missing, unless CI is "true".
//! - **Golden JSON shapes**: the JSON examples of Mesos's documentation (and, where the docs
//!   have none, of the code that writes `/master/state`) in `tests/fixtures/mesos/` (see its
//!   README for where each comes from). The events Shoal really sends (SUBSCRIBED, HEARTBEAT,
//!   OFFERS, RESCIND, UPDATE — read from a JSON subscription driven by hand) and
//!   `/master/state` (top level, one slave, one framework) must have every field path of the
//!   reference with the same JSON type; values may differ and Shoal may send more. A failure
//!   lists the missing paths. Paths a real Mesos master would not send in the scenario driven
//!   here, and errors of the documentation, are skipped (the `SKIP_*` tables; each skip is
//!   printed with its reason).
//! - **Bad input**: the status codes and updates a Mesos master answers bad input with, driven
//!   by hand (see [`mesos_bad_input_gets_mesos_answers_and_the_master_keeps_working`]).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use shoal_tests::{
    compare_shape, run_command, unique, JsonSubscription, MesosAgentSpec, MesosCell, ScriptRun,
};

const AGENT_RESOURCES: &str = "cpus:2;mem:1024;ports:[31000-31100]";
/// A TEXT attribute, as in the OFFERS example of the docs.
const AGENT_ATTRIBUTES: &str = "os:debian";
/// How long one step of a scenario may take.
const STEP: Duration = Duration::from_secs(10);

/// A master and one agent (process executor, with [`AGENT_ATTRIBUTES`]).
async fn start_cell(name: &str, extra_master_flags: &[&str]) -> Result<MesosCell, String> {
    let agent = MesosAgentSpec {
        attributes: AGENT_ATTRIBUTES,
        ..MesosAgentSpec::process(AGENT_RESOURCES)
    };
    MesosCell::start(name, extra_master_flags, &[agent]).await
}

/// A reference document from `tests/fixtures/mesos/`.
fn fixture(name: &str) -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("mesos")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Compares `actual` with the fixture and fails listing what is missing.
fn assert_shape(
    what: &str,
    fixture_name: &str,
    reference: &Json,
    actual: &Json,
    skip: &[(&str, &str)],
) {
    let report = compare_shape(reference, actual, skip);
    let text = report.render(&format!("{what} vs tests/fixtures/mesos/{fixture_name}"));
    assert!(
        report.ok(),
        "{text}\n----- what Shoal sent -----\n{}",
        serde_json::to_string_pretty(actual).unwrap()
    );
    eprintln!("{text}");
}

/// A command task taking a little of `offer`'s cpus and mem (with the offer's role).
fn task_info(task_id: &str, offer: &Json, command: &str) -> Json {
    let role = offer["resources"][0]["allocation_info"]["role"]
        .as_str()
        .unwrap_or("*");
    let scalar = |name: &str, value: f64| json!({"name": name, "type": "SCALAR", "scalar": {"value": value}, "role": "*", "allocation_info": {"role": role}});
    json!({
        "name": task_id,
        "task_id": {"value": task_id},
        "agent_id": offer["agent_id"],
        "resources": [scalar("cpus", 0.1), scalar("mem", 32.0)],
        "command": {"value": command, "shell": true},
    })
}

/// ACCEPTs `offer` with one LAUNCH of `task`; what it leaves unused may be offered again at
/// once (`refuse_seconds: 0`; Mesos's default filter is 5 s).
async fn launch(sub: &JsonSubscription, offer: &Json, task: Json) -> Result<(), String> {
    launch_tasks(sub, offer, vec![task]).await
}

/// [`launch`] with several tasks in the one LAUNCH.
async fn launch_tasks(
    sub: &JsonSubscription,
    offer: &Json,
    tasks: Vec<Json>,
) -> Result<(), String> {
    let call = json!({"type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}],
        "filters": {"refuse_seconds": 0.0},
    }});
    match sub.call(call).await? {
        (202, _) => Ok(()),
        (status, body) => Err(format!("ACCEPT answered {status}: {body}")),
    }
}

/// ACKNOWLEDGEs an UPDATE event if it carries a uuid.
async fn acknowledge(sub: &JsonSubscription, update: &Json) -> Result<(), String> {
    let s = &update["update"]["status"];
    if s["uuid"].is_null() {
        return Ok(());
    }
    let call = json!({"type": "ACKNOWLEDGE", "acknowledge": {"agent_id": s["agent_id"], "task_id": s["task_id"], "uuid": s["uuid"]}});
    match sub.call(call).await? {
        (202, _) => Ok(()),
        (status, body) => Err(format!("ACKNOWLEDGE answered {status}: {body}")),
    }
}

/// Runs `scenario` once per test binary on its own runtime; its result is shared by the tests
/// that compare parts of it.
fn once<T: Send + Sync + 'static>(
    cell: &'static OnceLock<Result<T, String>>,
    scenario: impl std::future::Future<Output = Result<T, String>>,
) -> &'static T {
    let result = cell.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario)
    });
    match result {
        Ok(t) => t,
        Err(e) => panic!("the scenario failed before anything could be compared:\n{e}"),
    }
}

// ---------------------------------------------------------------- scheduler events

/// The first event of each type seen in one subscription.
struct Events {
    by_type: std::collections::BTreeMap<String, Json>,
}

/// One subscription to a master that heartbeats every 300 ms and rescinds offers after
/// 500 ms: SUBSCRIBED, HEARTBEAT, OFFERS (left unanswered), RESCIND (its timeout), a REVIVE,
/// OFFERS again (accepted at once with a command task), UPDATE.
async fn capture_events() -> Result<Events, String> {
    let cell = start_cell(
        "golden-events",
        &[
            "--scheduler-heartbeat-interval",
            "300ms",
            "--offer-timeout",
            "500ms",
        ],
    )
    .await?;
    let steps = async {
        let mut sub = JsonSubscription::subscribe(
            &cell.master.addr,
            json!({"user": "golden", "name": "golden events"}),
            STEP,
        )
        .await?;
        if sub.content_type != "application/json" {
            return Err(format!(
                "SUBSCRIBE answered Content-Type {:?}, wanted application/json",
                sub.content_type
            ));
        }
        sub.wait_for("HEARTBEAT", STEP).await?;
        let offers = sub.wait_for("OFFERS", STEP).await?;
        let rescind = sub.wait_for("RESCIND", STEP).await?;
        let offered: Vec<&Json> = offers["offers"]["offers"]
            .as_array()
            .map(|a| a.iter().map(|o| &o["id"]).collect())
            .unwrap_or_default();
        if !offered.contains(&&rescind["rescind"]["offer_id"]) {
            return Err(format!(
                "RESCIND of an offer never made: {rescind} (offers: {offers})"
            ));
        }
        // A framework that let an offer time out without a call gets no offers until its
        // next call: REVIVE, as a framework that wants offers again does.
        match sub.call(json!({"type": "REVIVE"})).await? {
            (202, _) => {}
            (status, body) => return Err(format!("REVIVE answered {status}: {body}")),
        }
        let again = sub.wait_for("OFFERS", STEP).await?;
        let offer = &again["offers"]["offers"][0];
        launch(
            &sub,
            offer,
            task_info(&unique("golden-update"), offer, "echo golden"),
        )
        .await?;
        let update = sub.wait_for("UPDATE", STEP).await?;
        acknowledge(&sub, &update).await?;
        let mut by_type = std::collections::BTreeMap::new();
        for e in &sub.events {
            if let Some(t) = e["type"].as_str() {
                by_type.entry(t.to_string()).or_insert_with(|| e.clone());
            }
        }
        Ok(Events { by_type })
    };
    steps
        .await
        .map_err(|e: String| format!("{e}\n{}", cell.logs(80, 40)))
}

fn events() -> &'static Events {
    static EVENTS: OnceLock<Result<Events, String>> = OnceLock::new();
    once(&EVENTS, capture_events())
}

fn assert_event(ty: &str, fixture_name: &str, transform: fn(Json) -> Json, skip: &[(&str, &str)]) {
    let events = events();
    let actual = events.by_type.get(ty).unwrap_or_else(|| {
        panic!(
            "no {ty} event was captured (got {:?})",
            events.by_type.keys()
        )
    });
    assert_shape(
        ty,
        fixture_name,
        &transform(fixture(fixture_name)),
        actual,
        skip,
    );
}

fn as_documented(doc: Json) -> Json {
    doc
}

/// Errata of the docs' OFFERS example (see tests/fixtures/mesos/README.md): the proto has
/// `Event.offers: Event.Offers { repeated Offer offers }`, so the array is under `offers.offers`;
/// and every offer carries `url`, which the example leaves out but Mesos's master always sets
/// (`Master::offer` in src/master/master.cpp; libmesos's driver aborts without it).
fn offers_as_on_the_wire(mut doc: Json) -> Json {
    let mut list = doc["offers"].take();
    for offer in list.as_array_mut().into_iter().flatten() {
        offer["url"] = json!({
            "scheme": "http",
            "address": {"hostname": "agent.host", "ip": "10.0.0.5", "port": 5051},
            "path": "/slave(1)",
        });
    }
    doc["offers"] = json!({"offers": list});
    doc
}

const SKIP_OFFERS: &[(&str, &str)] = &[(
    "offers.offers[].executor_ids",
    "conditional: the framework's executors running on the agent (Offer.executor_ids); Mesos omits empty repeated fields and this framework has none",
)];
const SKIP_UPDATE: &[(&str, &str)] = &[(
    "update.status.bytes",
    "doc error: TaskStatus has no `bytes`; it means `data`, optional bytes only set when an executor attaches data",
)];

#[test]
fn golden_subscribed_event() {
    assert_event(
        "SUBSCRIBED",
        "scheduler-event-subscribed.json",
        as_documented,
        &[],
    );
}

#[test]
fn golden_heartbeat_event() {
    assert_event(
        "HEARTBEAT",
        "scheduler-event-heartbeat.json",
        as_documented,
        &[],
    );
}

#[test]
fn golden_offers_event() {
    assert_event(
        "OFFERS",
        "scheduler-event-offers.json",
        offers_as_on_the_wire,
        SKIP_OFFERS,
    );
}

#[test]
fn golden_rescind_event() {
    assert_event(
        "RESCIND",
        "scheduler-event-rescind.json",
        as_documented,
        &[],
    );
}

#[test]
fn golden_update_event() {
    assert_event(
        "UPDATE",
        "scheduler-event-update.json",
        as_documented,
        SKIP_UPDATE,
    );
}

// ---------------------------------------------------------------- /master/state

/// `/master/state` and the ids to find our slave and framework in it.
struct MasterState {
    state: Json,
    agent_id: String,
    framework_id: String,
}

/// A connected framework with one running command task (`sleep 60`) and one outstanding offer
/// (the rest of the agent), then `GET /master/state`.
async fn capture_state() -> Result<MasterState, String> {
    let cell = start_cell("golden-state", &[]).await?;
    let steps = async {
        let mut sub = JsonSubscription::subscribe(
            &cell.master.addr,
            json!({"user": "golden", "name": "golden state"}),
            STEP,
        )
        .await?;
        let offers = sub.wait_for("OFFERS", STEP).await?;
        let offer = &offers["offers"]["offers"][0];
        launch(
            &sub,
            offer,
            task_info(&unique("golden-state"), offer, "sleep 60"),
        )
        .await?;
        let launched_at = sub.events.len();
        let until = Instant::now() + STEP;
        loop {
            let update = sub
                .wait_for("UPDATE", until.saturating_duration_since(Instant::now()))
                .await?;
            acknowledge(&sub, &update).await?;
            match update["update"]["status"]["state"].as_str() {
                Some("TASK_RUNNING") => break,
                Some("TASK_STAGING" | "TASK_STARTING") => {}
                _ => return Err(format!("the task did not start: {update}")),
            }
        }
        // The rest of the agent, offered again (perhaps already); left outstanding.
        if !sub.events[launched_at..]
            .iter()
            .any(|e| e["type"] == "OFFERS")
        {
            sub.wait_for("OFFERS", STEP).await?;
        }
        let resp = reqwest::get(format!("{}/master/state", cell.master.addr))
            .await
            .map_err(|e| format!("GET /master/state: {e}"))?;
        if resp.status().as_u16() != 200 {
            return Err(format!("GET /master/state answered {}", resp.status()));
        }
        let state: Json = resp
            .json()
            .await
            .map_err(|e| format!("/master/state is not JSON: {e}"))?;
        Ok(MasterState {
            state,
            agent_id: cell.agent_ids[0].clone(),
            framework_id: sub.framework_id.clone(),
        })
    };
    steps
        .await
        .map_err(|e: String| format!("{e}\n{}", cell.logs(80, 40)))
}

fn master_state() -> &'static MasterState {
    static STATE: OnceLock<Result<MasterState, String>> = OnceLock::new();
    once(&STATE, capture_state())
}

/// Top-level fields of the documented example that a real Mesos master writes only sometimes
/// (`Master::ReadOnlyHandler::state` in src/master/readonly_handler.cpp), and the flag names.
const SKIP_STATE: &[(&str, &str)] = &[
    ("git_sha", "conditional: only when Mesos was built from git"),
    (
        "git_branch",
        "conditional: only when Mesos was built from git",
    ),
    (
        "git_tag",
        "conditional: only when Mesos was built from a git tag",
    ),
    ("cluster", "conditional: only with --cluster"),
    ("log_dir", "conditional: only with --log_dir"),
    (
        "external_log_file",
        "conditional: only with --external_log_file",
    ),
    (
        "flags.*",
        "the names of Mesos's own master flags; only `flags` (an object) is checked",
    ),
];

#[test]
fn golden_master_state_top_level() {
    let s = master_state();
    assert_shape(
        "/master/state",
        "master-state.json",
        &fixture("master-state.json"),
        &s.state,
        SKIP_STATE,
    );
}

#[test]
fn golden_master_state_slave() {
    let s = master_state();
    let slave = s.state["slaves"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == s.agent_id.as_str()))
        .unwrap_or_else(|| panic!("/master/state has no slave {}: {}", s.agent_id, s.state));
    assert_shape(
        "/master/state slaves[]",
        "master-state-slave.json",
        &fixture("master-state-slave.json"),
        slave,
        &[],
    );
}

#[test]
fn golden_master_state_framework() {
    let s = master_state();
    let framework = s.state["frameworks"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == s.framework_id.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "/master/state has no framework {}: {}",
                s.framework_id, s.state
            )
        });
    assert_shape(
        "/master/state frameworks[]",
        "master-state-framework.json",
        &fixture("master-state-framework.json"),
        framework,
        &[],
    );
}

// ---------------------------------------------------------------- mesos-go, protobuf

fn report(cell: &MesosCell, run: &ScriptRun) -> String {
    format!(
        "{}\n----- {} output -----\n{}{}",
        run.outcome(),
        run.script,
        run.output,
        cell.logs(80, 40)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_go_protobuf_framework_launches_and_acknowledges() {
    let test = "mesos_go_protobuf_framework_launches_and_acknowledges";
    let Some(bin) = tokio::task::block_in_place(|| shoal_tests::go_program(test, "protolaunch"))
    else {
        return;
    };
    let cell = start_cell("golden-go", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let task_id = unique("go-proto");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "-task-id",
        &task_id,
        "-deadline",
        "30s",
        cell.master.host_port(),
    ]);
    let logs = cell.dir.path().join("frameworks");
    let run = tokio::task::block_in_place(|| {
        run_command(cmd, "protolaunch", Duration::from_secs(45), &logs)
    });
    assert!(run.success(), "{}", report(&cell, &run));
    eprintln!("{}\n{}", run.outcome(), run.output);
    // What outlives the framework, through the native API: the task finished, its stdout says hi.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let task: Json = match reqwest::get(format!(
            "{}/api/shoal/v1/tasks/{task_id}",
            cell.master.addr
        ))
        .await
        {
            Ok(r) if r.status().as_u16() == 200 => r.json().await.unwrap_or(Json::Null),
            _ => Json::Null,
        };
        let stdout: Json = match reqwest::get(format!(
            "{}/files/read?path=/agents/{}/tasks/{task_id}/stdout",
            cell.master.addr, cell.agent_ids[0]
        ))
        .await
        {
            Ok(r) if r.status().as_u16() == 200 => r.json().await.unwrap_or(Json::Null),
            _ => Json::Null,
        };
        if task["state"] == "TASK_FINISHED"
            && stdout["data"].as_str().is_some_and(|d| d.contains("hi"))
        {
            break;
        }
        assert!(Instant::now() < until, "task {task_id}: wanted TASK_FINISHED with stdout \"hi\"; native API: {task}; stdout: {stdout}\n{}", report(&cell, &run));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- bad input

/// Bad input gets the answer a Mesos master gives, changes nothing, and the master keeps
/// working: garbage bodies (400), a body type other than JSON or protobuf (415), a SUBSCRIBE
/// that accepts neither (406) or carries a stream id (400), calls of a framework that is not
/// subscribed (403), without or with another stream's `Mesos-Stream-Id` (400); ACCEPTs of
/// another framework's offer or of an unknown one (TASK_LOST, REASON_INVALID_OFFERS, no uuid),
/// of resources the offer does not hold and of a task id in use (TASK_ERROR,
/// REASON_TASK_INVALID). Then a task still runs to TASK_FINISHED and no agent is
/// double-booked; a second subscription with the framework's id takes over (the first stream
/// gets ERROR "Framework failed over" and ends); after TEARDOWN the stream ends and the
/// framework's SUBSCRIBE gets the ERROR event "Framework has been removed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_bad_input_gets_mesos_answers_and_the_master_keeps_working() {
    let cell = start_cell("bad-input", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = bad_input(&cell).await {
        panic!("{e}\n{}", cell.logs(120, 30));
    }
}

/// One raw `POST /api/v1/scheduler`: the status and body.
async fn post(
    url: &str,
    content_type: &str,
    accept: Option<&str>,
    stream_id: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("Content-Type", content_type)
        .timeout(STEP)
        .body(body);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    if let Some(s) = stream_id {
        req = req.header("Mesos-Stream-Id", s);
    }
    let resp = req.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

fn expect_status(what: &str, got: (u16, String), want: u16) -> Result<(), String> {
    if got.0 == want {
        eprintln!("{what}: {} {}", got.0, got.1.trim());
        Ok(())
    } else {
        Err(format!("{what}: wanted {want}, got {} {}", got.0, got.1))
    }
}

/// A hand-driven framework: updates with a uuid are acknowledged as they are read, offers
/// read while waiting for something else are kept for [`Driven::offer`].
struct Driven {
    sub: JsonSubscription,
    offers: std::collections::VecDeque<Json>,
}

impl Driven {
    /// The next event other than HEARTBEAT (OFFERS are queued, UPDATEs acknowledged).
    async fn step(&mut self, what: &str, until: Instant) -> Result<Json, String> {
        loop {
            let e = self
                .sub
                .next_event(until.saturating_duration_since(Instant::now()))
                .await
                .map_err(|e| format!("waiting for {what}: {e}"))?;
            match e["type"].as_str() {
                Some("OFFERS") => self.offers.extend(
                    e["offers"]["offers"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                ),
                Some("UPDATE") => {
                    acknowledge(&self.sub, &e).await?;
                    return Ok(e);
                }
                Some("HEARTBEAT") => {}
                _ => return Ok(e),
            }
            if what == "an offer" && !self.offers.is_empty() {
                return Ok(e);
            }
        }
    }

    /// The next update of `task_id`: its status.
    async fn update(&mut self, task_id: &str) -> Result<Json, String> {
        let until = Instant::now() + STEP;
        loop {
            let e = self.step(&format!("an update of {task_id}"), until).await?;
            if e["update"]["status"]["task_id"]["value"] == task_id {
                return Ok(e["update"]["status"].clone());
            }
        }
    }

    /// The oldest offer not used yet.
    async fn offer(&mut self) -> Result<Json, String> {
        let until = Instant::now() + STEP;
        while self.offers.is_empty() {
            self.step("an offer", until).await?;
        }
        Ok(self.offers.pop_front().expect("not empty"))
    }
}

/// Checks a master-generated update for a refused task.
fn expect_refused(task: &str, s: &Json, state: &str, reason: &str) -> Result<(), String> {
    if s["state"] == state
        && s["reason"] == reason
        && s["uuid"].is_null()
        && s["source"] == "SOURCE_MASTER"
    {
        eprintln!("{task}: {state} {reason}: {}", s["message"]);
        Ok(())
    } else {
        Err(format!(
            "{task}: wanted {state} {reason} from the master without uuid, got {s}"
        ))
    }
}

async fn bad_input(cell: &MesosCell) -> Result<(), String> {
    let url = format!("{}/api/v1/scheduler", cell.master.addr);
    let info = json!({"user": "test", "name": "bad-input"});
    let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}});
    let subscribe = subscribe.to_string().into_bytes();
    let kill = |fw: &str| {
        json!({"type": "KILL", "framework_id": {"value": fw}, "kill": {"task_id": {"value": "t"}}})
            .to_string()
            .into_bytes()
    };
    let json_ct = "application/json";
    expect_status(
        "garbage JSON",
        post(&url, json_ct, None, None, b"{not json".to_vec()).await?,
        400,
    )?;
    expect_status(
        "garbage protobuf",
        post(
            &url,
            "application/x-protobuf",
            None,
            None,
            vec![0xff, 0xff, 0xff],
        )
        .await?,
        400,
    )?;
    expect_status(
        "a text/plain body",
        post(&url, "text/plain", None, None, subscribe.clone()).await?,
        415,
    )?;
    expect_status(
        "SUBSCRIBE accepting only text/html",
        post(&url, json_ct, Some("text/html"), None, subscribe.clone()).await?,
        406,
    )?;
    expect_status(
        "SUBSCRIBE with a Mesos-Stream-Id",
        post(&url, json_ct, None, Some("s"), subscribe.clone()).await?,
        400,
    )?;
    expect_status(
        "KILL before SUBSCRIBE",
        post(&url, json_ct, None, Some("s"), kill("nobody")).await?,
        403,
    )?;

    let mut me = Driven {
        sub: JsonSubscription::subscribe(&cell.master.addr, info.clone(), STEP).await?,
        offers: Default::default(),
    };
    let fw = me.sub.framework_id.clone();
    expect_status(
        "KILL without Mesos-Stream-Id",
        post(&url, json_ct, None, None, kill(&fw)).await?,
        400,
    )?;
    expect_status(
        "KILL with another stream's id",
        post(&url, json_ct, None, Some("not-the-stream"), kill(&fw)).await?,
        400,
    )?;
    let offer = me.offer().await?;

    // Another framework accepting our offer, and we an offer that does not exist: the tasks
    // are lost (neither framework is partition-aware), our offer stays ours.
    let mut other = Driven {
        sub: JsonSubscription::subscribe(
            &cell.master.addr,
            json!({"user": "test", "name": "bad-input-other"}),
            STEP,
        )
        .await?,
        offers: Default::default(),
    };
    let stolen = unique("stolen");
    launch(&other.sub, &offer, task_info(&stolen, &offer, "echo no")).await?;
    let s = other.update(&stolen).await?;
    expect_refused(&stolen, &s, "TASK_LOST", "REASON_INVALID_OFFERS")?;
    // (Gone again, so that the agent's next offers come to us.)
    expect_status(
        "TEARDOWN of the other",
        other.sub.call(json!({"type": "TEARDOWN"})).await?,
        202,
    )?;
    let mut unknown = offer.clone();
    unknown["id"]["value"] = json!("no-such-offer");
    let ghost = unique("ghost");
    launch(&me.sub, &unknown, task_info(&ghost, &unknown, "echo no")).await?;
    let s = me.update(&ghost).await?;
    expect_refused(&ghost, &s, "TASK_LOST", "REASON_INVALID_OFFERS")?;

    // More than the offer holds, next to a task that fits: the first is refused, the second runs.
    let (big, keep) = (unique("big"), unique("keep"));
    let mut too_big = task_info(&big, &offer, "echo no");
    too_big["resources"][0]["scalar"]["value"] = json!(100.0);
    launch_tasks(
        &me.sub,
        &offer,
        vec![too_big, task_info(&keep, &offer, "sleep 60")],
    )
    .await?;
    let s = me.update(&big).await?;
    expect_refused(&big, &s, "TASK_ERROR", "REASON_TASK_INVALID")?;
    let s = me.update(&keep).await?;
    if s["state"] != "TASK_STARTING" && s["state"] != "TASK_RUNNING" {
        return Err(format!("{keep} did not start: {s}"));
    }

    // Its id again, from the next offer: refused; the running task is untouched.
    let offer = me.offer().await?;
    launch(&me.sub, &offer, task_info(&keep, &offer, "echo duplicate")).await?;
    let s = me.update(&keep).await?;
    let s = if s["state"] == "TASK_RUNNING" {
        me.update(&keep).await?
    } else {
        s
    };
    expect_refused(&keep, &s, "TASK_ERROR", "REASON_TASK_INVALID")?;

    // The master keeps working: a task runs to the end, nothing is double-booked.
    let offer = me.offer().await?;
    let ok = unique("ok");
    launch(&me.sub, &offer, task_info(&ok, &offer, "echo ok")).await?;
    loop {
        let s = me.update(&ok).await?;
        match s["state"].as_str() {
            Some("TASK_FINISHED") => break,
            Some("TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING") => {}
            _ => return Err(format!("{ok}: {s}")),
        }
    }
    let state = cell
        .master
        .client()
        .state()
        .await
        .map_err(|e| e.to_string())?;
    shoal_tests::check_no_double_booking(&state)?;
    let kept = state.tasks.iter().find(|t| t.id.as_str() == keep);
    if kept.map(|t| t.state.mesos_name()) != Some("TASK_RUNNING") {
        return Err(format!("{keep} should still run: {kept:?}"));
    }

    // A second subscription with our id takes over: the first gets the ERROR event "Framework
    // failed over" and its stream ends.
    let mut again = info.clone();
    again["id"] = json!({"value": fw});
    let mut me2 = JsonSubscription::subscribe(&cell.master.addr, again, STEP).await?;
    let e = me.sub.wait_for("ERROR", STEP).await?;
    if e["error"]["message"] != "Framework failed over" {
        return Err(format!("the old subscription got {e}"));
    }
    let ended = me.sub.next_event(STEP).await;
    if !ended.as_ref().is_err_and(|e| e.contains("ended")) {
        return Err(format!("the old stream should have ended: {ended:?}"));
    }
    eprintln!("failover: the old stream got {e} and ended");
    // Offers the old subscription held are rescinded on the new one.
    let held: Vec<Json> = me.offers.iter().map(|o| o["id"].clone()).collect();
    if !held.is_empty() {
        let until = Instant::now() + STEP;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let e = me2.next_event(left).await?;
            if e["type"] == "RESCIND" && held.contains(&e["rescind"]["offer_id"]) {
                eprintln!("failover: {e}");
                break;
            }
        }
    }

    // TEARDOWN: the stream ends; the framework's calls are refused from then on, and so is
    // its SUBSCRIBE.
    let (status, body) = me2.call(json!({"type": "TEARDOWN"})).await?;
    expect_status("TEARDOWN", (status, body), 202)?;
    loop {
        match me2.next_event(STEP).await {
            Ok(e) if e["type"] != "ERROR" => continue,
            Ok(e) => return Err(format!("after TEARDOWN: {e}")),
            Err(e) if e.contains("ended") => break,
            Err(e) => return Err(format!("after TEARDOWN the stream should end: {e}")),
        }
    }
    expect_status(
        "KILL after TEARDOWN",
        post(&url, json_ct, None, Some(&me2.stream_id), kill(&fw)).await?,
        403,
    )?;
    let mut again = json!({"type": "SUBSCRIBE", "framework_id": {"value": fw}, "subscribe": {"framework_info": info}});
    again["subscribe"]["framework_info"]["id"] = json!({"value": fw});
    let (status, body) = post(
        &url,
        json_ct,
        Some(json_ct),
        None,
        again.to_string().into_bytes(),
    )
    .await?;
    if status != 200 || !body.contains("\"ERROR\"") || !body.contains("Framework has been removed")
    {
        return Err(format!(
            "SUBSCRIBE after TEARDOWN: wanted an ERROR event, got {status} {body}"
        ));
    }
    eprintln!("SUBSCRIBE after TEARDOWN: {status} {}", body.trim());
    Ok(())
}

/// A MULTI_ROLE framework is offered resources for each of its roles that is not suppressed,
/// and its tasks take the role of the offer they were launched from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_multi_role_framework_gets_offers_per_role() {
    let cell = start_cell("multi-role", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = multi_role(&cell).await {
        panic!("{e}\n{}", cell.logs(120, 30));
    }
}

async fn multi_role(cell: &MesosCell) -> Result<(), String> {
    let info = json!({"user": "test", "name": "multi-role", "roles": ["ra", "rb"],
                      "capabilities": [{"type": "MULTI_ROLE"}]});
    let mut me = Driven {
        sub: JsonSubscription::subscribe(&cell.master.addr, info, STEP).await?,
        offers: Default::default(),
    };
    let first = me.offer().await?;
    let role = first["allocation_info"]["role"].clone();
    if role != "ra" && role != "rb" {
        return Err(format!("an offer for none of the roles: {first}"));
    }
    // That role suppressed, the agent comes back for the other one.
    let (status, body) = me
        .sub
        .call(json!({"type": "SUPPRESS", "suppress": {"roles": [role]}}))
        .await?;
    expect_status("SUPPRESS", (status, body), 202)?;
    let call = json!({"type": "DECLINE", "decline": {"offer_ids": [first["id"]], "filters": {"refuse_seconds": 0.0}}});
    expect_status("DECLINE", me.sub.call(call).await?, 202)?;
    let second = me.offer().await?;
    let other = &second["allocation_info"]["role"];
    if *other == role || second["resources"][0]["allocation_info"]["role"] != *other {
        return Err(format!(
            "wanted an offer for the other role than {role}: {second}"
        ));
    }
    let task = unique("multi");
    launch(&me.sub, &second, task_info(&task, &second, "sleep 30")).await?;
    let s = me.update(&task).await?;
    if s["state"] != "TASK_STARTING" && s["state"] != "TASK_RUNNING" {
        return Err(format!("{task}: {s}"));
    }
    let t = cell
        .master
        .client()
        .task(&task)
        .await
        .map_err(|e| e.to_string())?;
    if Some(t.role.as_str()) != other.as_str() {
        return Err(format!(
            "{task} has role {}, its offer was for {other}",
            t.role
        ));
    }
    let frameworks: Json = reqwest::get(format!("{}/master/frameworks", cell.master.addr))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if frameworks["frameworks"][0]["roles"] != json!(["ra", "rb"]) {
        return Err(format!("/master/frameworks: {frameworks}"));
    }
    eprintln!("offers for {role} then {other}; {task} runs with role {other}");
    Ok(())
}

/// SHUTDOWN of a task's (command) executor kills the task; an agent that goes away has its
/// offers rescinded and every framework gets FAILURE with its id, as Mesos's "agent lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_shutdown_and_a_lost_agent() {
    let mut cell = start_cell(
        "agent-lost",
        &[
            "--agent-ping-timeout",
            "500ms",
            "--agent-unreachable-timeout",
            "1s",
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = shutdown_and_agent_lost(&mut cell).await {
        panic!("{e}\n{}", cell.logs(120, 30));
    }
}

async fn shutdown_and_agent_lost(cell: &mut MesosCell) -> Result<(), String> {
    let info = json!({"user": "test", "name": "agent-lost"});
    let mut me = Driven {
        sub: JsonSubscription::subscribe(&cell.master.addr, info, STEP).await?,
        offers: Default::default(),
    };
    let offer = me.offer().await?;
    let task = unique("shut");
    launch(&me.sub, &offer, task_info(&task, &offer, "sleep 60")).await?;
    while me.update(&task).await?["state"] != "TASK_RUNNING" {}
    let agent = offer["agent_id"].clone();
    let call = json!({"type": "SHUTDOWN", "shutdown": {"executor_id": {"value": task}, "agent_id": agent}});
    expect_status("SHUTDOWN", me.sub.call(call).await?, 202)?;
    loop {
        let s = me.update(&task).await?;
        match s["state"].as_str() {
            Some("TASK_KILLED") => break,
            Some("TASK_RUNNING" | "TASK_KILLING") => {}
            _ => return Err(format!("{task} after SHUTDOWN: {s}")),
        }
    }
    // Hold an offer of the agent, then lose the agent.
    let held = me.offer().await?;
    cell.agents[0].kill9();
    let until = Instant::now() + STEP;
    let (mut rescinded, mut failure) = (false, false);
    while !(rescinded && failure) {
        let e = me.step("RESCIND and FAILURE", until).await?;
        match e["type"].as_str() {
            Some("RESCIND") => rescinded |= e["rescind"]["offer_id"] == held["id"],
            Some("FAILURE") => failure |= e["failure"]["agent_id"] == agent,
            _ => {}
        }
    }
    eprintln!("agent lost: its offer rescinded, FAILURE sent");
    Ok(())
}

/// A framework that disconnects and stays away past its `failover_timeout` is removed: its
/// tasks are killed, and its SUBSCRIBE is refused with "Framework has been removed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_failover_timeout_removes_a_framework_that_stays_away() {
    let cell = start_cell("failover-timeout", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = failover_timeout(&cell).await {
        panic!("{e}\n{}", cell.logs(120, 30));
    }
}

async fn failover_timeout(cell: &MesosCell) -> Result<(), String> {
    let info = json!({"user": "test", "name": "away", "failover_timeout": 1.0});
    let mut me = Driven {
        sub: JsonSubscription::subscribe(&cell.master.addr, info.clone(), STEP).await?,
        offers: Default::default(),
    };
    let fw = me.sub.framework_id.clone();
    let offer = me.offer().await?;
    let task = unique("away");
    launch(&me.sub, &offer, task_info(&task, &offer, "sleep 60")).await?;
    while me.update(&task).await?["state"] != "TASK_RUNNING" {}
    let gone = Instant::now();
    drop(me); // the connection closes: disconnected, within its failover timeout for 1 s
    let client = cell.master.client();
    let until = Instant::now() + STEP;
    loop {
        let t = client.task(&task).await.map_err(|e| e.to_string())?;
        if t.state.is_terminal() {
            if t.state.mesos_name() != "TASK_KILLED" {
                return Err(format!("{task} ended as {}", t.state.mesos_name()));
            }
            if gone.elapsed() < Duration::from_millis(900) {
                return Err(format!(
                    "{task} killed {:?} after the disconnection, before the failover timeout",
                    gone.elapsed()
                ));
            }
            eprintln!("{task} killed {:?} after the disconnection", gone.elapsed());
            break;
        }
        if Instant::now() > until {
            return Err(format!(
                "{task} still {} after the failover timeout",
                t.state.mesos_name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = info;
    again["id"] = json!({"value": fw});
    match JsonSubscription::subscribe(&cell.master.addr, again, STEP).await {
        Err(e) if e.contains("Framework has been removed") => Ok(()),
        Err(e) => Err(format!("SUBSCRIBE after the failover timeout: {e}")),
        Ok(_) => Err("SUBSCRIBE after the failover timeout was accepted".into()),
    }
}
