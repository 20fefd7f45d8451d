//! Orphaned tasks: Ctrl-C on `shoal dev` left every task it started running forever, and so
//! did an agent that never came back. Now `shoal dev` kills its tasks (Docker ones too) on
//! SIGINT and SIGTERM before it exits, and a task whose agent has not re-attached within
//! `--recovery-timeout` is killed by its supervisor.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::{
    docker_enabled, get_json, post_json, shoal_bin, start_fast_agent, unique, wait_until,
    AgentProc, MasterProc, FAST_MASTER_FLAGS,
};

/// The grace period `shoal dev` gives a task it kills.
const DEV_KILL_GRACE: Duration = Duration::from_secs(2);

/// A `shoal dev` cell; dropping it SIGKILLs it and whatever it left behind.
struct DevProc {
    child: Child,
    work_dir: PathBuf,
    addr: String,
}

impl DevProc {
    fn start(work_dir: &Path) -> DevProc {
        let log = std::fs::File::create(work_dir.join("dev.log")).unwrap();
        // Returned to `DevProc`, whose `Drop` kills and reaps it.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(shoal_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--work-dir"])
            .arg(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal dev");
        let addr_file = work_dir.join("master").join("master.addr");
        let until = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Some(a) = std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|a| !a.is_empty())
            {
                break format!("http://{a}");
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("shoal dev did not write {}", addr_file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        DevProc {
            child,
            work_dir: work_dir.to_path_buf(),
            addr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work_dir.join("dev.log")).unwrap_or_default()
    }
}

impl Drop for DevProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, pgid) in supervised(&self.work_dir.join("agent")) {
            // SAFETY: kill(2) of a process group this test's cell started.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let ids = containers(&self.work_dir.join("agent"), true);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// (supervisor pid, task process group) of every process task an agent recorded.
fn supervised(agent_work_dir: &Path) -> Vec<(i32, i32)> {
    let tasks = agent_work_dir.join("state").join("process").join("tasks");
    let Ok(rd) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("record.json")).ok())
        .filter_map(|d| serde_json::from_slice::<Json>(&d).ok())
        .filter_map(|r| {
            let sup = r["supervisor_pid"].as_i64().filter(|p| *p > 1)?;
            let pgid = r["pgid"].as_i64().filter(|p| *p > 1)?;
            Some((sup as i32, pgid as i32))
        })
        .collect()
}

/// Whether a process runs (zombies do not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// How many of these processes (supervisors and tasks) still run.
fn processes_left(procs: &[(i32, i32)]) -> usize {
    procs
        .iter()
        .flat_map(|(s, t)| [*s, *t])
        .filter(|p| running(*p))
        .count()
}

/// Ids of the containers of an agent's work dir (by their sandbox label); with `all`, ended
/// ones too.
fn containers(agent_work_dir: &Path, all: bool) -> Vec<String> {
    let root = agent_work_dir
        .canonicalize()
        .unwrap_or_else(|_| agent_work_dir.to_path_buf());
    let root = format!("{}/", root.display());
    let mut cmd = Command::new("docker");
    cmd.arg("ps");
    if all {
        cmd.arg("-a");
    }
    cmd.args([
        "--filter",
        "label=shoal.managed=true",
        "--format",
        "{{.ID}} {{.Label \"shoal.sandbox\"}}",
    ]);
    let out = cmd.stderr(Stdio::null()).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, sandbox)| sandbox.starts_with(&root))
            .map(|(id, _)| id.to_string())
            .collect()
    })
    .unwrap_or_default()
}

