//! What Marathon relies on when a scheduler or an agent goes away, over the v0 protocol,
//! proven with the libmesos harness (`tests/frameworks/go/libmesos`) against `shoal master`
//! and a real agent:
//!
//! - **scheduler failover**: a scheduler process that ends without TEARDOWN leaves its
//!   framework disconnected and its task running; a new process (a new pid) subscribing
//!   with the framework id and `force` is registered under that id and finds the task by
//!   reconciliation. Without `force` a newcomer is refused ("Framework failed over"),
//!   whether the framework is connected or not; with it, a connected old scheduler is the
//!   one told so.
//! - **failover_timeout**: a framework away past it is removed, its task killed, and its id
//!   refused ("Framework has been removed").
//! - **partition awareness**: a task on an agent that goes away becomes TASK_UNREACHABLE
//!   for a PARTITION_AWARE framework and TASK_LOST for another, and both hear that the
//!   agent was lost. (The pacemaker probe's TASK_UNKNOWN / TASK_LOST is `v0.rs`'s.)
//! - **explicit acknowledgements**: an update left unacknowledged is sent again after
//!   `--status-update-retry`, and no more once acknowledged.
//!
//! A run of the harness that must outlive one step is driven as a [`LineChild`] with
//! `--stop-after <check> --hold`: its process, and so the master's link to it, stays up
//! until it is dropped (SIGKILL: the process ends as a crashed scheduler's does).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::{
    get_json, go_program, run_command, wait_until, LineChild, MesosAgentSpec, MesosCell, ScriptRun,
};

/// Room for two harness tasks (0.1 cpus and 32 MB each) and more.
const AGENT_RESOURCES: &str = "cpus:2;mem:1024;ports:[31000-31100]";
/// The master's `--status-update-retry` (`MESOS_API_FLAGS`); the harness is told the same.
const STATUS_UPDATE_RETRY: Duration = Duration::from_millis(500);
/// How long a harness step (registration, offers, TASK_RUNNING, an answer) may take.
const STEP: Duration = Duration::from_secs(30);
/// How long a harness run to its end may take (its own waits are shorter).
const HARNESS_TIMEOUT: Duration = Duration::from_secs(60);
/// The failover timeout of the framework that is left to time out.
const SHORT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the master may take to notice a scheduler or an agent gone, and act on it.
const NOTICE: Duration = Duration::from_secs(15);

/// What Mesos's master answers a SUBSCRIBE it refuses for another scheduler's framework.
const FAILED_OVER: &str = "Framework failed over";
/// What Mesos's master answers a SUBSCRIBE of a framework it removed.
const REMOVED: &str = "Framework has been removed";

/// A master (the Mesos tests' flags, plus `master_flags`) and one process agent.
async fn start_cell(name: &str, master_flags: &[&str]) -> MesosCell {
    MesosCell::start(
        name,
        master_flags,
        &[MesosAgentSpec::process(AGENT_RESOURCES)],
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The harness pointed at the cell's master with `args`.
fn harness(test: &str, cell: &MesosCell, args: &[&str]) -> Command {
    let bin = go_program(test, "libmesos").expect("checked by the caller");
    let mut cmd = Command::new(bin);
    cmd.args(["--master", cell.master.host_port()])
        .args(["--update-retry", "500ms"])
        .args(args);
    cmd
}

fn logs_dir(cell: &MesosCell) -> PathBuf {
    cell.dir.path().join("frameworks")
}

/// A harness run driven line by line (see the module documentation).
fn spawn_harness(test: &str, name: &str, cell: &MesosCell, args: &[&str]) -> LineChild {
    let log = logs_dir(cell).join(format!("{name}.stderr.log"));
    LineChild::spawn(name, harness(test, cell, args), &log)
}

/// A harness run to its end: how it ended and its JSON lines.
fn run_harness(test: &str, cell: &MesosCell, args: &[&str]) -> (ScriptRun, Vec<Json>) {
    let run = run_command(
        harness(test, cell, args),
        "libmesos",
        HARNESS_TIMEOUT,
        &logs_dir(cell),
    );
    let lines = run
        .output
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .collect();
    (run, lines)
}

/// The check line `name` of a finished run, which must have passed (and the run exited 0).
fn finished_check<'a>(
    run: &ScriptRun,
    lines: &'a [Json],
    name: &str,
    cell: &MesosCell,
) -> &'a Json {
    let check = lines.iter().find(|j| j["check"] == name);
    let failed: Vec<&Json> = lines.iter().filter(|j| j["ok"] == false).collect();
    assert!(
        run.success() && failed.is_empty() && check.is_some_and(|c| c["ok"] == true),
        "the harness: check {name} {check:?}, failed {failed:?}\n{}\n----- output -----\n{}{}",
        run.outcome(),
        run.output,
        cell.logs(120, 30)
    );
    &check.expect("asserted above")["detail"]
}

