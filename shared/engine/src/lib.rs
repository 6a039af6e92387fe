//! The pure-Rust inference engine: loads a model bundle, replays its fitted feature pipeline and
//! evaluates the model without any native library — XGBoost JSON and LightGBM text ensembles in
//! a flattened layout, linear/logistic models, and MLPs from safetensors — with TreeSHAP
//! explanations for tree models.
//!
//! Hostile model files give an [`EngineError`], never a panic, hang or unbounded allocation:
//! array lengths are checked against each other and the text before anything is built, child
//! indices are range-checked, every tree is walked once iteratively to reject cycles, shared
//! nodes and depths over [`tree::MAX_DEPTH`], and thresholds and leaf values must be finite.

pub mod cuts;
mod erf;
pub mod image;
pub mod lightgbm;
pub mod linear;
pub mod mlp;
pub mod tree;
pub mod xgboost;

use mlops_domain::artifact::{Bundle, Manifest, ModelKind};
use mlops_domain::data::Value;
use mlops_domain::features::{FeatureError, FeaturePipeline, TransformStats};
use mlops_domain::registry::ServingImage;
use mlops_domain::schema::Task;

use crate::image::{ImageError, Integrity};
use crate::linear::Linear;
use crate::mlp::Mlp;
use crate::tree::Ensemble;

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file does not parse.
    #[error("{format} model: {message}")]
    Parse {
        /// Expected format.
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The model file parses but is inconsistent or unsafe to evaluate.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A valid model of a kind the engine does not evaluate.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Input rows of the wrong width.
    #[error("expected {expected} features per row, got {found}")]
    WrongWidth {
        /// Model width.
        expected: usize,
        /// Given width.
        found: usize,
    },
    /// A value the model cannot take.
    #[error("feature {index} ('{name}'): {message}")]
    BadInput {
        /// Feature index.
        index: usize,
        /// Feature name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A raw row the pipeline rejects.
    #[error("row {row}: {source}")]
    Feature {
        /// 0-based row index.
        row: usize,
        /// Pipeline error.
        source: FeatureError,
    },
}

/// A compiled model.
#[derive(Debug, Clone)]
pub enum CompiledModel {
    /// XGBoost or LightGBM ensemble.
    Trees(Ensemble),
    /// Linear or logistic model.
    Linear(Linear),
    /// Multi-layer perceptron.
    Mlp(Mlp),
}

impl CompiledModel {
    /// Compiles a native model file of the given kind.
    pub fn load(kind: ModelKind, bytes: &[u8]) -> Result<Self, EngineError> {
        match kind {
            ModelKind::Xgboost => CompiledModel::Trees(xgboost::load(bytes)?),
            ModelKind::Lightgbm => CompiledModel::Trees(lightgbm::load(bytes)?),
            ModelKind::Linear | ModelKind::Logistic => CompiledModel::Linear(Linear::load(bytes)?),
            ModelKind::Mlp => CompiledModel::Mlp(Mlp::load(bytes)?),
        }
        .with_inputs()
    }

    fn with_inputs(self) -> Result<Self, EngineError> {
        if self.n_features() == 0 {
            return Err(EngineError::InvalidModel(
                "the model declares no input features".into(),
            ));
        }
        Ok(self)
    }

    /// The engine image of this model, compiled from `model_bytes` (its native file): tree
    /// ensembles only; linear models and MLPs (safetensors) load from their native file as fast.
    pub fn image(&self, model_bytes: &[u8]) -> Option<Vec<u8>> {
        match self {
            CompiledModel::Trees(e) => Some(image::compile(e, model_bytes)),
            _ => None,
        }
    }

    /// Input width, where the model file states it.
    pub fn n_features(&self) -> usize {
        match self {
            CompiledModel::Trees(e) => e.trees.n_features,
            CompiledModel::Linear(l) => l.coefficients.len(),
            CompiledModel::Mlp(m) => m.inputs(),
        }
    }

    /// Checks a feature row: width, no infinities; NaN (missing) only for tree models, which
    /// route it by their missing-value rules.
    pub fn check_row(&self, row: &[f64], names: &[String]) -> Result<(), EngineError> {
        if row.len() != self.n_features() {
            return Err(EngineError::WrongWidth {
                expected: self.n_features(),
                found: row.len(),
            });
        }
        let allows_nan = matches!(self, CompiledModel::Trees(_));
        for (index, &x) in row.iter().enumerate() {
            let problem = if x.is_infinite() {
                Some("infinite values are not accepted")
            } else if x.is_nan() && !allows_nan {
                Some("missing (NaN) values are not accepted by this model")
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(EngineError::BadInput {
                    index,
                    name: names.get(index).cloned().unwrap_or_default(),
                    message: message.into(),
                });
            }
        }
        Ok(())
    }

    /// Margin (raw score) of one checked row.
    pub fn margin(&self, row: &[f64]) -> f64 {
        match self {
            CompiledModel::Trees(e) => e.margin(row),
            CompiledModel::Linear(l) => l.margin(row),
            CompiledModel::Mlp(m) => m.margin(row),
        }
    }

    /// Prediction (value or probability) from a margin.
    pub fn transform(&self, margin: f64) -> f64 {
        match self {
            CompiledModel::Trees(e) => e.transform(margin),
            CompiledModel::Linear(l) => l.transform(margin),
            CompiledModel::Mlp(m) => m.transform(margin),
        }
    }

    /// Predictions of checked rows (row-major).
    pub fn predict_batch(&self, values: &[f64]) -> Vec<f64> {
        let width = self.n_features().max(1);
        match self {
            CompiledModel::Trees(e) => e
                .margins(values)
                .into_iter()
                .map(|m| e.transform(m))
                .collect(),
            CompiledModel::Mlp(m) => m
                .margins(values)
                .into_iter()
                .map(|x| m.transform(x))
                .collect(),
            CompiledModel::Linear(_) => values
                .chunks(width)
                .map(|r| self.transform(self.margin(r)))
                .collect(),
        }
    }

    /// Per-feature contributions in margin space plus the bias as the last element (TreeSHAP
    /// for trees, exact for linear models); `None` for MLPs.
    pub fn contributions(&self, row: &[f64]) -> Option<Vec<f64>> {
        match self {
            CompiledModel::Trees(e) => Some(e.contributions(row)),
            CompiledModel::Linear(l) => Some(l.contributions(row)),
            CompiledModel::Mlp(_) => None,
        }
    }
}

/// A bundle ready to serve: its pipeline and compiled model.
#[derive(Debug, Clone)]
pub struct Predictor {
    /// Task.
    pub task: Task,
    /// The fitted pipeline.
    pub pipeline: FeaturePipeline,
    /// The compiled model.
    pub model: CompiledModel,
}

/// An explained prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explanation {
    /// Prediction.
    pub prediction: f64,
    /// Margin (raw score); the contributions and bias sum to it.
    pub margin: f64,
    /// Expected margin over the training data.
    pub bias: f64,
    /// Contribution of each model feature, by name.
    pub contributions: Vec<(String, f64)>,
}

