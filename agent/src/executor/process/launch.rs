//! A new process task: everything its supervisor needs prepared (sandbox files, program,
//! environment, cgroups), the supervisor spawned, then the task watched.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::executor::cgroup::{self, Cgroups};
use crate::executor::heartbeat;
use crate::executor::supervisor::{self, SupervisorPlan};
use crate::executor::util::{self, escape_id};
use crate::executor::{AgentError, CommandSpec, ContainerSpec, FailReason, LaunchSpec, TaskUpdate};

use super::running::{signal_group, watch};
use super::{alive_file, save_record, Control, Inner, ProcessConfig, TaskRecord};

/// Launches a new task, then watches it.
pub(super) async fn run_new(
    inner: Arc<Inner>,
    spec: LaunchSpec,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let task_id = spec.task_id.clone();
    let group = spec.group.clone();
    let end = |update: TaskUpdate| inner.finish(&task_id, group.as_deref(), false, update);
    if let Err(update) = check_spec(&spec) {
        return end(update);
    }
    // Released once the task runs (or failed to start).
    let slot = inner.launch_slots.acquire().await;
    let record = match start(&inner, &spec, &mut rx).await {
        Ok(record) => record,
        Err(update) => return end(update),
    };
    drop(slot);
    tracing::info!(task_id = %task_id, pid = record.pgid, supervisor = record.supervisor_pid, "process task running");
    inner.send(&task_id, TaskUpdate::Running { healthy: None });
    watch(inner, record, rx).await;
}

/// A launch failure: the update that ends the task.
fn launch_failed(message: String) -> TaskUpdate {
    TaskUpdate::Failed {
        exit_code: None,
        reason: FailReason::LaunchFailed,
        message,
    }
}

/// A spec the process executor cannot run ends the task with the returned update.
fn check_spec(spec: &LaunchSpec) -> Result<(), TaskUpdate> {
    if let Err(e) = spec.validate() {
        return Err(TaskUpdate::Error {
            message: e.to_string(),
        });
    }
    if !matches!(spec.container, ContainerSpec::Process) {
        return Err(TaskUpdate::Error {
            message: "the process executor cannot run container tasks".to_string(),
        });
    }
    Ok(())
}

/// Prepares the task (blocking IO), spawns its supervisor and saves its record: the
/// record, or the update that ends a task that did not start.
async fn start(
    inner: &Arc<Inner>,
    spec: &LaunchSpec,
    rx: &mut mpsc::UnboundedReceiver<Control>,
) -> Result<TaskRecord, TaskUpdate> {
    let task_dir = inner.task_dir(&spec.task_id);
    let prepared = {
        let spec = spec.clone();
        let task_dir = task_dir.clone();
        let inner = inner.clone();
        tokio::task::spawn_blocking(move || prepare(&spec, &task_dir, &inner.cgroups, &inner.cfg))
            .await
    };
    let Prepared { plan, cgroups, env } = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(launch_failed(e.to_string())),
        Err(e) => return Err(launch_failed(format!("launch aborted: {e}"))),
    };
    if let Ok(Control::Kill { .. }) = rx.try_recv() {
        cgroup::remove(&cgroups);
        return Err(TaskUpdate::Killed {
            message: "killed before it started".to_string(),
        });
    }
    let spawned = match tokio::task::spawn_blocking(move || supervisor::spawn(plan)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            cgroup::remove(&cgroups);
            return Err(launch_failed(format!("cannot start the command: {e}")));
        }
        Err(e) => return Err(launch_failed(format!("launch aborted: {e}"))),
    };
    let supervisor_start = util::read_proc_stat(spawned.supervisor_pid).map_or(0, |s| s.start_time);
    let record = TaskRecord {
        task_id: spec.task_id.clone(),
        sandbox: spec.sandbox.clone(),
        group: spec.group.clone(),
        kill_grace: spec.kill_grace,
        health_check: spec.health_check.clone(),
        env,
        supervisor_pid: spawned.supervisor_pid,
        supervisor_start,
        pgid: spawned.pgid,
        cgroups,
        kill_requested: false,
        alive_file: Some(alive_file(&inner.cfg)),
        recovery_timeout: Some(inner.cfg.recovery_timeout),
    };
    if let Err(e) = save_record(&task_dir, &record) {
        // Without a record the task could not be recovered: do not run it.
        tracing::error!(task_id = %spec.task_id, error = %e, "cannot save task record; killing the task");
        signal_group(record.pgid, libc::SIGKILL);
        return Err(launch_failed(format!("cannot save the task record: {e}")));
    }
    Ok(record)
}

