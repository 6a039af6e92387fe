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

/// The store holding one object's URI (`s3://bucket/key` or a file path) and its key there.
async fn object_at(
    uri: &str,
    s3_endpoint: Option<String>,
) -> Result<(Arc<dyn ObjectStore>, String), StoreError> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| StoreError::InvalidKey {
                key: uri.into(),
                why: "expected s3://bucket/key",
            })?;
        Ok((
            open_store(&format!("s3://{bucket}"), s3_endpoint).await?,
            key.into(),
        ))
    } else {
        let path = std::path::Path::new(uri.strip_prefix("file://").unwrap_or(uri));
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d, n.to_string_lossy().into_owned()),
            _ => {
                return Err(StoreError::InvalidKey {
                    key: uri.into(),
                    why: "expected a file path",
                });
            }
        };
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        Ok((Arc::new(LocalStore::new(dir)), name))
    }
}

fn missing(uri: &str) -> StoreError {
    StoreError::Backend {
        operation: "get",
        key: uri.into(),
        message: "does not exist".into(),
    }
}

/// The bytes at a URI (`s3://bucket/key` or a file path).
pub async fn read_uri(uri: &str, s3_endpoint: Option<String>) -> Result<Vec<u8>, StoreError> {
    let (store, key) = object_at(uri, s3_endpoint).await?;
    Ok(store.get(&key).await?.ok_or_else(|| missing(uri))?.bytes)
}

/// The version of the object at a URI: `s3-version:ID` where the bucket keeps versions, else
/// `etag:TAG` (a file's tag is a content hash).
pub async fn uri_version(uri: &str, s3_endpoint: Option<String>) -> Result<String, StoreError> {
    let (store, key) = object_at(uri, s3_endpoint).await?;
    let version = store
        .head_version(&key)
        .await?
        .ok_or_else(|| missing(uri))?;
    Ok(match version.version_id {
        Some(id) => format!("s3-version:{id}"),
        None => format!("etag:{}", version.etag),
    })
}
