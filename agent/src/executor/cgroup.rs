//! Resource limits of process tasks through Linux cgroups, where the host allows.
//!
//! [`Cgroups::detect`] looks once (when the executor is built) at the cgroup mount:
//!
//! * **v2** (`<root>/cgroup.controllers` lists `memory` and `cpu`): task cgroups live in
//!   `<root>/shoal/<key>/`, with the controllers enabled down the chain.
//! * **v1** (`<root>/memory` and/or `<root>/cpu` are v1 hierarchies): task cgroups live in
//!   `<root>/memory/shoal/<key>/` and `<root>/cpu/shoal/<key>/`.
//! * otherwise, or when the parent cannot be created (read-only mount, no permission), limits
//!   are **off**: the reason is logged once and tasks run unlimited.
//!
//! The parents exist while task cgroups are in them: made by the first task cgroup, removed
//! (when empty) as the executor is dropped.
//!
//! `<key>` is derived from the executor's state directory, so two agents on one host never
//! share task cgroups and a restarted agent finds its own.
//!
//! Per task, [`Cgroups::create`] makes one cgroup per hierarchy and writes the limits:
//! memory (v2 `memory.max`, `memory.swap.max = 0`; v1 `memory.limit_in_bytes` and
//! `memory.memsw.limit_in_bytes` = the same, i.e. no swap beyond the limit) and CPU (v2
//! `cpu.max` quota per 100 ms period and `cpu.weight`; v1 `cpu.cfs_quota_us` and `cpu.shares`).
//! The task process joins them itself, between `fork` and `exec` (see the supervisor), so it
//! never runs outside its limits. After the task ended, [`oom_killed`] reads the kernel's OOM
//! kill counter (v2 `memory.events`, v1 `memory.oom_control`) and [`remove`] kills what is
//! left in the cgroups and removes them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::Limits;
use crate::AgentError;

/// The CFS period used for CPU quotas (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Where process tasks get their cgroups (or why they do not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2: the parent of the task cgroups.
    V2 { parent: PathBuf },
    /// cgroup v1: the parents of the task cgroups in the memory and cpu hierarchies (a
    /// hierarchy that is missing or not writable is `None`).
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// Limits are not enforced, and why.
    Off { reason: String },
}

/// The cgroups of one task: their directories and their `cgroup.procs`, open for writing.
pub(crate) struct TaskCgroups {
    pub dirs: Vec<PathBuf>,
    pub procs: Vec<OwnedFd>,
}

impl Cgroups {
    /// Finds the cgroup hierarchies under `root` (normally `/sys/fs/cgroup`) and creates the
    /// parent `shoal/<key>` in each; logs what it found once.
    pub fn detect(root: &Path, key: &str) -> Cgroups {
        let found = Self::probe(root, key);
        match &found {
            Cgroups::Off { reason } => {
                tracing::warn!(root = %root.display(), %reason, "process task limits are not enforced")
            }
            c => tracing::info!(cgroups = ?c, "process task limits use cgroups"),
        }
        found
    }

    /// Finds the hierarchies and checks that the parents can be made (made, then removed
    /// again when empty: task cgroups make them again when needed).
    fn probe(root: &Path, key: &str) -> Cgroups {
        let found = Self::find(root, key);
        if let Err(e) = found.make_parents() {
            return Cgroups::Off {
                reason: e.to_string(),
            };
        }
        found.remove_parents_if_empty();
        found
    }

