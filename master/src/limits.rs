//! Every bound of the master, named in one place, units last.

/// Commands waiting for the committer before senders wait.
pub const COMMIT_QUEUE_MAX: usize = 16_384;
/// Most commands committed in one group (one store write, one sync).
pub const COMMIT_GROUP_MAX: usize = 1_024;
/// Groups decided ahead of the writer (applied, waiting for their write and sync); the
/// writer also persists at most this many more groups with one sync.
pub const COMMIT_PIPELINE_GROUPS: usize = 8;
/// Log entries kept for watches to resume from; older ones are compacted away.
pub const LOG_RETAIN_ENTRIES: u64 = 100_000;
/// Live entries buffered per watcher before it falls back to reading the store.
pub const WATCH_BROADCAST_MAX: usize = 4_096;
/// Lines buffered per watch stream.
pub const WATCH_STREAM_BUFFER: usize = 256;
/// Log entries read from the store at a time while a watch catches up.
pub const WATCH_READ_BATCH: usize = 512;
/// A watch with nothing to say sends an empty line this often, so proxies keep it open.
pub const WATCH_KEEPALIVE_SECS: u64 = 15;
/// Largest request body, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 << 20;
/// Messages queued for one agent's connection before the dispatcher's sends are dropped
/// (reconciliation on reconnect repairs what was dropped; it waits for room itself, which
/// the link's writer makes).
pub const AGENT_OUTBOX_MAX: usize = 4_096;
/// Task ids an agent may list as `known` in its REGISTER. A registration listing more is
/// refused with an ERROR naming this bound, before anything commits (as Mesos drops an invalid
/// re-registration): the agent stays as it was and, kept away, becomes unreachable.
pub const AGENT_KNOWN_TASKS_MAX: usize = 100_000;
/// How long a new agent connection may take to send its REGISTER.
pub const AGENT_REGISTER_WAIT_SECS: u64 = 10;
/// The first pause before a failed store is reopened; it doubles after each failed reopen.
pub const STORE_REOPEN_BACKOFF_MIN_MS: u64 = 100;
/// The longest pause between reopens of a failing store.
pub const STORE_REOPEN_BACKOFF_MAX_MS: u64 = 2_000;
