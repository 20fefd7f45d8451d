//! The heartbeat file by which a task's keeper learns that its agent is still there.
//!
//! Each executor touches `<state dir>/alive` while it runs (from a thread of its own, so a
//! busy runtime cannot starve it). What runs a task without the agent watches the file:
//! a process task's supervisor `stat`s it, and an agent sweeping the host's containers
//! reads it for containers of other work dirs. The file gone means the agent's work dir is
//! gone, and the task has no owner any more; the file unchanged for the *recovery timeout*
//! means the agent did not come back (Mesos's `--recovery_timeout`, 15 minutes by default):
//! either way the task is killed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_core::clock::{Clock, SharedClock};

use super::util::wall_time;

/// Mesos's default `--recovery_timeout`: how long a task waits for its agent to come back.
pub const RECOVERY_TIMEOUT_DEFAULT_SECS: u64 = 15 * 60;
/// The heartbeat file's name in an executor's state dir.
pub const ALIVE_FILE: &str = "alive";
/// Longest time between two touches of the heartbeat file.
const TOUCH_INTERVAL_MAX_MS: u64 = 2_000;
/// Shortest time between two touches (or two checks) of the heartbeat file.
const INTERVAL_MIN_MS: u64 = 50;
/// Longest time between two checks of the heartbeat file by a supervisor: how late a
/// supervisor notices that its agent's work dir is gone.
const CHECK_INTERVAL_MAX_MS: u64 = 2_000;

/// How often the executor touches the file: an eighth of the recovery timeout, within bounds.
pub(crate) fn touch_interval(recovery_timeout: Duration) -> Duration {
    (recovery_timeout / 8).clamp(
        Duration::from_millis(INTERVAL_MIN_MS),
        Duration::from_millis(TOUCH_INTERVAL_MAX_MS),
    )
}

/// How often a supervisor looks at the file: a quarter of the recovery timeout, within bounds.
pub(crate) fn check_interval(recovery_timeout: Duration) -> Duration {
    (recovery_timeout / 4).clamp(
        Duration::from_millis(INTERVAL_MIN_MS),
        Duration::from_millis(CHECK_INTERVAL_MAX_MS),
    )
}

/// Touches the heartbeat file until dropped.
pub(crate) struct Heartbeat {
    /// Dropping it wakes and ends the thread.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Heartbeat {
    /// Creates (or touches) `path` and keeps touching it every `interval`. The file is never
    /// created again once it is gone: a work dir removed under a running agent stays removed,
    /// and its tasks end.
    /// An executor's heartbeat: makes `state_dir` absolute (others find the file by the
    /// absolute path an executor records) and starts touching `<state_dir>/alive`.
    pub(crate) fn start_in(
        state_dir: &mut PathBuf,
        recovery_timeout: Duration,
        clock: SharedClock,
    ) -> Result<Heartbeat, super::AgentError> {
        use super::AgentError;
        *state_dir = std::path::absolute(&*state_dir)
            .map_err(|e| AgentError::io(format!("resolve {}", state_dir.display()), e))?;
        let alive = state_dir.join(ALIVE_FILE);
        Heartbeat::start(alive.clone(), touch_interval(recovery_timeout), clock)
            .map_err(|e| AgentError::io(format!("start {}", alive.display()), e))
    }

    /// The file's times are the clock's wall time.
    pub(crate) fn start(
        path: PathBuf,
        interval: Duration,
        clock: SharedClock,
    ) -> std::io::Result<Heartbeat> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?
            .set_modified(wall_time(&*clock))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("shoal-heartbeat".into())
            .spawn(move || {
                let mut warned = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(interval)
                {
                    if let Err(e) = touch(&path, &*clock) {
                        if !warned {
                            tracing::warn!(path = %path.display(), error = %e, "cannot touch the heartbeat file; the tasks of this work dir will end");
                            warned = true;
                        }
                    }
                }
            })?;
        Ok(Heartbeat { _stop: stop })
    }
}

fn touch(path: &Path, clock: &dyn Clock) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_modified(wall_time(clock))
}

/// What a heartbeat file says about its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Touched within the recovery timeout.
    Alive,
    /// Not touched for longer than the recovery timeout.
    Stale(Duration),
    /// The file (its work dir) is gone.
    Gone,
}

/// Reads the heartbeat file at `path` against `recovery_timeout` on the clock's wall time
/// (the file is another process's, so no monotonic clock is shared with it).
pub(crate) fn liveness(path: &Path, recovery_timeout: Duration, clock: &dyn Clock) -> Liveness {
    match std::fs::metadata(path).and_then(|m| m.modified()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Liveness::Gone,
        // Unreadable for another reason (permissions): nothing is known, nothing is killed.
        Err(_) => Liveness::Alive,
        Ok(t) => match wall_time(clock).duration_since(t) {
            Ok(age) if age > recovery_timeout => Liveness::Stale(age),
            _ => Liveness::Alive,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::clock::{ManualClock, SystemClock};
    use std::sync::Arc;

    #[test]
    fn intervals() {
        let t = Duration::from_secs(RECOVERY_TIMEOUT_DEFAULT_SECS);
        assert_eq!(touch_interval(t), Duration::from_secs(2));
        assert_eq!(check_interval(t), Duration::from_secs(2));
        assert_eq!(
            touch_interval(Duration::from_secs(1)),
            Duration::from_millis(125)
        );
        assert_eq!(
            check_interval(Duration::from_millis(1)),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_heartbeat_keeps_its_file_fresh_and_never_recreates_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ALIVE_FILE);
        let clock = SystemClock::shared();
        assert_eq!(
            liveness(&path, Duration::from_secs(1), &*clock),
            Liveness::Gone
        );
        let hb = Heartbeat::start(path.clone(), Duration::from_millis(50), clock.clone())
            .expect("start");
        let old = wall_time(&*clock) - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .expect("age the file");
        assert!(matches!(
            liveness(&path, Duration::from_secs(30), &*clock),
            Liveness::Stale(_)
        ));
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while liveness(&path, Duration::from_secs(30), &*clock) != Liveness::Alive {
            assert!(std::time::Instant::now() < until, "never touched");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::fs::remove_file(&path).expect("remove");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            liveness(&path, Duration::from_secs(30), &*clock),
            Liveness::Gone
        );
        drop(hb);
    }

    /// The recovery timeout is decided on the clock the executor is given: a heartbeat file
    /// last touched at the clock's time is alive up to the timeout and stale past it, with
    /// no wait.
    #[test]
    fn the_recovery_timeout_runs_on_the_given_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ALIVE_FILE);
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        // An interval no test waits for: only the first touch (at start) counts.
        let hb = Heartbeat::start(path.clone(), Duration::from_secs(3600), clock.clone())
            .expect("start");
        let timeout = Duration::from_secs(RECOVERY_TIMEOUT_DEFAULT_SECS);
        assert_eq!(liveness(&path, timeout, &*clock), Liveness::Alive);
        clock.advance(timeout);
        assert_eq!(liveness(&path, timeout, &*clock), Liveness::Alive);
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            liveness(&path, timeout, &*clock),
            Liveness::Stale(timeout + Duration::from_secs(1))
        );
        drop(hb);
    }
}
