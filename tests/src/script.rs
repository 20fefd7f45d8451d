//! Framework scripts (`tests/frameworks`) and other commands run with a timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wait::wait_or_kill;

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
