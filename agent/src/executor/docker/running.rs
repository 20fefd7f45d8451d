//! A started container until it ends: its exit and how it is reported, its log copied
//! into the sandbox, kill signals and health probes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{KillContainerOptions, LogsOptions, WaitContainerOptions};
use bollard::Docker;
use futures::StreamExt;
use shoal_core::clock::SharedClock;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::executor::health::{self, HealthEvent, ProbeFuture};
use crate::executor::util;
use crate::executor::{AgentError, FailReason, HealthCheckKind, TaskUpdate};

use super::{docker_err, status_code, Attached, Control, Inner};

pub(super) fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| {
        s.running == Some(true) || s.restarting == Some(true) || s.paused == Some(true)
    })
}

/// Decides the terminal update of an ended container (plain).
pub(crate) fn classify(c: &ContainerInspectResponse, kill_requested: bool) -> TaskUpdate {
    let state = c.state.clone().unwrap_or_default();
    let memory_limited = c
        .host_config
        .as_ref()
        .and_then(|h| h.memory)
        .is_some_and(|m| m > 0);
    classify_state(
        state.exit_code,
        state.oom_killed.unwrap_or(false),
        memory_limited,
        state.error.as_deref(),
        kill_requested,
    )
}

/// The decision behind [`classify`].
///
/// Docker (with cgroup v1 at least) sometimes misses the OOM notification of a
/// container that dies quickly, leaving `OOMKilled` false. A container with a
/// memory limit that died of SIGKILL (status 137) without a kill from us is
/// therefore reported as an OOM failure too, with a message saying that Docker
/// did not confirm it.
pub(crate) fn classify_state(
    exit_code: Option<i64>,
    oom_killed: bool,
    memory_limited: bool,
    error: Option<&str>,
    kill_requested: bool,
) -> TaskUpdate {
    let code = exit_code.and_then(|c| i32::try_from(c).ok());
    let error = error.filter(|e| !e.is_empty());
    if kill_requested {
        return TaskUpdate::Killed {
            message: code.map_or_else(
                || "killed".into(),
                |c| format!("killed: container exited with status {c}"),
            ),
        };
    }
    if oom_killed {
        return TaskUpdate::Failed {
            exit_code: code,
            reason: FailReason::Oom,
            message: "the container exceeded its memory limit and was killed by the OOM killer"
                .into(),
        };
    }
    if memory_limited && code == Some(137) {
        return TaskUpdate::Failed {
            exit_code: code,
            reason: FailReason::Oom,
            message: "the container was killed by SIGKILL under its memory limit, most likely by \
                      the OOM killer (Docker did not report it)"
                .into(),
        };
    }
    match code {
        Some(0) => TaskUpdate::Finished,
        Some(c) => TaskUpdate::Failed {
            exit_code: Some(c),
            reason: FailReason::CommandExit,
            message: match error {
                Some(e) => format!("container exited with status {c}: {e}"),
                None => format!("container exited with status {c}"),
            },
        },
        None => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: error.map_or_else(
                || "the container has no exit status".into(),
                |e| e.to_string(),
            ),
        },
    }
}

