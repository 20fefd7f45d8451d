//! The per-task supervisor of the process executor.
//!
//! `spawn` forks the agent once: the child (the *supervisor*) calls `setsid`,
//! wires `/dev/null`, the sandbox's `stdout` and `stderr` files to fds 0-2,
//! closes every other fd, ignores the terminating signals and forks the *task*
//! process, which makes itself leader of its own process group, restores the
//! default signal dispositions, `chdir`s into the sandbox and `execve`s the
//! command. The supervisor then waits for the task, SIGKILLs whatever is left
//! in the task's process group, writes `exit N` or `signal N` atomically into
//! the status file and exits.
//!
//! While it waits, the supervisor looks at its agent's heartbeat file (see the
//! `heartbeat` module) every check interval. When the file is gone (the agent's
//! work dir was removed) or has not changed for the recovery timeout (the agent
//! did not come back), nobody will ever ask for the task again: the supervisor
//! kills it (SIGTERM to its process group, SIGKILL after its grace period),
//! records `signal N orphaned` and exits. Time is measured on the monotonic
//! clock from the last change it saw, so a wall-clock jump kills nothing.
//!
//! Because the supervisor is its own process (not a thread of the agent), the
//! status of a task is recorded even when the agent is dead at the time, and
//! because the task has its own process group, killing the task (SIGTERM, then
//! SIGKILL to the group) never kills the supervisor: the recorded status is
//! always the real one.
//!
//! Between `fork` and `execve`/`_exit` the children only make async-signal-safe
//! system calls on memory prepared before the fork (no allocation, no locks),
//! which is what POSIX allows after forking a multi-threaded process.
//!
//! The agent learns the task's pid (= its process group id) and any exec
//! failure through a close-on-exec pipe: 5-byte messages `b'P' | pid`,
//! `b'E' | errno` (execve failed), `b'C' | errno` (chdir failed),
//! `b'G' | errno` (joining the task's cgroups failed) or `b'F' | errno` (fork failed), each an `i32` in native byte order; EOF comes
//! when the supervisor closed its end and the task exec'd (or died).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::AgentError;

/// Everything the children need, prepared before the fork.
pub(crate) struct SupervisorPlan {
    /// Absolute path of the program.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub workdir: CString,
    pub status_path: CString,
    pub status_tmp: CString,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// `cgroup.procs` of the task's cgroups, opened for writing: the task process
    /// joins them before it execs.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The agent's heartbeat file (absolute).
    pub alive_path: CString,
    /// The task is killed when the heartbeat file has not changed for this long (zero: never).
    pub recovery_timeout: Duration,
    /// How often the heartbeat file is looked at.
    pub check_interval: Duration,
    /// Time between SIGTERM and SIGKILL when the supervisor kills the task itself.
    pub kill_grace: Duration,
}

/// A started task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spawned {
    pub supervisor_pid: i32,
    /// Pid of the task process, which is also its process group id.
    pub pgid: i32,
}

/// How a supervised task ended, as written in the status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitRecord {
    Exited(i32),
    Signaled(i32),
}

impl ExitRecord {
    pub fn parse(s: &str) -> Option<ExitRecord> {
        let mut it = s.split_whitespace();
        let kind = it.next()?;
        let n: i32 = it.next()?.parse().ok()?;
        match kind {
            "exit" => Some(ExitRecord::Exited(n)),
            "signal" => Some(ExitRecord::Signaled(n)),
            _ => None,
        }
    }

    /// Whether the status file says the supervisor killed the task itself because its
    /// agent was gone (`signal 15 orphaned`).
    pub fn orphaned(s: &str) -> bool {
        s.split_whitespace().nth(2) == Some(ORPHANED_WORD)
    }
}

/// Third word of the status file of a task its supervisor killed for want of an agent.
const ORPHANED_WORD: &str = "orphaned";

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Moves `fd` to a number >= 3 (keeping close-on-exec) so that the children's
/// `dup2` onto 0..=2 can never clobber a source fd still needed.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    at_least(fd, 3)
}

/// Moves `fd` to a number >= `min` (close-on-exec).
fn at_least(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        return Ok(fd);
    }
    // SAFETY: plain fcntl on an fd we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min.max(4)) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: n is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Forks the supervisor and waits (blocking, briefly) until the task process
