//! Object-store adapters for [`mlops_domain::store::ObjectStore`]: a local directory (the
//! embedded default) and Amazon S3.

pub mod keys;
pub mod local;
pub mod s3;

use std::sync::Arc;

pub use keys::FileKeyStore;
pub use local::LocalStore;
use mlops_domain::store::{ObjectStore, StoreError};
pub use s3::{S3Config, S3Store};

/// Opens the store a URI names: `s3://bucket/prefix` for S3 (endpoint from `s3_endpoint` or
/// `AWS_ENDPOINT_URL`), anything else (optionally `file://`) as a local directory.
pub async fn open_store(
    uri: &str,
    s3_endpoint: Option<String>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if uri.starts_with("s3://") {
        let mut config = S3Config::from_uri(uri)?;
        config.endpoint = s3_endpoint;
        Ok(Arc::new(S3Store::connect(config).await))
    } else {
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        Ok(Arc::new(LocalStore::new(path)))
    }
}