/// The live (non-terminal) tasks of a service: (task id, state).
async fn service_tasks(http: &reqwest::Client, addr: &str, service: &str) -> Vec<(String, String)> {
    let Some(state) = get_json(http, &format!("{addr}/api/shoal/v1/state")).await else {
        return Vec::new();
    };
    state["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{service}.")))
        })
        .map(|t| {
            (
                t["id"].as_str().unwrap_or("").to_string(),
                t["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn run_service(http: &reqwest::Client, addr: &str, file: String) {
    let (status, answer) = post_json(http, &format!("{addr}/api/shoal/v1/services"), file).await;
    assert_eq!(status, 201, "{answer}");
}

async fn wait_running(http: &reqwest::Client, addr: &str, service: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = service_tasks(http, addr, service).await;
        if tasks.iter().any(|(_, s)| s == "TASK_RUNNING") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service {service} never ran: {tasks:?}\n{}",
            shoal_tests::tail(&log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_tasks_none_left_after_ctrl_c_on_shoal_dev() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().canonicalize().unwrap();
    let docker = docker_enabled("orphaned_tasks_none_left_after_ctrl_c_on_shoal_dev");
    let mut dev = DevProc::start(&work);
    let http = reqwest::Client::new();
    let addr = dev.addr.clone();
    wait_until(
        "the dev agent is active",
        Duration::from_secs(20),
        || async {
            get_json(&http, &format!("{addr}/api/shoal/v1/state"))
                .await
                .is_some_and(|s| {
                    s["agents"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a["state"] == "ACTIVE"))
                })
        },
    )
    .await;

    // A process service that ignores nothing, and a container whose PID 1 ignores SIGTERM
    // (it takes the whole grace period and a SIGKILL).
    run_service(
        &http,
        &addr,
        r#"
name = "sleeper"
count = 1
[task]
command = "sleep 600"
resources = "cpus:0.1;mem:16"
"#
        .into(),
    )
    .await;
    if docker {
        run_service(
            &http,
            &addr,
            r#"
name = "boxed"
count = 1
[task]
image = "local/busybox:latest"
command = "exec sleep 600"
resources = "cpus:0.1;mem:16"
"#
            .into(),
        )
        .await;
    }
    wait_running(&http, &addr, "sleeper", || dev.log()).await;
    if docker {
        wait_running(&http, &addr, "boxed", || dev.log()).await;
    }
    let agent_dir = work.join("agent");
    let procs = supervised(&agent_dir);
    let before_procs = processes_left(&procs);
    let before_containers = containers(&agent_dir, false).len();
    assert!(before_procs >= 2, "no supervised process found: {procs:?}");
    if docker {
        assert!(before_containers >= 1, "no running container found");
    }

    // SAFETY: kill(2) of the child this test started.
    assert_eq!(
        unsafe { libc::kill(dev.child.id() as i32, libc::SIGINT) },
        0
    );
    let stopped = Instant::now();
    let bound = DEV_KILL_GRACE + Duration::from_secs(5);
    let mut exit = None;
    loop {
        if exit.is_none() {
            exit = dev.child.try_wait().unwrap();
        }
        let left = processes_left(&procs)
            + if docker {
                containers(&agent_dir, false).len()
            } else {
                0
            };
        if left == 0 && exit.is_some() {
            break;
        }
        assert!(
            stopped.elapsed() < bound,
            "{} processes and {} containers left, shoal dev {}, {:?} after SIGINT\n{}",
            processes_left(&procs),
            containers(&agent_dir, false).len(),
            if exit.is_some() {
                "exited"
            } else {
                "still running"
            },
            stopped.elapsed(),
            shoal_tests::tail(&dev.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = stopped.elapsed();
    let status = exit.unwrap();
    assert!(
        status.success(),
        "shoal dev exited with {status}\n{}",
        dev.log()
    );
    // Ended containers are removed too.
    if docker {
        assert_eq!(containers(&agent_dir, true), Vec::<String>::new());
    }
    println!(
        "probe: before SIGINT {before_procs} processes, {before_containers} containers; \
         {took:?} after it 0 processes, 0 containers; shoal dev exited {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_tasks_killed_when_no_agent_comes_back_within_the_recovery_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterProc::start(&dir.path().join("master"), FAST_MASTER_FLAGS);
    let host = unique("orphans-recovery");
    let timeout = Duration::from_secs(2);
    let mut agent: AgentProc = start_fast_agent(
        &master.addr,
        &dir.path().join("agent"),
        &host,
        "process",
        "cpus:2;mem:1024",
        &["--recovery-timeout", "2s"],
    );
    let http = reqwest::Client::new();
    if let Err(e) =
        shoal_tests::wait_agents_active(&master.client(), &[host.as_str()], Duration::from_secs(20))
            .await
    {
        panic!("{e}\n{}", agent.log());
    }
    run_service(
        &http,
        &master.addr,
        r#"
name = "lonely"
count = 1
[task]
command = "sleep 600"
resources = "cpus:0.1;mem:16"
"#
        .into(),
    )
    .await;
    wait_running(&http, &master.addr, "lonely", || agent.log()).await;
    let procs = supervised(&agent.work_dir);
    assert_eq!(processes_left(&procs), 2, "{procs:?}");

    // Alive agent: the task outlives the recovery timeout.
    let alive_until = Instant::now() + timeout * 2;
    while Instant::now() < alive_until {
        assert_eq!(processes_left(&procs), 2, "killed while its agent runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The agent dies and never comes back: the supervisor kills its task (grace 1 s).
    agent.kill9();
    let gone = Instant::now();
    let bound = timeout + Duration::from_secs(1) + Duration::from_secs(5);
    while processes_left(&procs) > 0 {
        assert!(
            gone.elapsed() < bound,
            "{} processes left {:?} after the agent died",
            processes_left(&procs),
            gone.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "probe: the task and its supervisor ended {:?} after the agent died (recovery timeout {timeout:?})",
        gone.elapsed()
    );

    // A late agent reports how it ended.
    agent.restart(&master.addr);
    let client = master.client();
    wait_until(
        "the task is reported lost",
        Duration::from_secs(20),
        || async {
            let st = client.state().await;
            st.is_ok_and(|s| {
                s.tasks.iter().any(|t| {
                    t.id.as_str().starts_with("lonely.")
                        && t.state == shoal_core::TaskState::Failed
                        && t.status
                            .message
                            .as_deref()
                            .is_some_and(|m| m.contains("recovery timeout"))
                })
            })
        },
    )
    .await;
}
