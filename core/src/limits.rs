//! Every bound of the core, named in one place, units last.

/// Most placements one claim may carry.
pub const CLAIM_PLACEMENTS_MAX: usize = 10_000;
/// Longest id (task, executor, framework, agent, claim, offer, job, service), in bytes:
/// Mesos's `NAME_MAX`, as an id names a directory.
pub const ID_BYTES_MAX: usize = 255;
/// Longest role (team) name, in bytes (Mesos sets none; a role is in every offer and record).
pub const ROLE_NAME_BYTES_MAX: usize = 255;
/// Longest claim owner (the scheduler or framework that placed a task), in bytes.
pub const CLAIM_OWNER_BYTES_MAX: usize = 255;
/// Longest job or service name, in bytes.
pub const JOB_NAME_BYTES_MAX: usize = 64;
/// Longest agent hostname, in bytes.
pub const HOSTNAME_BYTES_MAX: usize = 255;
/// Largest task description (TaskInfo JSON) one placement may carry, in bytes.
pub const TASK_SPEC_BYTES_MAX: usize = 1 << 20;
/// Most tasks one claim may evict.
pub const CLAIM_EVICTIONS_MAX: usize = 1_000;
/// Highest priority of a claim (and of a job's task); the lowest is 0.
pub const PRIORITY_MAX: i64 = 1000;
/// The largest sum of one scalar over the whole cell, in thousandths: the agents' totals
/// (and so what is allocated), and the roles' guarantees (and so the headroom they ask
/// for). A quarter of `i64::MAX`, so these sums and every difference taken from them stay
/// exact: about 2,300 agents of the largest amount (`Milli::MAX`, 10^12 units) each.
pub const CELL_SCALAR_MILLI_MAX: i64 = 1 << 61;

// The built-in schedulers' bounds: on the job and service files they take, and on the work one
// step of theirs does.

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
