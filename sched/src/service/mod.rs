//! Services: the service file, its validation, the service records kept in the cell, and the
//! built-in service scheduler as a sans-IO state machine.
//!
//! A service is a task template run as `count` long-running **instances**. The cell keeps a
//! [`Service`] record per service (its current spec and spec version, the desired count, its
//! state) with one [`Instance`] record per instance, changed only through
//! `SchedulerCommand::SubmitService` and `SchedulerCommand::UpdateService` on the one commit
//! path.
//!
//! An instance has an index (stable while it exists) and a generation; its task in the cell is
//! `<service>.<index>.<generation>`. When the task ends the instance is restarted with the
//! next generation after a backoff that doubles with each failure in a row. Because ids are
//! deterministic, a scheduler rebuilt after a master restart recognises every task it placed:
//! a recorded instance whose task is in the cell is **adopted**, never started twice.
//!
//! The [`ServiceScheduler`] is a reconcile loop: for each service whose records or tasks
//! changed, it reads the current record and the cell's tasks and decides what to change —
//! restart ended instances, start or stop instances to reach the count, replace instances of
//! an older spec version within the update's `max_surge` / `max_unavailable`, and place what
//! waits (binpack or spread, with constraints). It returns claims, kills and record updates;
//! it acts only through the claim interface any native scheduler uses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use shoal_core::*;

use crate::actions::*;
use crate::constraints::*;
use crate::limits::{JOB_NAME_BYTES_MAX, SERVICE_COUNT_MAX, SERVICE_PLACEMENTS_PER_STEP_MAX};
use crate::placement::*;
use crate::template::*;
use crate::{Cell, Event, LogEntry, SchedulerEvent};

/// The owner written on every task the service scheduler places.
pub const SERVICE_OWNER: &str = "shoal-service";
/// Restart backoff when the file gives none, and its cap.
pub const RESTART_BACKOFF_DEFAULT_MS: u64 = 1000;
pub const RESTART_BACKOFF_MAX_DEFAULT_MS: u64 = 60_000;
/// Rolling update defaults: one extra instance at a time, never fewer available than `count`.
pub const MAX_SURGE_DEFAULT: u32 = 1;
pub const MAX_UNAVAILABLE_DEFAULT: u32 = 0;
/// Health check defaults (Mesos's, except that the first probe is not delayed: failures in the
/// grace period are ignored anyway).
pub const HEALTH_INTERVAL_DEFAULT_MS: u64 = 10_000;
pub const HEALTH_TIMEOUT_DEFAULT_MS: u64 = 20_000;
pub const HEALTH_GRACE_DEFAULT_MS: u64 = 10_000;
pub const HEALTH_FAILURES_DEFAULT: u32 = 3;
/// An instance that ran this long before it ended is restarted after the base backoff again
/// (its earlier failures no longer count).
pub const FAILURES_RESET_MS: u64 = 10_000;

mod compile;
mod records;
mod spec;
mod step;

pub use compile::*;
pub use records::*;
pub use spec::*;
pub use step::*;