/// Waits for the check line `name` of a driven run, which must have passed; its detail.
fn check_passed(fw: &mut LineChild, name: &str, cell: &MesosCell) -> Json {
    let j = fw.wait_for(&format!("check {name}"), STEP, |j| {
        j["check"] == name || j["ok"] == false
    });
    assert!(
        j["check"] == name && j["ok"] == true,
        "check {name}: {j}\n{}{}",
        fw.transcript(),
        cell.logs(120, 30)
    );
    j["detail"].clone()
}

/// Waits until a driven run holds (its scenario is over, its link stays up); the framework
/// id it printed.
fn held(fw: &mut LineChild) -> String {
    let j = fw.wait_for("the held line", STEP, |j| j["held"] == true);
    j["framework_id"].as_str().unwrap_or_default().to_string()
}

/// Waits for a status event of `task` in `state` while a run holds (another terminal state
/// on the way fails at once).
fn status_event(fw: &mut LineChild, cell: &MesosCell, task: &str, state: &str) -> Json {
    let j = fw.wait_for(&format!("{task} {state}"), NOTICE, |j| {
        j["event"] == "status" && j["task_id"] == task && j["state"] != "TASK_RUNNING"
    });
    assert_eq!(
        j["state"],
        state,
        "{task}: {j}\n{}{}",
        fw.transcript(),
        cell.logs(120, 30)
    );
    j
}

/// The framework as `/master/frameworks` shows it (`None` when it is not listed).
async fn framework(cell: &MesosCell, framework_id: &str) -> Option<Json> {
    let http = reqwest::Client::new();
    let url = format!("{}/master/frameworks", cell.master.addr);
    let body = get_json(&http, &url).await?;
    body["frameworks"]
        .as_array()?
        .iter()
        .find(|f| f["id"] == framework_id)
        .cloned()
}

