//! Helpers for integration tests: run the real `shoal` binary, wait on conditions with
//! deadlines (never fixed sleeps), and kill processes the hard way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `shoal` binary under test: `$SHOAL_BIN`, else the workspace's debug build.
pub fn shoal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug").join("shoal");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p shoal` first",
        bin.display()
    );
    bin
}

/// A name unique to this test run (hostnames, task ids), so tests running in parallel never meet.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}

/// Polls `cond` until it holds or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A `shoal master` process on 127.0.0.1 with a free port.
pub struct MasterProc {
    pub work_dir: PathBuf,
    pub addr: String,
    child: Child,
    extra: Vec<String>,
}

impl MasterProc {
    pub fn start(work_dir: &Path, extra: &[&str]) -> MasterProc {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = Self::spawn(work_dir, "127.0.0.1:0", &extra);
        MasterProc {
            work_dir: work_dir.to_path_buf(),
            addr,
            child,
            extra,
        }
    }

    fn spawn(work_dir: &Path, listen: &str, extra: &[String]) -> (Child, String) {
        std::fs::create_dir_all(work_dir).unwrap();
        let addr_file = work_dir.join("master.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join("master.log"))
            .unwrap();
        // Returned to `MasterProc`, whose `Drop` kills and reaps it.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(shoal_bin())
            .args(["master", "--listen", listen, "--work-dir"])
            .arg(work_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal master");
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    return (child, format!("http://{a}"));
                }
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("master did not write {}", addr_file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> shoal_client::Client {
        shoal_client::Client::new(&self.addr).unwrap()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the master again on the same work dir (a new port).
    pub fn restart(&mut self) {
        self.kill9();
        let (child, addr) = Self::spawn(&self.work_dir, "127.0.0.1:0", &self.extra);
        self.child = child;
        self.addr = addr;
    }

    /// Starts the master again on the same work dir and the same address, so that agents
    /// joined to it come back on their own (as after a master crash on a fixed port).
    pub fn restart_same_addr(&mut self) {
        self.kill9();
        let listen = self.addr.trim_start_matches("http://").to_string();
        let (child, addr) = Self::spawn(&self.work_dir, &listen, &self.extra);
        self.child = child;
        self.addr = addr;
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `shoal agent` process joined to a master, on its own work dir. It can be SIGKILLed and
/// started again on the same work dir (it then re-attaches to its tasks).
///
/// Dropping it SIGKILLs the agent and, best effort, what it left running: task processes
/// (from the process executor's records) and containers whose sandbox is under the work dir.
pub struct AgentProc {
    pub work_dir: PathBuf,
    pub master: String,
    child: Option<Child>,
    args: Vec<String>,
}

impl AgentProc {
    /// Starts `shoal agent --master <master> --work-dir <work_dir> <extra...>`.
    pub fn start(master: &str, work_dir: &Path, extra: &[&str]) -> AgentProc {
        std::fs::create_dir_all(work_dir).unwrap();
        let work_dir = work_dir.canonicalize().unwrap();
        let mut a = AgentProc {
            work_dir,
            master: master.to_string(),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work_dir.join("agent.log"))
            .unwrap();
        let child = Command::new(shoal_bin())
            .args(["agent", "--master", &self.master, "--work-dir"])
            .arg(&self.work_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The id the master gave this agent (written by the agent once registered).
    pub fn agent_id(&self) -> Option<String> {
        std::fs::read_to_string(self.work_dir.join("state").join("agent_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The agent's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work_dir.join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs; the tasks keep running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same work dir, joined to `master` (which may have moved).
    pub fn restart(&mut self, master: &str) {
        self.kill9();
        self.master = master.to_string();
        self.spawn();
    }

    /// Best effort: SIGKILLs the process groups of tasks the process executor recorded (and
    /// removes their cgroups), and removes containers whose sandbox is under this work dir.
    pub fn cleanup_tasks(&self) {
        let tasks = self.work_dir.join("state").join("process").join("tasks");
        let mut cgroups: Vec<PathBuf> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&tasks) {
            for e in rd.flatten() {
                let Ok(data) = std::fs::read(e.path().join("record.json")) else {
                    continue;
                };
                let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&data) else {
                    continue;
                };
                if let Some(pgid) = rec["pgid"].as_i64().filter(|p| *p > 1) {
                    if Path::new(&format!("/proc/{pgid}")).exists() {
                        // SAFETY: plain kill(2) of a process group the agent started.
                        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
                    }
                }
                if let Some(dirs) = rec["cgroups"].as_array() {
                    cgroups.extend(dirs.iter().filter_map(|d| d.as_str()).map(PathBuf::from));
                }
            }
        }
        // The task cgroups, then their parents (refused while another agent's are in them);
        // a cgroup can go once the killed processes are reaped.
        let parents: Vec<PathBuf> = cgroups
            .iter()
            .filter_map(|c| c.parent().map(Path::to_path_buf))
            .collect();
        let until = Instant::now() + Duration::from_secs(2);
        for dir in cgroups.iter().chain(&parents) {
            while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Cgroups of a task the agent was killed before recording (its orphaned task may
        // still be on its way out).
        let state = self.work_dir.join("state").join("process");
        if let Ok(state) = state.canonicalize() {
            use shoal_agent::executor::{cgroup::Cgroups, process::cgroup_key};
            let cg = Cgroups::detect(Path::new("/sys/fs/cgroup"), &cgroup_key(&state));
            let parents: Vec<PathBuf> = match &cg {
                Cgroups::V2 { parent } => vec![parent.clone()],
                Cgroups::V1 { memory, cpu } => memory.iter().chain(cpu).cloned().collect(),
                Cgroups::Off { .. } => Vec::new(),
            };
            loop {
                cg.sweep();
                if parents.iter().all(|p| !p.exists()) || Instant::now() > until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=shoal.managed=true",
                "--format",
                "{{.ID}} {{.Label \"shoal.sandbox\"}}",
            ])
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            let root = self.work_dir.to_string_lossy().to_string();
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(_, sb)| sb.starts_with(&root))
                .map(|(id, _)| id.to_string())
                .collect();
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
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        self.cleanup_tasks();
    }
}

/// Whether Docker tests run: always in CI (`CI=true`) or when the test script says Docker
/// works (`SHOAL_TEST_DOCKER=1`); otherwise only when `docker info` succeeds. Prints why
/// when they are skipped.
pub fn docker_enabled(test: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("SHOAL_TEST_DOCKER").as_deref() == Ok("1")
    {
        return true;
    }
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipping {test}: `docker info` fails and CI is not \"true\"");
    }
    ok
}

// ---------------------------------------------------------------- Mesos framework tests

impl MasterProc {
    /// The master's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work_dir.join("master.log")).unwrap_or_default()
    }

    /// `host:port` of the master (its address without `http://`), as Mesos clients take it.
    pub fn host_port(&self) -> &str {
        self.addr.trim_start_matches("http://")
    }
}

/// The last `n` lines of `text` (for failure messages about long logs).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines]\n"));
    }
    for l in &lines[skip..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The Python that has pymesos, for the framework tests: `$SHOAL_TEST_PYTHON` (set by
/// `scripts/test`). When it is unset: `None` with a printed reason outside CI; a panic in CI
/// (`CI=true`).
pub fn test_python(test: &str) -> Option<PathBuf> {
    match std::env::var("SHOAL_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: SHOAL_TEST_PYTHON is not set (scripts/test sets it to a venv with pymesos), and CI is \"true\"");
            }
            eprintln!("skipping {test}: SHOAL_TEST_PYTHON is not set (run scripts/test, or point it at a Python with pymesos 0.3.15)");
            None
        }
    }
}

/// `tests/frameworks`: the pymesos test frameworks.
pub fn frameworks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("frameworks")
}

/// How a framework script ended.
pub struct ScriptRun {
    pub script: String,
    /// `None`: killed at the timeout.
    pub status: Option<std::process::ExitStatus>,
    /// Its stdout and stderr, interleaved.
    pub output: String,
    pub elapsed: Duration,
}

impl ScriptRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A one-line account of how it ended.
    pub fn outcome(&self) -> String {
        match self.status {
            None => format!("{} killed after {:?} (timeout)", self.script, self.elapsed),
            Some(s) => format!("{} exited with {s} after {:?}", self.script, self.elapsed),
        }
    }
}

/// Waits for `child` to exit until `until`; past it, SIGKILLs it and returns `None`.
fn wait_or_kill(
    child: &mut std::process::Child,
    until: Instant,
) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `python tests/frameworks/<script> <args...>`, its output going to a fresh
/// `<log_dir>/<script>.<n>.log`: the child and the log's path.
fn spawn_framework(python: &Path, script: &str, args: &[&str], log_dir: &Path) -> (Child, PathBuf) {
    std::fs::create_dir_all(log_dir).unwrap();
    let mut n = 0;
    let log_path = loop {
        let p = log_dir.join(format!("{script}.{n}.log"));
        if !p.exists() {
            break p;
        }
        n += 1;
    };
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(python)
        .arg(frameworks_dir().join(script))
        .args(args)
        .current_dir(frameworks_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {script}: {e}", python.display()));
    (child, log_path)
}

/// Runs `python tests/frameworks/<script> <args...>` with a timeout (SIGKILL then); its output
/// goes to `<log_dir>/<script>.<n>.log` and into the returned [`ScriptRun`].
pub fn run_script(
    python: &Path,
    script: &str,
    args: &[&str],
    timeout: Duration,
    log_dir: &Path,
) -> ScriptRun {
    let started = Instant::now();
    let (mut child, log_path) = spawn_framework(python, script, args, log_dir);
    let status = wait_or_kill(&mut child, started + timeout);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    ScriptRun {
        script: script.to_string(),
        status,
        output,
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------- offers and native claims together

/// A framework script running in the background ([`spawn_script`]); SIGKILLed when dropped.
pub struct BackgroundScript {
    pub script: String,
    child: Option<Child>,
    log_path: PathBuf,
    started: Instant,
}

/// Starts `python tests/frameworks/<script> <args...>` without waiting for it; its output goes
/// to `<log_dir>/<script>.<n>.log` (as [`run_script`]).
pub fn spawn_script(
    python: &Path,
    script: &str,
    args: &[&str],
    log_dir: &Path,
) -> BackgroundScript {
    let (child, log_path) = spawn_framework(python, script, args, log_dir);
    BackgroundScript {
        script: script.to_string(),
        child: Some(child),
        log_path,
        started: Instant::now(),
    }
}

impl BackgroundScript {
    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits (blocking) until it exits, at most `timeout` (SIGKILL then).
    pub fn wait(mut self, timeout: Duration) -> ScriptRun {
        let mut child = self.child.take().expect("not waited yet");
        let status = wait_or_kill(&mut child, Instant::now() + timeout);
        ScriptRun {
            script: self.script.clone(),
            status,
            output: self.output(),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for BackgroundScript {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Liveness flags for a test master: fast agent heartbeats, agents unreachable only after
/// 30 s (a slow start on a busy machine does not trip liveness), a 1 s kill grace.
pub const FAST_MASTER_FLAGS: &[&str] = &[
    "--agent-heartbeat-interval",
    "200ms",
    "--agent-ping-timeout",
    "2s",
    "--agent-unreachable-timeout",
    "30s",
    "--kill-grace",
    "1s",
];

/// Scheduler-API timers of the Mesos tests: an allocation round every 100 ms (offers come
/// quickly after a DECLINE's filter expires, a REVIVE, a freed resource), HEARTBEAT events
/// every second, unacknowledged status updates resent every 500 ms. Left at their defaults:
/// `--offer-timeout` (60 s), `--offers-per-framework-max`.
pub const MESOS_API_FLAGS: &[&str] = &[
    "--allocation-interval",
    "100ms",
    "--scheduler-heartbeat-interval",
    "1s",
    "--status-update-retry",
    "500ms",
];

/// Master flags of the Mesos tests: [`FAST_MASTER_FLAGS`] and [`MESOS_API_FLAGS`].
pub fn mesos_master_flags() -> Vec<&'static str> {
    [FAST_MASTER_FLAGS, MESOS_API_FLAGS].concat()
}

/// One agent of a [`MesosCell`].
#[derive(Clone, Copy, Debug)]
pub struct MesosAgentSpec<'a> {
    /// `--resources`, Mesos text form.
    pub resources: &'a str,
    /// `--containerizers`: `process` or `docker`.
    pub containerizers: &'a str,
    /// `--attributes` (empty: none).
    pub attributes: &'a str,
}

impl MesosAgentSpec<'_> {
    /// A process-executor agent with `resources`.
    pub fn process(resources: &str) -> MesosAgentSpec<'_> {
        MesosAgentSpec {
            resources,
            containerizers: "process",
            attributes: "",
        }
    }
}

/// Starts an agent with fast timers (heartbeats, status retries, re-registration, kill grace),
/// the given executors and `resources`, plus `extra` flags.
pub fn start_fast_agent(
    master: &str,
    work_dir: &Path,
    hostname: &str,
    containerizers: &str,
    resources: &str,
    extra: &[&str],
) -> AgentProc {
    let mut args = vec![
        "--hostname",
        hostname,
        "--containerizers",
        containerizers,
        "--heartbeat-interval",
        "200ms",
        "--status-retry",
        "200ms",
        "--reregister-backoff-max",
        "200ms",
        "--kill-grace",
        "1s",
        "--resources",
        resources,
    ];
    args.extend_from_slice(extra);
    AgentProc::start(master, work_dir, &args)
}

/// Starts an agent for the Mesos tests: fast timers, the executors, resources and attributes
/// of `spec`.
pub fn start_mesos_agent(
    master: &str,
    work_dir: &Path,
    hostname: &str,
    spec: MesosAgentSpec<'_>,
) -> AgentProc {
    let mut extra = Vec::new();
    if !spec.attributes.is_empty() {
        extra.extend(["--attributes", spec.attributes]);
    }
    start_fast_agent(
        master,
        work_dir,
        hostname,
        spec.containerizers,
        spec.resources,
        &extra,
    )
}

/// A master (with [`mesos_master_flags()`] and more) and its agents, on one temporary
/// directory, for the Mesos API tests.
pub struct MesosCell {
    pub master: MasterProc,
    pub agents: Vec<AgentProc>,
    /// The agents' ids, in the order of `agents`.
    pub agent_ids: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl MesosCell {
    /// Starts the master ([`mesos_master_flags()`], overridden or extended by
    /// `extra_master_flags`) and one agent per
    /// spec (hostnames unique to `name`), and waits until every agent is active.
    pub async fn start(
        name: &str,
        extra_master_flags: &[&str],
        agents: &[MesosAgentSpec<'_>],
    ) -> Result<MesosCell, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary dir: {e}"))?;
        // mesos_master_flags() is flag/value pairs; a flag given again in `extra_master_flags`
        // replaces ours (clap refuses a flag given twice).
        let mut flags: Vec<&str> = mesos_master_flags()
            .chunks(2)
            .filter(|pair| !extra_master_flags.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        flags.extend_from_slice(extra_master_flags);
        check_master_flags(&flags)?;
        let master = MasterProc::start(&dir.path().join("master"), &flags);
        let hostnames: Vec<String> = (0..agents.len())
            .map(|i| unique(&format!("{name}-a{i}")))
            .collect();
        let procs: Vec<AgentProc> = agents
            .iter()
            .zip(&hostnames)
            .enumerate()
            .map(|(i, (spec, h))| {
                start_mesos_agent(
                    &master.addr,
                    &dir.path().join(format!("agent{i}")),
                    h,
                    *spec,
                )
            })
            .collect();
        let names: Vec<&str> = hostnames.iter().map(String::as_str).collect();
        let cell = MesosCell {
            master,
            agents: procs,
            agent_ids: Vec::new(),
            dir,
        };
        match wait_agents_active(&cell.master.client(), &names, Duration::from_secs(20)).await {
            Ok(ids) => Ok(MesosCell {
                agent_ids: ids,
                ..cell
            }),
            Err(e) => Err(format!("{e}\n{}", cell.logs(100, 60))),
        }
    }

    /// The ends of the master's log (`master_lines`) and of each agent's (`agent_lines`).
    pub fn logs(&self, master_lines: usize, agent_lines: usize) -> String {
        let mut out = format!(
            "----- master log (end) -----\n{}",
            tail(&self.master.log(), master_lines)
        );
        for (i, a) in self.agents.iter().enumerate() {
            out.push_str(&format!(
                "----- agent {i} log (end) -----\n{}",
                tail(&a.log(), agent_lines)
            ));
        }
        out
    }
}

/// Fails clearly (instead of with a master that never starts) when `shoal master` does not
/// know one of `flags`.
fn check_master_flags(flags: &[&str]) -> Result<(), String> {
    let help = Command::new(shoal_bin())
        .args(["master", "--help"])
        .output()
        .map_err(|e| format!("shoal master --help: {e}"))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let known = |f: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == f)
    };
    let unknown: Vec<&&str> = flags
        .iter()
        .filter(|f| f.starts_with("--") && !known(f))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "`shoal master` does not know {unknown:?}; its --help:\n{help}"
        ))
    }
}

/// Waits until an active agent is registered for each of `hostnames`; their ids, in order.
pub async fn wait_agents_active(
    client: &shoal_client::Client,
    hostnames: &[&str],
    deadline: Duration,
) -> Result<Vec<String>, String> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(st) = client.state().await {
            let ids: Vec<Option<String>> = hostnames
                .iter()
                .map(|h| {
                    st.agents
                        .iter()
                        .find(|a| a.hostname == *h && a.state == shoal_core::AgentState::Active)
                        .map(|a| a.id.to_string())
                })
                .collect();
            if ids.iter().all(Option::is_some) {
                return Ok(ids.into_iter().flatten().collect());
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "agents {hostnames:?} not all active within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per agent, the sum of the resources of its non-terminal tasks.
pub fn live_task_resources(
    state: &shoal_client::State,
) -> Result<std::collections::BTreeMap<String, shoal_core::ResourceSet>, String> {
    let mut out: std::collections::BTreeMap<String, shoal_core::ResourceSet> =
        std::collections::BTreeMap::new();
    for t in state.tasks.iter().filter(|t| !t.state.is_terminal()) {
        out.entry(t.agent_id.to_string())
            .or_default()
            .add(&t.resources)
            .map_err(|e| format!("task {}: {e}", t.id))?;
    }
    Ok(out)
}

/// Per agent, what is allocated but not to a live task: what offers (holds) hold. The native
/// state shows no holds, but an agent's `allocated` counts them. Empty sets are left out.
pub fn held_resources(
    state: &shoal_client::State,
) -> Result<std::collections::BTreeMap<String, shoal_core::ResourceSet>, String> {
    let tasks = live_task_resources(state)?;
    let mut out = std::collections::BTreeMap::new();
    for a in &state.agents {
        let mut held = a.allocated.clone();
        let used = tasks.get(a.id.as_str()).cloned().unwrap_or_default();
        held.subtract(&used).map_err(|_| {
            format!(
                "agent {}: live tasks {used} exceed allocated {}",
                a.id, a.allocated
            )
        })?;
        if !held.is_empty() {
            out.insert(a.id.to_string(), held);
        }
    }
    Ok(out)
}

/// No double-booking in a native state snapshot: per agent, `allocated` (tasks and holds)
/// fits in `total`, the live tasks fit in `allocated`, and the core's own invariants hold on
/// the tasks (`Cell::check_invariants`: the live tasks of each agent fit in its total).
pub fn check_no_double_booking(state: &shoal_client::State) -> Result<(), String> {
    for a in &state.agents {
        if !a.total.contains(&a.allocated) {
            return Err(format!(
                "version {}: agent {} allocated {} > total {}",
                state.version, a.id, a.allocated, a.total
            ));
        }
    }
    held_resources(state).map_err(|e| format!("version {}: {e}", state.version))?;
    state
        .clone()
        .into_cell()
        .check_invariants()
        .map_err(|e| format!("version {}: {e}", state.version))
}

// ---------------------------------------------------------------- Mesos wire: RecordIO, JSON subscriptions, JSON shapes

/// Reads Mesos RecordIO (`docs/recordio.md`: `<decimal length>\n<that many bytes>`, repeated)
/// from an HTTP response body; record boundaries are independent of chunk boundaries.
pub struct RecordIoReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>,
    buf: Vec<u8>,
}

impl RecordIoReader {
    pub fn new(resp: reqwest::Response) -> RecordIoReader {
        use futures::StreamExt as _;
        let body = resp
            .bytes_stream()
            .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()));
        RecordIoReader {
            body: Box::pin(body),
            buf: Vec::new(),
        }
    }

    /// The next record; `Ok(None)` when the stream ended cleanly between records.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        use futures::StreamExt as _;
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let header = std::str::from_utf8(&self.buf[..nl])
                    .map_err(|_| format!("RecordIO length is not text: {:?}", &self.buf[..nl]))?;
                if header.is_empty() || !header.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "RecordIO length is not a decimal number: {header:?}"
                    ));
                }
                let len: usize = header
                    .parse()
                    .map_err(|e| format!("RecordIO length {header:?}: {e}"))?;
                if len == 0 {
                    return Err("RecordIO record of length 0 (Mesos never sends one)".into());
                }
                if self.buf.len() >= nl + 1 + len {
                    let record = self.buf[nl + 1..nl + 1 + len].to_vec();
                    self.buf.drain(..nl + 1 + len);
                    return Ok(Some(record));
                }
            } else if self.buf.len() > 20 {
                return Err(format!(
                    "no newline after {} bytes of RecordIO length: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..20])
                ));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(format!("reading the event stream: {e}")),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(format!(
                        "event stream ended inside a record ({} bytes pending)",
                        self.buf.len()
                    ))
                }
            }
        }
    }
}

