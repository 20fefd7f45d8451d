//! Every bound and timer of the agent, named in one place, units last.

/// Longest wait for the tasks to end when the agent stops with `Stop::KillTasks`; a task whose
/// grace period is longer is left to its recovery timeout.
pub const STOP_KILL_WAIT_SECS: u64 = 60;
/// Longest wait, once the tasks ended, for the master to acknowledge their statuses.
pub const STOP_ACK_WAIT_SECS: u64 = 2;
/// How often a stopping agent looks whether its tasks have ended.
pub const STOP_POLL_MS: u64 = 50;
/// The journal is rewritten when it holds this many more records than live state needs.
pub const JOURNAL_COMPACT_AFTER_RECORDS: usize = 10_000;
