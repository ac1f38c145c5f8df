//! One file per popup or prompt: its state, its keys and its drawing.

pub mod confirm;
pub mod help;
pub mod launch;
pub mod messages;
pub mod passphrase;
pub mod prompt;
