//! The Mesos v0 scheduler API (libmesos's `MesosSchedulerDriver`, mesos-go's v0 driver): what
//! its messages mean, as typed v1 calls and events.
//!
//! - [`codec`]: a received message (name and body) as a v1 `Call` ([`codec::decode`]), and
//!   a v1 `Event` for a pid-based framework as the `mesos.internal` messages the real master
//!   sends ([`codec::encode`]). Pure functions, no IO.
//!
//! The bytes travel over [`crate::libprocess`]: a [`crate::libprocess::Message`] received
//! is decoded with [`codec::decode`]; the framework its call names must be the one whose
//! UPID is the message's `from`, as the real master checks (`framework->pid() == from`),
//! for everything but a SUBSCRIBE. What [`codec::encode`] returns is sent with
//! [`crate::libprocess::Outbound::send`] to that framework's UPID.

pub mod codec;
mod pids;
pub(crate) mod server;