/// exec'd or failed to. Call from a blocking thread.
pub(crate) fn spawn(plan: SupervisorPlan) -> Result<Spawned, AgentError> {
    let os = |what: &'static str| move |err: io::Error| AgentError::io(what, err);
    let stdin = above_stdio(plan.stdin).map_err(os("dup"))?;
    let stdout = above_stdio(plan.stdout).map_err(os("dup"))?;
    let stderr = above_stdio(plan.stderr).map_err(os("dup"))?;
    // Above PIPE_FD (the supervisor keeps them open, and only them, for the task).
    let cgroups = plan
        .cgroup_procs
        .into_iter()
        .map(|fd| at_least(fd, PIPE_FD + 1))
        .collect::<io::Result<Vec<_>>>()
        .map_err(os("dup"))?;
    let mut cgroup_fds: Vec<RawFd> = cgroups.iter().map(|f| f.as_raw_fd()).collect();
    cgroup_fds.sort_unstable();

    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::io("pipe2", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh fds.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wr = above_stdio(wr).map_err(os("dup"))?;

    let mut argv_ptrs: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: sysconf is always safe.
    let max_fd = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let max_fd = if max_fd <= 0 {
        65_536
    } else {
        max_fd.min(1 << 20) as i32
    };

    let args = ChildArgs {
        program: plan.program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        workdir: plan.workdir.as_ptr(),
        status_path: plan.status_path.as_ptr(),
        status_tmp: plan.status_tmp.as_ptr(),
        stdin: stdin.as_raw_fd(),
        stdout: stdout.as_raw_fd(),
        stderr: stderr.as_raw_fd(),
        pipe: wr.as_raw_fd(),
        cgroups: cgroup_fds.as_ptr(),
        cgroups_len: cgroup_fds.len(),
        max_fd,
        alive_path: plan.alive_path.as_ptr(),
        recovery_timeout_ms: millis(plan.recovery_timeout),
        check_interval_ms: millis(plan.check_interval).max(1),
        kill_grace_ms: millis(plan.kill_grace),
    };

    // SAFETY: the child only runs `supervisor_main`, which makes
    // async-signal-safe calls on the memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(AgentError::io("fork", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; this is the forked child.
        unsafe { supervisor_main(&args) }
    }
    drop(wr);
    drop((stdin, stdout, stderr, cgroups));

    wait_for_exec(&rd, pid)
}

/// Reads what the supervisor `pid` says on its pipe until EOF: the task's pid, or the step
/// that failed (the supervisor is reaped then).
fn wait_for_exec(rd: &OwnedFd, pid: libc::pid_t) -> Result<Spawned, AgentError> {
    let bytes = read_to_eof(rd);
    let reap = || {
        let mut st = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(err) => {
            reap();
            return Err(AgentError::io("read supervisor pipe", err));
        }
    };
    let mut pgid = None;
    for msg in bytes.chunks(5) {
        if msg.len() != 5 {
            break;
        }
        let val = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
        let what = match msg[0] {
            b'P' => {
                pgid = Some(val);
                continue;
            }
            b'E' => "execve",
            b'C' => "chdir into the sandbox",
            b'F' => "fork",
            b'G' => "join the task's cgroup",
            _ => "unknown step",
        };
        // The supervisor exits right after recording exit status 127.
        reap();
        return Err(AgentError::io(what, io::Error::from_raw_os_error(val)));
    }
    match pgid {
        Some(pgid) if pgid > 0 => Ok(Spawned {
            supervisor_pid: pid,
            pgid,
        }),
        _ => {
            reap();
            Err(AgentError::Protocol(
                "supervisor died before starting the task".into(),
            ))
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read_to_eof(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return Ok(out);
        }
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > 4096 {
            return Err(io::Error::other("supervisor pipe overflow"));
        }
    }
}

/// Raw data for the children (pointers into memory owned by `spawn`).
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    workdir: *const libc::c_char,
    status_path: *const libc::c_char,
    status_tmp: *const libc::c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    pipe: RawFd,
    /// `cgroup.procs` fds (`cgroups_len` of them, ascending, all above `PIPE_FD`).
    cgroups: *const RawFd,
    cgroups_len: usize,
    max_fd: i32,
    alive_path: *const libc::c_char,
    /// Zero or less: the task never times out.
    recovery_timeout_ms: i64,
    check_interval_ms: i64,
    kill_grace_ms: i64,
}

const PIPE_FD: RawFd = 3;
const IGNORED_IN_SUPERVISOR: [libc::c_int; 7] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGPIPE,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

unsafe fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) {
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = handler;
    libc::sigemptyset(&mut sa.sa_mask);
    libc::sigaction(sig, &sa, std::ptr::null_mut());
}

unsafe fn send_msg(tag: u8, val: i32) {
    let v = val.to_ne_bytes();
    let msg = [tag, v[0], v[1], v[2], v[3]];
    libc::write(PIPE_FD, msg.as_ptr().cast(), msg.len());
}