impl Predictor {
    /// Loads a verified bundle: from its engine image when it has a usable one, else by
    /// compiling its native model file.
    pub fn from_bundle(bundle: &Bundle) -> Result<Self, EngineError> {
        if let Some(image) = bundle.files.get(image::file_name())
            && let Ok(p) = Self::from_image(&bundle.manifest, image, Integrity::Verified)
        {
            return Ok(p);
        }
        Self::from_bundle_native(bundle)
    }

    /// Compiles a verified bundle's native model file (ignoring any engine image).
    pub fn from_bundle_native(bundle: &Bundle) -> Result<Self, EngineError> {
        Self::from_model_file(&bundle.manifest, bundle.model_bytes())
    }

    /// Compiles the native model file of a bundle whose manifest (and file) are verified.
    pub fn from_model_file(manifest: &Manifest, model_bytes: &[u8]) -> Result<Self, EngineError> {
        Self::with_model(
            manifest,
            CompiledModel::load(manifest.model_kind, model_bytes)?,
        )
    }

    /// Loads the engine image of a bundle whose manifest is verified; the image must have been
    /// compiled from the model file the manifest lists.
    pub fn from_image(
        manifest: &Manifest,
        image: &[u8],
        integrity: Integrity,
    ) -> Result<Self, ImageError> {
        if !image::has_image(manifest.model_kind) {
            return Err(ImageError::Stale(format!(
                "{} models load from their native file",
                manifest.model_kind
            )));
        }
        let source = manifest
            .files
            .get(&manifest.model_file)
            .map_or("", |f| f.sha256.as_str());
        let ensemble = image::load(image, source, integrity)?;
        Self::with_model(manifest, CompiledModel::Trees(ensemble))
            .map_err(|e| ImageError::Corrupt(e.to_string()))
    }

    /// Loads an image as the registry fetched it: one the manifest lists was verified against it;
    /// one added later is checked against the hashes it carries.
    pub fn from_fetched_image(
        manifest: &Manifest,
        image: &ServingImage,
    ) -> Result<Self, ImageError> {
        let integrity = if image.listed {
            Integrity::Verified
        } else {
            Integrity::CheckBody
        };
        Self::from_image(manifest, &image.bytes, integrity)
    }

    fn with_model(m: &Manifest, model: CompiledModel) -> Result<Self, EngineError> {
        let model = model.with_inputs()?;
        if model.n_features() != m.feature_names.len() {
            return Err(EngineError::InvalidModel(format!(
                "the model takes {} features but the pipeline produces {}",
                model.n_features(),
                m.feature_names.len()
            )));
        }
        Ok(Self {
            task: m.task,
            pipeline: m.pipeline.clone(),
            model,
        })
    }

    fn features(&self, rows: &[Vec<Value>]) -> Result<(Vec<f64>, TransformStats), EngineError> {
        let (matrix, stats) = self
            .pipeline
            .transform_rows(rows)
            .map_err(|(row, source)| EngineError::Feature { row, source })?;
        for (r, row) in matrix.values.chunks(matrix.cols.max(1)).enumerate() {
            self.model
                .check_row(row, &self.pipeline.feature_names)
                .map_err(|e| EngineError::Feature {
                    row: r,
                    source: FeatureError::WrongType {
                        column: e.to_string(),
                        expected: "a finite feature value",
                        found: "a value the pipeline could not repair".into(),
                    },
                })?;
        }
        Ok((matrix.values, stats))
    }

    /// Predicts raw rows (values in the pipeline's input order).
    pub fn predict(&self, rows: &[Vec<Value>]) -> Result<(Vec<f64>, TransformStats), EngineError> {
        let (values, stats) = self.features(rows)?;
        Ok((self.model.predict_batch(&values), stats))
    }

    /// Predicts and explains one raw row.
    pub fn explain(&self, row: &[Value]) -> Result<Explanation, EngineError> {
        let (values, _) = self.features(std::slice::from_ref(&row.to_vec()))?;
        let margin = self.model.margin(&values);
        let mut contributions = self
            .model
            .contributions(&values)
            .ok_or_else(|| EngineError::Unsupported("explanations of MLP models".into()))?;
        let bias = contributions.pop().unwrap_or(0.0);
        Ok(Explanation {
            prediction: self.model.transform(margin),
            margin,
            bias,
            contributions: self
                .pipeline
                .feature_names
                .iter()
                .cloned()
                .zip(contributions)
                .collect(),
        })
    }
}
