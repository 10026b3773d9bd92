//! The parts of the `bunker` binary that other crates use: the configuration file parser
//! (the fuzz targets in `fuzz/` feed it arbitrary text). The binary is `src/main.rs`.

pub mod config;
pub mod scheduled_snapshots;
