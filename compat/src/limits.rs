//! Every bound of the Mesos scheduler API, named in one place, units last.

/// Events buffered per subscription before the framework counts as too slow.
pub const EVENT_BUFFER: usize = 4_096;
/// Removed framework ids remembered (Mesos keeps `--max_completed_frameworks`, 50).
pub const REMOVED_FRAMEWORKS_MAX: usize = 1_000;

/// The offer timeout when `--offer-timeout` is not given. Mesos leaves offers unbounded by
/// default, so one framework that never answers holds what it was offered forever; Shoal
/// rescinds them after a minute. Long enough for a framework that answers at all (Marathon,
/// Spark and pymesos answer within seconds), short enough that an agent is not out of use
/// for long; Mesos's documentation suggests setting `--offer_timeout` for exactly this.
pub const OFFER_TIMEOUT_SECS: u64 = 60;
/// A framework with this many events unread in its buffer gets no offers: it is not reading
/// its stream, and what it was offered would only wait there.
pub const OFFERS_WITHHELD_EVENTS_UNREAD: usize = EVENT_BUFFER / 2;

/// Frameworks known at once (subscribed, or disconnected within their failover timeout), by
/// default (`--frameworks-max`). Mesos has no bound; each costs at most its FrameworkInfo
/// ([`FRAMEWORK_INFO_BYTES_MAX`]) and its stream's buffer.
pub const FRAMEWORKS_MAX: usize = 1_000;
/// Largest FrameworkInfo, in bytes of its JSON encoding (Marathon's is about 1 KiB; labels and
/// capabilities of any real framework fit many times over).
pub const FRAMEWORK_INFO_BYTES_MAX: usize = 64 << 10;
/// Longest framework name, in bytes.
pub const FRAMEWORK_NAME_BYTES_MAX: usize = 1_024;
/// Most roles of one (MULTI_ROLE) framework.
pub const FRAMEWORK_ROLES_MAX: usize = 128;
/// Upper bound of a framework's `failover_timeout`: four weeks (Marathon asks for one week,
/// other frameworks for "forever"); a larger value is capped to this, not refused.
pub const FAILOVER_TIMEOUT_SECS_MAX: u64 = 28 * 86_400;

/// The ZooKeeper session timeout a master asks for (Mesos's `--zk_session_timeout`, 10 s): a
/// master that dies is gone from its frameworks' detectors this long after.
pub const ZK_SESSION_TIMEOUT_SECS: u64 = 10;
/// Longest wait between two attempts to publish in ZooKeeper again after a session ended.
pub const ZK_RETRY_SECS_MAX: u64 = 10;
/// Largest MasterInfo published in ZooKeeper (its JSON; ZooKeeper's own node limit is 1 MiB).
pub const ZK_MASTER_INFO_BYTES_MAX: usize = 64 << 10;

/// Mesos's `Filters.refuse_seconds` default, for DECLINE and for what an ACCEPT leaves unused.
pub const REFUSE_SECONDS_DEFAULT: f64 = 5.0;
/// The longest filter installed (Mesos caps `refuse_seconds` at a year too).
pub const REFUSE_SECONDS_MAX: f64 = 365.0 * 86_400.0;

/// Largest body of one libprocess message (v0 scheduler API), in bytes. A `LaunchTasksMessage`
/// or an ACCEPT with many TaskInfos is the largest thing a driver sends; Marathon's are tens
/// of KiB. libprocess itself has no bound, so this is Shoal's; a larger body gets 413.
pub const LIBPROCESS_MESSAGE_BYTES_MAX: usize = 4 << 20;
/// Longest UPID text (`id@ip:port`), in bytes: a driver's is `scheduler-<uuid>@<ip>:<port>`,
/// about 60 bytes.
pub const UPID_BYTES_MAX: usize = 256;
/// Messages received from libprocess peers and not yet taken by the framework model. A
/// request waits (its connection with it) while the queue is full, up to
/// [`LIBPROCESS_INBOUND_WAIT_SECS`].
pub const LIBPROCESS_INBOUND_QUEUE_MAX: usize = 4_096;
/// How long a received message may wait for room in the inbound queue before it is refused
/// with 503.
pub const LIBPROCESS_INBOUND_WAIT_SECS: u64 = 10;
/// Messages queued for one peer and not yet written to its connection. A peer that falls this
/// far behind does not read what it is sent: its connection is closed and it counts as exited.
pub const LIBPROCESS_PEER_QUEUE_MAX: usize = 4_096;
/// libprocess peers (pid-based frameworks) the master keeps a connection to at once: one per
/// framework, so as many as frameworks are known.
pub const LIBPROCESS_PEERS_MAX: usize = FRAMEWORKS_MAX;
/// How long dialling a peer may take before it counts as exited.
pub const LIBPROCESS_CONNECT_TIMEOUT_SECS: u64 = 5;
/// How long writing one message to a peer may take before the peer counts as exited (a peer
/// that does not read fills its socket buffer and stalls the writer).
pub const LIBPROCESS_WRITE_TIMEOUT_SECS: u64 = 30;