/// A Mesos v1 scheduler subscription in JSON (`POST /api/v1/scheduler`, `Accept:
/// application/json`), driven by hand: every event read is kept in `events`.
pub struct JsonSubscription {
    pub framework_id: String,
    pub stream_id: String,
    /// The subscription response's Content-Type.
    pub content_type: String,
    /// Every event read so far, in order (the SUBSCRIBED event first).
    pub events: Vec<serde_json::Value>,
    url: String,
    http: reqwest::Client,
    reader: RecordIoReader,
}

impl JsonSubscription {
    /// Subscribes with `framework_info` to the master at `master` (`http://host:port`) and reads
    /// the first event, which must be SUBSCRIBED.
    pub async fn subscribe(
        master: &str,
        framework_info: serde_json::Value,
        deadline: Duration,
    ) -> Result<JsonSubscription, String> {
        let url = format!("{master}/api/v1/scheduler");
        let http = reqwest::Client::new();
        let mut body = serde_json::json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}});
        // A framework subscribing again with its id names it in the call too (Mesos checks
        // that the two agree).
        if !body["subscribe"]["framework_info"]["id"].is_null() {
            body["framework_id"] = body["subscribe"]["framework_info"]["id"].clone();
        }
        let resp = tokio::time::timeout(
            deadline,
            http.post(&url)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .body(body.to_string())
                .send(),
        )
        .await
        .map_err(|_| format!("SUBSCRIBE: no response within {deadline:?}"))?
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("SUBSCRIBE answered {status}: {text}"));
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let stream_id = header("Mesos-Stream-Id");
        let content_type = header("Content-Type");
        if stream_id.is_empty() {
            return Err("SUBSCRIBE answered 200 without a Mesos-Stream-Id header".into());
        }
        let mut sub = JsonSubscription {
            framework_id: String::new(),
            stream_id,
            content_type,
            events: Vec::new(),
            url,
            http,
            reader: RecordIoReader::new(resp),
        };
        let first = sub.next_event(deadline).await?;
        if first["type"] != "SUBSCRIBED" {
            return Err(format!("first event is not SUBSCRIBED: {first}"));
        }
        sub.framework_id = first["subscribed"]["framework_id"]["value"]
            .as_str()
            .ok_or_else(|| format!("SUBSCRIBED without framework_id.value: {first}"))?
            .to_string();
        Ok(sub)
    }

    /// The next event (any type).
    pub async fn next_event(&mut self, deadline: Duration) -> Result<serde_json::Value, String> {
        let record = tokio::time::timeout(deadline, self.reader.next())
            .await
            .map_err(|_| {
                format!(
                    "no event within {deadline:?} (events so far: {})",
                    self.event_types()
                )
            })??
            .ok_or_else(|| {
                format!(
                    "the event stream ended (events so far: {})",
                    self.event_types()
                )
            })?;
        let event: serde_json::Value = serde_json::from_slice(&record).map_err(|e| {
            format!(
                "event is not JSON ({e}): {}",
                String::from_utf8_lossy(&record)
            )
        })?;
        self.events.push(event.clone());
        Ok(event)
    }

    /// Reads events until one of type `ty` (others are kept in `events` only).
    pub async fn wait_for(
        &mut self,
        ty: &str,
        deadline: Duration,
    ) -> Result<serde_json::Value, String> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let e = self
                .next_event(left)
                .await
                .map_err(|e| format!("waiting for {ty}: {e}"))?;
            if e["type"] == ty {
                return Ok(e);
            }
        }
    }

    /// The types of the events read so far, e.g. `SUBSCRIBED, HEARTBEAT, OFFERS`.
    pub fn event_types(&self) -> String {
        self.events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sends a call (JSON) on its own connection, with this framework's id and stream id; the
    /// HTTP status and body.
    pub async fn call(&self, call: serde_json::Value) -> Result<(u16, String), String> {
        self.caller().call(call).await
    }

    /// What sends this framework's calls, apart from the subscription.
    pub fn caller(&self) -> JsonCaller {
        JsonCaller {
            framework_id: self.framework_id.clone(),
            stream_id: self.stream_id.clone(),
            url: self.url.clone(),
            http: self.http.clone(),
        }
    }

    /// Hands the rest of the event stream to a task that stamps every event with the instant
    /// it arrived (for latency measurements); it ends with the stream or the receiver.
    pub fn stamped_events(
        mut self,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<(Instant, serde_json::Value)>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = tokio::spawn(async move {
            while let Ok(Some(r)) = self.reader.next().await {
                let at = Instant::now();
                let Ok(e) = serde_json::from_slice(&r) else {
                    return;
                };
                if tx.send((at, e)).is_err() {
                    return;
                }
            }
        });
        (rx, handle)
    }
}

