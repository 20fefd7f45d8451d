//! Health checks: the verdict logic ([`HealthTracker`], plain) and the probes
//! (TCP connect, HTTP GET, optionally from inside another network namespace).

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::time::Duration;

use shoal_core::clock::{Clock, SharedClock};

use crate::AgentError;

use tokio::sync::mpsc;

use super::HealthCheckSpec;

/// Turns probe results into health verdicts, as Mesos's health checker does.
///
/// * a success makes the task healthy;
/// * failures during the grace period are ignored until the first success;
/// * any other failure makes the task unhealthy, and after `consecutive_failures` failures
///   in a row (at least 1) the task is to be killed ([`exhausted`](Self::exhausted)).
///
/// [`observe`](Self::observe) returns the new verdict only when it changed.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    grace: Duration,
    threshold: u32,
    failures: u32,
    ever_healthy: bool,
    healthy: Option<bool>,
}

impl HealthTracker {
    pub fn new(spec: &HealthCheckSpec) -> Self {
        HealthTracker {
            grace: spec.grace,
            threshold: spec.consecutive_failures.max(1),
            failures: 0,
            ever_healthy: false,
            healthy: None,
        }
    }

    /// The current verdict (`None` until the first one).
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Whether the failures in a row reached the threshold: the task is to be killed.
    pub fn exhausted(&self) -> bool {
        self.failures >= self.threshold
    }

    /// Feeds one probe result; `since_start` is the task's age.
    pub fn observe(&mut self, ok: bool, since_start: Duration) -> Option<bool> {
        let verdict = if ok {
            self.failures = 0;
            self.ever_healthy = true;
            true
        } else {
            if !self.ever_healthy && since_start < self.grace {
                return None;
            }
            self.failures = self.failures.saturating_add(1);
            false
        };
        if self.healthy == Some(verdict) {
            None
        } else {
            self.healthy = Some(verdict);
            Some(verdict)
        }
    }
}

/// A boxed probe: `Ok` = healthy, `Err(why)` = not.
pub(crate) type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), AgentError>> + Send>>;

/// What the health checks of a task tell its watcher.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HealthEvent {
    /// The verdict changed.
    Healthy(bool),
    /// The checks failed `consecutive_failures` times in a row: kill the task (the checks
    /// stop). The text says why, for the task's final status.
    Kill(String),
}

/// What a task's watch loop does with a health event: a changed verdict is reported with
/// `report`; checks that failed too often leave why in `killed` (for the task's final status)
/// and return true: kill the task now, without a grace period.
pub(crate) fn must_kill(
    event: HealthEvent,
    report: impl FnOnce(bool),
    killed: &mut Option<String>,
) -> bool {
    match event {
        HealthEvent::Healthy(v) => {
            report(v);
            false
        }
        HealthEvent::Kill(why) => {
            *killed = Some(why);
            true
        }
    }
}

/// Runs the checks until dropped or until they ask for the task to be killed; sends each
/// change of verdict on `tx`.
pub(crate) async fn run<F>(
    spec: HealthCheckSpec,
    task_id: String,
    clock: SharedClock,
    mut probe: F,
    tx: mpsc::UnboundedSender<HealthEvent>,
) where
    F: FnMut() -> ProbeFuture + Send,
{
    let started = clock.monotonic();
    let mut tracker = HealthTracker::new(&spec);
    tokio::time::sleep(spec.delay).await;
    loop {
        let ok = match tokio::time::timeout(spec.timeout, probe()).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::debug!(task_id = %task_id, %why, "health check failed");
                false
            }
            Err(_) => {
                tracing::debug!(task_id = %task_id, "health check timed out");
                false
            }
        };
        if let Some(v) = tracker.observe(ok, clock.monotonic() - started) {
            tracing::info!(task_id = %task_id, healthy = v, "health changed");
            if tx.send(HealthEvent::Healthy(v)).is_err() {
                return;
            }
        }
        if tracker.exhausted() {
            let why = format!(
                "killed after {} consecutive failed health checks",
                spec.consecutive_failures.max(1)
            );
            tracing::info!(task_id = %task_id, "{why}");
            let _ = tx.send(HealthEvent::Kill(why));
            return;
        }
        tokio::time::sleep(spec.interval).await;
    }
}

/// Parses the status code of an HTTP status line (`HTTP/1.1 200 OK`).
pub(crate) fn parse_http_status(line: &str) -> Option<u16> {
    let mut it = line.split_whitespace();
    let proto = it.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let code: u16 = it.next()?.parse().ok()?;
    (100..1000).contains(&code).then_some(code)
}

