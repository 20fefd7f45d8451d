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
/// Bytes of request bodies held at once over every connection; a request that does not fit
/// gets 503 with `Retry-After` (two bodies of the largest size fit).
pub const REQUEST_BODY_BYTES_IN_FLIGHT_MAX: u64 = 128 << 20;
/// Connections in the general pool (lowered to fit the descriptor limit); see `http.rs`.
pub const HTTP_CONNECTIONS_MAX: usize = 8_192;
/// Connections beyond the general pool, served only for `/health` and agent links, when
/// every general connection has a request in flight.
pub const HTTP_RESERVED_CONNECTIONS: usize = 64;
/// Agent links (upgraded connections): a cell has up to 10,000 agents.
pub const AGENT_LINKS_MAX: usize = 12_000;
/// Descriptors kept for everything but connections (the store, logs, the runtime).
pub const FD_SPARE: usize = 256;
/// A connection must send a complete request head within this long, also after an earlier
/// request (so it bounds how long a connection may sit idle).
pub const HTTP_HEADER_READ_TIMEOUT_SECS: u64 = 15;
/// A request body must have arrived within this long of its head.
pub const HTTP_BODY_READ_TIMEOUT_SECS: u64 = 60;
/// On shutdown, requests in flight may finish for this long.
pub const HTTP_SHUTDOWN_GRACE_SECS: u64 = 5;
/// HTTP/1 buffers per connection: a request head must fit, and a response waits here for a
/// client that reads slowly (hyper's default is ~400 KiB).
pub const HTTP_CONNECTION_BUFFER_BYTES: usize = 64 << 10;
/// Watch streams open at once; more get 503.
pub const WATCHERS_MAX: usize = 512;
/// Bytes buffered per watch stream for a client that reads slower than the cell commits.
pub const WATCH_STREAM_BUFFER_BYTES: usize = 64 << 10;
/// A watch stream whose client has not made room for the next entry within this long is
/// dropped (its connection closed); the client resumes from its last version.
pub const WATCH_SEND_STALL_SECS: u64 = 10;
/// How long a built-in scheduler's driver waits for the entries of the snapshot it is about to
/// step on (they are streamed just after it is published).
pub const DRIVER_CATCH_UP_WAIT_MS: u64 = 200;

/// How often an idle built-in scheduler's driver asks for a placement pass anyway (claims
/// refused for reasons that pass without a commit the scheduler would notice).
pub const DRIVER_NUDGE_INTERVAL_MS: u64 = 1_000;
/// How often the collector looks for finished work past the retention, in milliseconds.
pub const COLLECT_INTERVAL_MS: u64 = 1_000;
