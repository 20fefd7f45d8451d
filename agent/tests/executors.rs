//! Integration tests of the task executors (process and Docker).
//!
//! Docker tests need a daemon at /var/run/docker.sock and the image
//! `local/busybox:latest` (a `docker import` of busybox-static). They skip
//! themselves, with a printed reason, only when the daemon or the image is
//! missing and neither `CI=true` nor `SHOAL_TEST_DOCKER=1` is set; otherwise
//! they fail instead.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_agent::executor::cgroup::Cgroups;
use shoal_agent::executor::docker::{DockerConfig, DockerExecutor};
use shoal_agent::executor::process::{ProcessConfig, ProcessExecutor};
use shoal_agent::executor::{
    AgentError, CommandSpec, ContainerSpec, DockerSpec, Executor, ExecutorEvent, FailReason,
    HealthCheckKind, HealthCheckSpec, LaunchSpec, Limits, PortMapping, Protocol, TaskUpdate,
};
use tokio::sync::mpsc;

const IMAGE: &str = "local/busybox:latest";
const T: Duration = Duration::from_secs(30);
/// Needs more than 16 MiB: dd's 64 MiB block buffer, filled from /dev/zero.
const MEMORY_HOG: &str = "exec dd if=/dev/zero of=/dev/null bs=64M count=20";

/// Collects an executor's events and waits on them with deadlines.
struct Events {
    rx: mpsc::UnboundedReceiver<ExecutorEvent>,
    seen: Vec<ExecutorEvent>,
}

impl Events {
    fn new() -> (mpsc::UnboundedSender<ExecutorEvent>, Events) {
        // `RUST_LOG=shoal_agent=debug` shows the executors' logs of failing tests.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            Events {
                rx,
                seen: Vec::new(),
            },
        )
    }

    /// Waits until an update of `task` matches `pred`; returns it.
    async fn until(
        &mut self,
        task: &str,
        within: Duration,
        pred: impl Fn(&TaskUpdate) -> bool,
    ) -> TaskUpdate {
        if let Some(e) = self
            .seen
            .iter()
            .find(|e| e.task_id == task && pred(&e.update))
        {
            return e.update.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    let hit = e.task_id == task && pred(&e.update);
                    self.seen.push(e.clone());
                    if hit {
                        return e.update;
                    }
                }
                Ok(None) => panic!(
                    "event channel closed while waiting for {task}; seen: {:#?}",
                    self.seen
                ),
                Err(_) => panic!("timed out waiting for {task}; seen: {:#?}", self.seen),
            }
        }
    }

    async fn terminal(&mut self, task: &str, within: Duration) -> TaskUpdate {
        self.until(task, within, TaskUpdate::is_terminal).await
    }

    async fn running(&mut self, task: &str) {
        self.until(task, T, |u| matches!(u, TaskUpdate::Running { .. }))
            .await;
    }

    /// Takes whatever arrived so far.
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    fn of(&self, task: &str) -> Vec<TaskUpdate> {
        self.seen
            .iter()
            .filter(|e| e.task_id == task)
            .map(|e| e.update.clone())
            .collect()
    }
}

/// Polls a condition until it holds or the deadline passes.
async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mkfifo(path: &Path) -> PathBuf {
    let cpath = std::ffi::CString::new(path.to_string_lossy().as_bytes()).expect("cstring");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o644) }, 0, "mkfifo");
    path.to_path_buf()
}

/// Lets a task blocked in `read line < go` go on (blocks until it opened the FIFO).
async fn release(fifo: PathBuf) {
    let write = tokio::task::spawn_blocking(move || std::fs::write(&fifo, "go\n"));
    tokio::time::timeout(T, write)
        .await
        .expect("nobody reads the fifo")
        .expect("join")
        .expect("write fifo");
}

fn sandbox(root: &Path, name: &str) -> PathBuf {
    let p = root.join("sandboxes").join(name);
    std::fs::create_dir_all(&p).expect("create sandbox");
    p
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_default()
}

fn shell_task(root: &Path, id: &str, cmd: &str) -> LaunchSpec {
    let mut s = LaunchSpec::new(id, sandbox(root, id));
    s.command = Some(CommandSpec::shell(cmd));
    s
}

fn failed_code(u: &TaskUpdate) -> Option<i32> {
    match u {
        TaskUpdate::Failed {
            exit_code,
            reason: FailReason::CommandExit,
            ..
        } => *exit_code,
        _ => None,
    }
}

// ---------------------------------------------------------------- process

fn process_executor(root: &Path) -> (ProcessExecutor, Events) {
    let (tx, ev) = Events::new();
    let ex =
        ProcessExecutor::new(ProcessConfig::new(root.join("state")), tx).expect("process executor");
    (ex, ev)
}

/// SIGKILLs the process groups of all tasks recorded in a state dir when
/// dropped, so that a failing test leaves no processes behind.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.0.join("tasks")) else {
            return;
        };
        for d in dirs.flatten() {
            let Ok(data) = std::fs::read(d.path().join("record.json")) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
                continue;
            };
            if let Some(pgid) = v["pgid"].as_i64().filter(|p| *p > 1) {
                // SAFETY: kill(2) on a process group this test started.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
        }
    }
}

#[tokio::test]
async fn process_exit_zero_finishes_and_captures_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    let mut spec = shell_task(
        dir.path(),
        "ok",
        "echo hello; echo oops >&2; echo \"$GREETING\"; pwd",
    );
    if let Some(c) = &mut spec.command {
        c.env.push(("GREETING".into(), "hi there".into()));
    }
    let sb = spec.sandbox.clone();
    ex.launch(spec).await.expect("launch");
    assert_eq!(ev.terminal("ok", T).await, TaskUpdate::Finished);
    assert_eq!(
        ev.of("ok")[..2],
        [TaskUpdate::Starting, TaskUpdate::Running { healthy: None }]
    );
    assert_eq!(
        read(sb.join("stdout")),
        format!("hello\nhi there\n{}\n", sb.display())
    );
    assert_eq!(read(sb.join("stderr")), "oops\n");
    assert!(ex.tasks().is_empty());
}

