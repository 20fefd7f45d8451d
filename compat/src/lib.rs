//! The Apache Mesos v1 scheduler HTTP API on top of the shared cell.
//!
//! A framework written for Mesos subscribes at `POST /api/v1/scheduler`, receives **offers**
//! carved out of the shared state, launches tasks, gets status updates and acknowledges them.
//! Offers are **holds** in the cell (see `shoal_core::Hold`): committed through the master's one
//! commit path, so a native claim cannot take held resources and a held resource is offered
//! to one framework at a time. ACCEPT turns holds into task placements atomically.
//!
//! The framework model ([`frameworks`]) is sans-IO and typed: it takes typed v1 calls and
//! returns effects (commands, typed events); the v1 HTTP layer and the IO shell ([`Compat`])
//! carry them out, and a second wire format plugs in beside the v1 layer through
//! [`EventSink`] and `Compat`'s session methods.
//!
//! **Architecture Invariant:** this crate is the only one that speaks the Mesos scheduler wire
//! formats (JSON and protobuf, RecordIO); the allocator ([`allocator`]) and the framework
//! model know no wire format and no IO.

pub mod allocator;
pub mod error;
pub mod frameworks;
pub mod libprocess;
pub mod limits;
mod shell;
mod state;
mod updates;
pub mod v0;
mod v1;
pub mod zk;

use std::time::Duration;

pub use error::CompatError;
pub use shell::{Compat, EventSink};

/// The Mesos release whose scheduler API this master speaks, reported where Mesos reports its
/// version (frameworks such as pymesos switch features on it).
pub const MESOS_VERSION: &str = "1.11.0";

/// Timers and bounds of the Mesos API; all flags, so tests run in seconds.
#[derive(Clone, Debug)]
pub struct CompatConfig {
    /// HEARTBEAT events this often (Mesos: 15 s).
    pub heartbeat_interval: Duration,
    /// An allocation round this often (and whenever resources are freed).
    pub allocation_interval: Duration,
    /// Rescind offers held longer than this (`None`: never, as Mesos by default; Shoal's
    /// default is [`limits::OFFER_TIMEOUT_SECS`]). A framework that let an offer time out
    /// without making any call meanwhile gets no offers until its next call.
    pub offer_timeout: Option<Duration>,
    /// At most this many outstanding offers per framework (0: no cap).
    pub offers_per_framework_max: usize,
    /// Resend unacknowledged status updates this often.
    pub update_retry: Duration,
    /// Upper bound of a framework's `failover_timeout` (larger ones are capped).
    pub failover_timeout_max: Duration,
    /// Frameworks known at once; a SUBSCRIBE of one more is refused with 503.
    pub frameworks_max: usize,
    /// Where frameworks reach this master: SUBSCRIBED's `master_info` (the same MasterInfo
    /// ZooKeeper's node holds). `None`: the address the framework's request reached (the
    /// v1 `Host` header).
    pub master: Option<zk::MasterAddress>,
    /// Which v0 schedulers the master dials back: by default only at the IP their messages
    /// come from; [`libprocess::DialPolicy::Advertised`] for frameworks behind NAT (their
    /// `LIBPROCESS_ADVERTISE_IP`). The v0 API is served only when `master` is set (a UPID
    /// needs an IPv4 address).
    pub libprocess_dial: libprocess::DialPolicy,
}

impl Default for CompatConfig {
    fn default() -> Self {
        CompatConfig {
            heartbeat_interval: Duration::from_secs(15),
            allocation_interval: Duration::from_secs(1),
            offer_timeout: Some(Duration::from_secs(limits::OFFER_TIMEOUT_SECS)),
            offers_per_framework_max: 64,
            update_retry: Duration::from_secs(10),
            failover_timeout_max: Duration::from_secs(limits::FAILOVER_TIMEOUT_SECS_MAX),
            frameworks_max: limits::FRAMEWORKS_MAX,
            master: None,
            libprocess_dial: libprocess::DialPolicy::default(),
        }
    }
}