/// What [`prepare`] produces: the supervisor plan, the task's cgroups (when
/// limits apply) and the task's extra environment (kept for health checks).
pub(super) struct Prepared {
    plan: SupervisorPlan,
    cgroups: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

/// Prepares everything for the supervisor (blocking IO): state dir, sandbox
/// files, program path, environment, cgroups. Errors are user-facing messages.
pub(super) fn prepare(
    spec: &LaunchSpec,
    task_dir: &Path,
    cgroups: &Cgroups,
    cfg: &ProcessConfig,
) -> Result<Prepared, AgentError> {
    let cmd = spec
        .command
        .as_ref()
        .ok_or_else(|| AgentError::Launch("a process task needs a command".into()))?;
    check_sandbox(&spec.sandbox)?;
    // A previous run of the same task id must not leave a stale status behind.
    let _ = std::fs::remove_dir_all(task_dir);
    std::fs::create_dir_all(task_dir)
        .map_err(|e| AgentError::io(format!("create {}", task_dir.display()), e))?;

    let env = task_env(spec, cmd);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let (program, argv) = resolve_program(cmd, path_var.as_deref(), &spec.sandbox, is_executable)?;
    let (stdin, stdout, stderr) = open_stdio(&spec.sandbox)?;

    let plan_argv = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(&kv)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let program = cstr(program.as_os_str().as_bytes())?;
    let workdir = cstr(spec.sandbox.as_os_str().as_bytes())?;
    let status_path = cstr(task_dir.join("exit_status").as_os_str().as_bytes())?;
    let status_tmp = cstr(task_dir.join("exit_status.tmp").as_os_str().as_bytes())?;
    let alive_path = cstr(alive_file(cfg).as_os_str().as_bytes())?;
    // Last, so that no error after it leaves a cgroup behind.
    let (cgroup_dirs, cgroup_procs) = match cgroups.create(&escape_id(&spec.task_id), &spec.limits)
    {
        Ok(Some(made)) => (made.dirs, made.procs),
        Ok(None) => (Vec::new(), Vec::new()),
        Err(e) => {
            return Err(AgentError::Cgroup(format!(
                "cannot apply the task's limits: {e}"
            )))
        }
    };
    let plan = SupervisorPlan {
        program,
        argv: plan_argv,
        envp,
        workdir,
        status_path,
        status_tmp,
        stdin,
        stdout,
        stderr,
        cgroup_procs,
        alive_path,
        recovery_timeout: cfg.recovery_timeout,
        check_interval: heartbeat::check_interval(cfg.recovery_timeout),
        kill_grace: spec.kill_grace,
    };
    Ok(Prepared {
        plan,
        cgroups: cgroup_dirs,
        env: cmd.env.clone(),
    })
}

/// The sandbox must be a directory.
fn check_sandbox(sandbox: &Path) -> Result<(), AgentError> {
    match std::fs::metadata(sandbox) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(AgentError::Launch(format!(
            "sandbox {} is not a directory",
            sandbox.display()
        ))),
        Err(e) => Err(AgentError::io(format!("sandbox {}", sandbox.display()), e)),
    }
}

