//! The v0 libprocess scheduler protocol Marathon speaks, proven with two third-party clients
//! against `shoal master` and a real agent:
//!
//! - **mesos-go's v0 scheduler driver** (`tests/frameworks/go/v0sched`, Debian's mesos-go
//!   0.0.6): the legacy `mesos.internal` messages (RegisterFramework, LaunchTasks, KillTask,
//!   ReconcileTasks, StatusUpdateAcknowledgement, UnregisterFramework) over Go's net/http.
//!   Driven line by line ([`LineChild`]): register (through ZooKeeper or standalone), take
//!   offers, launch a command task and a Docker task, reconcile (with Marathon's pacemaker
//!   probe), kill, stop; and a master failover it follows through ZooKeeper.
//! - **the libmesos harness** (`tests/frameworks/go/libmesos`): what libmesos 1.11's
//!   `sched.cpp` sends (`mesos.scheduler.Call` on one hand-framed libprocess connection),
//!   with the checks Marathon's correctness depends on; it exits 0 only if all pass.
//!
//! The tests skip themselves (with a printed reason) outside CI when Go, mesos-go or the
//! test ZooKeeper is missing, and fail in CI; the Docker task is left out when Docker tests
//! are skipped ([`docker_enabled`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::{
    docker_enabled, go_program, run_command, tail, test_zk, unique, wait_until, LineChild,
    MesosAgentSpec, MesosCell, ScriptRun,
};

const AGENT_RESOURCES: &str = "cpus:2;mem:1024;ports:[31000-31100]";
const IMAGE: &str = "local/busybox:latest";
/// How long one awaited callback (an offer, a state) may take.
const EVENT: Duration = Duration::from_secs(30);
/// How long a command may take to be carried out (`stop` waits 2 s in the driver).
const ACK: Duration = Duration::from_secs(10);
/// The master's `--status-update-retry` in the Mesos tests (`MESOS_API_FLAGS`).
const STATUS_UPDATE_RETRY: Duration = Duration::from_millis(500);
/// The ZooKeeper session timeout the masters run with: a SIGKILLed master's node goes after it.
const ZK_SESSION_TIMEOUT: &str = "4s";
/// How long the libmesos harness may run (its own waits are shorter).
const HARNESS_TIMEOUT: Duration = Duration::from_secs(120);

/// Every check the libmesos harness prints on a full run with TEARDOWN.
const HARNESS_CHECKS: &[&str] = &[
    "connect",
    "registered",
    "registered_kind",
    "master_pid",
    "master_version",
    "master_ip_port",
    "master_hostname",
    "offers",
    "task_running",
    "acknowledged_not_resent",
    "pacemaker",
    "pipelined_burst",
    "kill",
    "updates_framework_id",
    "offers_all",
    "no_framework_error",
    "libprocess_from",
    "known_messages",
    "inbound_messages",
    "one_connection",
    "teardown",
];

/// Starts a master (`--zk <url>` when given) and one agent with `containerizers`, and waits
/// until the agent is active.
async fn start_cell(test: &str, zk_url: Option<&str>, containerizers: &str) -> MesosCell {
    let mut flags: Vec<&str> = Vec::new();
    if let Some(url) = zk_url {
        flags.extend(["--zk", url, "--zk-session-timeout", ZK_SESSION_TIMEOUT]);
    }
    let agent = MesosAgentSpec {
        containerizers,
        ..MesosAgentSpec::process(AGENT_RESOURCES)
    };
    MesosCell::start(test, &flags, &[agent])
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"))
}

/// Starts v0sched against `master` (a zk:// URL or host:port).
fn start_v0sched(bin: &Path, test: &str, master: &str, cell: &MesosCell) -> LineChild {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--master",
        master,
        "--name",
        test,
        "--failover-timeout",
        "300",
        "--checkpoint",
    ]);
    let log = cell
        .dir
        .path()
        .join("frameworks")
        .join("v0sched.stderr.log");
    LineChild::spawn("v0sched", cmd, &log)
}

