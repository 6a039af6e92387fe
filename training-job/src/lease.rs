//! Leases in the store: an object a worker creates (create-only) to hold a piece of work, renews
//! by compare-and-swap while it works, and that another worker takes over, by compare-and-swap,
//! once it has gone unrenewed for the lease's length (its holder died).

use std::time::Duration;

use chrono::{DateTime, Utc};
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError, StoredObject};

/// A lease's object.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseRecord {
    /// Who holds it, for a reader.
    holder: String,
    /// When it was taken or last renewed.
    renewed_at: DateTime<Utc>,
}

fn record(holder: &str) -> Vec<u8> {
    let lease = LeaseRecord {
        holder: holder.to_string(),
        renewed_at: Utc::now(),
    };
    serde_json::to_vec(&lease).expect("a lease serializes")
}

/// A lease as a reader found it.
#[derive(Debug, Clone)]
pub(crate) struct SeenLease {
    /// Its tag, to take it over.
    pub etag: ETag,
    /// Who holds it (empty if unreadable).
    pub holder: String,
    /// How long ago it was renewed; an unreadable one counts as never renewed.
    pub age: Duration,
}

impl SeenLease {
    /// The lease in `object`.
    pub(crate) fn of(object: StoredObject) -> Self {
        let record = serde_json::from_slice::<LeaseRecord>(&object.bytes).ok();
        let renewed = record
            .as_ref()
            .map_or(DateTime::<Utc>::MIN_UTC, |l| l.renewed_at);
        Self {
            etag: object.etag,
            holder: record.map(|l| l.holder).unwrap_or_default(),
            age: (Utc::now() - renewed).to_std().unwrap_or_default(),
        }
    }
}

/// Reads the lease at `key`, if any.
pub(crate) async fn read(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<SeenLease>, StoreError> {
    Ok(store.get(key).await?.map(SeenLease::of))
}

/// Takes the lease at `key` for `holder` if it is free, if `seen` (what a reader found there)
/// has gone unrenewed for `length`, or if `holder` held it (a retry of a holder that died takes
/// its lease back at once). `None` while another holds it, or when another took it first.
pub(crate) async fn take(
    store: &dyn ObjectStore,
    key: &str,
    holder: &str,
    length: Duration,
    seen: Option<&SeenLease>,
) -> Result<Option<ETag>, StoreError> {
    let condition = match seen {
        None => PutCondition::IfAbsent,
        Some(lease) if lease.age < length && lease.holder != holder => return Ok(None),
        Some(lease) if lease.holder == holder => PutCondition::IfMatch(lease.etag.clone()),
        Some(lease) => {
            eprintln!(
                "taking over {}: its lease was last renewed {:.0?} ago",
                store.uri(key),
                lease.age
            );
            PutCondition::IfMatch(lease.etag.clone())
        }
    };
    match store.put(key, record(holder), condition).await {
        Ok(etag) => Ok(Some(etag)),
        Err(StoreError::PreconditionFailed { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Renews the lease `holder` holds at `key` (tag `etag`); `None` if another took it over.
pub(crate) async fn renew(
    store: &dyn ObjectStore,
    key: &str,
    holder: &str,
    etag: &ETag,
) -> Result<Option<ETag>, StoreError> {
    match store
        .put(key, record(holder), PutCondition::IfMatch(etag.clone()))
        .await
    {
        Ok(etag) => Ok(Some(etag)),
        Err(StoreError::PreconditionFailed { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlops_store::LocalStore;

    #[tokio::test]
    async fn a_lease_is_held_renewed_and_taken_over_only_when_it_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (key, length) = ("work.lock", Duration::from_millis(300));
        let mine = take(&store, key, "a", length, None).await.unwrap().unwrap();
        // Taken: a second taker that read nothing loses the create-only write.
        assert!(
            take(&store, key, "b", length, None)
                .await
                .unwrap()
                .is_none()
        );
        let seen = read(&store, key).await.unwrap().unwrap();
        assert!(seen.age < length);
        assert!(
            take(&store, key, "b", length, Some(&seen))
                .await
                .unwrap()
                .is_none()
        );
        let mine = renew(&store, key, "a", &mine).await.unwrap().unwrap();
        tokio::time::sleep(length).await;
        let seen = read(&store, key).await.unwrap().unwrap();
        assert!(seen.age >= length);
        let theirs = take(&store, key, "b", length, Some(&seen))
            .await
            .unwrap()
            .unwrap();
        // The old holder's renewal fails once the lease is taken over.
        assert!(renew(&store, key, "a", &mine).await.unwrap().is_none());
        let theirs = renew(&store, key, "b", &theirs).await.unwrap().unwrap();
        // A holder's retry takes its own lease back at once.
        let seen = read(&store, key).await.unwrap().unwrap();
        assert!(seen.age < length);
        assert!(
            take(&store, key, "a", length, Some(&seen))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            take(&store, key, "b", length, Some(&seen))
                .await
                .unwrap()
                .is_some()
        );
        assert!(renew(&store, key, "b", &theirs).await.unwrap().is_none());
    }
}
