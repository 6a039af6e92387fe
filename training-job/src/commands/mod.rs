//! Subcommands.

pub mod batch_predict;
pub(crate) mod batch_shards;
pub mod data;
pub mod features;
pub mod feedback;
pub mod job;
pub mod keys;
pub mod monitor;
pub mod predict;
#[cfg(feature = "train")]
pub mod quickstart;
pub mod registry;
pub mod retrain;
pub mod serve;
#[cfg(feature = "train")]
pub(crate) mod shared_search;
#[cfg(feature = "train")]
pub mod train;
