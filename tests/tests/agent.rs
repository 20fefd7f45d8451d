//! The real `shoal agent` against the real `shoal master`, on loopback with fast timers: task
//! lifecycles in the process and Docker executors, sandbox files through the master, a
//! published container port, a container over its memory limit (OOM), a two-container pod
//! sharing localhost and dying together, agent SIGKILL and restart (re-attach, statuses reported exactly
//! once), an agent that stays away (unreachable, then back with the same id), and bad input.
//!
//! Docker tests skip themselves (with a printed reason) only outside CI when `docker info`
//! fails; see [`shoal_tests::docker_enabled`].

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value as Json};
use shoal_client::{command_task, ClaimRequest, Client, PlacementRequest};
use shoal_core::{AgentState, CommitMode, ConflictCheck, ResourceSet, Task, TaskState};
use shoal_sched::Event;
use shoal_tests::{docker_enabled, unique, wait_until, AgentProc, MasterProc};

const IMAGE: &str = "local/busybox:latest";
const GRACE: Duration = Duration::from_secs(1);

/// Agents away this long are unreachable, in the tests about that; the others use
/// [`SLOW_UNREACHABLE`], so that a slow start on a busy machine does not trip liveness.
const FAST_UNREACHABLE: &str = "1s";
const SLOW_UNREACHABLE: &str = "30s";

/// A master and one agent, each on its own work dir under one temporary directory.
struct TestCell {
    master: MasterProc,
    agent: AgentProc,
    client: Client,
    agent_id: String,
    hostname: String,
    _dir: tempfile::TempDir,
}

async fn start_cell(name: &str, unreachable_timeout: &str) -> TestCell {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path(), unreachable_timeout);
    let client = master.client();
    let hostname = unique(name);
    let agent = start_agent(&master, dir.path(), &hostname);
    let agent_id = wait_agent_active(&client, &hostname, &agent).await;
    TestCell {
        master,
        agent,
        client,
        agent_id,
        hostname,
        _dir: dir,
    }
}

fn start_master(dir: &std::path::Path, unreachable_timeout: &str) -> MasterProc {
    MasterProc::start(
        &dir.join("master"),
        &[
            "--agent-heartbeat-interval",
            "200ms",
            "--agent-ping-timeout",
            "2s",
            "--agent-unreachable-timeout",
            unreachable_timeout,
            "--kill-grace",
            "1s",
        ],
    )
}

fn start_agent(master: &MasterProc, dir: &std::path::Path, hostname: &str) -> AgentProc {
    // A distinct hostname per agent: Docker executors of agents on one host tell their
    // containers apart by it until they have an id.
    AgentProc::start(
        &master.addr,
        &dir.join("agent"),
        &[
            "--hostname",
            hostname,
            "--containerizers",
            "docker,process",
            "--heartbeat-interval",
            "200ms",
            "--status-retry",
            "200ms",
            "--reregister-backoff-max",
            "200ms",
            "--kill-grace",
            "1s",
            "--resources",
            "cpus:4;mem:2048;ports:[31000-31100]",
        ],
    )
}

/// Waits until an agent with `hostname` is ACTIVE; returns its id.
async fn wait_agent_active(client: &Client, hostname: &str, agent: &AgentProc) -> String {
    shoal_tests::wait_agents_active(client, &[hostname], Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}; its log:\n{}", agent.log()))
        .remove(0)
}

fn shell_task(id: &str, resources: &str, shell: &str) -> Json {
    command_task(id, id, &ResourceSet::parse(resources).unwrap(), shell)
}

fn docker_task(id: &str, resources: &str, shell: &str) -> Json {
    let mut t = shell_task(id, resources, shell);
    t["container"] = json!({"type": "DOCKER", "docker": {"image": IMAGE, "network": "BRIDGE"}});
    t
}

