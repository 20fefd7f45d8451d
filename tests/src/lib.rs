//! Helpers for integration tests: run the real `shoal` binary, wait on conditions with
//! deadlines (never fixed sleeps), and kill processes the hard way.
//!
//! One module per idea; everything is re-exported here, so tests name helpers as
//! `shoal_tests::MasterProc`, `shoal_tests::wait_until`, ...

mod booking;
mod env;
mod go;
mod http;
mod line_child;
mod mesos_cell;
mod process;
mod recordio;
mod script;
mod shape;
mod subscription;
mod wait;

pub use booking::{
    check_cell_booking, check_no_double_booking, held_resources, live_task_resources,
    BookingReport, BookingWatch,
};
pub use env::{docker_enabled, test_python, test_zk};
pub use go::{go_missing, go_program, spawn_v0sched, GOCODE};
pub use http::{get_json, post_json};
pub use line_child::LineChild;
pub use mesos_cell::{
    mesos_master_flags, start_fast_agent, start_mesos_agent, wait_agents_active, MesosAgentSpec,
    MesosCell, FAST_MASTER_FLAGS, MESOS_API_FLAGS,
};
pub use process::{shoal_bin, tail, unique, AgentProc, MasterProc};
pub use recordio::RecordIoReader;
pub use script::{
    frameworks_dir, run_command, run_script, spawn_script, BackgroundScript, ScriptRun,
};
pub use shape::{compare_shape, json_shape, json_type, ShapeReport};
pub use subscription::{JsonCaller, JsonSubscription};
pub use wait::{hold_for, wait_until, HOLD_POLL_SECS};