    fn find(root: &Path, key: &str) -> Cgroups {
        if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            if !has("memory") || !has("cpu") {
                return Cgroups::Off {
                    reason: format!(
                        "cgroup v2 at {} offers the controllers {:?}, not memory and cpu",
                        root.display(),
                        controllers.trim()
                    ),
                };
            }
            return Cgroups::V2 {
                parent: root.join("shoal").join(key),
            };
        }
        let v1 = |controller: &str, probe_file: &str| {
            let mount = root.join(controller);
            mount
                .join(probe_file)
                .exists()
                .then(|| mount.join("shoal").join(key))
        };
        match (
            v1("memory", "memory.limit_in_bytes"),
            v1("cpu", "cpu.cfs_quota_us"),
        ) {
            (None, None) => Cgroups::Off {
                reason: format!(
                    "no cgroup v2 hierarchy with memory and cpu and no v1 memory or cpu hierarchy under {}",
                    root.display()
                ),
            },
            (memory, cpu) => Cgroups::V1 { memory, cpu },
        }
    }

    fn parents(&self) -> Vec<&PathBuf> {
        match self {
            Cgroups::V2 { parent } => vec![parent],
            Cgroups::V1 { memory, cpu } => memory.iter().chain(cpu).collect(),
            Cgroups::Off { .. } => Vec::new(),
        }
    }

    /// Makes the parents of the task cgroups (v2: with the memory and cpu controllers
    /// enabled on every level above a task cgroup).
    fn make_parents(&self) -> Result<(), AgentError> {
        for p in self.parents() {
            std::fs::create_dir_all(p)
                .map_err(|e| AgentError::io(format!("cannot create {}", p.display()), e))?;
        }
        if let Cgroups::V2 { parent } = self {
            let shoal = parent.parent().unwrap_or(parent);
            let root = shoal.parent().unwrap_or(shoal);
            // Fails harmlessly where they already are enabled.
            for dir in [root, shoal, parent.as_path()] {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
            }
            let enabled =
                std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
            if !(enabled.contains("memory") && enabled.contains("cpu")) {
                return Err(AgentError::Cgroup(format!(
                    "cannot enable the memory and cpu controllers in {} (enabled: {:?})",
                    parent.display(),
                    enabled.trim()
                )));
            }
        }
        Ok(())
    }

    /// Removes the parents made by [`Cgroups::detect`]; the kernel refuses while a task
    /// cgroup is still in them, so this never disturbs running tasks.
    pub fn remove_parents_if_empty(&self) {
        for p in self.parents() {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// Removes task cgroups left empty in the parents (an agent that died between making a
    /// task's cgroups and recording them), then the parents when empty. Busy cgroups (tasks
    /// still in them) are refused by the kernel and stay.
    pub fn sweep(&self) {
        for p in self.parents() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        self.remove_parents_if_empty();
    }

    /// Makes the cgroups of a task and writes its limits (blocking). `Ok(None)` when there
    /// is nothing to limit or limits are off; `Err` when a cgroup cannot be set up (what was
    /// made is removed again).
    pub(crate) fn create(
        &self,
        name: &str,
        limits: &Limits,
    ) -> Result<Option<TaskCgroups>, AgentError> {
        if limits.cpus <= 0.0 && limits.mem_mb == 0 {
            return Ok(None);
        }
        if matches!(self, Cgroups::Off { .. }) {
            return Ok(None);
        }
        let plan = self.plan(name, limits);
        if self.parents().iter().any(|p| !p.exists()) {
            self.make_parents()?;
        }
        let mut made = TaskCgroups {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        for (dir, files) in plan {
            let result = make_task_cgroup(&dir, &files);
            made.dirs.push(dir);
            match result {
                Ok(fd) => made.procs.push(fd),
                Err(e) => {
                    remove(&made.dirs);
                    return Err(e);
                }
            }
        }
        Ok(Some(made))
    }

    /// The task cgroups `name` needs for `limits`, each with the files to write.
    fn plan(&self, name: &str, limits: &Limits) -> Vec<(PathBuf, Writes)> {
        let mem_bytes = limits.mem_mb.saturating_mul(1024 * 1024);
        let quota = ((limits.cpus * CPU_PERIOD_US as f64) as u64).max(1000);
        let mut plan: Vec<(PathBuf, Writes)> = Vec::new();
        match self {
            Cgroups::Off { .. } => {}
            Cgroups::V2 { parent } => {
                let mut files = Vec::new();
                if limits.mem_mb > 0 {
                    files.push(("memory.max", mem_bytes.to_string(), true));
                    files.push(("memory.swap.max", "0".to_string(), false));
                }
                if limits.cpus > 0.0 {
                    files.push(("cpu.max", format!("{quota} {CPU_PERIOD_US}"), true));
                    let weight = ((limits.cpus * 100.0) as u64).clamp(1, 10_000);
                    files.push(("cpu.weight", weight.to_string(), false));
                }
                plan.push((parent.join(name), files));
            }
            Cgroups::V1 { memory, cpu } => {
                if let (Some(m), true) = (memory, limits.mem_mb > 0) {
                    plan.push((
                        m.join(name),
                        vec![
                            // The memory limit first: memsw may never be below it.
                            ("memory.limit_in_bytes", mem_bytes.to_string(), true),
                            // Absent without swap accounting; then swap is not limited.
                            ("memory.memsw.limit_in_bytes", mem_bytes.to_string(), false),
                        ],
                    ));
                }
                if let (Some(c), true) = (cpu, limits.cpus > 0.0) {
                    let shares = ((limits.cpus * 1024.0) as u64).max(2);
                    plan.push((
                        c.join(name),
                        vec![
                            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string(), false),
                            ("cpu.cfs_quota_us", quota.to_string(), true),
                            ("cpu.shares", shares.to_string(), false),
                        ],
                    ));
                }
            }
        }
        plan
    }
}

/// The files of a task cgroup to write: (file, value, required).
type Writes = Vec<(&'static str, String, bool)>;

/// Makes one task cgroup (or takes a leftover of an earlier run of the same task id),
/// writes its files, and opens its `cgroup.procs` for the task to join.
fn make_task_cgroup(dir: &Path, files: &Writes) -> Result<OwnedFd, AgentError> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Left over from an earlier run of the same task id.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(AgentError::io(format!("create {}", dir.display()), e)),
    }
    for (file, value, required) in files {
        let p = dir.join(file);
        match std::fs::write(&p, value) {
            Ok(()) => {}
            Err(e) if *required => {
                return Err(AgentError::io(
                    format!("write {value} to {}", p.display()),
                    e,
                ))
            }
            Err(e) => {
                tracing::debug!(file = %p.display(), error = %e, "optional cgroup setting not applied")
            }
        }
    }
    let procs = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map(OwnedFd::from)
        .map_err(|e| AgentError::io(format!("open {}", procs.display()), e))
}

