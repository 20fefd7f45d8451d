//! A running process task until it ends: kill requests and their grace period, health
//! checks, the exit its supervisor recorded and how it is reported.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_core::clock::SharedClock;
use tokio::sync::mpsc;

use crate::executor::cgroup;
use crate::executor::health::{self, HealthEvent, ProbeFuture};
use crate::executor::supervisor::ExitRecord;
use crate::executor::util;
use crate::executor::{AgentError, FailReason, HealthCheckKind, TaskUpdate};

use super::{save_record, Control, Inner, TaskRecord};

/// Watches a running task until it ends: kill requests, health checks, exit.
pub(super) async fn watch(
    inner: Arc<Inner>,
    mut record: TaskRecord,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let task_id = record.task_id.clone();
    let task_dir = inner.task_dir(&task_id);
    let exited = wait_exit(record.supervisor_pid, record.supervisor_start);
    tokio::pin!(exited);

    let (health_task, mut hrx) = start_health_checks(&inner, &record);

    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let mut control_open = true;
    // Set when the health checks failed too often: the task is killed, and says why.
    let mut health_kill: Option<String> = None;
    loop {
        let msg = tokio::select! {
            () = &mut exited => break,
            msg = rx.recv(), if control_open => msg,
            () = async { if let Some(d) = kill_deadline { tokio::time::sleep_until(d).await } }, if kill_deadline.is_some() => {
                tracing::info!(task_id = %task_id, "grace period over; SIGKILL");
                signal_group(record.pgid, libc::SIGKILL);
                kill_deadline = None;
                continue;
            }
            Some(h) = hrx.recv() => {
                let report = |v| inner.send(&task_id, TaskUpdate::Running { healthy: Some(v) });
                if !health::must_kill(h, report, &mut health_kill) {
                    continue;
                }
                Some(Control::Kill { grace: None })
            }
        };
        match msg {
            Some(Control::Kill { grace }) => {
                let grace = grace.unwrap_or(record.kill_grace);
                start_kill(&task_dir, &mut record, grace, &mut kill_deadline);
            }
            None => control_open = false,
        }
    }
    drop(health_task);
    reap_if_child(record.supervisor_pid, record.supervisor_start);
    let update = {
        let dir = task_dir.clone();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || conclude(&dir, &rec))
            .await
            .unwrap_or_else(|e| TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::Lost,
                message: format!("cannot read the exit status: {e}"),
            })
    };
    inner.finish(
        &task_id,
        record.group.as_deref(),
        false,
        util::health_killed(update, health_kill),
    );
}

/// The task's health checks, when it has some: the task running them (aborted when
/// dropped) and the channel of their verdicts.
fn start_health_checks(
    inner: &Inner,
    record: &TaskRecord,
) -> (
    Option<util::AbortOnDrop<()>>,
    mpsc::UnboundedReceiver<HealthEvent>,
) {
    let (htx, hrx) = mpsc::unbounded_channel();
    let health_task = record.health_check.clone().map(|hc| {
        let probe = host_probe(
            &hc.kind,
            record.sandbox.clone(),
            record.env.clone(),
            inner.cfg.clock.clone(),
        );
        util::AbortOnDrop(tokio::spawn(health::run(
            hc,
            record.task_id.clone(),
            inner.cfg.clock.clone(),
            probe,
            htx,
        )))
    });
    (health_task, hrx)
}

/// A kill: recorded in the task's record (so that it survives an agent crash), SIGTERM
/// to the task's process group now and SIGKILL after `grace` (at once when it is zero; an
/// earlier deadline stays).
fn start_kill(
    task_dir: &Path,
    record: &mut TaskRecord,
    grace: Duration,
    kill_deadline: &mut Option<tokio::time::Instant>,
) {
    if !record.kill_requested {
        record.kill_requested = true;
        if let Err(e) = save_record(task_dir, record) {
            tracing::warn!(task_id = %record.task_id, error = %e, "cannot persist kill request");
        }
    }
    tracing::info!(task_id = %record.task_id, ?grace, "killing process task");
    if grace.is_zero() {
        signal_group(record.pgid, libc::SIGKILL);
        *kill_deadline = None;
    } else {
        signal_group(record.pgid, libc::SIGTERM);
        let d = tokio::time::Instant::now() + grace;
        *kill_deadline = Some(kill_deadline.map_or(d, |old| old.min(d)));
    }
}

/// Builds the probe of a health check of a host process.
pub(super) fn host_probe(
    kind: &HealthCheckKind,
    sandbox: PathBuf,
    env: Vec<(String, String)>,
    clock: SharedClock,
) -> impl FnMut() -> ProbeFuture + Send {
    let kind = kind.clone();
    move || -> ProbeFuture {
        match kind.clone() {
            HealthCheckKind::Command { shell } => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(&shell)
                    .current_dir(&sandbox)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                Box::pin(async move {
                    match cmd.status().await {
                        Ok(s) if s.success() => Ok(()),
                        Ok(s) => Err(AgentError::Probe(format!("health command {s}"))),
                        Err(e) => Err(AgentError::io("cannot run health command", e)),
                    }
                })
            }
            HealthCheckKind::Http { port, path } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let clock = clock.clone();
                Box::pin(health::on_host(move || {
                    health::probe_http(addr, &path, Duration::from_secs(5), &*clock)
                }))
            }
            HealthCheckKind::Tcp { port } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                Box::pin(health::on_host(move || {
                    health::probe_tcp(addr, Duration::from_secs(5))
                }))
            }
        }
    }
}