/// Formats `n` in decimal into `buf`, returns the used tail.
fn fmt_i32(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let neg = n < 0;
    let mut v = i64::from(n).unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

unsafe fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        if n < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            return;
        }
        data = &data[n as usize..];
    }
}

/// Closes the fds `from..=to` (async-signal-safe).
unsafe fn close_fds(from: RawFd, to: RawFd, max_fd: RawFd) {
    if from > to {
        return;
    }
    if libc::syscall(
        libc::SYS_close_range,
        from as libc::c_uint,
        to as libc::c_uint,
        0 as libc::c_uint,
    ) != 0
    {
        for fd in from..=to.min(max_fd - 1) {
            libc::close(fd);
        }
    }
}

unsafe fn supervisor_main(a: &ChildArgs) -> ! {
    libc::setsid();
    libc::dup2(a.stdin, 0);
    libc::dup2(a.stdout, 1);
    libc::dup2(a.stderr, 2);
    if a.pipe != PIPE_FD {
        libc::dup2(a.pipe, PIPE_FD);
    }
    libc::fcntl(PIPE_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    // Close everything above PIPE_FD but the task's cgroup fds (close-on-exec already).
    let mut from = PIPE_FD + 1;
    for i in 0..a.cgroups_len {
        let keep = *a.cgroups.add(i);
        close_fds(from, keep - 1, a.max_fd);
        from = keep + 1;
    }
    close_fds(from, libc::c_int::MAX, a.max_fd);
    // Drop the agent's signal handlers (they would write into the agent's fds).
    for sig in 1..65 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            set_disposition(sig, libc::SIG_DFL);
        }
    }
    for sig in IGNORED_IN_SUPERVISOR {
        set_disposition(sig, libc::SIG_IGN);
    }
    // SIGCHLD stays blocked in the supervisor: it waits for it with a timeout.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    let mut chld: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut chld);
    libc::sigaddset(&mut chld, libc::SIGCHLD);
    libc::sigprocmask(libc::SIG_SETMASK, &chld, std::ptr::null_mut());

    let task = libc::fork();
    if task == 0 {
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::setpgid(0, 0);
        // "0" moves the writing process: the task joins its cgroups (the supervisor
        // stays out, neither charged nor a candidate of the task's OOM killer).
        for i in 0..a.cgroups_len {
            if libc::write(*a.cgroups.add(i), b"0".as_ptr().cast(), 1) != 1 {
                send_msg(b'G', *libc::__errno_location());
                libc::_exit(127);
            }
        }
        for sig in IGNORED_IN_SUPERVISOR {
            set_disposition(sig, libc::SIG_DFL);
        }
        if libc::chdir(a.workdir) != 0 {
            send_msg(b'C', *libc::__errno_location());
            libc::_exit(127);
        }
        libc::execve(a.program, a.argv, a.envp);
        send_msg(b'E', *libc::__errno_location());
        libc::_exit(127);
    }
    if task < 0 {
        send_msg(b'F', *libc::__errno_location());
        libc::_exit(1);
    }
    libc::setpgid(task, task);
    send_msg(b'P', task);
    libc::close(PIPE_FD);

    let mut status: libc::c_int = 0;
    let (waited, orphaned) = wait_task(a, task, &chld, &mut status);
    // Leftovers of the task's process group die with it.
    libc::kill(-task, libc::SIGKILL);
    if !waited {
        libc::_exit(2);
    }
    let (word, n): (&[u8], i32) = if libc::WIFSIGNALED(status) {
        (b"signal ", libc::WTERMSIG(status))
    } else {
        (b"exit ", libc::WEXITSTATUS(status))
    };
    let mut buf = [0u8; 12];
    let num = fmt_i32(n, &mut buf);
    let fd = libc::open(
        a.status_tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
        0o644,
    );
    if fd >= 0 {
        write_all(fd, word);
        write_all(fd, num);
        if orphaned {
            write_all(fd, b" ");
            write_all(fd, ORPHANED_WORD.as_bytes());
        }
        write_all(fd, b"\n");
        libc::fsync(fd);
        libc::close(fd);
        libc::rename(a.status_tmp, a.status_path);
    }
    libc::_exit(0);
}

