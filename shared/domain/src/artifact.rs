//! The model artifact: a bundle of `manifest.json` plus the native model file.
//!
//! The manifest records everything needed to serve and audit the model: task, model kind,
//! feature names, the fitted pipeline, the input schema, metrics, parameters, lineage, reference
//! profiles for drift checks and the SHA-256 of every other file. Loading verifies all of it.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::features::FeaturePipeline;
use crate::hashing::sha256_hex;
use crate::profile::FeatureProfile;
use crate::schema::{Schema, Task};

/// Current bundle format.
pub const BUNDLE_FORMAT: u32 = 1;
/// Name of the manifest inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest accepted bundle file (a guard against absurd downloads).
pub const MAX_BUNDLE_FILE_BYTES: u64 = 2 << 30;

/// The model family, which decides the model file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Ridge regression (`model.json`: intercept and coefficients).
    Linear,
    /// L2-regularized logistic regression (`model.json`).
    Logistic,
    /// XGBoost (`model.json`, XGBoost's JSON format).
    Xgboost,
    /// LightGBM (`model.txt`, LightGBM's text format).
    Lightgbm,
    /// Multi-layer perceptron (`model.safetensors`: dense layers, activation and output in the
    /// metadata) on standardized features.
    Mlp,
}

impl ModelKind {
    /// Name used in reports, tags and file names.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Linear => "linear",
            ModelKind::Logistic => "logistic",
            ModelKind::Xgboost => "xgboost",
            ModelKind::Lightgbm => "lightgbm",
            ModelKind::Mlp => "mlp",
        }
    }

    /// The model file name inside the bundle.
    pub fn model_file(self) -> &'static str {
        match self {
            ModelKind::Lightgbm => "model.txt",
            ModelKind::Mlp => "model.safetensors",
            _ => "model.json",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// Data-set file as given to training.
    pub data_source: String,
    /// SHA-256 of the data-set file.
    pub data_sha256: String,
    /// MD5 of the data-set file (DVC's hash).
    pub data_md5: String,
    /// Size of the data-set file.
    pub data_size: u64,
    /// Git commit of the code that trained the model.
    pub code_commit: String,
    /// Seed of the split and the learners.
    pub seed: u64,
    /// Share of rows held out for the test report.
    pub test_fraction: f64,
    /// Training rows (before the validation carve-out).
    pub train_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// Tracking run of this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Tracking server or run-log location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_uri: Option<String>,
    /// The training rows (how they were drawn, and their content digest), so a gate can score
    /// only rows the model never saw; absent for versions registered before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::gate::SplitRecord>,
}

/// Size and hash of a file in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Hex SHA-256.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// The bundle manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format_version: u32,
    /// Registry model name.
    pub model_name: String,
    /// Task.
    pub task: Task,
    /// Model family.
    pub model_kind: ModelKind,
    /// The native model file inside the bundle.
    pub model_file: String,
    /// Output feature names of the pipeline (the model's inputs).
    pub feature_names: Vec<String>,
    /// The input schema (what a prediction request must contain).
    pub schema: Schema,
    /// The fitted feature pipeline.
    pub pipeline: FeaturePipeline,
    /// Metrics on the untouched test split.
    pub metrics: BTreeMap<String, f64>,
    /// Metrics on the validation set used for selection.
    pub validation_metrics: BTreeMap<String, f64>,
    /// Cross-validation mean of the primary metric, if CV ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cv_score: Option<f64>,
    /// Learner parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Lineage.
    pub lineage: Lineage,
    /// When the bundle was made.
    pub created_at: DateTime<Utc>,
    /// Training-data profiles for drift checks.
    pub reference_profile: Vec<FeatureProfile>,
    /// The model's predictions on its training rows (the positive class's probability for a
    /// classifier), for prediction-drift checks; absent in bundles written before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_profile: Option<FeatureProfile>,
    /// A classifier's probabilities mapped to observed rates on the test split, for estimating
    /// live quality without labels; absent for regression and in earlier bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::quality::Calibration>,
    /// Mean |TreeSHAP contribution| per model feature over training rows, the reference of
    /// attribution drift; absent for models without explanations and in earlier bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution_profile: Option<crate::attribution::AttributionProfile>,
    /// The feature views (and versions) the training set was built from, point in time;
    /// serving fetches their features from the online store for requests that send only the
    /// entity key. Empty for models trained on a plain file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_views: Vec<crate::online::ServingView>,
    /// Every other file in the bundle, with its hash.
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

