//! Integration tests: the real `trainctl` binary on the embedded local provider, a real
//! SQLite store, real processes. One test crate so everything links once.

mod aws;
mod clouds;
mod common;
mod config_errors;
mod docker;
mod headless;
mod local_e2e;
mod parser;
mod recovery;
mod slurm;
mod ssh;
mod store_concurrency;
mod sync;
mod tui_pty;
mod workflow;