/// The transcript of the framework and the ends of the master's and agent's logs.
fn report(fw: &LineChild, cell: &MesosCell) -> String {
    format!("{}{}", fw.transcript(), cell.logs(120, 60))
}

/// `master@127.0.0.1:<port>` of the cell's master.
fn master_pid(cell: &MesosCell) -> String {
    format!("master@{}", cell.master.host_port())
}

/// Checks the MasterInfo a registered or reregistered callback printed, as Marathon reads it.
fn expect_master(master: &Json, cell: &MesosCell, fw: &LineChild) {
    let port: u64 = cell
        .master
        .host_port()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let version: Vec<u64> = master["version"]
        .as_str()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let problems: Vec<&str> = [
        (master["pid"] != master_pid(cell).as_str(), "pid"),
        (master["ip"] != "127.0.0.1", "ip (network byte order)"),
        (master["port"] != port, "port"),
        (master["id"].as_str().unwrap_or("").is_empty(), "id"),
        (
            master["hostname"].as_str().unwrap_or("").is_empty(),
            "hostname",
        ),
        (version < vec![1, 5, 0], "version (Marathon needs >= 1.5.0)"),
    ]
    .into_iter()
    .filter(|(bad, _)| *bad)
    .map(|(_, what)| what)
    .collect();
    assert!(
        problems.is_empty(),
        "MasterInfo {master}: wrong {problems:?} (want pid {})\n{}",
        master_pid(cell),
        report(fw, cell)
    );
}

/// Waits for a registered (or, with `reregistered_too`, reregistered) callback.
fn wait_registered(fw: &mut LineChild, within: Duration, reregistered_too: bool) -> Json {
    fw.wait_for("the registered callback", within, |j| {
        j["event"] == "registered" || (reregistered_too && j["event"] == "reregistered")
    })
}

/// The id of the next offer for `agent_id` (the offer stays kept in v0sched until used).
fn take_offer(fw: &mut LineChild, agent_id: &str) -> String {
    let offers = fw.wait_for("an offer", EVENT, |j| {
        j["event"] == "offers"
            && j["offers"]
                .as_array()
                .is_some_and(|os| os.iter().any(|o| o["agent_id"] == agent_id))
    });
    let offer = offers["offers"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["agent_id"] == agent_id))
        .cloned()
        .unwrap_or_default();
    // Marathon needs the agent's address in the offer (Offer.url).
    assert!(
        offer["url"]["address"]["ip"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty())
            && offer["url"]["path"].as_str().is_some(),
        "offer without url.address.ip and url.path: {offer}"
    );
    offer["id"].as_str().unwrap_or("").to_string()
}

fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "TASK_FINISHED"
            | "TASK_FAILED"
            | "TASK_KILLED"
            | "TASK_LOST"
            | "TASK_ERROR"
            | "TASK_DROPPED"
            | "TASK_GONE"
            | "TASK_GONE_BY_OPERATOR"
            | "TASK_UNKNOWN"
    )
}

/// Waits for the task to reach `state` (a terminal state on the way fails at once).
fn wait_state(fw: &mut LineChild, cell: &MesosCell, task: &str, state: &str) -> Json {
    let j = fw.wait_for(&format!("{task} {state}"), EVENT, |j| {
        j["event"] == "status"
            && j["task_id"] == task
            && (j["state"] == state || j["state"].as_str().is_some_and(is_terminal))
    });
    assert_eq!(j["state"], state, "{task}: {j}\n{}", report(fw, cell));
    j
}

/// Waits for the answer to a reconciliation of `task` (the master's, with
/// REASON_RECONCILIATION and no uuid).
fn wait_reconciled(fw: &mut LineChild, cell: &MesosCell, task: &str) -> Json {
    let j = fw.wait_for(&format!("the reconciliation of {task}"), EVENT, |j| {
        j["event"] == "status" && j["task_id"] == task && j["reason"] == "REASON_RECONCILIATION"
    });
    assert!(
        j["source"] == "SOURCE_MASTER" && j["uuid_present"] == false,
        "{task}: a reconciliation answer comes from the master and needs no ack: {j}\n{}",
        report(fw, cell)
    );
    j
}

