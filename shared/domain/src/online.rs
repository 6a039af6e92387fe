//! The online feature store port: the latest feature values per entity, for serving.
//!
//! Writers (materialization) push the latest row per entity; a stored row is replaced only by a
//! row with the same or a later event time, so re-applying a range, or applying an older range
//! after a newer one, never moves an entity back in time. Readers get rows by entity key in
//! batches. [`StoreOnline`] keeps rows on the object store (the embedded default, safe across
//! processes through conditional writes); the DynamoDB adapter lives in `mlops-aws`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::{ObjectStore, PutCondition, StoreError};

/// One entity's latest values of one feature view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineRow {
    /// The entity key: its join-key values joined by U+001F.
    pub key: String,
    /// Event time of these values, µs since the Unix epoch (UTC).
    pub event_time: i64,
    /// Feature values by name (JSON null for a missing value).
    pub values: BTreeMap<String, serde_json::Value>,
}

/// Online-store failures.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// Object-store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Backend failure (DynamoDB).
    #[error("online store {operation} failed: {message}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// Backend message.
        message: String,
    },
    /// A stored row that does not decode.
    #[error("online store object '{key}' is unreadable: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Written {
    /// Rows stored (new entities, or newer or equal event times).
    pub stored: u64,
    /// Rows skipped because the stored row is newer.
    pub older: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.stored += other.stored;
        self.older += other.older;
    }
}

