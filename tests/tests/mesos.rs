//! Unmodified Mesos frameworks against the real `shoal master`: the pymesos 0.3.15 scripts in
//! `tests/frameworks/` speak the Mesos v1 scheduler HTTP API (`POST /api/v1/scheduler`,
//! RecordIO events) to a master with one agent, on loopback with fast timers. One scenario per
//! test: launch with explicit acknowledgements, decline with a filter, suppress and revive,
//! kill, explicit and implicit reconciliation, framework failover, teardown, and a Docker task
//! with a mapped port.
//!
//! Each script checks its scenario itself and exits 0 on success (see
//! `tests/frameworks/common.py`); the test asserts that, and checks through the native API
//! what outlives the framework. On failure it prints the script's output and the ends of the
//! master's and agent's logs.
//!
//! The tests skip themselves (with a printed reason) outside CI when `SHOAL_TEST_PYTHON` is
//! unset, and fail in CI (`CI=true`); the Docker one skips like the agent tests
//! ([`docker_enabled`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::{
    check_no_double_booking, docker_enabled, run_script, test_python, unique, wait_until,
    MesosAgentSpec, MesosCell, ScriptRun,
};

const AGENT_RESOURCES: &str = "cpus:2;mem:1024;ports:[31000-31100]";
const IMAGE: &str = "local/busybox:latest";
/// How long one framework script may run (each also has its own, shorter, deadline).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A master and one agent ([`MesosCell`]), and the Python to run frameworks with.
struct Cell {
    cell: MesosCell,
    python: PathBuf,
}

impl std::ops::Deref for Cell {
    type Target = MesosCell;
    fn deref(&self) -> &MesosCell {
        &self.cell
    }
}

impl Cell {
    /// Starts a master and an agent with `containerizers`, and waits until it is active.
    async fn start(name: &str, python: PathBuf, containerizers: &str) -> Cell {
        let agent = MesosAgentSpec {
            containerizers,
            ..MesosAgentSpec::process(AGENT_RESOURCES)
        };
        let cell = MesosCell::start(name, &[], &[agent])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Cell { cell, python }
    }

    fn agent_id(&self) -> &str {
        &self.agent_ids[0]
    }

    /// Runs `tests/frameworks/<script> <master> <args...>`.
    fn run(&self, script: &str, args: &[&str]) -> ScriptRun {
        let mut all = vec![self.master.host_port()];
        all.extend_from_slice(args);
        let logs = self.dir.path().join("frameworks");
        tokio::task::block_in_place(|| {
            run_script(&self.python, script, &all, SCRIPT_TIMEOUT, &logs)
        })
    }

    /// The script's output and the ends of the master's and agent's logs.
    fn report(&self, run: &ScriptRun) -> String {
        format!(
            "{}\n----- {} output -----\n{}{}",
            run.outcome(),
            run.script,
            run.output,
            self.logs(150, 80)
        )
    }

    /// Runs the script and asserts it exited 0.
    fn run_ok(&self, script: &str, args: &[&str]) -> ScriptRun {
        let run = self.run(script, args);
        assert!(run.success(), "{}", self.report(&run));
        // Shown with --nocapture.
        eprintln!("{}\n{}", run.outcome(), run.output);
        run
    }

    /// The task as the native API shows it (`GET /api/shoal/v1/tasks/<id>`), when it answers 200.
    async fn task(&self, id: &str) -> Option<Json> {
        let resp = reqwest::get(format!("{}/api/shoal/v1/tasks/{id}", self.master.addr))
            .await
            .ok()?;
        if resp.status().as_u16() != 200 {
            return None;
        }
        resp.json().await.ok()
    }

