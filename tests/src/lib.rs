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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug").join("shoal");
    assert!(bin.exists(), "{} not built: run `cargo build -p shoal` first", bin.display());
    bin
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
        let (child, addr) = Self::spawn(work_dir, &extra);
        MasterProc { work_dir: work_dir.to_path_buf(), addr, child, extra }
    }

    fn spawn(work_dir: &Path, extra: &[String]) -> (Child, String) {
        std::fs::create_dir_all(work_dir).unwrap();
        let addr_file = work_dir.join("master.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(work_dir.join("master.log")).unwrap();
        let child = Command::new(shoal_bin())
            .args(["master", "--listen", "127.0.0.1:0", "--work-dir"])
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
            assert!(Instant::now() < until, "master did not write {}", addr_file.display());
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
        let (child, addr) = Self::spawn(&self.work_dir, &self.extra);
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
        let mut a = AgentProc { work_dir, master: master.to_string(), child: None, args: extra.iter().map(|s| s.to_string()).collect() };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.work_dir.join("agent.log")).unwrap();
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
        std::fs::read_to_string(self.work_dir.join("state").join("agent_id")).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
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

    /// Best effort: SIGKILLs the process groups of tasks the process executor recorded, and
    /// removes containers whose sandbox is under this work dir.
    pub fn cleanup_tasks(&self) {
        let tasks = self.work_dir.join("state").join("process").join("tasks");
        if let Ok(rd) = std::fs::read_dir(&tasks) {
            for e in rd.flatten() {
                let Ok(data) = std::fs::read(e.path().join("record.json")) else { continue };
                let Ok(rec) = serde_json::from_slice::<serde_json::Value>(&data) else { continue };
                if let Some(pgid) = rec["pgid"].as_i64().filter(|p| *p > 1) {
                    if Path::new(&format!("/proc/{pgid}")).exists() {
                        // SAFETY: plain kill(2) of a process group the agent started.
                        unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
                    }
                }
            }
        }
        let out = Command::new("docker")
            .args(["ps", "-a", "--filter", "label=shoal.managed=true", "--format", "{{.ID}} {{.Label \"shoal.sandbox\"}}"])
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
                let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).stderr(Stdio::null()).status();
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
    if std::env::var("CI").as_deref() == Ok("true") || std::env::var("SHOAL_TEST_DOCKER").as_deref() == Ok("1") {
        return true;
    }
    let ok = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
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

/// Runs `python tests/frameworks/<script> <args...>` with a timeout (SIGKILL then); its output
/// goes to `<log_dir>/<script>.<n>.log` and into the returned [`ScriptRun`].
pub fn run_script(python: &Path, script: &str, args: &[&str], timeout: Duration, log_dir: &Path) -> ScriptRun {
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
    let started = Instant::now();
    let mut child = Command::new(python)
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
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    ScriptRun { script: script.to_string(), status, output, elapsed: started.elapsed() }
}
