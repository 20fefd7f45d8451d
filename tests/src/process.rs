//! The `shoal master` and `shoal agent` processes under test, and names unique to a test run.

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

    /// SIGTERM, then waits (up to 20 s, then SIGKILL): the master's shutdown code runs.
    pub fn terminate(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid; it is not reaped before `wait` below.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
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