/// Marathon's heartbeat (MesosHeartbeatMonitor): an explicit reconciliation of a task on an
/// agent neither of which exists; a master answers TASK_LOST (the framework is not
/// PARTITION_AWARE) from the master, for reconciliation, with nothing to acknowledge.
fn pacemaker(fw: &mut LineChild, cell: &MesosCell) {
    let id = unique("pacemaker");
    let task = format!("fake-marathon-pacemaker-task-{id}");
    let agent = format!("fake-marathon-pacemaker-agent-{id}");
    let sent = Instant::now();
    fw.command(&format!("reconcile {task} {agent}"), ACK);
    let j = wait_reconciled(fw, cell, &task);
    assert!(
        j["state"] == "TASK_LOST" && j["agent_id"] == agent.as_str(),
        "the pacemaker's answer: {j}\n{}",
        report(fw, cell)
    );
    eprintln!("pacemaker answered in {:?}", sent.elapsed());
}

/// Counts the status lines of `task` in `state` seen so far.
fn count_states(fw: &LineChild, task: &str, state: &str) -> usize {
    fw.seen()
        .iter()
        .filter(|j| j["event"] == "status" && j["task_id"] == task && j["state"] == state)
        .count()
}

/// Launches, acknowledges, reconciles (explicitly, with the pacemaker, implicitly) and kills
/// tasks on the driver `fw`, registered with the cell's master: the scenario of the
/// ZooKeeper and the standalone tests.
fn scenario(fw: &mut LineChild, cell: &MesosCell, docker: bool) -> String {
    let reg = wait_registered(fw, EVENT, false);
    expect_master(&reg["master"], cell, fw);
    let framework_id = reg["framework_id"].as_str().unwrap_or("").to_string();
    assert!(!framework_id.is_empty(), "{reg}");
    let agent = cell.agent_ids[0].clone();

    // A command task; its updates carry a uuid and a pid, so the driver acknowledges them.
    let offer = take_offer(fw, &agent);
    let cmd_task = unique("v0-cmd");
    fw.command(&format!("launch {cmd_task} {offer} cmd sleep 60"), ACK);
    let running = wait_state(fw, cell, &cmd_task, "TASK_RUNNING");
    assert!(
        running["uuid_present"] == true && running["agent_id"] == agent.as_str(),
        "TASK_RUNNING must be acknowledged (uuid and pid set): {running}\n{}",
        report(fw, cell)
    );
    // Acknowledged: not resent (the master retries every STATUS_UPDATE_RETRY otherwise).
    fw.read_for(4 * STATUS_UPDATE_RETRY);
    assert_eq!(
        count_states(fw, &cmd_task, "TASK_RUNNING"),
        1,
        "TASK_RUNNING came again after the driver acknowledged it\n{}",
        report(fw, cell)
    );

    let mut tasks = vec![cmd_task.clone()];
    if docker {
        let offer = take_offer(fw, &agent);
        let docker_task = unique("v0-docker");
        fw.command(
            &format!("launch {docker_task} {offer} docker {IMAGE} sleep 60"),
            ACK,
        );
        wait_state(fw, cell, &docker_task, "TASK_RUNNING");
        tasks.push(docker_task);
    } else {
        eprintln!("the Docker task is left out: Docker tests are skipped here");
    }

    // Explicit reconciliation of a known task, then Marathon's pacemaker.
    fw.command(&format!("reconcile {cmd_task} {agent}"), ACK);
    let j = wait_reconciled(fw, cell, &cmd_task);
    assert_eq!(j["state"], "TASK_RUNNING", "{j}\n{}", report(fw, cell));
    pacemaker(fw, cell);

    // Implicit reconciliation: every task still running.
    fw.command("reconcile", ACK);
    for t in &tasks {
        let j = wait_reconciled(fw, cell, t);
        assert_eq!(j["state"], "TASK_RUNNING", "{j}\n{}", report(fw, cell));
    }

    for t in &tasks {
        fw.command(&format!("kill {t}"), ACK);
        wait_state(fw, cell, t, "TASK_KILLED");
    }
    assert!(
        !fw.seen().iter().any(|j| j["event"] == "error"),
        "the driver got an error\n{}",
        report(fw, cell)
    );
    framework_id
}