#[tokio::test]
async fn process_exit_one_fails_with_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    ex.launch(shell_task(dir.path(), "bad", "exit 1"))
        .await
        .expect("launch");
    let u = ev.terminal("bad", T).await;
    assert_eq!(failed_code(&u), Some(1), "{u:?}");

    // argv mode, found in PATH, with its own exit code.
    let mut spec = LaunchSpec::new("argv", sandbox(dir.path(), "argv"));
    spec.command = Some(CommandSpec::argv("sh", ["-c", "exit 42"]));
    ex.launch(spec).await.expect("launch");
    let u = ev.terminal("argv", T).await;
    assert_eq!(failed_code(&u), Some(42), "{u:?}");
}

#[tokio::test]
async fn process_kill_sigterm_and_escalation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    // Dies on SIGTERM.
    ex.launch(shell_task(dir.path(), "polite", "sleep 1000"))
        .await
        .expect("launch");
    // Ignores SIGTERM (and so does its sleep): needs the SIGKILL after the grace period.
    ex.launch(shell_task(
        dir.path(),
        "stubborn",
        "trap '' TERM; echo ready; sleep 1000",
    ))
    .await
    .expect("launch");
    ev.running("polite").await;
    ev.running("stubborn").await;
    // The signal must not arrive before the trap is set.
    let stubborn_out = dir.path().join("sandboxes/stubborn/stdout");
    wait_until("stubborn ready", T, || {
        read(stubborn_out.clone()) == "ready\n"
    })
    .await;

    let t0 = Instant::now();
    ex.kill("polite", Some(Duration::from_secs(20)))
        .await
        .expect("kill");
    let u = ev.terminal("polite", T).await;
    assert!(matches!(u, TaskUpdate::Killed { .. }), "{u:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "SIGTERM alone should have ended it"
    );

    let t0 = Instant::now();
    ex.kill("stubborn", Some(Duration::from_millis(500)))
        .await
        .expect("kill");
    let u = ev.terminal("stubborn", T).await;
    match &u {
        TaskUpdate::Killed { message } => assert!(message.contains("SIGKILL"), "{message}"),
        u => panic!("{u:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(450));

    assert!(matches!(
        ex.kill("polite", None).await,
        Err(AgentError::UnknownTask(_))
    ));
}

#[tokio::test]
async fn process_bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());

    let mut spec = LaunchSpec::new("noprog", sandbox(dir.path(), "noprog"));
    spec.command = Some(CommandSpec::argv("/nonexistent/program", ["x"]));
    ex.launch(spec).await.expect("launch");
    match ev.terminal("noprog", T).await {
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            message,
            ..
        } => {
            assert!(message.contains("/nonexistent/program"), "{message}")
        }
        u => panic!("{u:?}"),
    }

    let mut spec = LaunchSpec::new("notinpath", sandbox(dir.path(), "notinpath"));
    spec.command = Some(CommandSpec::argv(
        "shoal-no-such-program",
        Vec::<String>::new(),
    ));
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("notinpath", T).await,
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            ..
        }
    ));

    // A file without execute permission is refused before anything starts.
    let sb = sandbox(dir.path(), "noexec");
    std::fs::write(sb.join("script"), "#!/bin/sh\necho hi\n").expect("write");
    let mut spec = LaunchSpec::new("noexec", sb);
    spec.command = Some(CommandSpec::argv("./script", Vec::<String>::new()));
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("noexec", T).await,
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            ..
        }
    ));

    // An executable file that is no program: execve itself fails in the
    // supervised child and the error comes back through the supervisor.
    let sb = sandbox(dir.path(), "badformat");
    let garbage = sb.join("garbage");
    std::fs::write(&garbage, b"\x7fNOT-AN-ELF\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut spec = LaunchSpec::new("badformat", sb);
    spec.command = Some(CommandSpec::argv("./garbage", Vec::<String>::new()));
    ex.launch(spec).await.expect("launch");
    match ev.terminal("badformat", T).await {
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            message,
            ..
        } => assert!(message.contains("execve"), "{message}"),
        u => panic!("{u:?}"),
    }

    let spec = shell_task(dir.path(), "nosandbox", "true");
    std::fs::remove_dir(&spec.sandbox).expect("rm sandbox");
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("nosandbox", T).await,
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            ..
        }
    ));

    let mut spec = LaunchSpec::new("nocommand", sandbox(dir.path(), "nocommand"));
    spec.command = None;
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("nocommand", T).await,
        TaskUpdate::Error { .. }
    ));

    let mut spec = shell_task(dir.path(), "docker-on-process", "true");
    spec.container = ContainerSpec::Docker(DockerSpec::new(IMAGE));
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("docker-on-process", T).await,
        TaskUpdate::Error { .. }
    ));

    // Duplicate ids are refused without touching the running task.
    ex.launch(shell_task(dir.path(), "dup", "sleep 1000"))
        .await
        .expect("launch");
    assert!(matches!(
        ex.launch(shell_task(dir.path(), "dup", "true")).await,
        Err(AgentError::DuplicateTask(_))
    ));
    ev.running("dup").await;

    // The executor still works.
    ex.launch(shell_task(dir.path(), "fine", "true"))
        .await
        .expect("launch");
    assert_eq!(ev.terminal("fine", T).await, TaskUpdate::Finished);
    ex.kill("dup", Some(Duration::ZERO)).await.expect("kill");
    assert!(matches!(
        ev.terminal("dup", T).await,
        TaskUpdate::Killed { .. }
    ));
}

/// Whether a process still runs code (zombies do not).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

