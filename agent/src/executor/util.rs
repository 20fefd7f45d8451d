//! Small plain helpers shared by the executors (no async, little IO).

use super::TaskUpdate;
use shoal_core::clock::Clock;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use crate::files::escape_id;

/// FNV-1a, 64 bit: a stable hash for names (not for security).
pub(crate) fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A Docker container name for a task: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most
/// ~90 characters, unique per (agent id, task id) thanks to a hash suffix.
pub(crate) fn container_name(prefix: &str, agent_id: &str, task_id: &str) -> String {
    let clean: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    format!(
        "{prefix}-{clean}-{:08x}",
        fnv64(&[agent_id, task_id]) as u32
    )
}

/// The clock's wall time as a [`SystemTime`] (what file times are compared with).
pub(crate) fn wall_time(clock: &dyn Clock) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(clock.wall_ms())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 timestamp as Docker writes them
/// (`2024-05-01T12:34:56.123456789Z`, or with a `+hh:mm` offset) into seconds
/// since the epoch. `None` for anything else, including Docker's zero time
/// `0001-01-01T00:00:00Z` (negative).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = if rest == "Z" || rest == "z" {
        0
    } else {
        let rb = rest.as_bytes();
        if rb.len() != 6 || (rb[0] != b'+' && rb[0] != b'-') || rb[3] != b':' {
            return None;
        }
        let oh: i64 = rest.get(1..3)?.parse().ok()?;
        let om: i64 = rest.get(4..6)?.parse().ok()?;
        let v = oh * 3600 + om * 60;
        if rb[0] == b'+' {
            v
        } else {
            -v
        }
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    (t >= 0).then_some(t)
}

/// State letter and start time (clock ticks since boot) of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub start_time: u64,
}

impl ProcStat {
    /// Alive in the sense "still running code" (zombies and dead are not).
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the content of `/proc/<pid>/stat`. The command name is in
/// parentheses and may itself contain spaces and parentheses.
pub(crate) fn parse_proc_stat(content: &str) -> Option<ProcStat> {
    let close = content.rfind(')')?;
    let mut fields = content.get(close + 1..)?.split_whitespace();
    // Field 3 is the state, 4 the parent pid; start time is field 22, i.e.
    // the 19th after the parent pid.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        start_time,
    })
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub(crate) fn read_proc_stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let content = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&content)
}

/// Writes a file atomically (temp file + fsync + rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Age of a file (by mtime, on the clock's wall time); `None` when it cannot be read.
pub(crate) fn file_age(path: &Path, clock: &dyn Clock) -> Option<Duration> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    wall_time(clock)
        .duration_since(m)
        .ok()
        .or(Some(Duration::ZERO))
}

/// A spawned task that is aborted when this guard is dropped, so that helper
/// tasks (log copy, health checks) die with the task watcher that owns them,
/// also when the watcher itself is aborted.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Signal number to name, for messages.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// A task's final update when its health checks got it killed: killed, and why.
pub(crate) fn health_killed(update: TaskUpdate, why: Option<String>) -> TaskUpdate {
    match (update, why) {
        (TaskUpdate::Killed { .. }, Some(message)) => TaskUpdate::Killed { message },
        (update, _) => update,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape() {
        assert_eq!(escape_id("abc-1.2_x"), "abc-1.2_x");
        assert_eq!(escape_id("a/b c"), "a%2Fb%20c");
        assert_eq!(escape_id(".."), "%2E.");
        assert_ne!(escape_id("a/b"), escape_id("a_b"));
    }

    #[test]
    fn names() {
        let n = container_name("shoal", "agent", "my task/1");
        assert!(n.starts_with("shoal-my_task_1-"));
        assert_ne!(n, container_name("shoal", "agent", "my_task_1"));
        assert_ne!(n, container_name("shoal", "other", "my task/1"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:34:56.123456789Z"),
            Some(1_714_566_896)
        );
        assert_eq!(
            parse_rfc3339("2024-05-01T14:34:56+02:00"),
            Some(1_714_566_896)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2024-05-01T12:34:56."), None);
    }

    #[test]
    fn proc_stat() {
        let s = "1234 (we ird) (name) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            parse_proc_stat(s),
            Some(ProcStat {
                state: 'S',
                ppid: 1,
                start_time: 98765
            })
        );
        assert_eq!(parse_proc_stat("nonsense"), None);
        let me = read_proc_stat(std::process::id() as i32).expect("own stat");
        assert!(me.is_running());
        assert!(me.ppid > 0);
        assert!(read_proc_stat(-1).is_none());
    }
}
