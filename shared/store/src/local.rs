//! The embedded default: a directory on the local file system.
//!
//! Every write goes to a temporary file in the target directory, is flushed to disk, and is then
//! moved into place, so a crash never leaves a half-written object visible:
//! - unconditional writes `rename` over the old file;
//! - create-only writes `link` the temporary file to the key, which fails if the key exists;
//! - compare-and-swap writes hold an exclusive lock on a per-key lock file while they compare the
//!   current content hash and rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError, StoredObject, check_key};
use sha2::{Digest, Sha256};

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn etag_of(bytes: &[u8]) -> ETag {
    ETag(hex::encode(Sha256::digest(bytes)))
}

fn backend(operation: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        operation,
        key: key.into(),
        message: e.to_string(),
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn put_blocking(
        path: &Path,
        key: &str,
        bytes: &[u8],
        condition: &PutCondition,
    ) -> Result<ETag, StoreError> {
        let dir = path.parent().expect("keys have a parent under the root");
        fs::create_dir_all(dir).map_err(|e| backend("put", key, e))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(backend("put", key, e));
        }
        let result = match condition {
            PutCondition::None => fs::rename(&tmp, path).map_err(|e| backend("put", key, e)),
            PutCondition::IfAbsent => match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Err(StoreError::PreconditionFailed {
                        key: key.into(),
                        exists: true,
                    })
                }
                Err(e) => Err(backend("put", key, e)),
            },
            PutCondition::IfMatch(expected) => {
                let lock_path = dir.join(format!(".{name}.lock"));
                let lock = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(|e| backend("put", key, e))?;
                lock.lock().map_err(|e| backend("put", key, e))?;
                let outcome = match fs::read(path) {
                    Ok(current) if etag_of(&current) == *expected => {
                        fs::rename(&tmp, path).map_err(|e| backend("put", key, e))
                    }
                    Ok(_) => Err(StoreError::PreconditionFailed {
                        key: key.into(),
                        exists: true,
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Err(StoreError::PreconditionFailed {
                            key: key.into(),
                            exists: false,
                        })
                    }
                    Err(e) => Err(backend("put", key, e)),
                };
                let _ = lock.unlock();
                outcome
            }
        };
        // After a rename the temporary name is gone; after a link or a failure it must go.
        let _ = fs::remove_file(&tmp);
        result.map(|()| etag_of(bytes))
    }

    fn list_blocking(root: &Path, prefix: &str) -> io::Result<Vec<String>> {
        // Walk from the deepest directory the prefix names completely.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let mut stack = vec![root.join(base)];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue; // temporary and lock files
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(root) {
                    let key = rel
                        .to_string_lossy()
                        .replace(std::path::MAIN_SEPARATOR, "/");
                    if key.starts_with(prefix) {
                        out.push(key);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let path = self.path(key)?;
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || match fs::read(&path) {
            Ok(bytes) => Ok(Some(StoredObject {
                etag: etag_of(&bytes),
                bytes,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend("get", &key_owned, e)),
        })
        .await
        .map_err(|e| backend("get", key, e))?
    }

    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: PutCondition,
    ) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || {
            Self::put_blocking(&path, &key_owned, &bytes, &condition)
        })
        .await
        .map_err(|e| backend("put", key, e))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        let p = prefix.to_string();
        tokio::task::spawn_blocking(move || Self::list_blocking(&root, &p))
            .await
            .map_err(|e| backend("list", prefix, e))?
            .map_err(|e| backend("list", prefix, e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend("delete", &key_owned, e)),
        })
        .await
        .map_err(|e| backend("delete", key, e))?
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn uri(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        let t1 = s
            .put("a/b.json", b"1".to_vec(), PutCondition::IfAbsent)
            .await
            .unwrap();
        let err = s
            .put("a/b.json", b"2".to_vec(), PutCondition::IfAbsent)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::PreconditionFailed { exists: true, .. }
        ));
        let t2 = s
            .put("a/b.json", b"2".to_vec(), PutCondition::IfMatch(t1.clone()))
            .await
            .unwrap();
        let err = s
            .put("a/b.json", b"3".to_vec(), PutCondition::IfMatch(t1))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::PreconditionFailed { .. }));
        let got = s.get("a/b.json").await.unwrap().unwrap();
        assert_eq!((got.bytes, got.etag), (b"2".to_vec(), t2));
        assert!(s.get("a/none").await.unwrap().is_none());
        let err = s
            .put(
                "a/c",
                b"x".to_vec(),
                PutCondition::IfMatch(ETag("x".into())),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::PreconditionFailed { exists: false, .. }
        ));
    }

    #[tokio::test]
    async fn lists_by_prefix_without_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        for k in ["m/x/1.json", "m/x/2.json", "m/y/1.json", "n/1", "gone"] {
            s.put(k, vec![], PutCondition::None).await.unwrap();
        }
        std::fs::write(dir.path().join("m/x/.2.json.tmp-abc"), b"").unwrap();
        assert_eq!(
            s.list("m/x/").await.unwrap(),
            vec!["m/x/1.json", "m/x/2.json"]
        );
        assert_eq!(s.list("m/").await.unwrap().len(), 3);
        assert_eq!(s.list("m/x/1").await.unwrap(), vec!["m/x/1.json"]);
        assert!(s.list("zzz/").await.unwrap().is_empty());
        s.delete("gone").await.unwrap();
        s.delete("gone").await.unwrap();
        assert!(s.get("gone").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_escaping_keys() {
        let s = LocalStore::new("/tmp/never-used");
        assert!(matches!(
            s.get("../etc/passwd").await,
            Err(StoreError::InvalidKey { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_compare_and_swap_increments_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(LocalStore::new(dir.path()));
        s.put("counter", b"0".to_vec(), PutCondition::IfAbsent)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    loop {
                        let cur = s.get("counter").await.unwrap().unwrap();
                        let n: u64 = String::from_utf8(cur.bytes).unwrap().parse().unwrap();
                        let next = (n + 1).to_string().into_bytes();
                        match s
                            .put("counter", next, PutCondition::IfMatch(cur.etag))
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::PreconditionFailed { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.get("counter").await.unwrap().unwrap().bytes, b"20");
    }
}