/// A bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifest does not parse (corrupt or truncated).
    #[error("{origin}: manifest.json is corrupt or truncated: {message}")]
    CorruptManifest {
        /// Bundle location.
        origin: String,
        /// Parser message.
        message: String,
    },
    /// Format from a newer (or unknown) version.
    #[error(
        "{origin}: bundle format {found} is not supported (this build reads format {BUNDLE_FORMAT})"
    )]
    UnsupportedFormat {
        /// Bundle location.
        origin: String,
        /// Version found.
        found: u32,
    },
    /// A file listed in the manifest is absent.
    #[error("{origin}: file '{name}' listed in the manifest is missing")]
    MissingFile {
        /// Bundle location.
        origin: String,
        /// File.
        name: String,
    },
    /// A file's content does not match its recorded hash or size.
    #[error("{origin}: file '{name}' is corrupt or truncated: expected {expected}, found {actual}")]
    Checksum {
        /// Bundle location.
        origin: String,
        /// File.
        name: String,
        /// Expected hash/size.
        expected: String,
        /// Actual hash/size.
        actual: String,
    },
    /// A file name that is not a plain name.
    #[error("{origin}: unsafe file name '{name}' in the manifest")]
    UnsafeName {
        /// Bundle location.
        origin: String,
        /// File.
        name: String,
    },
    /// The bundle lacks its model file, or the manifest disagrees with itself.
    #[error("{origin}: {message}")]
    Inconsistent {
        /// Bundle location.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The destination already holds a bundle.
    #[error("{path} already exists; refusing to overwrite a stored bundle")]
    Exists {
        /// Path.
        path: String,
    },
}

impl Manifest {
    /// The manifest as a bundle writes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("manifest serializes")
    }

    /// The bundle's identity, [`Bundle::digest`]: SHA-256 of [`Manifest::to_bytes`].
    pub fn digest(&self) -> String {
        sha256_hex(&self.to_bytes())
    }

    /// Parses a stored manifest: a supported format, plain file names within the size limit,
    /// and a pipeline consistent with the feature names. `origin` names the bundle in errors.
    pub fn parse(origin: &str, bytes: &[u8]) -> Result<Self, ArtifactError> {
        let probe: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::CorruptManifest {
                origin: origin.into(),
                message: e.to_string(),
            })?;
        let found = probe
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if found != BUNDLE_FORMAT {
            return Err(ArtifactError::UnsupportedFormat {
                origin: origin.into(),
                found,
            });
        }
        let manifest: Manifest =
            serde_json::from_value(probe).map_err(|e| ArtifactError::CorruptManifest {
                origin: origin.into(),
                message: e.to_string(),
            })?;
        for (name, entry) in &manifest.files {
            if !safe_name(name) {
                return Err(ArtifactError::UnsafeName {
                    origin: origin.into(),
                    name: name.clone(),
                });
            }
            if entry.size > MAX_BUNDLE_FILE_BYTES {
                return Err(ArtifactError::Inconsistent {
                    origin: origin.into(),
                    message: format!("file '{name}' claims {} bytes, over the limit", entry.size),
                });
            }
        }
        manifest.check_pipeline(origin)?;
        Ok(manifest)
    }

    /// Checks a listed file's bytes against the size and SHA-256 the manifest records.
    pub fn verify_file(&self, origin: &str, name: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        let Some(entry) = self.files.get(name) else {
            return Err(ArtifactError::Inconsistent {
                origin: origin.into(),
                message: format!("'{name}' is not listed in the manifest"),
            });
        };
        let actual = sha256_hex(bytes);
        if bytes.len() as u64 != entry.size || actual != entry.sha256 {
            return Err(ArtifactError::Checksum {
                origin: origin.into(),
                name: name.into(),
                expected: format!("{} bytes, sha256 {}", entry.size, entry.sha256),
                actual: format!("{} bytes, sha256 {actual}", bytes.len()),
            });
        }
        Ok(())
    }

    fn check_pipeline(&self, origin: &str) -> Result<(), ArtifactError> {
        if self.feature_names != self.pipeline.feature_names {
            return Err(ArtifactError::Inconsistent {
                origin: origin.into(),
                message: "feature names differ between the manifest and its pipeline".into(),
            });
        }
        self.pipeline
            .check()
            .map_err(|message| ArtifactError::Inconsistent {
                origin: origin.into(),
                message: format!("pipeline: {message}"),
            })
    }
}

/// A verified bundle in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// The manifest (its `files` match `files`).
    pub manifest: Manifest,
    /// Files other than the manifest.
    pub files: BTreeMap<String, Vec<u8>>,
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != MANIFEST_FILE
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.')
}

impl Bundle {
    /// Builds a bundle, recording the hash and size of each file in the manifest.
    pub fn new(
        mut manifest: Manifest,
        files: BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, ArtifactError> {
        manifest.format_version = BUNDLE_FORMAT;
        manifest.files = files
            .iter()
            .map(|(name, bytes)| {
                (
                    name.clone(),
                    FileEntry {
                        sha256: sha256_hex(bytes),
                        size: bytes.len() as u64,
                    },
                )
            })
            .collect();
        let bundle = Bundle { manifest, files };
        bundle.check_consistency("new bundle")?;
        Ok(bundle)
    }

    fn check_consistency(&self, origin: &str) -> Result<(), ArtifactError> {
        for name in self.files.keys() {
            if !safe_name(name) {
                return Err(ArtifactError::UnsafeName {
                    origin: origin.into(),
                    name: name.clone(),
                });
            }
        }
        if !self.files.contains_key(&self.manifest.model_file) {
            return Err(ArtifactError::Inconsistent {
                origin: origin.into(),
                message: format!(
                    "the model file '{}' is not in the bundle",
                    self.manifest.model_file
                ),
            });
        }
        self.manifest.check_pipeline(origin)
    }

    /// The manifest as stored (pretty JSON).
    pub fn manifest_bytes(&self) -> Vec<u8> {
        self.manifest.to_bytes()
    }

    /// The bundle's identity: SHA-256 of its manifest (which pins every other file).
    pub fn digest(&self) -> String {
        self.manifest.digest()
    }

    /// The native model file.
    pub fn model_bytes(&self) -> &[u8] {
        &self.files[&self.manifest.model_file]
    }

    /// Every file including `manifest.json`, manifest last (so a reader that sees it sees the rest).
    pub fn all_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .files
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push((MANIFEST_FILE.to_string(), self.manifest_bytes()));
        out
    }

