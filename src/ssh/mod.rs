//! SSH: `~/.ssh/config` resolution ([`config`]) and the russh-based remote ([`remote`]).

pub mod config;
pub mod remote;
