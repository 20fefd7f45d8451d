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

use std::path::{Path, PathBuf};
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
    let call = json!({"type": "ACCEPT", "accept": {
        "offer_ids": [offer["id"]],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
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
/// 500 ms: SUBSCRIBED, HEARTBEAT, OFFERS (left unanswered), RESCIND (its timeout), OFFERS
/// again (accepted at once with a command task), UPDATE.
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

/// Erratum of the docs' OFFERS example (see tests/fixtures/mesos/README.md): the proto has
/// `Event.offers: Event.Offers { repeated Offer offers }`, so the array is under `offers.offers`.
fn offers_as_on_the_wire(mut doc: Json) -> Json {
    let list = doc["offers"].take();
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

/// Where Debian's golang-github-mesos-mesos-go-dev puts the package the framework uses.
const GOCODE: &str = "/usr/share/gocode";
const HTTPSCHED: &str = "src/github.com/mesos/mesos-go/api/v1/lib/httpcli/httpsched";

/// Why the Go framework tests cannot run here, if they cannot.
fn go_missing() -> Option<String> {
    if !Command::new("go")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        return Some("`go version` does not run (apt-get install golang-go)".into());
    }
    let httpsched = Path::new(GOCODE).join(HTTPSCHED);
    if !httpsched.is_dir() {
        return Some(format!(
            "{} is missing (apt-get install golang-github-mesos-mesos-go-dev)",
            httpsched.display()
        ));
    }
    None
}

/// `tests/frameworks/go/<name>` built with `go build` (GOPATH mode, Debian's gocode, no
/// network) into a temporary directory, once per test run. `None` (printed) when Go or
/// mesos-go is missing outside CI; a panic in CI (`CI=true`) or when the build fails.
fn go_framework(test: &str, name: &'static str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(why) = go_missing() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {why}, and CI is \"true\"");
        }
        eprintln!("skipping {test}: {why}");
        return None;
    }
    let built = BUILT.get_or_init(|| {
        let out = tempfile::Builder::new()
            .prefix("shoal-go-frameworks-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("frameworks")
            .join("go")
            .join(name);
        let bin = out.join(name);
        let mut cmd = Command::new("go");
        cmd.args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env(
                "GOPATH",
                format!("{}:{GOCODE}", out.join("gopath").display()),
            )
            .env("GOPROXY", "off")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0");
        if std::env::var_os("HOME").is_none() && std::env::var_os("GOCACHE").is_none() {
            cmd.env("GOCACHE", out.join("gocache"));
        }
        let run = run_command(
            cmd,
            &format!("go-build-{name}"),
            Duration::from_secs(600),
            &out,
        );
        if run.success() {
            eprintln!("built {} in {:?}", bin.display(), run.elapsed);
            Ok(bin)
        } else {
            Err(format!("{}\n{}", run.outcome(), run.output))
        }
    });
    match built {
        Ok(bin) => Some(bin.clone()),
        Err(e) => panic!("{test}: building tests/frameworks/go/{name} failed: {e}"),
    }
}

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
    let Some(bin) = tokio::task::block_in_place(|| go_framework(test, "protolaunch")) else {
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
