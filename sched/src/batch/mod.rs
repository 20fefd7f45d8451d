//! Jobs: the job file (tasks with dependencies), its validation, the job records kept in the
//! cell, and the built-in batch scheduler as a sans-IO state machine.
//!
//! A job is submitted as a [`JobSpec`] (TOML or JSON). [`CompiledJob::compile`] checks it
//! before anything runs — names, resources, durations, unknown dependencies, cycles — and
//! [`check_fits`] refuses tasks no agent of the cell could ever hold. The cell keeps a [`Job`]
//! record per job (in [`Schedulers`](crate::Schedulers)), with one [`JobTask`] per task,
//! changed only through `SchedulerCommand::SubmitJob` and `SchedulerCommand::UpdateJob` on the
//! one commit path, so job progress is as durable as any claim.
//!
//! The [`BatchScheduler`] reads a cell snapshot and the time and returns what to do: claims to
//! submit, tasks to kill, job records to update, and when to wake up next. It uses only the
//! claim interface every native scheduler uses. The tasks it places get deterministic ids,
//! `<job>.<task>.<attempt>`, so a scheduler rebuilt after a master restart recognises the tasks
//! it placed before: finished ones are not run again, running ones are adopted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use shoal_core::*;

use crate::actions::*;
use crate::constraints::*;
use crate::limits::{
    BATCH_PLACEMENTS_PER_STEP_MAX, BATCH_PLACEMENT_MISSES_PER_STEP_MAX,
    BATCH_PREEMPTIONS_PER_STEP_MAX, JOB_BACKOFF_MAX_MS, JOB_NAME_BYTES_MAX, JOB_TASKS_MAX,
    JOB_TASK_RETRIES_MAX,
};
use crate::preemption::*;
use crate::template::*;
use crate::{Cell, Event, LogEntry, SchedulerEvent};
use shoal_core::limits::PRIORITY_MAX;

/// Backoff when the job file gives none.
pub const BACKOFF_DEFAULT_MS: u64 = 1000;
/// Job priority when the file gives none; priorities go from 0 to [`PRIORITY_MAX`].
pub const PRIORITY_DEFAULT: i64 = 50;
/// The owner written on every task the batch scheduler places.
pub const BATCH_OWNER: &str = "shoal-batch";

mod compile;
mod records;
mod spec;
mod step;

pub use compile::*;
pub use records::*;
pub use spec::*;
pub use step::*;
