//! Subcommands.

pub mod data;
pub mod predict;
pub mod quickstart;
pub mod registry;
pub mod train;
