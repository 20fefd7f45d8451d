//! A child process driven by a line protocol: commands on its stdin, one JSON value a line
//! on its stdout (as `tests/frameworks/go/v0sched` speaks). Every wait has a deadline, and a
//! failed wait panics with everything the child printed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::process::tail;
use crate::wait::wait_or_kill;

/// The child, killed when dropped; the lines it printed, each taken by at most one wait.
pub struct LineChild {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line read so far (a line that is not JSON is kept as a JSON string).
    seen: Vec<Json>,
    /// Whether a wait has taken `seen[i]` (so two waits never match one line).
    taken: Vec<bool>,
    stderr_log: PathBuf,
    /// Set once stdout has ended (the child exited or closed it).
    ended: bool,
}

impl LineChild {
    /// Spawns `cmd` with piped stdin and stdout, its stderr appended to `stderr_log`.
    pub fn spawn(name: &str, mut cmd: Command, stderr_log: &Path) -> LineChild {
        if let Some(dir) = stderr_log.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        LineChild {
            name: name.to_string(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
            taken: Vec::new(),
            stderr_log: stderr_log.to_path_buf(),
            ended: false,
        }
    }

    /// Writes one command line.
    pub fn send(&mut self, line: &str) {
        let ok = self
            .stdin
            .as_mut()
            .map(|s| writeln!(s, "{line}").and_then(|_| s.flush()).is_ok())
            .unwrap_or(false);
        assert!(
            ok,
            "{}: could not write {line:?} (it has exited?)\n{}",
            self.name,
            self.transcript()
        );
    }

    /// Sends `line` and waits for its `{"ack": line}`; panics when the ack reports an error.
    pub fn command(&mut self, line: &str, within: Duration) -> Json {
        self.send(line);
        let ack = self.wait_for(&format!("the ack of {line:?}"), within, |j| {
            j["ack"] == line
        });
        assert!(
            ack.get("error").is_none(),
            "{}: {line:?} failed: {ack}\n{}",
            self.name,
            self.transcript()
        );
        ack
    }

    /// The first line not yet taken that satisfies `pred` (read within `within`); taken.
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl FnMut(&Json) -> bool,
    ) -> Json {
        match self.poll_for(within, pred) {
            Some(j) => j,
            None => panic!(
                "{}: no line for {what} within {within:?}{}\n{}",
                self.name,
                if self.ended { " (stdout ended)" } else { "" },
                self.transcript()
            ),
        }
    }

    /// As [`LineChild::wait_for`], but `None` when no such line came within `within` (or
    /// stdout ended): for a loop that runs until its own deadline.
    pub fn poll_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&Json) -> bool,
    ) -> Option<Json> {
        let until = Instant::now() + within;
        let mut i = 0;
        loop {
            while i < self.seen.len() {
                if !self.taken[i] && pred(&self.seen[i]) {
                    self.taken[i] = true;
                    return Some(self.seen[i].clone());
                }
                i += 1;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.read_one(left) {
                return None;
            }
        }
    }

    /// Reads every line printed during `period` (for "nothing more comes"), then returns.
    pub fn read_for(&mut self, period: Duration) {
        let until = Instant::now() + period;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.read_one(left) {
                return;
            }
        }
    }

    /// Every line read so far, taken or not.
    pub fn seen(&self) -> &[Json] {
        &self.seen
    }

    /// Waits for the child to exit (SIGKILL past `within`: `None`).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        let status = wait_or_kill(&mut self.child, Instant::now() + within);
        // What it printed before exiting is part of the transcript.
        while self.read_one(Duration::from_millis(200)) {}
        status
    }

    /// What the child printed on stdout, and the end of its stderr.
    pub fn transcript(&self) -> String {
        let mut out = format!("----- {} stdout -----\n", self.name);
        for l in &self.seen {
            out.push_str(&l.to_string());
            out.push('\n');
        }
        let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        out.push_str(&format!(
            "----- {} stderr (end) -----\n{}",
            self.name,
            tail(&stderr, 40)
        ));
        out
    }

    /// Reads one line within `within`; false when none came (or stdout ended).
    fn read_one(&mut self, within: Duration) -> bool {
        if self.ended {
            return false;
        }
        match self.lines.recv_timeout(within) {
            Ok(line) => {
                let j = serde_json::from_str(&line).unwrap_or(Json::String(line));
                self.seen.push(j);
                self.taken.push(false);
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                false
            }
        }
    }
}

impl Drop for LineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