/// (supervisor pid, task process group) from a task's record.
fn supervisor_of(state: &Path, task: &str) -> (i32, i32) {
    let data = std::fs::read(state.join("tasks").join(task).join("record.json")).expect("record");
    let v: serde_json::Value = serde_json::from_slice(&data).expect("record json");
    (
        v["supervisor_pid"].as_i64().expect("supervisor pid") as i32,
        v["pgid"].as_i64().expect("pgid") as i32,
    )
}

#[tokio::test]
async fn orphaned_process_task_killed_when_no_executor_returns_within_the_recovery_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let _leftovers = KillLeftovers(state.clone());
    let timeout = Duration::from_secs(1);
    let mut cfg = ProcessConfig::new(&state);
    cfg.recovery_timeout = timeout;
    let (tx, mut ev) = Events::new();
    let ex = ProcessExecutor::new(cfg.clone(), tx).expect("process executor");
    let mut spec = shell_task(dir.path(), "lonely", "sleep 1000");
    spec.kill_grace = Duration::from_millis(500);
    ex.launch(spec).await.expect("launch");
    ev.running("lonely").await;
    let (sup, pgid) = supervisor_of(&state, "lonely");
    assert!(runs(sup) && runs(pgid));

    // While the executor lives, its heartbeat keeps the task alive past the timeout.
    let until = Instant::now() + timeout * 3;
    while Instant::now() < until {
        assert!(runs(sup) && runs(pgid), "killed while its executor runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The agent "dies" and nobody comes back.
    drop(ex);
    let gone = Instant::now();
    wait_until(
        "the supervisor killed its task and ended",
        timeout + Duration::from_secs(6),
        || !runs(sup) && !runs(pgid),
    )
    .await;
    let took = gone.elapsed();
    // Counted from the last heartbeat, which came at most an eighth of the timeout earlier.
    assert!(
        took >= timeout * 3 / 4,
        "ended after {took:?}, well before the recovery timeout"
    );
    let status = read(state.join("tasks/lonely/exit_status"));
    assert_eq!(status.trim(), "signal 15 orphaned");

    // A late executor reports it lost, saying why.
    let (tx2, _ev2) = Events::new();
    let ex2 = ProcessExecutor::new(cfg, tx2).expect("process executor");
    let rec = ex2.recover(&["lonely".to_string()]).await.expect("recover");
    match &rec[..] {
        [r] => match &r.update {
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                message,
                ..
            } => assert!(message.contains("recovery timeout"), "{message}"),
            u => panic!("{u:?}"),
        },
        r => panic!("{r:?}"),
    }
}

#[tokio::test]
async fn orphaned_process_task_killed_when_its_work_dir_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let state = work.join("state");
    let (ex, mut ev) = process_executor(&work);
    let mut spec = shell_task(dir.path(), "homeless", "sleep 1000");
    spec.kill_grace = Duration::from_millis(500);
    ex.launch(spec).await.expect("launch");
    ev.running("homeless").await;
    let (sup, pgid) = supervisor_of(&state, "homeless");
    let _leftovers = scopeguard_kill(pgid);

    std::fs::remove_dir_all(&work).expect("remove the work dir");
    let gone = Instant::now();
    // A supervisor looks at the heartbeat every 2 s at most; then the grace period.
    wait_until(
        "the supervisor killed its task and ended",
        Duration::from_secs(8),
        || !runs(sup) && !runs(pgid),
    )
    .await;
    println!(
        "the task ended {:?} after its work dir was removed",
        gone.elapsed()
    );
    assert!(matches!(
        ev.terminal("homeless", T).await,
        TaskUpdate::Failed {
            reason: FailReason::Lost,
            ..
        }
    ));
}

/// SIGKILLs a process group when dropped (a failing test leaves nothing behind).
fn scopeguard_kill(pgid: i32) -> impl Drop {
    struct Guard(i32);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: kill(2) of a process group this test started.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
    Guard(pgid)
}

#[tokio::test]
async fn process_recovery_after_executor_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let state = dir.path().join("state");
    let (ex, mut ev) = process_executor(dir.path());
    let long = shell_task(
        dir.path(),
        "long",
        "echo before; read line < go; echo after; exit 0",
    );
    let long_sb = long.sandbox.clone();
    // Both tasks wait on a FIFO in their sandbox that the test opens when it
    // wants them to end.
    let long_go = mkfifo(&long_sb.join("go"));
    let short = shell_task(dir.path(), "short", "read line < go; echo bye; exit 7");
    let short_go = mkfifo(&short.sandbox.join("go"));
    ex.launch(long).await.expect("launch");
    ex.launch(short).await.expect("launch");
    ex.launch(shell_task(dir.path(), "orphan", "sleep 1000"))
        .await
        .expect("launch");
    ev.running("long").await;
    ev.running("short").await;
    ev.running("orphan").await;
    wait_until("long printed", T, || {
        read(long_sb.join("stdout")) == "before\n"
    })
    .await;

    // The agent "dies": executor gone, tasks keep running.
    drop(ex);
    // The short task ends while nobody watches.
    release(short_go).await;
    wait_until("short recorded its status", T, || {
        state.join("tasks/short/exit_status").exists()
    })
    .await;
    ev.drain();
    assert!(
        ev.of("short").iter().all(|u| !u.is_terminal()),
        "old executor reported: {:?}",
        ev.of("short")
    );

    let (ex2, mut ev2) = process_executor(dir.path());
    let known = vec!["long".to_string(), "short".to_string(), "ghost".to_string()];
    let mut rec = ex2.recover(&known).await.expect("recover");
    rec.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(rec.len(), 3, "{rec:?}");
    assert_eq!(rec[0].task_id, "ghost");
    assert!(
        matches!(
            rec[0].update,
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ),
        "{rec:?}"
    );
    assert_eq!(rec[1].task_id, "long");
    assert_eq!(rec[1].update, TaskUpdate::Running { healthy: None });
    assert_eq!(rec[2].task_id, "short");
    assert_eq!(failed_code(&rec[2].update), Some(7), "{rec:?}");
    assert_eq!(ex2.tasks(), vec!["long".to_string()]);

    // The orphan (not known to the agent) was killed.
    wait_until("orphan killed", T, || {
        read(state.join("tasks/orphan/exit_status")).starts_with("signal 9")
    })
    .await;

    // Release the long task: it finishes and is reported as an event.
    release(long_go).await;
    assert_eq!(ev2.terminal("long", T).await, TaskUpdate::Finished);
    assert_eq!(read(long_sb.join("stdout")), "before\nafter\n");
    ev2.drain();
    assert!(
        ev2.of("short").is_empty(),
        "short reported twice: {:?}",
        ev2.of("short")
    );
    assert!(ev2.of("orphan").is_empty());

    // gc removes the records of ended tasks.
    let report = ex2.gc(Duration::ZERO).await.expect("gc");
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(removed, vec!["long", "orphan", "short"]);
}

