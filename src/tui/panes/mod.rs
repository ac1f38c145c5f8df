//! One file per pane: its state, its keys and its drawing.

pub mod cost;
pub mod instances;
pub mod jobs;
pub mod logs;
pub mod metrics;