/// The state `/master/frameworks` gives `task` of the framework (`None`: not listed).
fn task_state(framework: &Json, task: &str) -> Option<String> {
    framework["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == task)
        .and_then(|t| t["state"].as_str())
        .map(str::to_string)
}

/// Waits until the master lists the framework connected (`true`) or disconnected, with
/// `task` running either way; the framework's JSON.
async fn wait_framework_connected(
    cell: &MesosCell,
    framework_id: &str,
    task: &str,
    connected: bool,
) -> Json {
    let until = Instant::now() + NOTICE;
    loop {
        let f = framework(cell, framework_id).await;
        if let Some(f) = f.as_ref().filter(|f| {
            f["active"] == connected
                && f["connected"] == connected
                && task_state(f, task).as_deref() == Some("TASK_RUNNING")
        }) {
            return f.clone();
        }
        assert!(
            Instant::now() < until,
            "/master/frameworks never showed {framework_id} connected={connected} with {task} \
             TASK_RUNNING; last: {f:?}\n{}",
            cell.logs(120, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn skip_without_harness(test: &str) -> bool {
    tokio::task::block_in_place(|| go_program(test, "libmesos")).is_none()
}

/// Marathon's failover: the scheduler process ends without TEARDOWN (its framework is
/// disconnected, its task keeps running); a new process with a new pid subscribes with the
/// id and `force`, is registered under it, and reconciles the task as TASK_RUNNING. Without
/// `force`, a newcomer is refused, the framework connected or not; a forced newcomer takes
/// the framework over from a connected scheduler, which is told "Framework failed over".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_scheduler_fails_over_to_a_new_process_and_finds_its_task_running() {
    let test = "a_v0_scheduler_fails_over_to_a_new_process_and_finds_its_task_running";
    if skip_without_harness(test) {
        return;
    }
    let cell = start_cell("v0-sched-failover", &[]).await;
    let first_args = [
        "--failover-timeout",
        "30",
        "--stop-after",
        "task_running",
        "--hold",
    ];
    let (first, id, task, agent) = tokio::task::block_in_place(|| {
        let mut first = spawn_harness(test, "first", &cell, &first_args);
        let running = check_passed(&mut first, "task_running", &cell);
        let id = held(&mut first);
        let task = running["task_id"].as_str().unwrap_or_default().to_string();
        let agent = running["agent_id"].as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty() && !task.is_empty(), "{}", first.transcript());
        (first, id, task, agent)
    });
    wait_framework_connected(&cell, &id, &task, true).await;

    // Without force, from another pid, while the framework is connected: refused, as
    // Master::subscribe refuses `framework->pid != from && !force`; the first scheduler
    // keeps the framework.
    let no_force = ["--framework-id", id.as_str(), "--expect-error", FAILED_OVER];
    let (run, lines) = tokio::task::block_in_place(|| run_harness(test, &cell, &no_force));
    finished_check(&run, &lines, "framework_error", &cell);
    let mut first = first;
    tokio::task::block_in_place(|| {
        first.read_for(2 * STATUS_UPDATE_RETRY);
        assert!(
            !first.seen().iter().any(|j| j["event"] == "error"),
            "the connected scheduler was told an error\n{}",
            first.transcript()
        );
    });
    wait_framework_connected(&cell, &id, &task, true).await;

    // The first scheduler's process ends without TEARDOWN: disconnected, task running.
    drop(first);
    let away = wait_framework_connected(&cell, &id, &task, false).await;
    assert_eq!(
        away["failover_timeout"], 30.0,
        "the framework as listed: {away}"
    );

    // Without force from a new process while the framework is disconnected: refused all
    // the same, as Mesos refuses every pid but the framework's own without force.
    let (run, lines) = tokio::task::block_in_place(|| run_harness(test, &cell, &no_force));
    finished_check(&run, &lines, "framework_error", &cell);
    wait_framework_connected(&cell, &id, &task, false).await;

    // A new process fails over with force: the same id, the task running.
    let failover = [
        "--framework-id",
        id.as_str(),
        "--force",
        "--failover-timeout",
        "30",
        "--stop-after",
        "master_hostname",
        "--hold",
    ];
    let mut second = tokio::task::block_in_place(|| {
        let mut second = spawn_harness(test, "second", &cell, &failover);
        let reg = check_passed(&mut second, "registered", &cell);
        assert!(
            reg["message"] == "registered" && reg["framework_id"] == id.as_str(),
            "a forced subscription is answered FrameworkRegisteredMessage with the same id: \
             {reg}\n{}",
            second.transcript()
        );
        check_passed(&mut second, "registered_kind", &cell);
        held(&mut second);
        second.command(&format!("reconcile {task} {agent}"), STEP);
        let j = second.wait_for("the reconciliation", STEP, |j| {
            j["event"] == "status" && j["task_id"] == task.as_str()
        });
        assert!(
            j["state"] == "TASK_RUNNING"
                && j["source"] == "SOURCE_MASTER"
                && j["reason"] == "REASON_RECONCILIATION"
                && j["update_uuid"] == false
                && j["framework_id"] == id.as_str(),
            "the task after the failover: {j}\n{}",
            second.transcript()
        );
        second
    });
    wait_framework_connected(&cell, &id, &task, true).await;

    // A forced newcomer while the framework is connected takes it over; the scheduler it
    // was on is told "Framework failed over", as failoverFramework tells the old pid.
    let third = tokio::task::block_in_place(|| {
        let mut third = spawn_harness(test, "third", &cell, &failover);
        let reg = check_passed(&mut third, "registered", &cell);
        assert_eq!(reg["framework_id"], id.as_str(), "{}", third.transcript());
        held(&mut third);
        let err = second.wait_for("the failed-over scheduler's error", STEP, |j| {
            j["event"] == "error"
        });
        assert_eq!(err["message"], FAILED_OVER, "{}", second.transcript());
        third
    });
    drop(second);
    wait_framework_connected(&cell, &id, &task, true).await;
    drop(third);
}

/// A framework with a 2 s failover timeout whose scheduler process ends: listed
/// disconnected, then removed after the timeout with its task killed; its id is then
/// refused with "Framework has been removed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_framework_away_past_its_failover_timeout_is_removed_and_its_task_killed() {
    let test = "a_v0_framework_away_past_its_failover_timeout_is_removed_and_its_task_killed";
    if skip_without_harness(test) {
        return;
    }
    let cell = start_cell("v0-failover-timeout", &[]).await;
    let timeout = SHORT_FAILOVER_TIMEOUT.as_secs().to_string();
    let args = [
        "--failover-timeout",
        timeout.as_str(),
        "--stop-after",
        "task_running",
    ];
    let (run, lines) = tokio::task::block_in_place(|| run_harness(test, &cell, &args));
    let ended = Instant::now();
    let running = finished_check(&run, &lines, "task_running", &cell);
    let task = running["task_id"].as_str().unwrap_or_default().to_string();
    let id = lines
        .iter()
        .find_map(|j| j["framework_id"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(!id.is_empty() && !task.is_empty(), "{}", run.output);

    // Listed disconnected first, then not at all.
    let mut seen_away = false;
    let until = ended + SHORT_FAILOVER_TIMEOUT + NOTICE;
    loop {
        match framework(&cell, &id).await {
            Some(f) => seen_away |= f["connected"] == false && f["active"] == false,
            None => break,
        }
        assert!(
            Instant::now() < until,
            "{id} is still listed {:?} after its scheduler ended\n{}",
            ended.elapsed(),
            cell.logs(120, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = ended.elapsed();
    assert!(
        seen_away,
        "{id} was never listed disconnected before its removal"
    );
    assert!(
        gone_after >= SHORT_FAILOVER_TIMEOUT.mul_f64(0.75),
        "{id} was removed {gone_after:?} after its scheduler ended, before its failover \
         timeout of {SHORT_FAILOVER_TIMEOUT:?}"
    );
    eprintln!("removed {gone_after:?} after the scheduler ended");

    let client = cell.master.client();
    wait_until("the removed framework's task killed", NOTICE, || {
        let (client, task) = (&client, &task);
        async move {
            client
                .task(task)
                .await
                .is_ok_and(|t| t.state == shoal_core::TaskState::Killed)
        }
    })
    .await;

    let again = [
        "--framework-id",
        id.as_str(),
        "--force",
        "--expect-error",
        REMOVED,
    ];
    let (run, lines) = tokio::task::block_in_place(|| run_harness(test, &cell, &again));
    finished_check(&run, &lines, "framework_error", &cell);
}

/// An agent goes away (SIGKILL, so its link breaks) under a task of a PARTITION_AWARE
/// framework and one of a framework without it: TASK_UNREACHABLE for the first, TASK_LOST
/// for the second, both from the master; both hear that the agent was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_gone_is_task_unreachable_when_partition_aware_and_task_lost_otherwise() {
    let test = "an_agent_gone_is_task_unreachable_when_partition_aware_and_task_lost_otherwise";
    if skip_without_harness(test) {
        return;
    }
    // An agent whose link broke is unreachable after 1 s.
    let mut cell = start_cell("v0-partition", &["--agent-unreachable-timeout", "1s"]).await;
    let agent = cell.agent_ids[0].clone();
    let held_args = ["--stop-after", "task_running", "--hold"];
    let aware_args = [
        "--partition-aware",
        "--stop-after",
        "task_running",
        "--hold",
    ];
    let (mut aware, aware_task, mut other, other_task) = tokio::task::block_in_place(|| {
        let mut aware = spawn_harness(test, "partition-aware", &cell, &aware_args);
        let mut other = spawn_harness(test, "not-partition-aware", &cell, &held_args);
        let a = check_passed(&mut aware, "task_running", &cell);
        let o = check_passed(&mut other, "task_running", &cell);
        held(&mut aware);
        held(&mut other);
        let task = |j: &Json| j["task_id"].as_str().unwrap_or_default().to_string();
        (aware, task(&a), other, task(&o))
    });

    cell.agents[0].kill9();
    tokio::task::block_in_place(|| {
        for (fw, task, state) in [
            (&mut aware, &aware_task, "TASK_UNREACHABLE"),
            (&mut other, &other_task, "TASK_LOST"),
        ] {
            let j = status_event(fw, &cell, task, state);
            assert!(
                j["source"] == "SOURCE_MASTER" && j["agent_id"] == agent.as_str(),
                "{task} {state} comes from the master: {j}"
            );
            // Mesos also writes REASON_SLAVE_REMOVED (v1: REASON_AGENT_REMOVED) and no uuid
            // (such updates are not retried); printed, not asserted.
            eprintln!("{state}: {j}");
            let lost = fw.wait_for("the agent lost", NOTICE, |j| j["event"] == "lost_slave");
            assert_eq!(lost["agent_id"], agent.as_str(), "{}", fw.transcript());
        }
    });
}

/// An update the scheduler does not acknowledge is sent again after
/// `--status-update-retry` (the same uuid); once acknowledged it is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_v0_update_is_resent_until_acknowledged() {
    let test = "an_unacknowledged_v0_update_is_resent_until_acknowledged";
    if skip_without_harness(test) {
        return;
    }
    let cell = start_cell("v0-ack-resend", &[]).await;
    let args = [
        "--skip-running-ack",
        "--stop-after",
        "acknowledged_not_resent",
    ];
    let (run, lines) = tokio::task::block_in_place(|| run_harness(test, &cell, &args));
    let resent = finished_check(&run, &lines, "resent_unacknowledged", &cell);
    let after = Duration::from_millis(resent["after_ms"].as_u64().unwrap_or(0));
    assert!(
        after >= STATUS_UPDATE_RETRY.mul_f64(0.8) && after <= 4 * STATUS_UPDATE_RETRY,
        "resent {after:?} after the first delivery, with --status-update-retry \
         {STATUS_UPDATE_RETRY:?}: {resent}"
    );
    finished_check(&run, &lines, "acknowledged_not_resent", &cell);
}