#[tokio::test]
async fn process_command_health_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    let mut spec = shell_task(dir.path(), "hc", "sleep 1000");
    let mut hc = HealthCheckSpec::new(HealthCheckKind::Command {
        shell: "test -f healthy".into(),
    });
    hc.interval = Duration::from_millis(100);
    // Unhealthy at the first failure; killed only after this many in a row.
    hc.consecutive_failures = 1000;
    spec.health_check = Some(hc);
    let sb = spec.sandbox.clone();
    ex.launch(spec).await.expect("launch");
    ev.until("hc", T, |u| {
        *u == TaskUpdate::Running {
            healthy: Some(false),
        }
    })
    .await;
    std::fs::write(sb.join("healthy"), "").expect("touch");
    ev.until("hc", T, |u| {
        *u == TaskUpdate::Running {
            healthy: Some(true),
        }
    })
    .await;
    ex.kill("hc", Some(Duration::ZERO)).await.expect("kill");
    assert!(matches!(
        ev.terminal("hc", T).await,
        TaskUpdate::Killed { .. }
    ));
}

#[tokio::test]
async fn process_failing_health_check_kills_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    let mut spec = shell_task(dir.path(), "hk", "sleep 1000");
    let mut hc = HealthCheckSpec::new(HealthCheckKind::Command {
        shell: "false".into(),
    });
    hc.interval = Duration::from_millis(100);
    hc.consecutive_failures = 3;
    spec.health_check = Some(hc);
    spec.kill_grace = Duration::from_millis(200);
    ex.launch(spec).await.expect("launch");
    ev.until("hk", T, |u| {
        *u == TaskUpdate::Running {
            healthy: Some(false),
        }
    })
    .await;
    match ev.terminal("hk", T).await {
        TaskUpdate::Killed { message } => assert!(
            message.contains("3 consecutive failed health checks"),
            "{message}"
        ),
        other => panic!("expected a kill, got {other:?}"),
    }
}

#[tokio::test]
async fn process_group_is_killed_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    for id in ["pod-a", "pod-b"] {
        let mut s = shell_task(dir.path(), id, "sleep 1000");
        s.group = Some("pod".into());
        ex.launch(s).await.expect("launch");
    }
    ex.launch(shell_task(dir.path(), "loner", "sleep 1000"))
        .await
        .expect("launch");
    for id in ["pod-a", "pod-b", "loner"] {
        ev.running(id).await;
    }
    ex.kill("pod-a", Some(Duration::from_secs(5)))
        .await
        .expect("kill");
    assert!(matches!(
        ev.terminal("pod-a", T).await,
        TaskUpdate::Killed { .. }
    ));
    assert!(matches!(
        ev.terminal("pod-b", T).await,
        TaskUpdate::Killed { .. }
    ));
    assert_eq!(ex.tasks(), vec!["loner".to_string()]);
    ex.kill("loner", Some(Duration::ZERO)).await.expect("kill");
    ev.terminal("loner", T).await;
}

/// The cgroup dirs the process executor makes for a task (memory first), or why limits are
/// not enforced on this host. Tests of limits print the reason and pass then: limits apply
/// "where the host allows" (a CI host without writable cgroups included).
fn task_cgroups(ex: &ProcessExecutor, task: &str) -> Result<Vec<PathBuf>, String> {
    match ex.cgroups() {
        Cgroups::Off { reason } => Err(reason.clone()),
        Cgroups::V2 { parent } => Ok(vec![parent.join(task)]),
        Cgroups::V1 { memory, cpu } => match (memory, cpu) {
            (Some(m), Some(c)) => Ok(vec![m.join(task), c.join(task)]),
            _ => Err(format!(
                "cgroup v1 without a memory or cpu hierarchy: {memory:?} {cpu:?}"
            )),
        },
    }
}

