//! Reserved for the Mesos scheduler APIs (v1 HTTP, v0 libprocess) on top of the cell core.
//! Not written yet: see the project's open issues. Nothing depends on this crate.
