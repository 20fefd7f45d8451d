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
