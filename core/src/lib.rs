//! The sans-IO core of a Shoal cell.
//!
//! Plain data and functions: no tokio, no sockets, no disk, no clock. Time comes in as an
//! argument ([`model::Timestamp`]); what must happen later comes out as data. This is what
//! lets the whole commit path be tested exhaustively and simulated at scale. The shells read
//! time through a [`clock::Clock`] they are given; [`clock::SystemClock`] is the one reader of
//! the operating system's clocks, and no function of the cell calls it.

pub mod agent_protocol;
pub mod cell;
pub mod clock;
pub mod gc;
pub mod limits;
pub mod liveness;
pub mod model;
pub mod records;
pub mod resources;
pub mod task;
pub mod wire;

pub use cell::{AgentRegistration, Cell, CellConfig, Command, Decision, Rejection, Reply};
pub use model::*;
pub use records::{Never, NoRecords, Records};
pub use resources::{Milli, Name, Ranges, Resource, ResourceSet, Value, UNRESERVED};
pub use task::TaskState;