/// Blocking TCP connect probe.
pub(crate) fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), AgentError> {
    TcpStream::connect_timeout(&addr, timeout)
        .map(|_| ())
        .map_err(|e| AgentError::io(format!("connect {addr}"), e))
}

/// Blocking HTTP GET probe: healthy on 2xx and 3xx.
pub(crate) fn probe_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    clock: &dyn Clock,
) -> Result<(), AgentError> {
    let deadline = clock.monotonic() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| AgentError::io(format!("connect {addr}"), e))?;
    let left = deadline
        .saturating_duration_since(clock.monotonic())
        .max(Duration::from_millis(1));
    let _ = s.set_read_timeout(Some(left));
    let _ = s.set_write_timeout(Some(left));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: shoal-health-check\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| AgentError::io(format!("send to {addr}"), e))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .map_err(|e| AgentError::io(format!("read from {addr}"), e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    match parse_http_status(line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(AgentError::Probe(format!("HTTP status {code}"))),
        None => Err(AgentError::Probe(format!("not an HTTP response: {line:?}"))),
    }
}

/// Runs a blocking probe on a fresh thread that first joins the network
/// namespace of process `pid` (needs CAP_SYS_ADMIN). The thread is discarded
/// afterwards, so no other code ever runs in the foreign namespace.
pub(crate) async fn in_netns<F>(pid: i32, probe: F) -> Result<(), AgentError>
where
    F: FnOnce() -> Result<(), AgentError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("shoal-netns-probe".into())
        .spawn(move || {
            let res = enter_netns(pid).and_then(|()| probe());
            let _ = tx.send(res);
        });
    if let Err(e) = spawned {
        return Err(AgentError::io("cannot start probe thread", e));
    }
    rx.await
        .unwrap_or_else(|_| Err(AgentError::Probe("probe thread died".into())))
}

fn enter_netns(pid: i32) -> Result<(), AgentError> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(|e| AgentError::io(format!("open {path}"), e))?;
    // SAFETY: setns on a valid fd; it only affects the calling thread for CLONE_NEWNET.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(AgentError::io(
            format!("setns {path}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs a blocking probe in the agent's own network namespace.
pub(crate) async fn on_host<F>(probe: F) -> Result<(), AgentError>
where
    F: FnOnce() -> Result<(), AgentError> + Send + 'static,
{
    tokio::task::spawn_blocking(probe)
        .await
        .unwrap_or_else(|e| Err(AgentError::Probe(format!("probe task failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::HealthCheckKind;

    fn spec(grace: u64, failures: u32) -> HealthCheckSpec {
        let mut s = HealthCheckSpec::new(HealthCheckKind::Tcp { port: 1 });
        s.grace = Duration::from_secs(grace);
        s.consecutive_failures = failures;
        s
    }

    #[test]
    fn verdicts_change_only_on_transitions() {
        let mut t = HealthTracker::new(&spec(0, 2));
        let s = Duration::from_secs(1);
        assert_eq!(t.observe(true, s), Some(true));
        assert_eq!(t.observe(true, s), None);
        assert_eq!(t.observe(false, s), Some(false));
        assert!(!t.exhausted());
        assert_eq!(t.observe(false, s), None);
        assert!(t.exhausted(), "two failures in a row: kill");
        assert_eq!(t.observe(true, s), Some(true));
        assert!(!t.exhausted());
        assert_eq!(t.healthy(), Some(true));
    }

    #[test]
    fn grace_ignores_early_failures() {
        let mut t = HealthTracker::new(&spec(10, 1));
        assert_eq!(t.observe(false, Duration::from_secs(1)), None);
        assert_eq!(t.observe(false, Duration::from_secs(11)), Some(false));
        let mut t = HealthTracker::new(&spec(10, 1));
        assert_eq!(t.observe(true, Duration::from_secs(1)), Some(true));
        // After the first success the grace period no longer applies.
        assert_eq!(t.observe(false, Duration::from_secs(2)), Some(false));
    }

    #[test]
    fn zero_threshold_means_one() {
        let mut t = HealthTracker::new(&spec(0, 0));
        assert_eq!(t.observe(false, Duration::ZERO), Some(false));
        assert!(t.exhausted());
    }

    #[test]
    fn http_status_line() {
        assert_eq!(parse_http_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_http_status("HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_http_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_http_status("HTTP/1.1 abc"), None);
        assert_eq!(parse_http_status(""), None);
    }

    #[test]
    fn probes_against_local_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
            }
        });
        assert!(probe_http(
            addr,
            "/",
            Duration::from_secs(5),
            &shoal_core::clock::SystemClock
        )
        .is_ok());
        let _ = server.join();
        // Nothing listens any more.
        assert!(probe_tcp(addr, Duration::from_secs(1)).is_err());
    }
}