    /// Parses a manifest and verifies each listed file, fetched through `read`.
    /// `origin` names the bundle in errors.
    pub fn from_parts(
        origin: &str,
        manifest_bytes: &[u8],
        mut read: impl FnMut(&str) -> Result<Option<Vec<u8>>, ArtifactError>,
    ) -> Result<Self, ArtifactError> {
        let manifest = Manifest::parse(origin, manifest_bytes)?;
        let mut files = BTreeMap::new();
        for name in manifest.files.keys() {
            let bytes = read(name)?.ok_or_else(|| ArtifactError::MissingFile {
                origin: origin.into(),
                name: name.clone(),
            })?;
            manifest.verify_file(origin, name, &bytes)?;
            files.insert(name.clone(), bytes);
        }
        let bundle = Bundle { manifest, files };
        bundle.check_consistency(origin)?;
        Ok(bundle)
    }

    /// Writes the bundle into a new directory, atomically: it is assembled beside the target and
    /// renamed into place, so the directory either holds the whole bundle or does not exist.
    pub fn write_dir(&self, dir: &Path) -> Result<(), ArtifactError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ArtifactError::Io { path, source }
        };
        if dir.exists() {
            return Err(ArtifactError::Exists {
                path: dir.display().to_string(),
            });
        }
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}-{:016x}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("bundle"),
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        for (name, bytes) in self.all_files() {
            let p = tmp.join(&name);
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        std::fs::rename(&tmp, dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&tmp);
            ArtifactError::Io {
                path: dir.display().to_string(),
                source,
            }
        })
    }

    /// Reads and verifies a bundle directory.
    pub fn read_dir(dir: &Path) -> Result<Self, ArtifactError> {
        let origin = dir.display().to_string();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = std::fs::read(&manifest_path).map_err(|source| ArtifactError::Io {
            path: manifest_path.display().to_string(),
            source,
        })?;
        Bundle::from_parts(&origin, &manifest, |name| {
            let p = dir.join(name);
            match std::fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(ArtifactError::Io {
                    path: p.display().to_string(),
                    source,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_bundle;

    #[test]
    fn round_trips_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let b = sample_bundle();
        let path = dir.path().join("bundle");
        b.write_dir(&path).unwrap();
        assert_eq!(Bundle::read_dir(&path).unwrap(), b);
        assert!(matches!(
            b.write_dir(&path),
            Err(ArtifactError::Exists { .. })
        ));
    }

    #[test]
    fn detects_corruption_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle");
        sample_bundle().write_dir(&path).unwrap();
        std::fs::write(path.join("model.json"), b"{\"w\":[2.0]}").unwrap();
        let err = Bundle::read_dir(&path).unwrap_err().to_string();
        assert!(
            err.contains("file 'model.json' is corrupt or truncated"),
            "{err}"
        );

        std::fs::write(path.join("model.json"), b"{\"w\"").unwrap();
        let err = Bundle::read_dir(&path).unwrap_err().to_string();
        let size = sample_bundle().model_bytes().len();
        assert!(err.contains(&format!("expected {size} bytes")), "{err}");

        let manifest = std::fs::read(path.join(MANIFEST_FILE)).unwrap();
        std::fs::write(path.join(MANIFEST_FILE), &manifest[..manifest.len() / 2]).unwrap();
        let err = Bundle::read_dir(&path).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json is corrupt or truncated"),
            "{err}"
        );

        std::fs::remove_file(path.join("model.json")).unwrap();
        std::fs::write(path.join(MANIFEST_FILE), &manifest).unwrap();
        let err = Bundle::read_dir(&path).unwrap_err().to_string();
        assert!(
            err.contains("file 'model.json' listed in the manifest is missing"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_format_and_unsafe_names() {
        let b = sample_bundle();
        let mut v: serde_json::Value = serde_json::from_slice(&b.manifest_bytes()).unwrap();
        v["format_version"] = 99.into();
        let err =
            Bundle::from_parts("x", &serde_json::to_vec(&v).unwrap(), |_| Ok(None)).unwrap_err();
        assert!(err.to_string().contains("format 99 is not supported"));
        v["format_version"] = 1.into();
        v["files"]["../etc/passwd"] = serde_json::json!({"sha256": "00", "size": 1});
        let err =
            Bundle::from_parts("x", &serde_json::to_vec(&v).unwrap(), |_| Ok(None)).unwrap_err();
        assert!(err.to_string().contains("unsafe file name"));
    }
}
