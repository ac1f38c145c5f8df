//! trainctl: run ML training on rented machines from one terminal.
//!
//! The engine ([`engine::Engine`]) plugs providers ([`provider::Provider`]) and remotes
//! ([`remote::Remote`]) into one job state machine ([`model::JobState`]) backed by one
//! SQLite store ([`store::Store`]). See `docs/architecture.md`.

pub mod bufpool;
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

/// Two malloc arenas at most: glibc gives each thread its own, and every arena keeps the
/// memory a burst of work (a 4 MiB piece of log parsed on a blocking thread) once used,
/// which doubled the peak RSS of a follow. Call first thing in `main`.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a malloc tunable set before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Buffers of a few MiB (pieces of log, blocks printed) come from the heap and
        // stay there when freed, rather than being mapped, faulted in and unmapped each
        // time (a follow did so for every MiB it printed).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}
