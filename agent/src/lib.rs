//! The Shoal agent: runs the tasks the master assigns, in Docker containers or as plain
//! processes, and reports their status reliably.
//!
//! - [`executor`]: the task executors (Docker via bollard, processes under a supervisor).
//! - [`taskinfo`]: a Mesos `TaskInfo` → an executor's launch spec (pure).
//! - [`journal`]: launches and status updates, durable before they are sent.
//! - [`runtime`]: the agent process: the live connection to the master and the agent loop.
//! - [`files`]: the sandbox side of the Mesos `/files` endpoints.
//! - [`host`]: resource detection.
//! - [`error`]: the one error type, [`AgentError`].
//! - [`limits`]: every bound and timer of the agent.
//! - [`ec2`]: EC2 instance metadata (opt-in).

pub mod ec2;
pub mod error;
pub mod executor;
pub mod files;
pub mod host;
pub mod journal;
pub mod limits;
pub mod runtime;
pub mod taskinfo;

pub use error::AgentError;
pub use runtime::{run, run_until, AgentConfig, Stop};