#[tokio::test]
async fn process_limits_use_cgroups_where_the_host_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    let cgroups = match task_cgroups(&ex, "limited") {
        Ok(c) => c,
        Err(reason) => {
            eprintln!("process_limits_use_cgroups_where_the_host_allows: not checked, process limits are not enforced here: {reason}");
            return;
        }
    };
    let mut spec = shell_task(dir.path(), "limited", "echo $$ > pid; exec sleep 1000");
    spec.limits = Limits {
        cpus: 0.5,
        mem_mb: 32,
    };
    let pid_file = spec.sandbox.join("pid");
    ex.launch(spec).await.expect("launch");
    ev.running("limited").await;
    wait_until("the task wrote its pid", T, || {
        !read(pid_file.clone()).trim().is_empty()
    })
    .await;
    let pid = read(pid_file).trim().to_string();
    let file = |d: &PathBuf, f: &str| read(d.join(f)).trim().to_string();
    for d in &cgroups {
        assert!(
            file(d, "cgroup.procs").lines().any(|l| l == pid),
            "task {pid} is not in {}",
            d.display()
        );
    }
    match ex.cgroups() {
        Cgroups::V2 { .. } => {
            assert_eq!(file(&cgroups[0], "memory.max"), "33554432");
            assert_eq!(file(&cgroups[0], "cpu.max"), "50000 100000");
        }
        _ => {
            assert_eq!(file(&cgroups[0], "memory.limit_in_bytes"), "33554432");
            if cgroups[0].join("memory.memsw.limit_in_bytes").exists() {
                assert_eq!(file(&cgroups[0], "memory.memsw.limit_in_bytes"), "33554432");
            }
            assert_eq!(file(&cgroups[1], "cpu.cfs_quota_us"), "50000");
            assert_eq!(file(&cgroups[1], "cpu.cfs_period_us"), "100000");
            assert_eq!(file(&cgroups[1], "cpu.shares"), "512");
        }
    }
    // The supervisor stays outside: it must survive the task's OOM killer.
    ex.kill("limited", Some(Duration::ZERO))
        .await
        .expect("kill");
    assert!(matches!(
        ev.terminal("limited", T).await,
        TaskUpdate::Killed { .. }
    ));
    wait_until("the task's cgroups to be removed", T, || {
        cgroups.iter().all(|d| !d.exists())
    })
    .await;
}

#[tokio::test]
async fn process_over_its_memory_limit_fails_as_oom() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _leftovers = KillLeftovers(dir.path().join("state"));
    let (ex, mut ev) = process_executor(dir.path());
    if let Err(reason) = task_cgroups(&ex, "hog") {
        eprintln!("process_over_its_memory_limit_fails_as_oom: not checked, process limits are not enforced here: {reason}");
        return;
    }
    let mut spec = shell_task(dir.path(), "hog", MEMORY_HOG);
    spec.limits.mem_mb = 16;
    let sandbox = spec.sandbox.clone();
    ex.launch(spec).await.expect("launch");
    match ev.terminal("hog", T).await {
        TaskUpdate::Failed {
            reason: FailReason::Oom,
            message,
            ..
        } => assert!(message.contains("memory limit"), "{message}"),
        u => panic!(
            "expected an OOM failure, got {u:?}; stderr: {}",
            read(sandbox.join("stderr"))
        ),
    }
}

// ---------------------------------------------------------------- docker

/// Connects to Docker, or explains why the test is skipped (never in CI).
/// Removes every container of a test's agent id when dropped, also when the
/// test panics.
struct RemoveContainers {
    docker: bollard::Docker,
    agent_id: String,
}

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let agent_id = self.agent_id.clone();
        // Drop cannot await: run the cleanup on a small runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let filters = std::collections::HashMap::from([(
                    "label".to_string(),
                    vec![format!("shoal.agent_id={agent_id}")],
                )]);
                let opts = bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                };
                for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
                    if let Some(id) = c.id {
                        let opts = bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        };
                        let _ = docker.remove_container(&id, Some(opts)).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn docker_executor(
    root: &Path,
    name: &str,
) -> Option<(DockerExecutor, Events, RemoveContainers)> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SHOAL_TEST_DOCKER").is_ok_and(|v| v == "1");
    let agent_id = format!("test-{name}-{}", std::process::id());
    let (tx, ev) = Events::new();
    let cfg = DockerConfig::new(agent_id.clone(), root.join("state"));
    let ex = match DockerExecutor::connect(cfg, tx).await {
        Ok(ex) => ex,
        Err(e) if !ci => {
            println!("SKIPPED {name}: Docker does not answer ({e})");
            return None;
        }
        Err(e) => panic!("Docker is required in CI: {e}"),
    };
    match ex.docker().inspect_image(IMAGE).await {
        Ok(_) => {
            let cleanup = RemoveContainers {
                docker: ex.docker().clone(),
                agent_id,
            };
            Some((ex, ev, cleanup))
        }
        Err(e) if !ci => {
            println!("SKIPPED {name}: image {IMAGE} missing ({e})");
            None
        }
        Err(e) => panic!("image {IMAGE} is required in CI: {e}"),
    }
}

/// Reconnects a second executor instance with the same agent id.
async fn docker_executor_again(root: &Path, name: &str) -> (DockerExecutor, Events) {
    let agent_id = format!("test-{name}-{}", std::process::id());
    let (tx, ev) = Events::new();
    let ex = DockerExecutor::connect(DockerConfig::new(agent_id, root.join("state")), tx)
        .await
        .expect("reconnect");
    (ex, ev)
}

