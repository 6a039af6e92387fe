//! Objects several workers may write, where the first write stands: each writes its value
//! create-only, and one that finds an object there already adopts it.

use anyhow::{Context, Result};
use mlops_domain::store::{ObjectStore, PutCondition, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Writes `value` as JSON at `key` create-only; if another writer got there first, reads and
/// returns theirs. `what` names the object in errors.
pub(crate) async fn write_once<T: Serialize + DeserializeOwned>(
    store: &dyn ObjectStore,
    key: &str,
    value: T,
    what: &str,
) -> Result<T> {
    let bytes = serde_json::to_vec_pretty(&value)?;
    match store.put(key, bytes, PutCondition::IfAbsent).await {
        Ok(_) => Ok(value),
        Err(StoreError::PreconditionFailed { .. }) => {
            let object = store
                .get(key)
                .await?
                .with_context(|| format!("{} vanished after it was written", store.uri(key)))?;
            serde_json::from_slice(&object.bytes)
                .with_context(|| format!("{} is not a valid {what}", store.uri(key)))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlops_store::LocalStore;

    #[tokio::test]
    async fn the_first_write_stands_and_later_writers_adopt_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        assert_eq!(
            write_once(&store, "k.json", 1u32, "number").await.unwrap(),
            1
        );
        assert_eq!(
            write_once(&store, "k.json", 2u32, "number").await.unwrap(),
            1
        );
        store
            .put("bad.json", b"{".to_vec(), PutCondition::None)
            .await
            .unwrap();
        let e = write_once(&store, "bad.json", 3u32, "number")
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("is not a valid number"), "{e:#}");
    }
}
