//! Mesos `TaskInfo` and `Resource`, in one place: typed values are `shoal-proto`'s prost
//! types ([`v1::TaskInfo`], [`v1::Resource`], ...), written and read as Mesos JSON through
//! prost-reflect (proto field names, enum names: what a Mesos master writes).
//!
//! * [`resources`]: a [`ResourceSet`] to and from Mesos `Resource` messages, typed and JSON.
//! * [`task_info`]: a `TaskInfo` to and from JSON, the parts the cell keeps
//!   ([`TaskInfoParts`]), and builders (a command task with resources, environment, a Docker
//!   container).
//! * [`raw`]: the borrowed reader of the commit path: the parts of a TaskInfo straight from
//!   its JSON text, with the canonical text the cell stores, and no prost message decoded.
//!
//! **Architecture Invariant:** this crate is the only one that knows how a `TaskInfo` or a
//! `Resource` is spelled; the master, compat, the agent and the client call it.

use shoal_core::resources::ResourceError;
use shoal_core::ResourceSet;

pub mod raw;
pub mod resources;
pub mod task_info;

/// The Mesos v1 types this crate reads and writes.
pub use shoal_proto::mesos::v1;

/// Why a TaskInfo or its resources could not be read. The texts are what the native API
/// and compat answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MesosError {
    /// Not JSON, or not the shape of the message (`what` is `task_info` or `resources`).
    #[error("{what}: {why}")]
    Malformed { what: &'static str, why: String },
    /// A resource that is no valid Shoal resource.
    #[error("resource {name}: {why}")]
    Resource { name: String, why: String },
    /// Resources that do not make a set (a conflict of types, too large, ...).
    #[error(transparent)]
    Set(#[from] ResourceError),
    /// Mesos JSON that does not read as the message (through prost-reflect).
    #[error(transparent)]
    Json(#[from] shoal_proto::JsonError),
}

/// The parts of a TaskInfo the cell uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfoParts {
    pub task_id: String,
    pub name: String,
    pub agent_id: Option<String>,
    pub resources: ResourceSet,
}