/// Decides the terminal update of a task (plain).
pub(crate) fn classify(exit: Option<ExitRecord>, kill_requested: bool, oom: bool) -> TaskUpdate {
    let describe = |e: ExitRecord| match e {
        ExitRecord::Exited(n) => format!("exited with status {n}"),
        ExitRecord::Signaled(s) => format!("terminated by {}", util::signal_name(s)),
    };
    let code = |e: Option<ExitRecord>| match e {
        Some(ExitRecord::Exited(n)) => Some(n),
        _ => None,
    };
    match exit {
        _ if kill_requested => TaskUpdate::Killed {
            message: exit.map_or_else(
                || "killed".to_string(),
                |e| format!("killed: command {}", describe(e)),
            ),
        },
        _ if oom => TaskUpdate::Failed {
            exit_code: code(exit),
            reason: FailReason::Oom,
            message: "the task exceeded its memory limit and was killed by the OOM killer".into(),
        },
        Some(ExitRecord::Exited(0)) => TaskUpdate::Finished,
        Some(e) => TaskUpdate::Failed {
            exit_code: code(Some(e)),
            reason: FailReason::CommandExit,
            message: format!("command {}", describe(e)),
        },
        None => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: "the supervisor ended without recording an exit status".into(),
        },
    }
}

/// Reads the recorded exit status (and OOM events) of an ended task (blocking).
pub(super) fn conclude(task_dir: &Path, record: &TaskRecord) -> TaskUpdate {
    let text = std::fs::read_to_string(task_dir.join("exit_status")).unwrap_or_default();
    let exit = ExitRecord::parse(&text);
    let oom = cgroup::oom_killed(&record.cgroups);
    cgroup::remove(&record.cgroups);
    if ExitRecord::orphaned(&text) && !record.kill_requested {
        return TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: format!(
                "killed by its supervisor: no agent re-attached within the recovery timeout ({:?})",
                record.recovery_timeout.unwrap_or_default()
            ),
        };
    }
    classify(exit, record.kill_requested, oom)
}

pub(super) fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group.
    if unsafe { libc::kill(-pgid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, sig, error = %e, "cannot signal task process group");
        }
    }
}

/// Reaps the supervisor if it is an ended child of ours (after an executor
/// was dropped in the same process, the supervisor may be a zombie child);
/// checks the start time so that no other child is ever reaped by mistake.
pub(super) fn reap_if_child(pid: i32, start_time: u64) {
    let ours = util::read_proc_stat(pid).is_some_and(|st| {
        st.start_time == start_time && !st.is_running() && st.ppid == std::process::id() as i32
    });
    if ours {
        let mut st = 0;
        // SAFETY: WNOHANG waitpid on a specific ended child.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    }
}

/// Resolves when process `pid` (with the given start time) has exited.
pub(super) async fn wait_exit(pid: i32, start_time: u64) {
    let alive =
        || util::read_proc_stat(pid).is_some_and(|s| s.is_running() && s.start_time == start_time);
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: fresh fd from pidfd_open.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening: the pidfd refers to the process we verified.
        if !alive() {
            return;
        }
        // `with_interest` is deprecated in newer tokio for fds that may be closed
        // behind its back; an `OwnedFd` moved into it cannot be.
        #[allow(deprecated)]
        let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
        if let Ok(afd) = afd {
            let _ = afd.readable().await;
            return;
        }
    }
    while alive() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_exits() {
        assert_eq!(
            classify(Some(ExitRecord::Exited(0)), false, false),
            TaskUpdate::Finished
        );
        match classify(Some(ExitRecord::Exited(3)), false, false) {
            TaskUpdate::Failed {
                exit_code: Some(3),
                reason: FailReason::CommandExit,
                ..
            } => {}
            u => panic!("{u:?}"),
        }
        match classify(Some(ExitRecord::Signaled(9)), false, false) {
            TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::CommandExit,
                message,
            } => {
                assert!(message.contains("SIGKILL"))
            }
            u => panic!("{u:?}"),
        }
        assert!(matches!(
            classify(Some(ExitRecord::Signaled(15)), true, false),
            TaskUpdate::Killed { .. }
        ));
        assert!(matches!(
            classify(Some(ExitRecord::Exited(0)), true, false),
            TaskUpdate::Killed { .. }
        ));
        assert!(matches!(
            classify(Some(ExitRecord::Signaled(9)), false, true),
            TaskUpdate::Failed {
                reason: FailReason::Oom,
                ..
            }
        ));
        assert!(matches!(
            classify(None, false, false),
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ));
    }
}