/// The driver stops (unregistering unless `failover`) and exits 0.
fn stop(fw: &mut LineChild, cell: &MesosCell, failover: bool) {
    fw.command(if failover { "stop-failover" } else { "stop" }, ACK);
    let status = fw.wait_exit(ACK);
    assert!(
        status.is_some_and(|s| s.success()),
        "v0sched exited {status:?}\n{}",
        report(fw, cell)
    );
}

/// Whether the master lists `framework_id` among its frameworks (`/master/frameworks`).
async fn framework_listed(cell: &MesosCell, framework_id: &str) -> bool {
    let url = format!("{}/master/frameworks", cell.master.addr);
    let Ok(resp) = reqwest::get(&url).await else {
        return true;
    };
    let body: Json = resp.json().await.unwrap_or(Json::Null);
    body["frameworks"]
        .as_array()
        .map(|fs| fs.iter().any(|f| f["id"] == framework_id))
        .unwrap_or(true)
}

/// Waits until the master no longer lists the framework (it unregistered or was torn down).
async fn wait_framework_gone(cell: &MesosCell, framework_id: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    while framework_listed(cell, framework_id).await {
        assert!(
            Instant::now() < until,
            "framework {framework_id} is still listed 10 s after it unregistered\n{}",
            cell.logs(80, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// mesos-go's v0 driver given `--master zk://...`: finds the master through ZooKeeper,
/// registers, launches a command task and a Docker task (acknowledging their updates),
/// reconciles explicitly (Marathon's pacemaker too) and implicitly, kills, and unregisters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_go_v0_framework_finds_the_master_through_zookeeper_and_runs_tasks() {
    let test = "a_mesos_go_v0_framework_finds_the_master_through_zookeeper_and_runs_tasks";
    let Some(servers) = test_zk(test) else { return };
    let Some(bin) = tokio::task::block_in_place(|| go_program(test, "v0sched")) else {
        return;
    };
    let docker = docker_enabled(test);
    let url = format!("zk://{servers}/{}", unique("shoal-v0"));
    let cell = start_cell(
        "v0-zk",
        Some(&url),
        if docker { "process,docker" } else { "process" },
    )
    .await;
    let framework_id = tokio::task::block_in_place(|| {
        let mut fw = start_v0sched(&bin, test, &url, &cell);
        let id = scenario(&mut fw, &cell, docker);
        stop(&mut fw, &cell, false);
        id
    });
    wait_framework_gone(&cell, &framework_id).await;
}

/// The same driver given `--master 127.0.0.1:<port>` (standalone detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_go_v0_framework_given_host_port_runs_tasks() {
    let test = "a_mesos_go_v0_framework_given_host_port_runs_tasks";
    let Some(bin) = tokio::task::block_in_place(|| go_program(test, "v0sched")) else {
        return;
    };
    let docker = docker_enabled(test);
    let cell = start_cell(
        "v0-standalone",
        None,
        if docker { "process,docker" } else { "process" },
    )
    .await;
    let framework_id = tokio::task::block_in_place(|| {
        let mut fw = start_v0sched(&bin, test, cell.master.host_port(), &cell);
        let id = scenario(&mut fw, &cell, docker);
        stop(&mut fw, &cell, false);
        id
    });
    wait_framework_gone(&cell, &framework_id).await;
}

/// The ZooKeeper node names (`json.info_NNNNNNNNNN`) the master's log says it published,
/// in order.
fn published_nodes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("in ZooKeeper at"))
        .filter_map(|l| {
            let start = l.rfind('(')? + 1;
            let end = l.rfind(')')?;
            l.get(start..end).map(str::to_string)
        })
        .collect()
}