/// Did the kernel's OOM killer kill a process in one of these cgroups?
pub(crate) fn oom_killed(dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| {
        ["memory.events", "memory.oom_control"].iter().any(|f| {
            std::fs::read_to_string(d.join(f))
                .ok()
                .is_some_and(|s| oom_kills(&s) > 0)
        })
    })
}

/// The `oom_kill N` counter of a v2 `memory.events` or v1 `memory.oom_control` file.
fn oom_kills(content: &str) -> u64 {
    content
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

/// SIGKILLs whatever is left in the cgroups (processes that left the task's process group)
/// and removes them; best effort (a cgroup still busy is retried by the executor's gc).
pub(crate) fn remove(dirs: &[PathBuf]) {
    for d in dirs {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid > 1 {
                    // SAFETY: kill(2) of a process in a cgroup this executor made for a task.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(cgroup = %d.display(), error = %e, "cannot remove the task cgroup yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_counter() {
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
    }

    #[test]
    fn v1_limits_are_written() {
        let root = tempfile::tempdir().unwrap();
        for (c, f) in [
            ("memory", "memory.limit_in_bytes"),
            ("cpu", "cpu.cfs_quota_us"),
        ] {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
            std::fs::write(root.path().join(c).join(f), "").unwrap();
        }
        let cg = Cgroups::probe(root.path(), "k");
        let Cgroups::V1 {
            memory: Some(m),
            cpu: Some(c),
        } = &cg
        else {
            panic!("{cg:?}")
        };
        // A plain directory stands in for the kernel's cgroup files.
        for d in [m, c] {
            std::fs::create_dir_all(d.join("t")).unwrap();
            std::fs::write(d.join("t").join("cgroup.procs"), "").unwrap();
        }
        let limits = Limits {
            cpus: 0.5,
            mem_mb: 32,
        };
        let made = cg.create("t", &limits).unwrap().unwrap();
        assert_eq!(made.dirs, vec![m.join("t"), c.join("t")]);
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(m.join("t/memory.limit_in_bytes")), "33554432");
        assert_eq!(read(m.join("t/memory.memsw.limit_in_bytes")), "33554432");
        assert_eq!(read(c.join("t/cpu.cfs_quota_us")), "50000");
        assert_eq!(read(c.join("t/cpu.shares")), "512");
        assert!(cg.create("u", &Limits::default()).unwrap().is_none());
    }

    #[test]
    fn v2_without_controllers_is_off() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "pids io\n").unwrap();
        assert!(matches!(
            Cgroups::probe(root.path(), "k"),
            Cgroups::Off { .. }
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Cgroups::probe(empty.path(), "k"),
            Cgroups::Off { .. }
        ));
    }
}
