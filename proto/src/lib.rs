//! Mesos protocol types for Shoal.
//!
//! * [`mesos::v1`] and [`mesos::v1::scheduler`]: prost types generated from
//!   Shoal's own `.proto` files, wire-compatible with Apache Mesos'
//!   v1 protocol. Every message also implements
//!   [`prost_reflect::ReflectMessage`] (descriptors in [`DESCRIPTOR_POOL`]).
//! * [`mesos::scheduler`] and [`mesos::internal`]: the v0 (libprocess) scheduler `Call` and
//!   the internal messages a master exchanges with a pid-based scheduler, on the v1 types
//!   wherever the wire is the same.
//! * [`json`]: Mesos-style JSON (proto field names, enum names, 64-bit
//!   integers as numbers, base64 bytes).
//! * [`recordio`]: RecordIO framing of the scheduler event stream.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// Encoded `FileDescriptorSet` of all `.proto` files in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mesos_descriptor_set.bin"));

/// Descriptor pool for reflection over every message in this crate.
pub static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("embedded descriptor set is valid")
});

pub mod json;
pub mod recordio;

pub use json::JsonError;
pub use recordio::RecordIoError;

/// Packages `mesos.*`.
pub mod mesos {
    /// Package `mesos.v1`.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/mesos.v1.rs"));

        /// Package `mesos.v1.scheduler`.
        pub mod scheduler {
            include!(concat!(env!("OUT_DIR"), "/mesos.v1.scheduler.rs"));
        }
    }

    /// Package `mesos.scheduler`: the v0 scheduler `Call` (libprocess).
    pub mod scheduler {
        include!(concat!(env!("OUT_DIR"), "/mesos.scheduler.rs"));
    }

    /// Package `mesos.internal`: the messages between a master and a pid-based scheduler.
    pub mod internal {
        include!(concat!(env!("OUT_DIR"), "/mesos.internal.rs"));
    }
}
