//! Model training for the platform: ridge / logistic baselines (pure Rust), XGBoost (libxgboost
//! 3.4 through the `xgb` crate), LightGBM (4.7 through `lightgbm3`) and MLPs (libtorch 2.13
//! through `tch`, feature `torch`), with early stopping on a validation set, optional k-fold
//! cross-validation or a budgeted search, selection by the primary metric and training reports.
//!
//! Models consume the dense output of the fitted feature pipeline
//! ([`mlops_domain::features::FeatureMatrix`]).

pub mod lightgbm;
pub mod linear;
pub mod mlp;
pub mod report;
pub mod search;
pub mod select;
pub mod significance;
pub mod xgboost;

use std::collections::BTreeMap;

use mlops_domain::artifact::ModelKind;
use mlops_domain::features::FeatureMatrix;
use mlops_domain::schema::Task;

/// Training and native-prediction failures.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// libxgboost reported an error.
    #[error("XGBoost: {0}")]
    Xgboost(String),
    /// LightGBM reported an error.
    #[error("LightGBM: {0}")]
    Lightgbm(String),
    /// The linear solver failed (e.g. a singular system).
    #[error("linear model: {0}")]
    Linear(String),
    /// A model file that cannot be read.
    #[error("model file ({kind}): {message}")]
    ModelFile {
        /// Model kind.
        kind: ModelKind,
        /// What is wrong.
        message: String,
    },
    /// Input of the wrong shape.
    #[error("expected {expected} features per row, got {found}")]
    Shape {
        /// Expected width.
        expected: usize,
        /// Given width.
        found: usize,
    },
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// A search shared by workers could not read or write where they meet.
    #[error("shared search: {0}")]
    SharedSearch(String),
    /// Report files could not be written.
    #[error("report {path}: {message}")]
    Report {
        /// Path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The labelled rows a learner trains or validates on.
#[derive(Debug, Clone, Copy)]
pub struct Labelled<'a> {
    /// Features.
    pub x: &'a FeatureMatrix,
    /// Labels.
    pub y: &'a [f64],
}

/// A trained model that predicts through its native library (or pure Rust for linear models).
pub trait Model {
    /// The model family.
    fn kind(&self) -> ModelKind;
    /// Predictions: the value for regression, the positive-class probability for classification.
    fn predict(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError>;
    /// The native model file (XGBoost JSON, LightGBM text, linear JSON).
    fn to_bytes(&self) -> Result<Vec<u8>, TrainError>;
    /// Importance of each input feature (total gain for trees, |coefficient| for linear models).
    fn feature_importance(&self) -> Result<Vec<f64>, TrainError>;
    /// Native feature contributions in margin space: per row, one value per feature then the
    /// bias (XGBoost `pred_contribs`, LightGBM `pred_contrib`; exact for linear models).
    fn contributions(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError>;
    /// Boosting rounds kept after early stopping (trees), if applicable.
    fn best_iteration(&self) -> Option<usize> {
        None
    }
}

/// Loads a native model file for prediction.
pub fn load_model(
    kind: ModelKind,
    task: Task,
    n_features: usize,
    bytes: &[u8],
) -> Result<Box<dyn Model>, TrainError> {
    Ok(match kind {
        ModelKind::Linear | ModelKind::Logistic => {
            Box::new(linear::LinearModel::from_bytes(bytes)?)
        }
        ModelKind::Xgboost => Box::new(xgboost::XgbModel::from_bytes(bytes, n_features)?),
        ModelKind::Lightgbm => Box::new(lightgbm::LgbmModel::from_bytes(bytes, task)?),
        #[cfg(feature = "torch")]
        ModelKind::Mlp => Box::new(mlp::MlpModel::from_bytes(bytes, task)?),
        #[cfg(not(feature = "torch"))]
        ModelKind::Mlp => return Err(mlp::unavailable()),
    })
}

/// Learner parameters as they are logged and stored in the manifest.
pub type Params = BTreeMap<String, serde_json::Value>;

/// Threads to use by default: every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
