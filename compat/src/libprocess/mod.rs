//! The libprocess transport of the Mesos v0 scheduler API, both directions, and nothing of
//! what the messages mean.
//!
//! libprocess (Mesos's actor library, under libmesos's `MesosSchedulerDriver`) sends each
//! message as one HTTP/1.1 `POST /<process id>/<message name>` whose body is the serialized
//! protobuf and whose `Libprocess-From` header names the sender's UPID. Two processes talk
//! over two connections, one each way: each dials the other's UPID to send.
//!
//! - [`upid`]: the UPID (`id@ip:port`).
//! - [`inbound`]: requests recognised and read as libprocess does, answered 202, queued as
//!   [`Message`]s.
//! - [`outbound`]: the master's own kept-alive connection to each peer, and the report of a
//!   peer that exited.

pub mod inbound;
pub mod outbound;
pub mod upid;

pub use inbound::{Inbound, InboundError, Message};
pub use outbound::{DialPolicy, ExitReason, Exited, Outbound, OutboundConfig, OutboundError};
pub use upid::{Upid, UpidError};

#[cfg(test)]
mod tests;
