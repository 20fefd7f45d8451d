//! The home of records that schedulers above the cell own.
//!
//! The cell knows resources, agents, tasks, claims, holds and roles. A scheduler built on it
//! (the built-in batch and service schedulers of `shoal-sched`) may keep records of its own —
//! jobs, services — that must be as durable and as ordered as a claim. They live in the cell
//! as one value of a type `R: Records`, changed only through `Command::Records` on the one
//! commit path: [`Records::decide`] validates a command against a snapshot (changing nothing)
//! and returns the events to commit, [`Records::apply`] folds one committed event in. The cell
//! never looks inside them, so the crate of the cell depends on no scheduler.
//!
//! Their events and replies are written into the same log entries and watch lines as the
//! cell's own, next to them in one stream: each records event carries its own `"type"` tag,
//! distinct from the cell's.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cell::{Cell, Rejection, Reply};
use crate::model::{Timestamp, Version};

/// Records kept in the cell for a scheduler above it (see the module's doc).
pub trait Records: Clone + Debug + Default + Send + Sync + 'static {
    /// A change asked for, e.g. a job file submitted.
    type Command: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// A committed change. Serialized as an internally tagged enum (`"type"`) whose tags
    /// differ from the cell's events.
    type Event: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;
    /// What the caller of a command gets back besides the cell's own replies. Serialized as
    /// an internally tagged enum (`"type"`) whose tags differ from the cell's replies.
    type Reply: Clone + Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync;

    /// Validates `command` against the cell as it is (the next entry is version `next`).
    /// Changes nothing; returns the events to commit (possibly none) and the reply, which may
    /// be one of the cell's own (`Reply::Done`).
    fn decide(
        cell: &Cell<Self>,
        now: Timestamp,
        next: Version,
        command: &Self::Command,
    ) -> Result<(Vec<Self::Event>, Reply<Self>), Rejection>;

    /// Folds one committed event in. Infallible, like the cell's own apply.
    fn apply(&mut self, version: Version, event: &Self::Event);
}

/// The records of a cell with no scheduler above it: there are none, and no command, event
/// or reply of theirs can be made or read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoRecords;

/// A value that cannot exist: the commands, events and replies of [`NoRecords`]. Reading one
/// always fails, so a log entry of a cell with records does not read as one without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Never {}

impl Records for NoRecords {
    type Command = Never;
    type Event = Never;
    type Reply = Never;

    fn decide(
        _cell: &Cell<Self>,
        _now: Timestamp,
        _next: Version,
        command: &Never,
    ) -> Result<(Vec<Never>, Reply<Self>), Rejection> {
        match *command {}
    }

    fn apply(&mut self, _version: Version, event: &Never) {
        match *event {}
    }
}
