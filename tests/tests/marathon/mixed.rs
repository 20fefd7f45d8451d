//! The three ways onto one cell at once: a v0 framework (mesos-go's v0 driver, v0sched), a
//! v1 framework (pymesos, `tests/frameworks/busy.py`) and a native scheduler (claims through
//! `shoal_client`), all wanting more than one small agent has, for [`RUN`]. A checker folds
//! the native watch stream and checks, at every committed version, that nothing on the agent
//! is double-booked (tasks and offers' holds fit in its total); each of the three must get
//! offers or claims and see at least one task reach TASK_RUNNING.
//!
//! Skipped (printed) outside CI when Go, mesos-go or `SHOAL_TEST_PYTHON` is missing.

use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_client::{command_task, ClaimRequest, PlacementRequest};
use shoal_core::{CommitMode, ConflictCheck, ResourceSet};
use shoal_tests::{
    go_program, spawn_script, spawn_v0sched, test_python, unique, wait_until, BookingWatch,
    LineChild, MesosAgentSpec, MesosCell,
};

/// One small agent: the three schedulers together want more.
const AGENT_RESOURCES: &str = "cpus:2;mem:512";
/// How long the three compete.
const RUN: Duration = Duration::from_secs(10);
/// How long one awaited v0 callback or command may take.
const EVENT: Duration = Duration::from_secs(20);
/// What v0sched launches takes (its fixed task size).
const V0_TASK_CPUS: f64 = 0.1;
const V0_TASK_MEM_MB: f64 = 32.0;
/// How long v0sched waits after using its offers before it revives.
const REVIVE_PAUSE: Duration = Duration::from_millis(300);
/// What a native claim takes: a quarter of the agent's cpus and memory.
const NATIVE_TASK: &str = "cpus:0.5;mem:128";
/// The owner of the native scheduler's claims.
const NATIVE_OWNER: &str = "mixed-native";
/// How long the checker may take to fold the last versions once the run is over.
const CHECKER_CATCH_UP: Duration = Duration::from_secs(10);
/// How long the tasks may take to end after the run.
const DRAIN: Duration = Duration::from_secs(20);

/// The scalar `name` of an offer as v0sched prints it.
fn offered(offer: &Json, name: &str) -> f64 {
    offer["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == name)
        .filter_map(|r| r["scalar"].as_f64())
        .sum()
}

/// What the v0 framework did.
struct V0Run {
    fw: LineChild,
    framework_id: String,
    launched: Vec<String>,
}

/// Drives v0sched for [`RUN`]: every offer that fits a task is used to launch one (`sleep 1`),
/// others are declined, and each batch is followed, [`REVIVE_PAUSE`] later, by a REVIVE, so
/// the filter a launch leaves (5 s by default) does not keep the framework away. Then waits for its tasks to end and
/// stops the driver (it unregisters).
fn run_v0(mut fw: LineChild, agent: &str, prefix: &str) -> V0Run {
    let reg = fw.wait_for("the registered callback", EVENT, |j| {
        j["event"] == "registered"
    });
    let framework_id = reg["framework_id"].as_str().unwrap_or("").to_string();
    let until = Instant::now() + RUN;
    let mut launched = Vec::new();
    // The deadline is checked on every round: offers read while waiting for acks are there
    // to be taken at once, so the wait alone would never run out.
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        let Some(offers) = fw.poll_for(left, |j| j["event"] == "offers") else {
            break;
        };
        for o in offers["offers"].as_array().into_iter().flatten() {
            let id = o["id"].as_str().unwrap_or("");
            let fits = o["agent_id"] == agent
                && offered(o, "cpus") >= V0_TASK_CPUS
                && offered(o, "mem") >= V0_TASK_MEM_MB;
            if fits {
                let task = format!("{prefix}-{}", launched.len());
                fw.command(&format!("launch {task} {id} cmd sleep 1"), EVENT);
                launched.push(task);
            } else {
                fw.command(&format!("decline {id} 0.2"), EVENT);
            }
        }
        // The filter a launch leaves keeps the agent from this framework for 5 s; it is
        // revived after a pause instead, which leaves gaps for the native claims (an agent
        // offered at every allocation round is never free to claim).
        fw.read_for(REVIVE_PAUSE);
        fw.command("revive", EVENT);
    }
    for t in &launched {
        let end = fw.wait_for(&format!("{t} ending"), DRAIN, |j| {
            j["event"] == "status"
                && j["task_id"] == t.as_str()
                && !matches!(
                    j["state"].as_str(),
                    Some("TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING")
                )
        });
        assert_eq!(
            end["state"],
            "TASK_FINISHED",
            "v0 task {t}: {end}\n{}",
            fw.transcript()
        );
    }
    fw.command("stop", EVENT);
    let status = fw.wait_exit(EVENT);
    assert!(
        status.is_some_and(|s| s.success()),
        "v0sched exited {status:?}\n{}",
        fw.transcript()
    );
    V0Run {
        fw,
        framework_id,
        launched,
    }
}

fn native_claim(id: &str, agent_id: &str, version: u64) -> ClaimRequest<'static> {
    let res = ResourceSet::parse(NATIVE_TASK).unwrap();
    ClaimRequest {
        claim_id: format!("claim-{id}"),
        role: "*".into(),
        owner: NATIVE_OWNER.into(),
        snapshot_version: version,
        mode: CommitMode::Incremental,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: vec![PlacementRequest::new(
            agent_id.to_string(),
            &command_task(id, id, &res, "sleep 1"),
        )],
    }
}

