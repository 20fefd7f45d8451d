//! Every bound of the Mesos scheduler API, named in one place, units last.

/// Events buffered per subscription before the framework counts as too slow.
pub const EVENT_BUFFER: usize = 4_096;
/// Removed framework ids remembered (Mesos keeps `--max_completed_frameworks`, 50).
pub const REMOVED_FRAMEWORKS_MAX: usize = 1_000;
