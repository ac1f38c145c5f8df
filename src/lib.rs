//! trainctl: run ML training on rented machines from one terminal.
//!
//! The engine ([`engine::Engine`]) plugs providers ([`provider::Provider`]) and remotes
//! ([`remote::Remote`]) into one job state machine ([`model::JobState`]) backed by one
//! SQLite store ([`store::Store`]). See `docs/architecture.md`.

pub mod cli;
pub mod config;
pub mod cost;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod model;
pub mod provider;
pub mod remote;
pub mod sanitize;
pub mod series;
pub mod ssh;
pub mod store;
pub mod testkit;
pub mod tui;