fn docker_task(root: &Path, id: &str, cmd: &str) -> LaunchSpec {
    let mut s = shell_task(root, id, cmd);
    s.container = ContainerSpec::Docker(DockerSpec::new(IMAGE));
    s
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Runs a command in a container and waits for it.
async fn docker_exec(docker: &bollard::Docker, cid: &str, cmd: &str) {
    use futures::StreamExt;
    let opts = bollard::exec::CreateExecOptions {
        cmd: Some(vec!["sh".to_string(), "-c".to_string(), cmd.to_string()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(cid, opts).await.expect("exec create");
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.expect("exec start")
    {
        while output.next().await.is_some() {}
    }
}

async fn cleanup(ex: &DockerExecutor) {
    for t in ex.tasks() {
        let _ = ex.kill(&t, Some(Duration::ZERO)).await;
    }
    let deadline = Instant::now() + T;
    while !ex.tasks().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ex.gc(Duration::ZERO).await;
}

#[tokio::test]
async fn docker_exit_codes_and_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "exit").await else {
        return;
    };
    let mut ok = docker_task(
        dir.path(),
        "ok",
        "echo out; echo err >&2; echo \"$GREETING\"",
    );
    if let Some(c) = &mut ok.command {
        c.env.push(("GREETING".into(), "hi there".into()));
    }
    let sb = ok.sandbox.clone();
    ex.launch(ok).await.expect("launch");
    ex.launch(docker_task(dir.path(), "bad", "echo failing; exit 1"))
        .await
        .expect("launch");
    let mut argv = docker_task(dir.path(), "argv", "");
    argv.command = Some(CommandSpec::argv("sh", ["-c", "exit 3"]));
    ex.launch(argv).await.expect("launch");

    assert_eq!(ev.terminal("ok", T).await, TaskUpdate::Finished);
    assert_eq!(
        ev.of("ok")[..2],
        [TaskUpdate::Starting, TaskUpdate::Running { healthy: None }]
    );
    assert_eq!(read(sb.join("stdout")), "out\nhi there\n");
    assert_eq!(read(sb.join("stderr")), "err\n");
    let u = ev.terminal("bad", T).await;
    assert_eq!(failed_code(&u), Some(1), "{u:?}");
    assert_eq!(read(dir.path().join("sandboxes/bad/stdout")), "failing\n");
    let u = ev.terminal("argv", T).await;
    assert_eq!(failed_code(&u), Some(3), "{u:?}");

    // Ended containers stay until gc.
    assert!(ex.container_id("ok").await.expect("list").is_some());
    let report = ex.gc(Duration::ZERO).await.expect("gc");
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert!(ex.container_id("ok").await.expect("list").is_none());
}

#[tokio::test]
async fn docker_kill_escalates_after_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "kill").await else {
        return;
    };
    // PID 1 of a container ignores SIGTERM without a handler: only SIGKILL ends it.
    ex.launch(docker_task(dir.path(), "sleeper", "sleep 1000"))
        .await
        .expect("launch");
    // This one handles SIGTERM and exits right away.
    ex.launch(docker_task(
        dir.path(),
        "polite",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ))
    .await
    .expect("launch");
    ev.running("sleeper").await;
    ev.running("polite").await;
    // The signal must not arrive before the trap is set.
    let polite_out = dir.path().join("sandboxes/polite/stdout");
    wait_until("polite ready", T, || read(polite_out.clone()) == "ready\n").await;

    let t0 = Instant::now();
    ex.kill("polite", Some(Duration::from_secs(30)))
        .await
        .expect("kill");
    assert!(matches!(
        ev.terminal("polite", T).await,
        TaskUpdate::Killed { .. }
    ));
    assert!(t0.elapsed() < Duration::from_secs(20));

    let t0 = Instant::now();
    ex.kill("sleeper", Some(Duration::from_secs(1)))
        .await
        .expect("kill");
    match ev.terminal("sleeper", T).await {
        TaskUpdate::Killed { message } => assert!(message.contains("137"), "{message}"),
        u => panic!("{u:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(900));
    cleanup(&ex).await;
}

#[tokio::test]
async fn docker_recovery_after_executor_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "recover").await else {
        return;
    };
    // "long" outlives the executor; "short" ends while no executor watches.
    let long = docker_task(
        dir.path(),
        "long",
        "echo before; while [ ! -f /go ]; do sleep 0.1; done; echo after; echo err >&2",
    );
    let long_sb = long.sandbox.clone();
    ex.launch(long).await.expect("launch");
    ex.launch(docker_task(
        dir.path(),
        "short",
        "while [ ! -f /go ]; do sleep 0.1; done; echo bye; exit 5",
    ))
    .await
    .expect("launch");
    ex.launch(docker_task(dir.path(), "orphan", "sleep 1000"))
        .await
        .expect("launch");
    for id in ["long", "short", "orphan"] {
        ev.running(id).await;
    }
    wait_until("long printed", T, || {
        read(long_sb.join("stdout")) == "before\n"
    })
    .await;
    let short_id = ex
        .container_id("short")
        .await
        .expect("list")
        .expect("short container");
    let orphan_id = ex
        .container_id("orphan")
        .await
        .expect("list")
        .expect("orphan container");
    let long_id = ex
        .container_id("long")
        .await
        .expect("list")
        .expect("long container");
    let docker = ex.docker().clone();
    drop(ex);
    // The short task ends while nobody watches.
    docker_exec(&docker, &short_id, "touch /go").await;

    // Wait until the short container ended while nobody watched.
    let deadline = Instant::now() + T;
    loop {
        let c = docker
            .inspect_container(&short_id, None)
            .await
            .expect("inspect");
        if c.state.and_then(|s| s.running) == Some(false) {
            break;
        }
        assert!(Instant::now() < deadline, "short container still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ev.drain();
    assert!(ev.of("short").iter().all(|u| !u.is_terminal()));

    let (ex2, mut ev2) = docker_executor_again(dir.path(), "recover").await;
    let known = vec!["long".to_string(), "short".to_string(), "ghost".to_string()];
    let mut rec = ex2.recover(&known).await.expect("recover");
    rec.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    assert_eq!(rec.len(), 3, "{rec:?}");
    assert!(
        matches!(
            rec[0].update,
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ),
        "{rec:?}"
    );
    assert_eq!(
        rec[1].update,
        TaskUpdate::Running { healthy: None },
        "{rec:?}"
    );
    assert_eq!(rec[2].task_id, "short");
    assert_eq!(failed_code(&rec[2].update), Some(5), "{rec:?}");

    // The orphan container was killed.
    let deadline = Instant::now() + T;
    loop {
        let c = docker
            .inspect_container(&orphan_id, None)
            .await
            .expect("inspect");
        if c.state.and_then(|s| s.running) == Some(false) {
            break;
        }
        assert!(Instant::now() < deadline, "orphan container still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    docker_exec(&docker, &long_id, "touch /go").await;
    assert_eq!(ev2.terminal("long", T).await, TaskUpdate::Finished);
    // Logs resumed without duplicates.
    assert_eq!(read(long_sb.join("stdout")), "before\nafter\n");
    assert_eq!(read(long_sb.join("stderr")), "err\n");
    assert_eq!(read(dir.path().join("sandboxes/short/stdout")), "bye\n");
    ev2.drain();
    assert!(
        ev2.of("short").is_empty(),
        "short reported twice: {:?}",
        ev2.of("short")
    );
    cleanup(&ex2).await;
}

#[tokio::test]
async fn docker_http_server_port_mapping_and_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "http").await else {
        return;
    };
    let port = free_port();
    let mut spec = docker_task(
        dir.path(),
        "web",
        "mkdir -p /www && echo hello-shoal > /www/index.html && httpd -f -p 80 -h /www",
    );
    if let ContainerSpec::Docker(d) = &mut spec.container {
        d.port_mappings.push(PortMapping {
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
        });
    }
    let mut hc = HealthCheckSpec::new(HealthCheckKind::Http {
        port: 80,
        path: "/".into(),
    });
    hc.interval = Duration::from_millis(200);
    hc.grace = Duration::from_secs(10);
    spec.health_check = Some(hc);
    ex.launch(spec).await.expect("launch");
    ev.running("web").await;

    let deadline = Instant::now() + T;
    let body = loop {
        if let Some(r) = tokio::task::spawn_blocking(move || http_get(port))
            .await
            .expect("join")
        {
            if r.starts_with("HTTP/1.") && r.contains(" 200 ") {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server not reachable on 127.0.0.1:{port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("hello-shoal"), "{body}");
    ev.until("web", T, |u| {
        *u == TaskUpdate::Running {
            healthy: Some(true),
        }
    })
    .await;

    // A second task on the same host port cannot start; the first is unharmed.
    let mut clash = docker_task(dir.path(), "clash", "httpd -f -p 80");
    if let ContainerSpec::Docker(d) = &mut clash.container {
        d.port_mappings.push(PortMapping {
            host_port: port,
            container_port: 80,
            protocol: Protocol::Tcp,
        });
    }
    ex.launch(clash).await.expect("launch");
    match ev.terminal("clash", T).await {
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            message,
            ..
        } => {
            assert!(message.contains("start"), "{message}")
        }
        u => panic!("{u:?}"),
    }
    assert!(tokio::task::spawn_blocking(move || http_get(port))
        .await
        .expect("join")
        .is_some());
    assert_eq!(ex.tasks(), vec!["web".to_string()]);

    ex.kill("web", Some(Duration::from_secs(1)))
        .await
        .expect("kill");
    assert!(matches!(
        ev.terminal("web", T).await,
        TaskUpdate::Killed { .. }
    ));
    cleanup(&ex).await;
}

#[tokio::test]
async fn docker_limits_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "limits").await else {
        return;
    };
    let mut spec = docker_task(dir.path(), "limited", "sleep 1000");
    spec.limits = Limits {
        cpus: 0.5,
        mem_mb: 64,
    };
    spec.labels.push(("team".into(), "storage".into()));
    ex.launch(spec).await.expect("launch");
    ev.running("limited").await;
    let id = ex
        .container_id("limited")
        .await
        .expect("list")
        .expect("container");
    let c = ex
        .docker()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    let h = c.host_config.expect("host config");
    assert_eq!(h.memory, Some(64 * 1024 * 1024));
    assert_eq!(h.memory_swap, Some(64 * 1024 * 1024));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    let labels = c.config.and_then(|c| c.labels).expect("labels");
    assert_eq!(
        labels.get("shoal.task_id").map(String::as_str),
        Some("limited")
    );
    assert_eq!(
        labels.get("shoal.managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("storage"));
    cleanup(&ex).await;
    assert!(matches!(
        ev.terminal("limited", T).await,
        TaskUpdate::Killed { .. }
    ));
}

#[tokio::test]
async fn docker_oom_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "oom").await else {
        return;
    };
    let mut spec = docker_task(dir.path(), "hog", MEMORY_HOG);
    spec.limits.mem_mb = 16;
    ex.launch(spec).await.expect("launch");
    match ev.terminal("hog", T).await {
        TaskUpdate::Failed {
            reason: FailReason::Oom,
            ..
        } => {}
        u => panic!("expected an OOM failure, got {u:?}"),
    }
    cleanup(&ex).await;
}

#[tokio::test]
async fn docker_missing_image_and_bad_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "missing").await else {
        return;
    };
    // A registry on a closed loopback port: the pull fails at once, no traffic leaves the host.
    let mut spec = docker_task(dir.path(), "noimage", "true");
    spec.container = ContainerSpec::Docker(DockerSpec::new("127.0.0.1:1/shoal-missing:latest"));
    ex.launch(spec).await.expect("launch");
    match ev.terminal("noimage", Duration::from_secs(120)).await {
        TaskUpdate::Failed {
            reason: FailReason::ImageMissing,
            message,
            ..
        } => {
            assert!(message.contains("shoal-missing"), "{message}")
        }
        u => panic!("{u:?}"),
    }

    let mut spec = docker_task(dir.path(), "badport", "true");
    if let ContainerSpec::Docker(d) = &mut spec.container {
        d.port_mappings.push(PortMapping {
            host_port: 0,
            container_port: 80,
            protocol: Protocol::Tcp,
        });
    }
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("badport", T).await,
        TaskUpdate::Error { .. }
    ));

    let mut spec = docker_task(dir.path(), "process-on-docker", "true");
    spec.container = ContainerSpec::Process;
    ex.launch(spec).await.expect("launch");
    assert!(matches!(
        ev.terminal("process-on-docker", T).await,
        TaskUpdate::Error { .. }
    ));

    // A program that does not exist in the image: docker refuses to start it.
    let mut spec = docker_task(dir.path(), "noprog", "");
    spec.command = Some(CommandSpec::argv("/no/such/program", Vec::<String>::new()));
    ex.launch(spec).await.expect("launch");
    match ev.terminal("noprog", T).await {
        TaskUpdate::Failed {
            reason: FailReason::LaunchFailed,
            ..
        }
        | TaskUpdate::Failed {
            reason: FailReason::CommandExit,
            ..
        } => {}
        u => panic!("{u:?}"),
    }

    ex.launch(docker_task(dir.path(), "fine", "true"))
        .await
        .expect("launch");
    assert_eq!(ev.terminal("fine", T).await, TaskUpdate::Finished);
    cleanup(&ex).await;
}

