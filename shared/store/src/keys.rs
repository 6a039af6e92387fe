//! The embedded default's API-key store: the key set (hashes only) in a JSON file, replaced
//! atomically. On AWS the Secrets Manager adapter in `mlops-aws` takes its place.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mlops_domain::apikeys::{ApiKeySet, KeyError, KeyStore};
use mlops_domain::store::{ObjectStore, PutCondition};

use crate::LocalStore;

/// Key set in `DIR/FILE`.
pub struct FileKeyStore {
    dir: LocalStore,
    file: String,
}

impl FileKeyStore {
    /// A key store at `path` (its directory is created on the first save).
    pub fn new(path: &Path) -> Self {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let file = path.file_name().map_or_else(
            || "api-keys.json".into(),
            |f| f.to_string_lossy().into_owned(),
        );
        Self {
            dir: LocalStore::new(dir),
            file,
        }
    }
}

#[async_trait]
impl KeyStore for FileKeyStore {
    async fn load(&self) -> Result<ApiKeySet, KeyError> {
        match self.dir.get(&self.file).await {
            Ok(Some(obj)) => ApiKeySet::from_json(&obj.bytes)
                .map_err(|e| KeyError::Invalid(format!("{}: {e}", self.describe()))),
            Ok(None) => Ok(ApiKeySet::default()),
            Err(e) => Err(KeyError::Store(e.to_string())),
        }
    }

    async fn save(&self, keys: &ApiKeySet) -> Result<(), KeyError> {
        self.dir
            .put(&self.file, keys.to_json(), PutCondition::None)
            .await
            .map(|_| ())
            .map_err(|e| KeyError::Store(e.to_string()))
    }

    fn describe(&self) -> String {
        self.dir.root().join(&self.file).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlops_domain::apikeys::Scope;

    #[tokio::test]
    async fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(&dir.path().join("keys/api-keys.json"));
        assert!(store.load().await.unwrap().keys.is_empty());
        let mut set = ApiKeySet::default();
        let key = set.create("app", &[Scope::Predict]).unwrap();
        store.save(&set).await.unwrap();
        let loaded = store.load().await.unwrap();
        assert!(loaded.authorize(Some(&key), Scope::Predict).is_ok());
        std::fs::write(dir.path().join("keys/api-keys.json"), b"{oops").unwrap();
        let err = store.load().await.unwrap_err().to_string();
        assert!(err.contains("api-keys.json"), "{err}");
    }
}