/// Resolves when the container is no longer running; `Err` when it vanished.
pub(super) async fn wait_stopped(docker: &Docker, cid: &str) -> Result<(), AgentError> {
    loop {
        let opts = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut stream = docker.wait_container(cid, Some(opts));
        match stream.next().await {
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {
                return Ok(())
            }
            Some(Err(e)) if status_code(&e) == Some(404) => {
                return Err(AgentError::Lost("the container disappeared".into()))
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(container = %cid, error = %e, "waiting for container failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match docker.inspect_container(cid, None).await {
                    Ok(c) if !is_running(&c) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(404) => {
                        return Err(AgentError::Lost("the container disappeared".into()))
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Watches a running container until it ends: kill requests, health checks, exit.
pub(super) async fn watch_container(
    inner: Arc<Inner>,
    a: Attached,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let docker = inner.docker.clone();
    let cid = a.container_id.clone();
    let mut logs = util::AbortOnDrop(tokio::spawn(copy_logs(
        docker.clone(),
        cid.clone(),
        a.sandbox.clone(),
    )));
    let exited = {
        let docker = docker.clone();
        let cid = cid.clone();
        async move { wait_stopped(&docker, &cid).await }
    };
    tokio::pin!(exited);
    let (health_task, mut hrx) = start_health_checks(&inner, &a);

    let mut kill = KillState {
        requested: inner.kill_marker(&a.task_id).exists(),
        deadline: None,
    };
    let mut control_open = true;
    // Set when the health checks failed too often: the task is killed, and says why.
    let mut health_kill: Option<String> = None;
    let outcome = loop {
        let msg = tokio::select! {
            r = &mut exited => break r,
            msg = rx.recv(), if control_open => msg,
            () = async { if let Some(d) = kill.deadline { tokio::time::sleep_until(d).await } }, if kill.deadline.is_some() => {
                tracing::info!(task_id = %a.task_id, "grace period over; SIGKILL");
                signal_container(&docker, &cid, "SIGKILL").await;
                kill.deadline = None;
                continue;
            }
            Some(h) = hrx.recv() => {
                let report = |v| inner.send(&a.task_id, TaskUpdate::Running { healthy: Some(v) });
                if !health::must_kill(h, report, &mut health_kill) {
                    continue;
                }
                Some(Control::Kill { grace: None })
            }
        };
        match msg {
            Some(Control::Kill { grace }) => {
                kill.start(&inner, &a, grace.unwrap_or(a.kill_grace)).await
            }
            None => control_open = false,
        }
    };
    drop(health_task);
    // Let the log copy drain what the container wrote last (aborted when `logs` drops).
    if tokio::time::timeout(Duration::from_secs(10), &mut logs.0)
        .await
        .is_err()
    {
        tracing::warn!(task_id = %a.task_id, "log copy did not finish in time");
    }
    let update = ended(&docker, &cid, outcome, kill.requested).await;
    inner.finish(
        &a.task_id,
        a.group.as_deref(),
        a.owns_network,
        util::health_killed(update, health_kill),
    );
}

/// The container's health checks, when it has some: the task running them (aborted when
/// dropped) and the channel of their verdicts.
fn start_health_checks(
    inner: &Inner,
    a: &Attached,
) -> (
    Option<util::AbortOnDrop<()>>,
    mpsc::UnboundedReceiver<HealthEvent>,
) {
    let (htx, hrx) = mpsc::unbounded_channel();
    let health_task = a.health_check.clone().map(|hc| {
        let probe = container_probe(
            &hc.kind,
            inner.docker.clone(),
            a.container_id.clone(),
            inner.cfg.clock.clone(),
        );
        util::AbortOnDrop(tokio::spawn(health::run(
            hc,
            a.task_id.clone(),
            inner.cfg.clock.clone(),
            probe,
            htx,
        )))
    });
    (health_task, hrx)
}

/// A kill of a watched container: whether one was asked for (recorded on disk, so that
/// it survives an agent crash), and when the grace period ends.
struct KillState {
    requested: bool,
    deadline: Option<tokio::time::Instant>,
}

impl KillState {
    /// SIGTERM now and SIGKILL after `grace` (at once when it is zero); an earlier
    /// deadline stays.
    async fn start(&mut self, inner: &Inner, a: &Attached, grace: Duration) {
        if !self.requested {
            self.requested = true;
            if let Err(e) = std::fs::write(inner.kill_marker(&a.task_id), b"") {
                tracing::warn!(task_id = %a.task_id, error = %e, "cannot persist kill request");
            }
        }
        tracing::info!(task_id = %a.task_id, ?grace, "killing container");
        let sig = if grace.is_zero() {
            "SIGKILL"
        } else {
            "SIGTERM"
        };
        signal_container(&inner.docker, &a.container_id, sig).await;
        if !grace.is_zero() {
            let d = tokio::time::Instant::now() + grace;
            self.deadline = Some(self.deadline.map_or(d, |old| old.min(d)));
        }
    }
}

/// How an ended container is reported: from its state, or lost when it vanished.
async fn ended(
    docker: &Docker,
    cid: &str,
    outcome: Result<(), AgentError>,
    kill_requested: bool,
) -> TaskUpdate {
    match outcome {
        Err(e) => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: e.to_string(),
        },
        Ok(()) => match docker.inspect_container(cid, None).await {
            Ok(c) => classify(&c, kill_requested),
            Err(e) => TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::Lost,
                message: format!("cannot inspect the ended container: {e}"),
            },
        },
    }
}

pub(super) async fn signal_container(docker: &Docker, cid: &str, signal: &str) {
    let opts = KillContainerOptions {
        signal: signal.into(),
    };
    match docker.kill_container(cid, Some(opts)).await {
        Ok(()) => {}
        // 409: not running any more; 404: gone.
        Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => {}
        Err(e) => tracing::warn!(container = %cid, signal, error = %e, "cannot signal container"),
    }
}

/// Copies the container's log into the sandbox until the container stops,
/// skipping the bytes each file already holds.
pub(super) async fn copy_logs(docker: Docker, cid: String, sandbox: PathBuf) {
    for attempt in 0..5u32 {
        match copy_logs_once(&docker, &cid, &sandbox).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(container = %cid, attempt, error = %e, "log copy interrupted");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub(super) async fn copy_logs_once(
    docker: &Docker,
    cid: &str,
    sandbox: &Path,
) -> Result<(), AgentError> {
    let open = |name: &str| {
        let p = sandbox.join(name);
        async move {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .await
                .map_err(|e| AgentError::io(format!("open {}", p.display()), e))?;
            let len = f
                .metadata()
                .await
                .map_err(|e| AgentError::io(format!("stat {}", p.display()), e))?
                .len();
            Ok::<_, AgentError>((f, len))
        }
    };
    let (mut out, mut skip_out) = open("stdout").await?;
    let (mut err, mut skip_err) = open("stderr").await?;
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(cid, Some(opts));
    while let Some(item) = stream.next().await {
        let (file, skip, msg) = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                (&mut out, &mut skip_out, message)
            }
            Ok(LogOutput::StdErr { message }) => (&mut err, &mut skip_err, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) if status_code(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(docker_err(e)),
        };
        let n = msg.len() as u64;
        if *skip >= n {
            *skip -= n;
            continue;
        }
        let from = *skip as usize;
        *skip = 0;
        file.write_all(&msg[from..])
            .await
            .map_err(|e| AgentError::io("write log", e))?;
    }
    out.flush().await.map_err(|e| AgentError::io("flush", e))?;
    err.flush().await.map_err(|e| AgentError::io("flush", e))?;
    Ok(())
}

/// Builds the probe of a health check of a container.
pub(super) fn container_probe(
    kind: &HealthCheckKind,
    docker: Docker,
    cid: String,
    clock: SharedClock,
) -> impl FnMut() -> ProbeFuture + Send {
    let kind = kind.clone();
    move || -> ProbeFuture {
        let docker = docker.clone();
        let cid = cid.clone();
        let kind = kind.clone();
        let clock = clock.clone();
        Box::pin(async move {
            match kind {
                HealthCheckKind::Command { shell } => exec_probe(&docker, &cid, shell).await,
                HealthCheckKind::Http { port, path } => {
                    let pid = container_pid(&docker, &cid).await?;
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    health::in_netns(pid, move || {
                        health::probe_http(addr, &path, Duration::from_secs(5), &*clock)
                    })
                    .await
                }
                HealthCheckKind::Tcp { port } => {
                    let pid = container_pid(&docker, &cid).await?;
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    health::in_netns(pid, move || health::probe_tcp(addr, Duration::from_secs(5)))
                        .await
                }
            }
        })
    }
}

pub(super) async fn container_pid(docker: &Docker, cid: &str) -> Result<i32, AgentError> {
    let c = docker
        .inspect_container(cid, None)
        .await
        .map_err(|e| AgentError::Probe(format!("inspect: {e}")))?;
    match c.state.and_then(|s| s.pid) {
        Some(pid) if pid > 0 => {
            i32::try_from(pid).map_err(|_| AgentError::Probe("bad pid".to_string()))
        }
        _ => Err(AgentError::Probe("the container is not running".into())),
    }
}

pub(super) async fn exec_probe(
    docker: &Docker,
    cid: &str,
    shell: String,
) -> Result<(), AgentError> {
    let opts = CreateExecOptions {
        cmd: Some(vec!["/bin/sh".to_string(), "-c".to_string(), shell]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker
        .create_exec(cid, opts)
        .await
        .map_err(|e| AgentError::Probe(format!("exec create: {e}")))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| AgentError::Probe(format!("exec start: {e}")))?
    {
        while output.next().await.is_some() {}
    }
    let i = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| AgentError::Probe(format!("exec inspect: {e}")))?;
    match i.exit_code {
        Some(0) => Ok(()),
        Some(c) => Err(AgentError::Probe(format!(
            "health command exited with status {c}"
        ))),
        None => Err(AgentError::Probe(
            "health command has no exit status".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_states() {
        assert_eq!(
            classify_state(Some(0), false, false, None, false),
            TaskUpdate::Finished
        );
        assert!(matches!(
            classify_state(Some(1), false, false, Some(""), false),
            TaskUpdate::Failed {
                exit_code: Some(1),
                reason: FailReason::CommandExit,
                ..
            }
        ));
        assert!(matches!(
            classify_state(Some(137), true, false, None, false),
            TaskUpdate::Failed {
                exit_code: Some(137),
                reason: FailReason::Oom,
                ..
            }
        ));
        assert!(matches!(
            classify_state(Some(143), false, true, None, true),
            TaskUpdate::Killed { .. }
        ));
        // Docker missed the OOM notification: SIGKILL under a memory limit.
        assert!(matches!(
            classify_state(Some(137), false, true, None, false),
            TaskUpdate::Failed {
                reason: FailReason::Oom,
                ..
            }
        ));
        // Without a memory limit a SIGKILL is just an exit status.
        assert!(matches!(
            classify_state(Some(137), false, false, None, false),
            TaskUpdate::Failed {
                reason: FailReason::CommandExit,
                ..
            }
        ));
        assert!(matches!(
            classify_state(None, false, false, None, false),
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ));
    }
}