#[tokio::test]
async fn docker_group_shares_network_and_dies_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((ex, mut ev, _cleanup)) = docker_executor(dir.path(), "group").await else {
        return;
    };
    let mut owner = docker_task(
        dir.path(),
        "server",
        "mkdir -p /www && echo from-server > /www/index.html && httpd -f -p 8080 -h /www",
    );
    owner.group = Some("pod".into());
    let mut client = docker_task(
        dir.path(),
        "client",
        "for i in $(seq 100); do if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080 | grep -q from-server; then echo reached; exit 0; fi; sleep 0.2; done; exit 1",
    );
    client.group = Some("pod".into());
    let mut sidecar = docker_task(dir.path(), "sidecar", "sleep 1000");
    sidecar.group = Some("pod".into());
    ex.launch(owner).await.expect("launch");
    ex.launch(client).await.expect("launch");
    ex.launch(sidecar).await.expect("launch");

    assert_eq!(ev.terminal("client", T).await, TaskUpdate::Finished);
    assert_eq!(
        read(dir.path().join("sandboxes/client/stdout")),
        "reached\n"
    );
    ev.running("sidecar").await;
    let sid = ex
        .container_id("sidecar")
        .await
        .expect("list")
        .expect("sidecar");
    let c = ex
        .docker()
        .inspect_container(&sid, None)
        .await
        .expect("inspect");
    let mode = c
        .host_config
        .and_then(|h| h.network_mode)
        .unwrap_or_default();
    assert!(mode.starts_with("container:"), "{mode}");

    ex.kill("server", Some(Duration::from_secs(1)))
        .await
        .expect("kill");
    assert!(matches!(
        ev.terminal("server", T).await,
        TaskUpdate::Killed { .. }
    ));
    assert!(matches!(
        ev.terminal("sidecar", T).await,
        TaskUpdate::Killed { .. }
    ));
    cleanup(&ex).await;
}

