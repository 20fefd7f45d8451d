//! Conversion of other schedulers' definitions — Marathon apps, ECS task definitions — into
//! Shoal's job and service files. The CLI and the native API use it; the cell never does.

pub mod imports;