/// The online store.
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Writes rows of `view`; each entity keeps the row with the later event time.
    async fn write(&self, view: &str, rows: Vec<OnlineRow>) -> Result<Written, OnlineError>;
    /// The rows of `keys` (in order; `None` where the entity has none).
    async fn read(
        &self,
        view: &str,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// Keeps `new` unless `old` is strictly newer.
pub fn newer_wins(old: Option<&OnlineRow>, new: &OnlineRow) -> bool {
    old.is_none_or(|o| o.event_time <= new.event_time)
}

/// Buckets per view in [`StoreOnline`].
pub const BUCKETS: u32 = 4096;

/// The online store on the object store: each view's entities hashed into [`BUCKETS`] objects
/// (`features/online/{view}/rows/{bucket:04x}.json`), updated by compare-and-swap.
#[derive(Clone)]
pub struct StoreOnline {
    store: Arc<dyn ObjectStore>,
}

type Bucket = BTreeMap<String, (i64, BTreeMap<String, serde_json::Value>)>;

/// The bucket of an entity key (stable: the first 4 bytes of its SHA-256).
pub fn bucket_of(key: &str) -> u32 {
    let d = crate::hashing::sha256_hex(key.as_bytes());
    u32::from_str_radix(&d[..8], 16).expect("hex") % BUCKETS
}

impl StoreOnline {
    /// The online store on `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    fn key(view: &str, bucket: u32) -> String {
        format!("features/online/{view}/rows/{bucket:04x}.json")
    }

    async fn load(&self, key: &str) -> Result<(Bucket, Option<crate::store::ETag>), OnlineError> {
        match self.store.get(key).await? {
            None => Ok((Bucket::new(), None)),
            Some(o) => serde_json::from_slice(&o.bytes)
                .map(|b| (b, Some(o.etag)))
                .map_err(|e| OnlineError::Corrupt {
                    key: key.into(),
                    message: e.to_string(),
                }),
        }
    }

    /// Merges `rows` into one bucket, retrying when another writer changed it in between.
    async fn merge(&self, key: &str, rows: &[OnlineRow]) -> Result<Written, OnlineError> {
        loop {
            let (mut bucket, etag) = self.load(key).await?;
            let mut w = Written::default();
            for r in rows {
                let old = bucket.get(&r.key).map(|(t, _)| *t);
                if old.is_none_or(|t| t <= r.event_time) {
                    bucket.insert(r.key.clone(), (r.event_time, r.values.clone()));
                    w.stored += 1;
                } else {
                    w.older += 1;
                }
            }
            if w.stored == 0 {
                return Ok(w);
            }
            let condition = etag.map_or(PutCondition::IfAbsent, PutCondition::IfMatch);
            let bytes = serde_json::to_vec(&bucket).expect("rows serialize");
            match self.store.put(key, bytes, condition).await {
                Ok(_) => return Ok(w),
                Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[async_trait]
impl OnlineStore for StoreOnline {
    async fn write(&self, view: &str, rows: Vec<OnlineRow>) -> Result<Written, OnlineError> {
        let mut by_bucket: BTreeMap<u32, Vec<OnlineRow>> = BTreeMap::new();
        for r in rows {
            by_bucket.entry(bucket_of(&r.key)).or_default().push(r);
        }
        // Bucket updates in flight: each is a read and a conditional write (an fsync locally, a
        // round trip on S3), independent of the others.
        const IN_FLIGHT: usize = 4;
        let mut total = Written::default();
        let mut running = tokio::task::JoinSet::new();
        for (bucket, rows) in by_bucket {
            if running.len() >= IN_FLIGHT {
                total += running
                    .join_next()
                    .await
                    .expect("a task runs")
                    .expect("no panic")?;
            }
            let (this, key) = (self.clone(), Self::key(view, bucket));
            running.spawn(async move { this.merge(&key, &rows).await });
        }
        while let Some(done) = running.join_next().await {
            total += done.expect("no panic")?;
        }
        Ok(total)
    }

    async fn read(
        &self,
        view: &str,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineError> {
        let mut buckets: BTreeMap<u32, Bucket> = BTreeMap::new();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let b = bucket_of(k);
            if let std::collections::btree_map::Entry::Vacant(slot) = buckets.entry(b) {
                slot.insert(self.load(&Self::key(view, b)).await?.0);
            }
            out.push(buckets[&b].get(k).map(|(t, values)| OnlineRow {
                key: k.clone(),
                event_time: *t,
                values: values.clone(),
            }));
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("{} (features/online)", self.store.describe())
    }
}

/// A feature view a model was trained on, as its bundle records it: what serving fetches from the
/// online store for a request that sends the entity key instead of the features.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingView {
    /// View name (its rows' name in the online store).
    pub name: String,
    /// The version the training set was built with.
    pub version: u32,
    /// Join keys: the request fields that identify the entity.
    pub join_keys: Vec<String>,
    /// The features it contributed to the training set.
    pub features: Vec<String>,
    /// Values older than this many seconds are refused; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

impl ServingView {
    /// The online key of a record: its join-key values (text as is, other JSON as written)
    /// joined by U+001F; `Err` names the missing key.
    pub fn key_of(
        &self,
        record: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, String> {
        let mut key = String::new();
        for (i, k) in self.join_keys.iter().enumerate() {
            let part = match record.get(k) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => return Err(k.clone()),
            };
            if i > 0 {
                key.push('\u{1f}');
            }
            key.push_str(&part);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_join_the_key_fields_in_order() {
        let v = ServingView {
            name: "billing".into(),
            version: 1,
            join_keys: vec!["region".into(), "id".into()],
            features: vec!["spend".into()],
            ttl_seconds: None,
        };
        let r = serde_json::json!({"id": 7, "region": "eu"});
        assert_eq!(v.key_of(r.as_object().unwrap()).unwrap(), "eu\u{1f}7");
        let missing = serde_json::json!({"id": 7});
        assert_eq!(
            v.key_of(missing.as_object().unwrap()).unwrap_err(),
            "region"
        );
    }

    #[test]
    fn the_newer_row_wins_and_an_equal_time_replaces() {
        let row = |t| OnlineRow {
            key: "k".into(),
            event_time: t,
            values: BTreeMap::new(),
        };
        assert!(newer_wins(None, &row(1)));
        assert!(newer_wins(Some(&row(1)), &row(1)));
        assert!(!newer_wins(Some(&row(2)), &row(1)));
    }
}