/// Sends the calls of a subscribed framework ([`JsonSubscription::caller`]).
#[derive(Clone)]
pub struct JsonCaller {
    pub framework_id: String,
    pub stream_id: String,
    url: String,
    http: reqwest::Client,
}

impl JsonCaller {
    /// Sends a call (JSON) with the framework's id and stream id; the HTTP status and body.
    pub async fn call(&self, mut call: serde_json::Value) -> Result<(u16, String), String> {
        call["framework_id"] = serde_json::json!({"value": self.framework_id});
        let resp = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Mesos-Stream-Id", &self.stream_id)
            .body(call.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("{} call: {e}", call["type"]))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}

/// The JSON type name of a value: string, number, bool, object, array, null.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Every field path of a JSON value with the types seen there: `a.b` for object members,
/// `a[]` for the elements of an array (all elements merged), e.g. `offers.offers[].id.value`.
/// The root itself is not listed.
pub fn json_shape(
    v: &serde_json::Value,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>> {
    fn walk(
        v: &serde_json::Value,
        path: &str,
        out: &mut std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>>,
    ) {
        if !path.is_empty() {
            out.entry(path.to_string())
                .or_default()
                .insert(json_type(v));
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for child in a {
                    walk(child, &format!("{path}[]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(v, "", &mut out);
    out
}

/// How a real JSON document differs from a reference (golden) one, field path by field path.
#[derive(Debug, Default)]
pub struct ShapeReport {
    /// Paths of the reference that the real document lacks (a missing object or array once,
    /// with the paths below it).
    pub missing: Vec<String>,
    /// `path: reference type vs real types` where both have the path.
    pub wrong_type: Vec<String>,
    /// Reference paths not checked, with why (see [`compare_shape`]).
    pub skipped: Vec<String>,
    /// Reference paths checked.
    pub checked: usize,
}

impl ShapeReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.wrong_type.is_empty()
    }

    /// A readable account: what is missing, what has another type, what was skipped.
    pub fn render(&self, what: &str) -> String {
        let mut s = format!("{what}: {} reference paths checked", self.checked);
        if !self.missing.is_empty() {
            s.push_str(&format!("\n  MISSING ({}):", self.missing.len()));
            for p in &self.missing {
                s.push_str(&format!("\n    {p}"));
            }
        }
        if !self.wrong_type.is_empty() {
            s.push_str(&format!("\n  WRONG TYPE ({}):", self.wrong_type.len()));
            for p in &self.wrong_type {
                s.push_str(&format!("\n    {p}"));
            }
        }
        if !self.skipped.is_empty() {
            s.push_str(&format!("\n  skipped ({}):", self.skipped.len()));
            for p in &self.skipped {
                s.push_str(&format!("\n    {p}"));
            }
        }
        s
    }
}

/// Checks that every field path of `reference` is in `actual` with the same JSON type (values
/// may differ; `actual` may have more). `skip` is `(rule, why)`: rule `a.b` skips that path and
/// everything below it, `a.b.*` only what is below it.
pub fn compare_shape(
    reference: &serde_json::Value,
    actual: &serde_json::Value,
    skip: &[(&str, &str)],
) -> ShapeReport {
    let below = |p: &str, base: &str| {
        p.starts_with(&format!("{base}.")) || p.starts_with(&format!("{base}[]"))
    };
    let reference = json_shape(reference);
    let actual = json_shape(actual);
    let mut report = ShapeReport::default();
    let mut skipped: Vec<usize> = vec![0; skip.len()];
    let mut missing: Vec<(String, String)> = Vec::new();
    for (path, types) in &reference {
        let rule = skip.iter().position(|(r, _)| match r.strip_suffix(".*") {
            Some(base) => below(path, base),
            None => path == r || below(path, r),
        });
        if let Some(i) = rule {
            skipped[i] += 1;
            continue;
        }
        report.checked += 1;
        match actual.get(path) {
            None => missing.push((
                path.clone(),
                types.iter().copied().collect::<Vec<_>>().join("|"),
            )),
            Some(real) => {
                if !types.iter().all(|t| real.contains(t)) {
                    report.wrong_type.push(format!(
                        "{path}: reference {} vs shoal {}",
                        types.iter().copied().collect::<Vec<_>>().join("|"),
                        real.iter().copied().collect::<Vec<_>>().join("|")
                    ));
                }
            }
        }
    }
    // A missing object or array is listed once, with the paths below it.
    for (path, types) in &missing {
        if missing.iter().any(|(other, _)| below(path, other)) {
            continue;
        }
        let under: Vec<String> = missing
            .iter()
            .filter(|(other, _)| below(other, path))
            .map(|(other, t)| format!("{}:{t}", &other[path.len()..]))
            .collect();
        let more = if under.is_empty() {
            String::new()
        } else {
            format!("; with {}", under.join(" "))
        };
        report.missing.push(format!("{path} ({types}{more})"));
    }
    for ((rule, why), n) in skip.iter().zip(skipped) {
        if n > 0 {
            report.skipped.push(format!(
                "{rule} ({n} path{}): {why}",
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    report
}

/// Runs `cmd` (its output to `<log_dir>/<name>.<n>.log`) with a timeout (SIGKILL then).
pub fn run_command(mut cmd: Command, name: &str, timeout: Duration, log_dir: &Path) -> ScriptRun {
    std::fs::create_dir_all(log_dir).unwrap();
    let mut n = 0;
    let log_path = loop {
        let p = log_dir.join(format!("{name}.{n}.log"));
        if !p.exists() {
            break p;
        }
        n += 1;
    };
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let status = wait_or_kill(&mut child, started + timeout);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    ScriptRun {
        script: name.to_string(),
        status,
        output,
        elapsed: started.elapsed(),
    }
}

/// POSTs a body as is; the HTTP status and the JSON answer (null when it is not JSON).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> (u16, serde_json::Value) {
    // Job and service files are JSON or TOML text; the master reads them by their type.
    let json = matches!(body.trim_start().chars().next(), Some('{' | '['));
    let content_type = if json {
        "application/json"
    } else {
        "application/toml"
    };
    let resp = http
        .post(url)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// GETs a JSON answer; `None` unless the status is a success.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let resp = http.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}
