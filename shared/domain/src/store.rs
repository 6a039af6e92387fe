//! The object-store port: what the registry needs from S3 or a local directory.
//!
//! Keys are `/`-separated relative paths. Every write is all-or-nothing: readers see the old object
//! or the new one, never part of one. Conditional writes give the registry its atomicity.

use async_trait::async_trait;

/// An opaque version tag of a stored object (S3 ETag; content hash locally).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

/// An object read from the store.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Content.
    pub bytes: Vec<u8>,
    /// Version tag to pass to [`PutCondition::IfMatch`].
    pub etag: ETag,
}

/// One stored version of an object, as [`ObjectStore::head_version`] saw it: enough to read
/// exactly these bytes later ([`ObjectStore::get_range_version`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectVersion {
    /// Size in bytes.
    pub size: u64,
    /// Its tag ([`ETag`]'s text).
    pub etag: String,
    /// The backend's id of this version, where it keeps versions (an S3 bucket with versioning):
    /// these bytes stay readable after the object is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// When a put may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Always (replaces any existing object).
    None,
    /// Only if no object exists at the key (create-only).
    IfAbsent,
    /// Only if the current object has this tag (compare-and-swap).
    IfMatch(ETag),
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the object exists (create-only) or changed (compare-and-swap).
    #[error("conditional write to '{key}' failed: the object {}", if *.exists { "already exists or changed" } else { "does not exist" })]
    PreconditionFailed {
        /// Key.
        key: String,
        /// Whether an object is present.
        exists: bool,
    },
    /// A key that is not a safe relative path.
    #[error("invalid store key '{key}': {why}")]
    InvalidKey {
        /// Key.
        key: String,
        /// Why.
        why: &'static str,
    },
    /// Any other failure of the backend.
    #[error("store {operation} '{key}' failed: {message}")]
    Backend {
        /// get, put or list.
        operation: &'static str,
        /// Key or prefix.
        key: String,
        /// Backend message.
        message: String,
    },
}

/// An object store (S3 bucket prefix or local directory).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Reads an object; `None` if absent.
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError>;
    /// Writes an object atomically under a condition; returns the new tag.
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: PutCondition,
    ) -> Result<ETag, StoreError>;
    /// Size and tag of an object; `None` if absent.
    async fn head(&self, key: &str) -> Result<Option<(u64, ETag)>, StoreError> {
        Ok(self.get(key).await?.map(|o| (o.bytes.len() as u64, o.etag)))
    }
    /// Size, tag and (where the backend keeps versions) version id of an object; `None` if absent.
    async fn head_version(&self, key: &str) -> Result<Option<ObjectVersion>, StoreError> {
        Ok(self.head(key).await?.map(|(size, etag)| ObjectVersion {
            size,
            etag: etag.0,
            version_id: None,
        }))
    }
    /// Bytes `start..end` of exactly this version: by its version id where it has one (readable
    /// after the object is replaced), else only while the object's tag is unchanged
    /// ([`StoreError::PreconditionFailed`] otherwise).
    async fn get_range_version(
        &self,
        key: &str,
        start: u64,
        end: u64,
        version: &ObjectVersion,
    ) -> Result<Vec<u8>, StoreError> {
        self.get_range(key, start, end, &ETag(version.etag.clone()))
            .await
    }
    /// Bytes `start..end` of an object, only while its tag is still `etag` (a changed object is
    /// [`StoreError::PreconditionFailed`]). Lets a reader stream a large object in bounded memory.
    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        etag: &ETag,
    ) -> Result<Vec<u8>, StoreError> {
        let object = self.get(key).await?;
        match object {
            Some(o) if o.etag == *etag => {
                let len = o.bytes.len() as u64;
                let (start, end) = (start.min(len) as usize, end.min(len) as usize);
                Ok(o.bytes[start..end.max(start)].to_vec())
            }
            other => Err(StoreError::PreconditionFailed {
                key: key.into(),
                exists: other.is_some(),
            }),
        }
    }
    /// Keys under a prefix (recursive), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Removes an object; removing one that is absent is not an error (so a retry converges).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// A human-readable location, e.g. `s3://bucket/prefix` or a directory path.
    fn describe(&self) -> String;
    /// The full URI of a key (for lineage and tracking links).
    fn uri(&self, key: &str) -> String;
    /// A URL that lets its holder PUT the object at `key` for `expires` without credentials
    /// (S3 presigned URL); `None` where the backend has no such thing (local directories).
    async fn presign_put(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        let _ = (key, expires);
        Ok(None)
    }
}

/// Rejects keys that could escape the store root or are ambiguous.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::InvalidKey {
            key: key.into(),
            why,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') || key.ends_with('/') {
        return bad("must not start or end with '/'");
    }
    if key
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return bad("empty, '.' or '..' path segment");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control character or backslash");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        for k in ["", "/a", "a/", "a//b", "../x", "a/./b", "a\\b", "a\nb"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        check_key("models/housing/versions/000001/version.json").unwrap();
    }
}