fn node_sequence(node: &str) -> Option<u64> {
    node.strip_prefix("json.info_")?.parse().ok()
}

/// Waits until the master's log names `times` published nodes; the last one.
async fn wait_published(cell: &MesosCell, times: usize) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = published_nodes(&cell.master.log());
        if nodes.len() >= times {
            return nodes[nodes.len() - 1].clone();
        }
        assert!(
            Instant::now() < until,
            "the master did not publish itself in ZooKeeper {times} time(s)\n{}",
            tail(&cell.master.log(), 60)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the native API shows the agent `id` active again.
async fn wait_agent_active(cell: &MesosCell, id: &str) {
    let client = cell.master.client();
    wait_until("the agent active again", Duration::from_secs(30), || {
        let client = &client;
        async move {
            client.state().await.is_ok_and(|st| {
                st.agents
                    .iter()
                    .any(|a| a.id.to_string() == id && a.state == shoal_core::AgentState::Active)
            })
        }
    })
    .await;
}

/// Master failover under a v0 framework: the master is SIGKILLed with a task running and
/// started again on the same store and address; it publishes a new ZooKeeper node (a new
/// sequence number), the driver follows it and re-registers with its framework id, and
/// finds its task running by reconciliation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesos_go_v0_framework_follows_a_master_failover_through_zookeeper() {
    let test = "a_mesos_go_v0_framework_follows_a_master_failover_through_zookeeper";
    let Some(servers) = test_zk(test) else { return };
    let Some(bin) = tokio::task::block_in_place(|| go_program(test, "v0sched")) else {
        return;
    };
    let url = format!("zk://{servers}/{}", unique("shoal-v0-failover"));
    let mut cell = start_cell("v0-failover", Some(&url), "process").await;
    let agent = cell.agent_ids[0].clone();
    let first_node = wait_published(&cell, 1).await;
    let task = unique("v0-failover");
    let (mut fw, framework_id) = tokio::task::block_in_place(|| {
        let mut fw = start_v0sched(&bin, test, &url, &cell);
        let reg = wait_registered(&mut fw, EVENT, false);
        expect_master(&reg["master"], &cell, &fw);
        let id = reg["framework_id"].as_str().unwrap_or("").to_string();
        let offer = take_offer(&mut fw, &agent);
        fw.command(&format!("launch {task} {offer} cmd sleep 120"), ACK);
        wait_state(&mut fw, &cell, &task, "TASK_RUNNING");
        (fw, id)
    });

    cell.master.restart_same_addr();
    let second_node = wait_published(&cell, 2).await;
    assert!(
        node_sequence(&second_node) > node_sequence(&first_node),
        "the restarted master published {second_node}, after {first_node}"
    );
    wait_agent_active(&cell, &agent).await;

    tokio::task::block_in_place(|| {
        // The old node goes with its ZooKeeper session; the driver then follows the new one.
        let again = wait_registered(&mut fw, Duration::from_secs(45), true);
        expect_master(&again["master"], &cell, &fw);
        if again["event"] == "registered" {
            assert_eq!(
                again["framework_id"],
                framework_id,
                "registered again under another id\n{}",
                report(&fw, &cell)
            );
        }
        fw.command(&format!("reconcile {task} {agent}"), ACK);
        let j = wait_reconciled(&mut fw, &cell, &task);
        assert_eq!(
            j["state"],
            "TASK_RUNNING",
            "the task after the failover: {j}\n{}",
            report(&fw, &cell)
        );
        pacemaker(&mut fw, &cell);
        fw.command(&format!("kill {task}"), ACK);
        wait_state(&mut fw, &cell, &task, "TASK_KILLED");
        stop(&mut fw, &cell, false);
    });
    wait_framework_gone(&cell, &framework_id).await;
}

