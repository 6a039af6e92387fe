//! Amazon S3 (or any S3-compatible endpoint such as moto) through aws-sdk-s3.
//!
//! S3 PUTs are atomic; create-only writes use `If-None-Match: *` and compare-and-swap uses
//! `If-Match: <ETag>` (S3 conditional writes). A lost condition answers 412 (or 409 when two
//! conditional writes race), which both map to [`StoreError::PreconditionFailed`].

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use mlops_domain::store::{
    ETag, ObjectStore, ObjectVersion, PutCondition, StoreError, StoredObject, check_key,
};

/// Connection settings of an S3 store.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    /// Bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing '/'; may be empty).
    pub prefix: String,
    /// Endpoint override (moto, MinIO, LocalStack); `AWS_ENDPOINT_URL` is also honoured.
    pub endpoint: Option<String>,
    /// Region override; otherwise the usual AWS configuration chain.
    pub region: Option<String>,
}

impl S3Config {
    /// Parses `s3://bucket/optional/prefix`.
    pub fn from_uri(uri: &str) -> Result<Self, StoreError> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::InvalidKey {
                key: uri.into(),
                why: "an S3 store URI must look like s3://bucket/prefix",
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::InvalidKey {
                key: uri.into(),
                why: "the S3 URI names no bucket",
            });
        }
        Ok(Self {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
            ..Default::default()
        })
    }
}

/// A store in an S3 bucket under a prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
}

fn backend<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    key: &str,
    e: &SdkError<E>,
) -> StoreError {
    let message = match e {
        SdkError::ServiceError(s) => format!(
            "{} ({})",
            s.err().message().unwrap_or("no message"),
            s.err().code().unwrap_or("no code")
        ),
        other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
    };
    StoreError::Backend {
        operation,
        key: key.into(),
        message,
    }
}

fn http_status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    /// Connects using the standard AWS configuration chain plus the overrides in `config`.
    /// With an endpoint override, path-style addressing is used (what moto and MinIO expect).
    pub async fn connect(config: S3Config) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let path_style =
            config.endpoint.is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
        // Fail fast when S3 is unreachable: serving keeps its last good model and reports the
        // failure instead of hanging on the SDK's default retries.
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .operation_attempt_timeout(std::time::Duration::from_secs(30))
            .build();
        let s3_config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(path_style)
            .timeout_config(timeouts)
            .build();
        Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket,
            prefix: config.prefix,
        }
    }

    /// The SDK client (for callers that need more than the store port, e.g. tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates the bucket if it does not exist (local development and tests).
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(backend("create bucket", &self.bucket, &e)),
        }
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// A ranged GET of the version with this tag (and id, when pinned to one).
    async fn ranged_get(
        &self,
        key: &str,
        start: u64,
        end: u64,
        etag: &str,
        version_id: Option<&str>,
    ) -> Result<Vec<u8>, StoreError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={start}-{}", end - 1))
            .if_match(etag)
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(|e| match http_status(&e) {
                Some(412) | Some(404) => StoreError::PreconditionFailed {
                    key: key.into(),
                    exists: http_status(&e) == Some(412),
                },
                _ => backend("get", key, &e),
            })?;
        let bytes = out.body.collect().await.map_err(|e| StoreError::Backend {
            operation: "get",
            key: key.into(),
            message: e.to_string(),
        })?;
        // One copy from the received segments (into_bytes would make a second).
        Ok(bytes.to_vec())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let full = self.full_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => {
                let etag = ETag(out.e_tag().unwrap_or_default().to_string());
                let bytes = out.body.collect().await.map_err(|e| StoreError::Backend {
                    operation: "get",
                    key: key.into(),
                    message: e.to_string(),
                })?;
                Ok(Some(StoredObject {
                    bytes: bytes.into_bytes().to_vec(),
                    etag,
                }))
            }
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || http_status(&e) == Some(404) =>
            {
                Ok(None)
            }
            Err(e) => Err(backend("get", key, &e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, ETag)>, StoreError> {
        Ok(self
            .head_version(key)
            .await?
            .map(|v| (v.size, ETag(v.etag))))
    }

    async fn head_version(&self, key: &str) -> Result<Option<ObjectVersion>, StoreError> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectVersion {
                size: out.content_length().unwrap_or_default().max(0) as u64,
                etag: out.e_tag().unwrap_or_default().to_string(),
                // "null" is the id of an object written while versioning was off: not pinnable.
                version_id: out.version_id().filter(|v| *v != "null").map(str::to_owned),
            })),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(backend("head", key, &e)),
        }
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        etag: &ETag,
    ) -> Result<Vec<u8>, StoreError> {
        self.ranged_get(key, start, end, &etag.0, None).await
    }

    async fn get_range_version(
        &self,
        key: &str,
        start: u64,
        end: u64,
        version: &ObjectVersion,
    ) -> Result<Vec<u8>, StoreError> {
        self.ranged_get(
            key,
            start,
            end,
            &version.etag,
            version.version_id.as_deref(),
        )
        .await
    }

    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: PutCondition,
    ) -> Result<ETag, StoreError> {
        let full = self.full_key(key)?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(bytes));
        request = match &condition {
            PutCondition::None => request,
            PutCondition::IfAbsent => request.if_none_match("*"),
            PutCondition::IfMatch(tag) => request.if_match(&tag.0),
        };
        match request.send().await {
            Ok(out) => Ok(ETag(out.e_tag().unwrap_or_default().to_string())),
            Err(e) if matches!(http_status(&e), Some(412 | 409)) => {
                Err(StoreError::PreconditionFailed {
                    key: key.into(),
                    exists: condition == PutCondition::IfAbsent || http_status(&e) == Some(409),
                })
            }
            Err(e)
                if http_status(&e) == Some(404)
                    && matches!(condition, PutCondition::IfMatch(_)) =>
            {
                Err(StoreError::PreconditionFailed {
                    key: key.into(),
                    exists: false,
                })
            }
            Err(e) => Err(backend("put", key, &e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| backend("list", prefix, &e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key() {
                    out.push(k[strip..].to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        // S3 answers 204 whether or not the object existed.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| backend("delete", key, &e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.uri("").trim_end_matches('/').to_string()
    }

    fn uri(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => format!("s3://{}/{key}", self.bucket),
            (false, true) => format!("s3://{}/{}", self.bucket, self.prefix),
            (false, false) => format!("s3://{}/{}/{key}", self.bucket, self.prefix),
        }
    }

    async fn presign_put(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        let full = self.full_key(key)?;
        let config =
            aws_sdk_s3::presigning::PresigningConfig::expires_in(expires).map_err(|e| {
                StoreError::Backend {
                    operation: "presign",
                    key: key.into(),
                    message: e.to_string(),
                }
            })?;
        // `If-None-Match: *` is signed into the URL: it creates the object once, and a second PUT
        // through the same URL fails (412) instead of replacing the input of a job.
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .if_none_match("*")
            .presigned(config)
            .await
            .map_err(|e| backend("presign", key, &e))?;
        Ok(Some(request.uri().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_uris() {
        let c = S3Config::from_uri("s3://bucket/a/b/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", "a/b"));
        let c = S3Config::from_uri("s3://bucket").unwrap();
        assert_eq!(c.prefix, "");
        assert!(S3Config::from_uri("s3:///x").is_err());
        assert!(S3Config::from_uri("http://x").is_err());
    }
}
