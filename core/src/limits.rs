//! Every bound of the cell, named in one place, units last. The bounds of the schedulers
//! above it are in their crates (`shoal-sched`'s `limits`).

/// Most placements one claim may carry.
pub const CLAIM_PLACEMENTS_MAX: usize = 10_000;
/// Longest id (task, executor, framework, agent, claim, offer, job, service), in bytes:
/// Mesos's `NAME_MAX`, as an id names a directory.
pub const ID_BYTES_MAX: usize = 255;
/// Longest role (team) name, in bytes (Mesos sets none; a role is in every offer and record).
pub const ROLE_NAME_BYTES_MAX: usize = 255;
/// Longest claim owner (the scheduler or framework that placed a task), in bytes.
pub const CLAIM_OWNER_BYTES_MAX: usize = 255;
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
/// Terminal tasks a cell keeps per owner by default (Mesos's
/// `--max_completed_tasks_per_framework`).
pub const COMPLETED_TASKS_PER_OWNER: usize = 1_000;
/// Age past which a terminal task is collected by default, in milliseconds (one day).
pub const COMPLETED_TASK_AGE_MS: u64 = 24 * 3_600 * 1_000;
/// Gone agents a cell keeps by default (Mesos's `--registry_max_agent_count`).
pub const GONE_AGENTS_MAX: usize = 100 * 1_024;
/// Most records (tasks, claims, agents) one collection may name.
pub const COLLECT_RECORDS_MAX: usize = 10_000;