/// Claims one task at a time on a fresh snapshot for [`RUN`]; the ids committed and the
/// number refused.
async fn run_native(
    client: &shoal_client::Client,
    agent: &str,
    prefix: &str,
) -> (Vec<String>, usize) {
    let (mut committed, mut refused) = (Vec::new(), 0);
    let until = Instant::now() + RUN;
    let mut n = 0;
    while Instant::now() < until {
        let Ok(st) = client.state().await else {
            continue;
        };
        n += 1;
        let id = format!("{prefix}-{n}");
        let answer = client
            .claim(&native_claim(&id, agent, st.version))
            .await
            .unwrap_or_else(|e| panic!("claim {id}: {e}"));
        match answer.outcome.placements.first() {
            Some(p) if p.committed => committed.push(id),
            Some(_) => refused += 1,
            None => panic!("claim {id}: no placement in the answer"),
        }
        // A pause, so the frameworks' offers are not starved by a claim at every version.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    (committed, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v0_v1_and_native_schedulers_share_one_agent_without_double_booking() {
    let test = "v0_v1_and_native_schedulers_share_one_agent_without_double_booking";
    let Some(python) = test_python(test) else {
        return;
    };
    let Some(bin) = tokio::task::block_in_place(|| go_program(test, "v0sched")) else {
        return;
    };
    let cell = MesosCell::start("v0-mixed", &[], &[MesosAgentSpec::process(AGENT_RESOURCES)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = cell.agent_ids[0].clone();
    let client = cell.master.client();
    let log_dir = cell.dir.path().join("frameworks");
    // Before any framework subscribes: the snapshot it folds from holds no offers.
    let watch = BookingWatch::start(client.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = unique("mix");
    let (v0_prefix, v1_prefix, native_prefix) = (
        format!("{prefix}-v0"),
        format!("{prefix}-v1"),
        format!("{prefix}-nat"),
    );

    let path = |name: &str| cell.dir.path().join(name).to_string_lossy().to_string();
    let (hold_file, released_file) = (path("busy.hold"), path("busy.released"));
    let run_secs = RUN.as_secs().to_string();
    let busy = spawn_script(
        &python,
        "busy.py",
        &[
            cell.master.host_port(),
            "--task-id",
            &v1_prefix,
            "--hold-file",
            &hold_file,
            "--released-file",
            &released_file,
            "--hold",
            "0",
            "--duration",
            &run_secs,
            "--per-offer",
            "4",
            "--cpus",
            "0.5",
            "--mem",
            "128",
        ],
        &log_dir,
    );
    let fw = spawn_v0sched(&bin, cell.master.host_port(), &v0_prefix, &[], &log_dir);
    let v0 = {
        let (agent, v0_prefix) = (agent.clone(), v0_prefix.clone());
        tokio::task::spawn_blocking(move || run_v0(fw, &agent, &v0_prefix))
    };
    let (native, refused) = run_native(&client, &agent, &native_prefix).await;

    let v0 = v0.await.unwrap_or_else(|e| panic!("the v0 framework: {e}"));
    let busy = tokio::task::block_in_place(|| busy.wait(RUN + DRAIN + EVENT));
    let report = || {
        format!(
            "----- {} -----\n{}{}{}",
            busy.outcome(),
            busy.output,
            v0.fw.transcript(),
            cell.logs(120, 30)
        )
    };
    assert!(busy.success(), "the v1 framework failed\n{}", report());
    wait_until("every task to end", DRAIN, || {
        let client = client.clone();
        async move {
            client
                .state()
                .await
                .is_ok_and(|st| st.tasks.iter().all(|t| t.state.is_terminal()))
        }
    })
    .await;
    let version = client.state().await.unwrap().version;
    let seen = watch.finish(version, CHECKER_CATCH_UP).await;

    let running = |prefix: &str| {
        seen.running
            .iter()
            .filter(|t| t.starts_with(&format!("{prefix}-")))
            .count()
    };
    let (v0_running, v1_running, native_running) = (
        running(&v0_prefix),
        running(&v1_prefix),
        running(&native_prefix),
    );
    eprintln!(
        "{} versions checked; v0: {} launched, {v0_running} running; v1: {v1_running} running ({}); \
         native: {} committed, {refused} refused, {native_running} running",
        seen.versions,
        v0.launched.len(),
        busy.output.lines().find(|l| l.contains("LAUNCHED")).unwrap_or("?"),
        native.len(),
    );
    assert!(
        seen.violations.is_empty(),
        "double-booking seen ({} times), first: {}\n{}",
        seen.violations.len(),
        seen.violations[0],
        report()
    );
    assert!(seen.versions > 0, "the checker saw no version");
    assert!(
        v0_running > 0 && v1_running > 0 && native_running > 0,
        "every scheduler must run a task: v0 {v0_running}, v1 {v1_running}, native {native_running}\n{}",
        report()
    );
    // The v0 framework's tasks are its own, under its framework id.
    for t in &v0.launched {
        assert_eq!(
            seen.owners.get(t).map(String::as_str),
            Some(v0.framework_id.as_str()),
            "owner of v0 task {t}"
        );
    }
    for t in &native {
        assert_eq!(
            seen.owners.get(t).map(String::as_str),
            Some(NATIVE_OWNER),
            "owner of native task {t}"
        );
    }
}
