//! The Mesos v0 scheduler API.
pub mod codec;