/// Monotonic milliseconds (async-signal-safe).
///
/// The supervisor is a forked child of the agent that never `exec`s: it may only make
/// async-signal-safe calls, so it cannot go through the agent's `SharedClock` (a trait object
/// behind an `Arc`, whose implementations may lock or allocate) and reads `CLOCK_MONOTONIC`
/// itself. It lives outside the agent process anyway, where no simulated clock reaches.
unsafe fn now_ms() -> i64 {
    let mut ts: libc::timespec = std::mem::zeroed();
    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// What `stat` says about the heartbeat file.
enum Heart {
    /// Its modification time (seconds, nanoseconds).
    Seen(i64, i64),
    /// It (or a directory above it) does not exist.
    Gone,
    /// Unreadable for another reason: no news.
    Unknown,
}

unsafe fn heart(path: *const libc::c_char) -> Heart {
    let mut st: libc::stat = std::mem::zeroed();
    if libc::stat(path, &mut st) == 0 {
        return Heart::Seen(st.st_mtime, st.st_mtime_nsec);
    }
    match *libc::__errno_location() {
        libc::ENOENT | libc::ENOTDIR => Heart::Gone,
        _ => Heart::Unknown,
    }
}

/// Waits for the task to end, killing it when the agent's heartbeat stops (see the module
/// docs). `(reaped, orphaned)`: whether the task was reaped (its wait status in `status`),
/// and whether the supervisor killed it for want of an agent. SIGCHLD must be blocked.
unsafe fn wait_task(
    a: &ChildArgs,
    task: libc::pid_t,
    chld: &libc::sigset_t,
    status: &mut libc::c_int,
) -> (bool, bool) {
    let mut last_seen: Option<(i64, i64)> = None;
    let mut last_change = now_ms();
    let mut next_check = last_change;
    let mut orphaned = false;
    let mut sigkill_at: Option<i64> = None;
    loop {
        let r = libc::waitpid(task, status, libc::WNOHANG);
        if r == task {
            return (true, orphaned);
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            return (false, orphaned);
        }
        let now = now_ms();
        if !orphaned && now >= next_check {
            next_check = now + a.check_interval_ms;
            let gone = match heart(a.alive_path) {
                Heart::Gone => true,
                Heart::Seen(s, ns) => {
                    if last_seen != Some((s, ns)) {
                        last_seen = Some((s, ns));
                        last_change = now;
                    }
                    a.recovery_timeout_ms > 0 && now - last_change >= a.recovery_timeout_ms
                }
                Heart::Unknown => {
                    a.recovery_timeout_ms > 0 && now - last_change >= a.recovery_timeout_ms
                }
            };
            if gone {
                orphaned = true;
                if a.kill_grace_ms > 0 {
                    libc::kill(-task, libc::SIGTERM);
                    sigkill_at = Some(now.saturating_add(a.kill_grace_ms));
                } else {
                    libc::kill(-task, libc::SIGKILL);
                }
            }
        }
        if let Some(at) = sigkill_at {
            if now >= at {
                libc::kill(-task, libc::SIGKILL);
                sigkill_at = None;
            }
        }
        // Sleep until the task ends (SIGCHLD) or the next thing to do.
        let wake = match (orphaned, sigkill_at) {
            (false, Some(at)) => next_check.min(at),
            (false, None) => next_check,
            (true, Some(at)) => at,
            (true, None) => now + 1000,
        };
        let ms = (wake - now).clamp(1, 60_000);
        let ts = libc::timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        // The kernel's sigset is 8 bytes (64 signals); glibc's is larger, same layout.
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            chld as *const libc::sigset_t,
            std::ptr::null_mut::<libc::siginfo_t>(),
            &ts as *const libc::timespec,
            8usize,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_record() {
        assert_eq!(ExitRecord::parse("exit 0\n"), Some(ExitRecord::Exited(0)));
        assert_eq!(ExitRecord::parse("signal 9"), Some(ExitRecord::Signaled(9)));
        assert_eq!(ExitRecord::parse("exit"), None);
        assert_eq!(ExitRecord::parse("boom 1"), None);
        assert_eq!(ExitRecord::parse(""), None);
        assert_eq!(
            ExitRecord::parse("signal 15 orphaned\n"),
            Some(ExitRecord::Signaled(15))
        );
        assert!(ExitRecord::orphaned("signal 15 orphaned\n"));
        assert!(!ExitRecord::orphaned("signal 15\n"));
    }

    #[test]
    fn fmt() {
        let mut b = [0u8; 12];
        assert_eq!(fmt_i32(0, &mut b), b"0");
        assert_eq!(fmt_i32(127, &mut b), b"127");
        assert_eq!(fmt_i32(-5, &mut b), b"-5");
        assert_eq!(fmt_i32(i32::MIN, &mut b), b"-2147483648");
    }
}