#[tokio::test]
async fn orphaned_containers_of_gone_or_stale_agents_removed_and_a_live_agents_kept() {
    let live_dir = tempfile::tempdir().expect("tempdir");
    let Some((live, mut live_ev, _c1)) = docker_executor(live_dir.path(), "orph-live").await else {
        return;
    };
    let roots: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let pid = std::process::id();
    let connect = |root: PathBuf, name: &str, timeout: Duration| {
        let agent_id = format!("test-{name}-{pid}");
        async move {
            let (tx, ev) = Events::new();
            let mut cfg = DockerConfig::new(agent_id.clone(), root.join("state"));
            cfg.recovery_timeout = timeout;
            let ex = DockerExecutor::connect(cfg, tx).await.expect("connect");
            let guard = RemoveContainers {
                docker: ex.docker().clone(),
                agent_id,
            };
            (ex, ev, guard)
        }
    };
    let quick = Duration::from_secs(1);
    let (stale, mut stale_ev, _c2) =
        connect(roots[0].path().to_path_buf(), "orph-stale", quick).await;
    let (gone, mut gone_ev, _c3) = connect(
        roots[1].path().to_path_buf(),
        "orph-gone",
        Duration::from_secs(900),
    )
    .await;
    let mut ids = Vec::new();
    for (ex, ev, root, task) in [
        (&live, &mut live_ev, live_dir.path().to_path_buf(), "keep"),
        (
            &stale,
            &mut stale_ev,
            roots[0].path().to_path_buf(),
            "stale",
        ),
        (&gone, &mut gone_ev, roots[1].path().to_path_buf(), "gone"),
    ] {
        let mut spec = docker_task(&root, task, "exec sleep 600");
        spec.kill_grace = Duration::from_secs(1);
        ex.launch(spec).await.expect("launch");
        ev.running(task).await;
        ids.push(
            ex.container_id(task)
                .await
                .expect("list")
                .expect("container"),
        );
    }
    // Two agents end: one's work dir is removed, the other's heartbeat goes stale.
    drop(stale);
    drop(gone);
    std::fs::remove_dir_all(roots[1].path().join("state")).expect("remove work dir");
    let alive_file = roots[0].path().join("state").join("alive");
    wait_until(
        "the stale agent's heartbeat is older than its timeout",
        T,
        || {
            std::fs::metadata(&alive_file)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > quick)
        },
    )
    .await;

    // A new agent on another work dir of this host sweeps at recovery.
    let (sweeper, _ev, _c4) = connect(roots[2].path().to_path_buf(), "orph-sweeper", quick).await;
    sweeper.recover(&[]).await.expect("recover");
    let docker = sweeper.docker().clone();
    let exists = |cid: String| {
        let docker = docker.clone();
        async move { docker.inspect_container(&cid, None).await.is_ok() }
    };
    let started = Instant::now();
    loop {
        let left = (exists(ids[1].clone()).await, exists(ids[2].clone()).await);
        if left == (false, false) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "orphaned containers left (stale, gone): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The live agent's container was never touched.
    let c = docker
        .inspect_container(&ids[0], None)
        .await
        .expect("live container");
    assert_eq!(c.state.and_then(|s| s.running), Some(true));
    live.kill("keep", Some(Duration::ZERO)).await.expect("kill");
    live_ev.terminal("keep", T).await;
}
