//! The feature store: versioned definitions ([`registry`]), the offline store of feature rows as
//! Parquet on the object store ([`offline`]) and point-in-time correct retrieval ([`pit`]).

pub mod columns;
pub mod definition;
pub mod keys;
pub mod materialize;
pub mod offline;
pub mod pit;
pub mod registry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
