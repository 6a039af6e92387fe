//! Content digests (SHA-256 for lineage, MD5 for DVC) and DVC-compatible data-set manifests.

use std::io::{self, Read};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Digests and size of some content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDigest {
    /// Hex SHA-256.
    pub sha256: String,
    /// Hex MD5 (what DVC uses).
    pub md5: String,
    /// Bytes.
    pub size: u64,
}

impl ContentDigest {
    /// Digests a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        let mut r = DigestingReader::new(bytes);
        io::copy(&mut r, &mut io::sink()).expect("reading a slice cannot fail");
        r.finish()
    }

    /// Digests a file, streaming.
    pub fn of_file(path: &std::path::Path) -> io::Result<Self> {
        let mut r = DigestingReader::new(std::fs::File::open(path)?);
        io::copy(&mut r, &mut io::sink())?;
        Ok(r.finish())
    }
}

/// A reader that computes SHA-256 and MD5 of everything read through it.
pub struct DigestingReader<R> {
    inner: R,
    sha256: Sha256,
    md5: Md5,
    size: u64,
}

impl<R: Read> DigestingReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            sha256: Sha256::new(),
            md5: Md5::new(),
            size: 0,
        }
    }

    /// The digest of what was read so far.
    pub fn finish(self) -> ContentDigest {
        ContentDigest {
            sha256: hex::encode(self.sha256.finalize()),
            md5: hex::encode(self.md5.finalize()),
            size: self.size,
        }
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha256.update(&buf[..n]);
        self.md5.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// One output of a DVC manifest (`outs:` entry of a `.dvc` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvcOut {
    /// MD5 of the file, as DVC computes it for a plain file.
    pub md5: String,
    /// Size in bytes.
    pub size: u64,
    /// Hash algorithm marker DVC 3 writes.
    pub hash: String,
    /// Path relative to the manifest.
    pub path: String,
}

/// A DVC-compatible manifest of one data-set file (the content of a `.dvc` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvcManifest {
    /// Tracked files.
    pub outs: Vec<DvcOut>,
}

impl DvcManifest {
    /// The manifest for one file.
    pub fn for_file(path: &str, digest: &ContentDigest) -> Self {
        Self {
            outs: vec![DvcOut {
                md5: digest.md5.clone(),
                size: digest.size,
                hash: "md5".into(),
                path: path.into(),
            }],
        }
    }

    /// Writes the manifest of `file` (a data set named `dataset`) to the store, content-addressed
    /// at `datasets/{dataset}/{sha256}/{file}.dvc`, create-only: an existing one is the same record.
    pub async fn record(
        store: &dyn crate::store::ObjectStore,
        dataset: &str,
        file: &str,
        digest: &ContentDigest,
    ) -> Result<(), crate::store::StoreError> {
        let key = format!("datasets/{dataset}/{}/{file}.dvc", digest.sha256);
        let bytes = Self::for_file(file, digest).to_yaml().into_bytes();
        match store
            .put(&key, bytes, crate::store::PutCondition::IfAbsent)
            .await
        {
            Ok(_) | Err(crate::store::StoreError::PreconditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The `.dvc` file text (YAML, in the layout `dvc add` writes).
    pub fn to_yaml(&self) -> String {
        let mut s = String::from("outs:\n");
        for o in &self.outs {
            s.push_str(&format!(
                "- md5: {}\n  size: {}\n  hash: {}\n  path: {}\n",
                o.md5,
                o.size,
                o.hash,
                yaml_scalar(&o.path)
            ));
        }
        s
    }
}

fn yaml_scalar(s: &str) -> String {
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
    if plain && !s.is_empty() {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        let d = ContentDigest::of(b"abc");
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(d.size, 3);
    }

    #[test]
    fn dvc_yaml_has_dvc_fields() {
        let m = DvcManifest::for_file("housing data.csv", &ContentDigest::of(b"abc"));
        assert_eq!(
            m.to_yaml(),
            "outs:\n- md5: 900150983cd24fb0d6963f7d28e17f72\n  size: 3\n  hash: md5\n  path: 'housing data.csv'\n"
        );
    }
}
