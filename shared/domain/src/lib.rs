//! The domain of the MLOps platform: the contract
//! **data schema → fitted feature pipeline → model artifact → registry on a store**.
//!
//! This crate knows nothing of AWS, Lambda or native ML libraries. It defines the ports
//! ([`store::ObjectStore`], [`tracking::Tracker`]) that adapters in other crates implement.

pub mod ab;
pub mod alerts;
pub mod apikeys;
pub mod artifact;
pub mod attribution;
pub mod batch_jobs;
pub mod data;
pub mod drift;
#[cfg(any(test, feature = "test-support"))]
pub mod faults;
pub mod features;
pub mod feedback;
pub mod gate;
pub mod hashing;
pub mod jobs;
pub mod metrics;
pub mod online;
pub mod predlog;
pub mod profile;
pub mod quality;
pub mod registry;
pub mod retraining;
pub mod schema;
pub mod split;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tracking;
pub mod traffic;