    /// Waits until the native API shows the task in `state` (a Mesos name, e.g. TASK_KILLED).
    async fn wait_task_state(&self, id: &str, state: &str, deadline: Duration, after: &ScriptRun) {
        let until = Instant::now() + deadline;
        loop {
            let t = self.task(id).await;
            let now = t
                .as_ref()
                .and_then(|t| t["state"].as_str().map(str::to_string));
            if now.as_deref() == Some(state) {
                return;
            }
            if Instant::now() > until {
                panic!(
                    "task {id}: wanted {state} within {deadline:?} (native API), last seen {}\n{}",
                    t.map(|t| t.to_string())
                        .unwrap_or_else(|| "no task (not 200)".into()),
                    self.report(after)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the task's stdout, read through the master, contains `needle`.
    async fn wait_stdout_contains(&self, id: &str, needle: &str, after: &ScriptRun) {
        let url = format!(
            "{}/files/read?path=/agents/{}/tasks/{id}/stdout",
            self.master.addr,
            self.agent_id()
        );
        let mut last = String::new();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                let status = r.status().as_u16();
                let body: Json = r.json().await.unwrap_or(Json::Null);
                if status == 200 && body["data"].as_str().is_some_and(|d| d.contains(needle)) {
                    return;
                }
                last = format!("{status} {body}");
            }
            assert!(
                Instant::now() < until,
                "{id}/stdout never contained {needle:?}; last answer {last}\n{}",
                self.report(after)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The cell for one test, or `None` (printed) when the framework tests are skipped.
async fn cell(test: &str, containerizers: &str) -> Option<Cell> {
    let python = test_python(test)?;
    Some(Cell::start(test, python, containerizers).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_launch_with_explicit_acknowledgements() {
    let Some(cell) = cell("mesos_launch", "process").await else {
        return;
    };
    let id = unique("launch");
    let run = cell.run_ok("launch.py", &["--task-id", &id]);
    cell.wait_task_state(&id, "TASK_FINISHED", Duration::from_secs(5), &run)
        .await;
    cell.wait_stdout_contains(&id, "hello", &run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_decline_filter_holds_the_agent_back_for_refuse_seconds() {
    let Some(cell) = cell("mesos_decline", "process").await else {
        return;
    };
    cell.run_ok("decline.py", &["--refuse", "1.5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_suppress_stops_offers_and_revive_brings_them_back() {
    let Some(cell) = cell("mesos_suppress", "process").await else {
        return;
    };
    cell.run_ok("suppress_revive.py", &["--quiet", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_kill_ends_a_running_task() {
    let Some(cell) = cell("mesos_kill", "process").await else {
        return;
    };
    let id = unique("kill");
    let run = cell.run_ok("kill.py", &["--task-id", &id]);
    cell.wait_task_state(&id, "TASK_KILLED", Duration::from_secs(5), &run)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_reconcile_explicit_and_implicit() {
    let Some(cell) = cell("mesos_reconcile", "process").await else {
        return;
    };
    let id = unique("rec");
    cell.run_ok("reconcile.py", &["--task-id", &id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_framework_failover_keeps_its_tasks() {
    let Some(cell) = cell("mesos_failover", "process").await else {
        return;
    };
    let id = unique("fo");
    let state_file = cell.dir.path().join("failover.json");
    let state = state_file.to_str().unwrap();
    let first = cell.run_ok(
        "failover.py",
        &[
            "launch",
            state,
            "--task-id",
            &id,
            "--failover-timeout",
            "30",
        ],
    );
    // Disconnected, within its failover timeout: the task keeps running.
    cell.wait_task_state(&id, "TASK_RUNNING", Duration::from_secs(2), &first)
        .await;
    let second = cell.run_ok(
        "failover.py",
        &["resume", state, "--failover-timeout", "30"],
    );
    cell.wait_task_state(&id, "TASK_KILLED", Duration::from_secs(5), &second)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_teardown_kills_the_frameworks_tasks() {
    let Some(cell) = cell("mesos_teardown", "process").await else {
        return;
    };
    let id = unique("td");
    let run = cell.run_ok("teardown.py", &["--task-id", &id]);
    cell.wait_task_state(&id, "TASK_KILLED", Duration::from_secs(10), &run)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_docker_task_serves_on_its_mapped_port() {
    let Some(python) = test_python("mesos_docker_task_serves_on_its_mapped_port") else {
        return;
    };
    if !docker_enabled("mesos_docker_task_serves_on_its_mapped_port") {
        return;
    }
    let cell = Cell::start("mesos_docker", python, "docker").await;
    let id = unique("web");
    let run = cell.run_ok(
        "docker.py",
        &["--task-id", &id, "--image", IMAGE, "--port", "31050"],
    );
    cell.wait_task_state(&id, "TASK_KILLED", Duration::from_secs(5), &run)
        .await;
    // The port closes once the container is gone.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_refused_offer_operations_are_answered_as_mesos_does() {
    let Some(cell) = cell("mesos_operations", "process").await else {
        return;
    };
    let id = unique("ops");
    let run = cell.run_ok("operations.py", &["--task-id", &id]);
    cell.wait_task_state(&id, "TASK_FINISHED", Duration::from_secs(5), &run)
        .await;
    // The task of the LAUNCH with an operation id never reached the cell.
    assert!(
        cell.task(&format!("{id}-with-id")).await.is_none(),
        "{}",
        cell.report(&run)
    );
    // The master kept working and holds nothing for the framework once it tore down.
    let client = cell.master.client();
    wait_until("the agent to hold nothing", Duration::from_secs(5), || {
        let client = client.clone();
        async move {
            client.state().await.is_ok_and(|st| {
                check_no_double_booking(&st).is_ok()
                    && st.agents.iter().all(|a| a.allocated.is_empty())
            })
        }
    })
    .await;
}

/// After a master failover Mesos accepts the framework's SUBSCRIBE with its old id (its
/// tasks are known from the agents); here the tasks are in the master's store, so the
/// re-subscribed framework finds its task running, can kill it, and tears down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesos_framework_resubscribes_after_a_master_restart_and_finds_its_tasks() {
    let Some(mut cell) = cell("mesos_master_restart", "process").await else {
        return;
    };
    let id = unique("mr");
    let state_file = cell.dir.path().join("failover.json");
    let state = state_file.to_str().unwrap().to_string();
    let first = cell.run_ok(
        "failover.py",
        &[
            "launch",
            &state,
            "--task-id",
            &id,
            "--failover-timeout",
            "30",
        ],
    );
    cell.wait_task_state(&id, "TASK_RUNNING", Duration::from_secs(2), &first)
        .await;
    // The master restarts (SIGKILL, same work dir, a new port); the agent follows it.
    cell.cell.master.restart();
    let addr = cell.master.addr.clone();
    cell.cell.agents[0].restart(&addr);
    let client = cell.master.client();
    let agent_id = cell.agent_id().to_string();
    wait_until(
        "the agent to be active again",
        Duration::from_secs(20),
        || {
            let (client, agent_id) = (client.clone(), agent_id.clone());
            async move {
                client.state().await.is_ok_and(|st| {
                    st.agents.iter().any(|a| {
                        a.id.as_str() == agent_id && a.state == shoal_core::AgentState::Active
                    })
                })
            }
        },
    )
    .await;
    cell.wait_task_state(&id, "TASK_RUNNING", Duration::from_secs(5), &first)
        .await;
    let second = cell.run_ok(
        "failover.py",
        &["resume", &state, "--failover-timeout", "30"],
    );
    cell.wait_task_state(&id, "TASK_KILLED", Duration::from_secs(5), &second)
        .await;
}