/// Runs the libmesos harness against the cell's master with `args`; its check lines.
fn run_harness(test: &str, cell: &MesosCell, args: &[&str]) -> (ScriptRun, Vec<Json>) {
    let bin = go_program(test, "libmesos").expect("checked by the caller");
    let mut cmd = Command::new(bin);
    cmd.args(["--master", cell.master.host_port()])
        .args(["--update-retry", "500ms"])
        .args(args);
    let logs: PathBuf = cell.dir.path().join("frameworks");
    let run = run_command(cmd, "libmesos", HARNESS_TIMEOUT, &logs);
    let checks = run
        .output
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|j| j.get("check").is_some())
        .collect();
    (run, checks)
}

/// Every check in [`HARNESS_CHECKS`] printed and passed, and the harness exited 0.
fn expect_all_checks(run: &ScriptRun, checks: &[Json], cell: &MesosCell) {
    let failed: Vec<&Json> = checks.iter().filter(|c| c["ok"] != true).collect();
    let missing: Vec<&&str> = HARNESS_CHECKS
        .iter()
        .filter(|name| !checks.iter().any(|c| c["check"] == **name))
        .collect();
    assert!(
        run.success() && failed.is_empty() && missing.is_empty(),
        "the libmesos harness: failed {failed:?}, missing {missing:?}\n{}\n----- output -----\n{}{}",
        run.outcome(),
        run.output,
        cell.logs(150, 40)
    );
    eprintln!("{}\n{}", run.outcome(), run.output);
}

/// The framework id the harness printed.
fn harness_framework_id(run: &ScriptRun) -> String {
    run.output
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find_map(|j| j["framework_id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What libmesos 1.11 sends under Marathon (one role): every check of the harness passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libmesos_wire_protocol_passes_every_check_with_one_role() {
    let test = "the_libmesos_wire_protocol_passes_every_check_with_one_role";
    if tokio::task::block_in_place(|| go_program(test, "libmesos")).is_none() {
        return;
    }
    let cell = start_cell("libmesos-one-role", None, "process").await;
    let (run, checks) = tokio::task::block_in_place(|| run_harness(test, &cell, &[]));
    expect_all_checks(&run, &checks, &cell);
    wait_framework_gone(&cell, &harness_framework_id(&run)).await;
}

/// The same with MULTI_ROLE (two roles: offers and their resources carry allocation_info)
/// and PARTITION_AWARE (the pacemaker's answer is TASK_UNKNOWN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_libmesos_wire_protocol_passes_every_check_multi_role_and_partition_aware() {
    let test = "the_libmesos_wire_protocol_passes_every_check_multi_role_and_partition_aware";
    if tokio::task::block_in_place(|| go_program(test, "libmesos")).is_none() {
        return;
    }
    let cell = start_cell("libmesos-multi-role", None, "process").await;
    let (run, checks) = tokio::task::block_in_place(|| {
        run_harness(test, &cell, &["--roles", "web,batch", "--partition-aware"])
    });
    expect_all_checks(&run, &checks, &cell);
    wait_framework_gone(&cell, &harness_framework_id(&run)).await;
}

/// Pointed at a port where nothing listens, the harness fails at once with a `connect`
/// check line (no silent retry loop, no hang).
#[test]
fn the_libmesos_harness_fails_clearly_without_a_master() {
    let test = "the_libmesos_harness_fails_clearly_without_a_master";
    let Some(bin) = go_program(test, "libmesos") else {
        return;
    };
    // A port that was free a moment ago and has no listener now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(["--master", &format!("127.0.0.1:{port}")])
        .args(["--connect-timeout", "1s"]);
    let run = run_command(cmd, "libmesos", Duration::from_secs(30), dir.path());
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{}\n{}",
        run.outcome(),
        run.output
    );
    assert!(
        run.elapsed < Duration::from_secs(10),
        "it took {:?} to give up",
        run.elapsed
    );
    let connect = run
        .output
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|j| j["check"] == "connect");
    assert!(
        connect.as_ref().is_some_and(|c| c["ok"] == false
            && c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("connection refused"))),
        "no failed connect check: {}",
        run.output
    );
}