/// Places tasks on the agent with one all-or-nothing claim; asserts they committed.
async fn launch(cell: &TestCell, tasks: Vec<Json>) {
    let version = cell.client.state().await.unwrap().version;
    let ids: Vec<String> = tasks
        .iter()
        .map(|t| t["task_id"]["value"].as_str().unwrap().to_string())
        .collect();
    let claim = ClaimRequest {
        claim_id: format!("claim-{}", ids.join("+")),
        role: "*".into(),
        owner: "agent-tests".into(),
        snapshot_version: version,
        mode: CommitMode::AllOrNothing,
        check: ConflictCheck::Fine,
        priority: 0,
        evictions: Vec::new(),
        placements: tasks
            .into_iter()
            .map(|t| PlacementRequest::new(cell.agent_id.clone(), &t))
            .collect(),
    };
    let answer = cell.client.claim(&claim).await.unwrap();
    assert!(
        answer.outcome.committed_version.is_some(),
        "claim for {ids:?} not committed: {:?}",
        answer.outcome
    );
}

/// Waits until the task is in `state`; returns it. Fails early (with the agent's log) when the
/// task ends in another terminal state.
async fn wait_task(cell: &TestCell, id: &str, state: TaskState, deadline: Duration) -> Task {
    let until = Instant::now() + deadline;
    loop {
        let t = cell.client.task(id).await.unwrap();
        if t.state == state {
            return t;
        }
        if t.state.is_terminal() || Instant::now() > until {
            panic!(
                "task {id}: wanted {}, is {} ({:?}); agent log:\n{}",
                state.mesos_name(),
                t.state.mesos_name(),
                t.status,
                cell.agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every state the master recorded for the task, in order (from the watch log).
async fn history(client: &Client, id: &str) -> Vec<TaskState> {
    let version = client.state().await.unwrap().version;
    let stream = client.watch(1).await.unwrap();
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    let mut last = 0;
    while last < version {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        last = e.version;
        for ev in e.events {
            match ev {
                Event::ClaimCommitted { tasks, .. } => {
                    out.extend(
                        tasks
                            .iter()
                            .filter(|t| t.id.as_str() == id)
                            .map(|t| t.state),
                    );
                }
                Event::TaskStatusChanged { task_id, state, .. } if task_id.as_str() == id => {
                    out.push(state)
                }
                _ => {}
            }
        }
    }
    out
}

/// `GET {master}/files/{op}?path=/agents/<agent>/tasks/<task>[/<file>]`: (status, JSON body).
async fn files(cell: &TestCell, op: &str, task: &str, file: &str) -> (u16, Json) {
    let path = format!(
        "/agents/{}/tasks/{task}{}",
        cell.agent_id,
        if file.is_empty() {
            String::new()
        } else {
            format!("/{file}")
        }
    );
    // Task ids and file names here need no escaping.
    let resp = reqwest::get(format!("{}/files/{op}?path={path}", cell.master.addr))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Json::Null))
}

/// Waits until the task's sandbox file, read through the master, contains `needle`.
async fn wait_file_contains(cell: &TestCell, task: &str, file: &str, needle: &str) {
    let mut last = Json::Null;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = files(cell, "read", task, file).await;
        if status == 200 && body["data"].as_str().is_some_and(|d| d.contains(needle)) {
            return;
        }
        last = json!({"status": status, "body": body, "previous": last["body"]});
        assert!(
            Instant::now() < until,
            "{task}/{file} never contained {needle:?}; last answer {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the agent holds no resources for tasks.
async fn wait_agent_idle(cell: &TestCell) {
    let c = cell.client.clone();
    let id = cell.agent_id.clone();
    wait_until(
        "agent resources to be freed",
        Duration::from_secs(5),
        || {
            let (c, id) = (c.clone(), id.clone());
            async move {
                c.agent(&id)
                    .await
                    .map(|a| a.allocated.is_empty())
                    .unwrap_or(false)
            }
        },
    )
    .await;
}

/// Kills a running task and checks it goes TASK_KILLING → TASK_KILLED within the grace
/// period plus a margin.
async fn kill_and_check(cell: &TestCell, id: &str) {
    let start = Instant::now();
    cell.client.kill(id).await.unwrap();
    let t = wait_task(cell, id, TaskState::Killed, GRACE + Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert!(
        took < GRACE + Duration::from_secs(4),
        "{id} took {took:?} to be killed ({:?})",
        t.status
    );
    let h = history(&cell.client, id).await;
    let killing = h
        .iter()
        .position(|s| *s == TaskState::Killing)
        .unwrap_or_else(|| panic!("{id}: no TASK_KILLING in {h:?}"));
    let killed = h.iter().position(|s| *s == TaskState::Killed).unwrap();
    assert!(killing < killed, "{id}: {h:?}");
    assert_eq!(
        h.iter().filter(|s| s.is_terminal()).count(),
        1,
        "{id}: {h:?}"
    );
}

/// Lifecycle shared by the process and Docker executors: exit 0, exit N, kill, files, resources.
async fn lifecycle(cell: &TestCell, docker: bool, prefix: &str) {
    let make = if docker { docker_task } else { shell_task };
    let (ok, bad, long) = (
        format!("{prefix}-ok"),
        format!("{prefix}-bad"),
        format!("{prefix}-long"),
    );
    let code = if docker { 1 } else { 3 };
    launch(
        cell,
        vec![
            make(
                &ok,
                "cpus:0.1;mem:32",
                "echo hello from $0; echo out-marker-42; exit 0",
            ),
            make(
                &bad,
                "cpus:0.1;mem:32",
                &format!("echo err-marker-7 >&2; exit {code}"),
            ),
            make(&long, "cpus:0.1;mem:32", "sleep 1000"),
        ],
    )
    .await;

    let t = wait_task(cell, &ok, TaskState::Finished, Duration::from_secs(20)).await;
    assert_eq!(t.status.exit_code, Some(0), "{:?}", t.status);
    let t = wait_task(cell, &bad, TaskState::Failed, Duration::from_secs(20)).await;
    assert_eq!(t.status.exit_code, Some(code), "{:?}", t.status);

    wait_task(cell, &long, TaskState::Running, Duration::from_secs(20)).await;
    let allocated = cell.client.agent(&cell.agent_id).await.unwrap().allocated;
    assert!(
        allocated.contains(&ResourceSet::parse("cpus:0.1;mem:32").unwrap()),
        "running task not booked: {allocated}"
    );
    kill_and_check(cell, &long).await;
    wait_agent_idle(cell).await;

    // Sandbox files through the master.
    wait_file_contains(cell, &ok, "stdout", "out-marker-42").await;
    wait_file_contains(cell, &bad, "stderr", "err-marker-7").await;
    let (status, listing) = files(cell, "browse", &ok, "").await;
    assert_eq!(status, 200, "{listing}");
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        names.contains(&"/stdout") && names.contains(&"/stderr"),
        "browse: {listing}"
    );
    let (status, _) = files(cell, "read", &ok, "../../state/agent_id").await;
    assert!(status >= 400, "a read outside the sandbox must be refused");
    for id in [&ok, &bad, &long] {
        let h = history(&cell.client, id).await;
        assert_eq!(
            h.iter().filter(|s| s.is_terminal()).count(),
            1,
            "{id}: {h:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_finish_fail_and_are_killed() {
    let cell = start_cell("proc", SLOW_UNREACHABLE).await;
    lifecycle(&cell, false, "p").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_tasks_finish_fail_and_are_killed() {
    if !docker_enabled("docker_tasks_finish_fail_and_are_killed") {
        return;
    }
    let cell = start_cell("dock", SLOW_UNREACHABLE).await;
    lifecycle(&cell, true, &unique("d")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_http_server_is_reachable_on_its_mapped_port() {
    if !docker_enabled("docker_http_server_is_reachable_on_its_mapped_port") {
        return;
    }
    let cell = start_cell("web", SLOW_UNREACHABLE).await;
    let id = unique("web");
    let mut t = shell_task(
        &id,
        "cpus:0.1;mem:32;ports:[31050-31050]",
        "echo web-up; exec httpd -f -p 80 -h /etc",
    );
    t["container"] = json!({"type": "DOCKER", "docker": {"image": IMAGE, "network": "BRIDGE",
        "port_mappings": [{"host_port": 31050, "container_port": 80, "protocol": "tcp"}]}});
    launch(&cell, vec![t]).await;
    wait_task(&cell, &id, TaskState::Running, Duration::from_secs(20)).await;
    let allocated = cell.client.agent(&cell.agent_id).await.unwrap().allocated;
    assert!(
        allocated.contains(&ResourceSet::parse("ports:[31050-31050]").unwrap()),
        "port not booked: {allocated}"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let last = match http.get("http://127.0.0.1:31050/hostname").send().await {
            Ok(r) if r.status().as_u16() == 200 => break r.text().await.unwrap(),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < until,
            "httpd never answered on 127.0.0.1:31050: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!body.trim().is_empty(), "empty /etc/hostname served");
    wait_file_contains(&cell, &id, "stdout", "web-up").await;

    kill_and_check(&cell, &id).await;
    wait_agent_idle(&cell).await;
    // The port is closed once the container is gone.
    wait_until("the mapped port to close", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            http.get("http://127.0.0.1:31050/hostname")
                .send()
                .await
                .is_err()
        }
    })
    .await;
}

/// Pid and parent pid of a process, from /proc; `None` when it is gone or a zombie.
fn live_proc(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    f.next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_reattaches_and_reports_what_ended_meanwhile_once() {
    // The agent is away ~3 s: less than the unreachable timeout, so this is about the agent's
    // recovery alone (the master's side of an agent away is the next test).
    let mut cell = start_cell("recover", SLOW_UNREACHABLE).await;
    launch(
        &cell,
        vec![
            shell_task("long", "cpus:0.1;mem:32", "sleep 1000"),
            // Writes its pid, then ends (with 7) while the agent is down.
            shell_task(
                "short",
                "cpus:0.1;mem:32",
                "echo $$ > pid; sleep 2; echo bye; exit 7",
            ),
        ],
    )
    .await;
    wait_task(&cell, "long", TaskState::Running, Duration::from_secs(10)).await;
    wait_task(&cell, "short", TaskState::Running, Duration::from_secs(10)).await;
    let pid_file = cell
        .agent
        .work_dir
        .join("sandboxes")
        .join("short")
        .join("pid");
    let mut pid = None;
    wait_until(
        "the short task to write its pid",
        Duration::from_secs(5),
        || {
            pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            let found = pid.is_some();
            async move { found }
        },
    )
    .await;
    let pid = pid.unwrap();
    // Its supervisor: the parent of the task process.
    let supervisor = live_proc(pid).expect("the short task runs");

    cell.agent.kill9();
    // The short task really ends (and its supervisor records it) while no agent runs.
    wait_until(
        "the short task and its supervisor to exit",
        Duration::from_secs(10),
        || {
            let gone = live_proc(pid).is_none() && live_proc(supervisor).is_none();
            async move { gone }
        },
    )
    .await;

    let addr = cell.master.addr.clone();
    cell.agent.restart(&addr);
    let id = wait_agent_active(&cell.client, &cell.hostname, &cell.agent).await;
    assert_eq!(id, cell.agent_id, "the agent must come back with its id");

    let t = wait_task(&cell, "short", TaskState::Failed, Duration::from_secs(10)).await;
    assert_eq!(t.status.exit_code, Some(7), "{:?}", t.status);
    wait_task(&cell, "long", TaskState::Running, Duration::from_secs(10)).await;
    wait_file_contains(&cell, "short", "stdout", "bye").await;
    kill_and_check(&cell, "long").await;
    wait_agent_idle(&cell).await;

    // Give a duplicate report (a resend after the restart) the chance to show up.
    let version = cell.client.state().await.unwrap().version;
    let _ = tokio::time::timeout(Duration::from_millis(600), async {
        loop {
            if cell.client.state().await.unwrap().version > version {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let h = history(&cell.client, "short").await;
    assert_eq!(
        h.iter().filter(|s| **s == TaskState::Failed).count(),
        1,
        "short: {h:?}"
    );
    assert_eq!(
        h.iter().filter(|s| s.is_terminal()).count(),
        1,
        "short: {h:?}"
    );
    let st = cell.client.state().await.unwrap();
    assert_eq!(st.agents.len(), 1, "no duplicate agent: {:?}", st.agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_away_is_unreachable_then_returns_with_its_tasks() {
    let mut cell = start_cell("away", FAST_UNREACHABLE).await;
    let res = ResourceSet::parse("cpus:0.5;mem:64;ports:[31007-31007]").unwrap();
    launch(
        &cell,
        vec![shell_task(
            "svc",
            "cpus:0.5;mem:64;ports:[31007-31007]",
            "sleep 1000",
        )],
    )
    .await;
    wait_task(&cell, "svc", TaskState::Running, Duration::from_secs(10)).await;

    cell.agent.kill9();
    let c = cell.client.clone();
    let agent_id = cell.agent_id.clone();
    let started = Instant::now();
    wait_until(
        "the agent to be marked unreachable",
        Duration::from_secs(10),
        || {
            let (c, a) = (c.clone(), agent_id.clone());
            async move {
                c.agent(&a)
                    .await
                    .map(|a| a.state == AgentState::Unreachable)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let away = started.elapsed();
    assert!(
        away >= Duration::from_millis(900),
        "marked unreachable after only {away:?}"
    );
    let t = cell.client.task("svc").await.unwrap();
    assert_eq!(t.state, TaskState::Unreachable, "{:?}", t.status);
    let a = cell.client.agent(&cell.agent_id).await.unwrap();
    assert!(
        a.allocated.contains(&res),
        "resources of an unreachable task must stay booked: {}",
        a.allocated
    );

    let addr = cell.master.addr.clone();
    cell.agent.restart(&addr);
    let id = wait_agent_active(&cell.client, &cell.hostname, &cell.agent).await;
    assert_eq!(id, cell.agent_id, "same agent id after coming back");
    wait_task(&cell, "svc", TaskState::Running, Duration::from_secs(10)).await;
    let st = cell.client.state().await.unwrap();
    assert_eq!(st.agents.len(), 1, "no duplicate agent: {:?}", st.agents);
    assert_eq!(st.agents[0].state, AgentState::Active);
    assert!(st.agents[0].allocated.contains(&res));

    kill_and_check(&cell, "svc").await;
    wait_agent_idle(&cell).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registering_on_a_long_running_master_stays_active() {
    let dir = tempfile::tempdir().unwrap();
    let master = start_master(dir.path(), FAST_UNREACHABLE);
    // The precondition is the master's uptime: longer than the unreachable timeout.
    let up = Instant::now();
    wait_until(
        "the master to be up for 1.5 s",
        Duration::from_secs(5),
        || {
            let done = up.elapsed() >= Duration::from_millis(1500);
            async move { done }
        },
    )
    .await;
    // A few agents (the fault is a race: each registration is a chance to hit it).
    let client = master.client();
    let mut agents = Vec::new();
    for i in 0..4 {
        let hostname = unique(&format!("late{i}"));
        let agent = AgentProc::start(
            &master.addr,
            &dir.path().join(format!("agent{i}")),
            &[
                "--hostname",
                &hostname,
                "--containerizers",
                "process",
                "--heartbeat-interval",
                "200ms",
                "--resources",
                "cpus:1;mem:64",
            ],
        );
        agents.push((hostname, agent));
    }
    let hostnames: Vec<String> = agents.iter().map(|(h, _)| h.clone()).collect();
    let c = client.clone();
    wait_until("the agents to register", Duration::from_secs(20), || {
        let (c, hostnames) = (c.clone(), hostnames.clone());
        async move {
            c.state()
                .await
                .map(|st| {
                    hostnames
                        .iter()
                        .all(|h| st.agents.iter().any(|a| &a.hostname == h))
                })
                .unwrap_or(false)
        }
    })
    .await;
    // Connected and heartbeating, they are and stay ACTIVE over several timeouts.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for a in client.state().await.unwrap().agents {
            assert_eq!(
                a.state,
                AgentState::Active,
                "connected agent {} is {:?}; master log:\n{}",
                a.hostname,
                a.state,
                std::fs::read_to_string(dir.path().join("master").join("master.log"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tasks_fail_clearly_and_the_agent_keeps_working() {
    let cell = start_cell("bad", SLOW_UNREACHABLE).await;
    let docker = docker_enabled("bad_tasks_fail_clearly_and_the_agent_keeps_working (Docker part)");

    let mut nobin = shell_task("nobin", "cpus:0.1;mem:32", "/nonexistent");
    nobin["command"] =
        json!({"shell": false, "value": "/nonexistent", "arguments": ["/nonexistent", "x"]});
    let mut uris = shell_task("uris", "cpus:0.1;mem:32", "true");
    uris["command"]["uris"] = json!([{"value": "http://127.0.0.1:1/file.tgz"}]);
    let mut tasks = vec![nobin, uris];
    let noimage = unique("noimage");
    if docker {
        let mut t = docker_task(&noimage, "cpus:0.1;mem:32", "true");
        t["container"]["docker"]["image"] = json!("local/does-not-exist:1");
        tasks.push(t);
    }
    launch(&cell, tasks).await;

    let t = wait_task(&cell, "nobin", TaskState::Failed, Duration::from_secs(10)).await;
    let msg = t.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("/nonexistent"),
        "message should name the program: {:?}",
        t.status
    );
    let t = wait_task(&cell, "uris", TaskState::Error, Duration::from_secs(10)).await;
    assert!(
        t.status.message.as_deref().unwrap_or("").contains("uris"),
        "{:?}",
        t.status
    );
    if docker {
        let t = wait_task(&cell, &noimage, TaskState::Failed, Duration::from_secs(60)).await;
        assert!(
            t.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("local/does-not-exist"),
            "message should name the image: {:?}",
            t.status
        );
    }

    // The agent still runs tasks.
    launch(
        &cell,
        vec![shell_task(
            "after",
            "cpus:0.1;mem:32",
            "echo still-here; exit 0",
        )],
    )
    .await;
    wait_task(&cell, "after", TaskState::Finished, Duration::from_secs(10)).await;
    wait_file_contains(&cell, "after", "stdout", "still-here").await;
    wait_agent_idle(&cell).await;
}

/// `docker ps` of this task's containers: (id, running).
fn task_containers(task: &str) -> Vec<(String, bool)> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=shoal.task_id={task}"),
            "--format",
            "{{.ID}} {{.State}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_string(), state == "running"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_reattaches_to_its_containers() {
    if !docker_enabled("restarted_agent_reattaches_to_its_containers") {
        return;
    }
    let mut cell = start_cell("drecover", SLOW_UNREACHABLE).await;
    let (long, short) = (unique("dlong"), unique("dshort"));
    launch(
        &cell,
        vec![
            docker_task(&long, "cpus:0.1;mem:32", "sleep 1000"),
            docker_task(&short, "cpus:0.1;mem:32", "sleep 2; echo bye; exit 7"),
        ],
    )
    .await;
    wait_task(&cell, &long, TaskState::Running, Duration::from_secs(20)).await;
    wait_task(&cell, &short, TaskState::Running, Duration::from_secs(20)).await;

    cell.agent.kill9();
    let s = short.clone();
    wait_until(
        "the short container to exit",
        Duration::from_secs(10),
        || {
            let c = task_containers(&s);
            async move { !c.is_empty() && c.iter().all(|(_, running)| !running) }
        },
    )
    .await;

    let addr = cell.master.addr.clone();
    cell.agent.restart(&addr);
    let id = wait_agent_active(&cell.client, &cell.hostname, &cell.agent).await;
    assert_eq!(id, cell.agent_id);
    let t = wait_task(&cell, &short, TaskState::Failed, Duration::from_secs(10)).await;
    assert_eq!(t.status.exit_code, Some(7), "{:?}", t.status);
    wait_task(&cell, &long, TaskState::Running, Duration::from_secs(10)).await;
    wait_file_contains(&cell, &short, "stdout", "bye").await;
    kill_and_check(&cell, &long).await;
    assert!(
        task_containers(&long).iter().all(|(_, running)| !running),
        "the killed container still runs"
    );
    let h = history(&cell.client, &short).await;
    assert_eq!(
        h.iter().filter(|s| s.is_terminal()).count(),
        1,
        "{short}: {h:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_task_over_its_memory_limit_fails_as_oom() {
    if !docker_enabled("docker_task_over_its_memory_limit_fails_as_oom") {
        return;
    }
    let cell = start_cell("oom", SLOW_UNREACHABLE).await;
    let id = unique("hog");
    // dd's 64 MiB block buffer does not fit in 16 MiB (swap is limited to the same).
    launch(
        &cell,
        vec![docker_task(
            &id,
            "cpus:0.1;mem:16",
            "echo hog-start; exec dd if=/dev/zero of=/dev/null bs=64M count=20",
        )],
    )
    .await;
    let t = wait_task(&cell, &id, TaskState::Failed, Duration::from_secs(30)).await;
    assert_eq!(
        t.status.reason.as_deref(),
        Some("REASON_CONTAINER_LIMITATION_MEMORY"),
        "{:?}",
        t.status
    );
    let msg = t.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("memory limit") && msg.contains("OOM"),
        "the message should say OOM: {:?}",
        t.status
    );
    wait_file_contains(&cell, &id, "stdout", "hog-start").await;
    let h = history(&cell.client, &id).await;
    assert_eq!(
        h.iter().filter(|s| s.is_terminal()).collect::<Vec<_>>(),
        vec![&TaskState::Failed],
        "{id}: {h:?}"
    );
    wait_agent_idle(&cell).await;
}

/// A task of a pod: the label `shoal.group` (what a Mesos LAUNCH_GROUP becomes) names it.
fn pod_task(id: &str, pod: &str, shell: &str) -> Json {
    let mut t = docker_task(id, "cpus:0.1;mem:32", shell);
    t["labels"] = json!({"labels": [{"key": "shoal.group", "value": pod}]});
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pod_shares_localhost_and_dies_together() {
    if !docker_enabled("docker_pod_shares_localhost_and_dies_together") {
        return;
    }
    let cell = start_cell("pod", SLOW_UNREACHABLE).await;
    let pod = unique("pod");
    let (server, client) = (format!("{pod}-server"), format!("{pod}-client"));
    launch(
        &cell,
        vec![
            // Serves /etc on the pod's loopback only.
            pod_task(&server, &pod, "exec httpd -f -p 127.0.0.1:8080 -h /etc"),
            // Reaches it over localhost: the pod's network namespace is shared.
            pod_task(
                &client,
                &pod,
                "while true; do \
                   if wget -q -O - http://127.0.0.1:8080/hostname >/dev/null 2>&1; then \
                     echo reached-server-over-localhost; fi; \
                   sleep 0.2; done",
            ),
        ],
    )
    .await;
    wait_task(&cell, &server, TaskState::Running, Duration::from_secs(30)).await;
    wait_task(&cell, &client, TaskState::Running, Duration::from_secs(30)).await;
    wait_file_contains(&cell, &client, "stdout", "reached-server-over-localhost").await;

    // Killing one member kills the pod: both end TASK_KILLED in the master's state.
    let start = Instant::now();
    cell.client.kill(&client).await.unwrap();
    let t = wait_task(
        &cell,
        &client,
        TaskState::Killed,
        GRACE + Duration::from_secs(10),
    )
    .await;
    assert!(t.status.message.is_some(), "{:?}", t.status);
    let t = wait_task(
        &cell,
        &server,
        TaskState::Killed,
        GRACE + Duration::from_secs(10),
    )
    .await;
    assert!(
        start.elapsed() < GRACE + Duration::from_secs(8),
        "the pod took {:?} to die ({:?})",
        start.elapsed(),
        t.status
    );
    for id in [&server, &client] {
        assert!(
            task_containers(id).iter().all(|(_, running)| !running),
            "a container of {id} still runs"
        );
        let h = history(&cell.client, id).await;
        assert_eq!(
            h.iter().filter(|s| s.is_terminal()).count(),
            1,
            "{id}: {h:?}"
        );
    }
    wait_agent_idle(&cell).await;
}