/// The task's environment: the agent's, with the task's id and sandbox and the command's
/// own variables over it.
fn task_env(spec: &LaunchSpec, cmd: &CommandSpec) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut set = |k: &str, v: &OsStr| {
        env.retain(|(ek, _)| ek.as_os_str() != OsStr::new(k));
        env.push((k.into(), v.to_os_string()));
    };
    set("SHOAL_TASK_ID", OsStr::new(&spec.task_id));
    set("SHOAL_SANDBOX", spec.sandbox.as_os_str());
    for (k, v) in &cmd.env {
        set(k, OsStr::new(v));
    }
    env
}

/// The task's standard input (`/dev/null`), output and error (the sandbox's `stdout` and
/// `stderr`, appended to).
fn open_stdio(sandbox: &Path) -> Result<(OwnedFd, OwnedFd, OwnedFd), AgentError> {
    let open_out = |name: &str| -> Result<OwnedFd, AgentError> {
        let p = sandbox.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map(OwnedFd::from)
            .map_err(|e| AgentError::io(format!("open {}", p.display()), e))
    };
    let stdout = open_out("stdout")?;
    let stderr = open_out("stderr")?;
    let stdin = std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::io("open /dev/null", e))?;
    Ok((stdin, stdout, stderr))
}

fn cstr(b: &[u8]) -> Result<CString, AgentError> {
    CString::new(b).map_err(|_| AgentError::Launch("argument contains a NUL byte".into()))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Program path and argv of a command (plain, apart from the `exists` callback).
pub(crate) fn resolve_program(
    cmd: &CommandSpec,
    path_var: Option<&OsStr>,
    sandbox: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, Vec<OsString>), AgentError> {
    if cmd.shell {
        return Ok((
            PathBuf::from("/bin/sh"),
            vec!["sh".into(), "-c".into(), cmd.value.clone().into()],
        ));
    }
    if cmd.value.is_empty() {
        return Err(AgentError::Launch("the command is empty".into()));
    }
    let mut argv: Vec<OsString> = vec![cmd.value.clone().into()];
    argv.extend(cmd.arguments.iter().map(OsString::from));
    if cmd.value.contains('/') {
        let p = sandbox.join(&cmd.value);
        return if exists(&p) {
            Ok((p, argv))
        } else {
            Err(AgentError::Launch(format!(
                "program {} not found or not executable",
                p.display()
            )))
        };
    }
    let path_var = path_var.unwrap_or(OsStr::new(
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ));
    for dir in std::env::split_paths(path_var) {
        let p = dir.join(&cmd.value);
        if dir.is_absolute() && exists(&p) {
            return Ok((p, argv));
        }
    }
    Err(AgentError::Launch(format!(
        "program {:?} not found in PATH",
        cmd.value
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs() {
        let sb = Path::new("/sb");
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        let (p, argv) =
            resolve_program(&CommandSpec::shell("echo hi"), None, sb, no).expect("shell");
        assert_eq!(p, Path::new("/bin/sh"));
        assert_eq!(
            argv,
            vec![OsString::from("sh"), "-c".into(), "echo hi".into()]
        );

        let cmd = CommandSpec::argv("prog", ["a", "b"]);
        let only_bin = |p: &Path| p == Path::new("/bin/prog");
        let (p, argv) =
            resolve_program(&cmd, Some(OsStr::new("/usr/bin:/bin")), sb, only_bin).expect("argv");
        assert_eq!(p, Path::new("/bin/prog"));
        assert_eq!(argv, vec![OsString::from("prog"), "a".into(), "b".into()]);
        assert!(resolve_program(&cmd, Some(OsStr::new("/usr/bin")), sb, no).is_err());
        // Relative PATH entries are ignored.
        assert!(resolve_program(&cmd, Some(OsStr::new("rel")), sb, yes).is_err());

        let (p, _) = resolve_program(
            &CommandSpec::argv("./run.sh", Vec::<String>::new()),
            None,
            sb,
            yes,
        )
        .expect("rel");
        assert_eq!(p, Path::new("/sb/./run.sh"));
        assert!(
            resolve_program(&CommandSpec::argv("", Vec::<String>::new()), None, sb, yes).is_err()
        );
    }
}
