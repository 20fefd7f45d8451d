//! Every bound of the built-in schedulers, named in one place, units last: on the job and
//! service files they take, and on the work one step of theirs does. Their defaults stay with
//! the scheduler they belong to.

/// Longest job or service name, in bytes.
pub const JOB_NAME_BYTES_MAX: usize = 64;
/// Most tasks one job may have.
pub const JOB_TASKS_MAX: usize = 10_000;
/// Most retries of one job task.
pub const JOB_TASK_RETRIES_MAX: u32 = 100;
/// Longest backoff between two attempts of a job task: a job file's backoff is cut to it, and
/// the backoff, which doubles with each retry, stops growing at it.
pub const JOB_BACKOFF_MAX_MS: u64 = 10 * 60 * 1000;
/// Most placements the batch scheduler decides in one step (over all jobs).
pub const BATCH_PLACEMENTS_PER_STEP_MAX: usize = 2000;
/// Queued tasks the batch scheduler tries and fails to place in one step before it gives up
/// until the cell changes: bounds the cost of a step when the cell is full.
pub const BATCH_PLACEMENT_MISSES_PER_STEP_MAX: usize = 64;
/// Tasks the batch scheduler places by evicting others in one step (each is a claim of its
/// own).
pub const BATCH_PREEMPTIONS_PER_STEP_MAX: usize = 64;
/// Most instances one service may ask for.
pub const SERVICE_COUNT_MAX: u32 = 10_000;
/// Most placements the service scheduler decides for one service in one step.
pub const SERVICE_PLACEMENTS_PER_STEP_MAX: usize = 1000;
