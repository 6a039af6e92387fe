//! LightGBM through `lightgbm3` (bundled LightGBM 4.7, built with OpenMP).
//!
//! Early stopping on the validation set; the model file is LightGBM's text format, loadable by
//! Python lightgbm.

use lightgbm3::{Booster, Dataset, ImportanceType};
use mlops_domain::artifact::ModelKind;
use mlops_domain::features::FeatureMatrix;
use mlops_domain::schema::Task;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Labelled, Model, Params, TrainError};

/// LightGBM hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LgbmParams {
    /// Learning rate.
    pub learning_rate: f64,
    /// Leaves per tree.
    pub num_leaves: u32,
    /// Depth limit (−1: none).
    pub max_depth: i32,
    /// Minimum rows per leaf.
    pub min_data_in_leaf: u32,
    /// Column subsampling per tree.
    pub feature_fraction: f64,
    /// Row subsampling.
    pub bagging_fraction: f64,
    /// Re-sample rows every k rounds (0: never).
    pub bagging_freq: u32,
    /// L2 penalty.
    pub lambda_l2: f64,
    /// Upper bound of boosting rounds.
    pub max_rounds: usize,
    /// Rounds without improvement before stopping.
    pub early_stopping_rounds: usize,
    /// `cpu` or `cuda` (needs a CUDA build of LightGBM).
    pub device: String,
    /// Threads (0 = all cores).
    pub threads: usize,
}

impl Default for LgbmParams {
    fn default() -> Self {
        Self {
            learning_rate: 0.05,
            num_leaves: 63,
            max_depth: -1,
            min_data_in_leaf: 20,
            feature_fraction: 0.8,
            bagging_fraction: 0.8,
            bagging_freq: 1,
            lambda_l2: 1.0,
            max_rounds: 3000,
            early_stopping_rounds: 100,
            device: "cpu".into(),
            threads: 0,
        }
    }
}

/// A trained or loaded LightGBM model.
pub struct LgbmModel {
    booster: Booster,
    task: Task,
    best_iteration: Option<usize>,
}

fn lgbm_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Lightgbm(e.to_string())
}

fn labels(y: &[f64]) -> Vec<f32> {
    y.iter().map(|&v| v as f32).collect()
}

impl LgbmModel {
    /// Trains with early stopping on `valid`, deterministically for a given `seed`.
    pub fn train(
        task: Task,
        params: &LgbmParams,
        train: Labelled<'_>,
        valid: Labelled<'_>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        Self::train_inner(task, params, train, Some(valid), seed)
    }

    /// Trains exactly `params.max_rounds` rounds without a validation set (the refit of a
    /// selected configuration on the whole training split).
    pub fn train_rounds(
        task: Task,
        params: &LgbmParams,
        train: Labelled<'_>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        Self::train_inner(task, params, train, None, seed)
    }

    fn train_inner(
        task: Task,
        params: &LgbmParams,
        train: Labelled<'_>,
        valid: Option<Labelled<'_>>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let n = train.x.cols as i32;
        let dtrain =
            Dataset::from_slice(&train.x.values, &labels(train.y), n, true).map_err(lgbm_err)?;
        let dvalid = valid
            .map(|v| {
                Dataset::from_slice_with_reference(
                    &v.x.values,
                    &labels(v.y),
                    n,
                    true,
                    Some(&dtrain),
                )
            })
            .transpose()
            .map_err(lgbm_err)?;
        // Without a validation set nothing can stop early: 0 turns it off.
        let early_stopping_rounds = if dvalid.is_some() {
            params.early_stopping_rounds
        } else {
            0
        };
        let threads = if params.threads == 0 {
            crate::default_threads()
        } else {
            params.threads
        };
        let (objective, metric) = match task {
            Task::Regression => ("regression", "rmse"),
            // Stop on log loss, not AUC: see the XGBoost learner.
            Task::BinaryClassification => ("binary", "binary_logloss"),
        };
        let config = json!({
            "objective": objective,
            "metric": metric,
            "learning_rate": params.learning_rate,
            "num_leaves": params.num_leaves,
            "max_depth": params.max_depth,
            "min_data_in_leaf": params.min_data_in_leaf,
            "feature_fraction": params.feature_fraction,
            "bagging_fraction": params.bagging_fraction,
            "bagging_freq": params.bagging_freq,
            "lambda_l2": params.lambda_l2,
            "num_iterations": params.max_rounds,
            "early_stopping_rounds": early_stopping_rounds,
            "device_type": params.device,
            "num_threads": threads,
            "seed": seed,
            "deterministic": true,
            "force_row_wise": true,
            "verbosity": -1,
        });
        let booster = Booster::train_with_valid(dtrain, dvalid, &config).map_err(lgbm_err)?;
        let best = booster.num_iterations().max(0) as usize;
        Ok(Self {
            booster,
            task,
            best_iteration: Some(best),
        })
    }

    /// Loads a LightGBM text model.
    pub fn from_bytes(bytes: &[u8], task: Task) -> Result<Self, TrainError> {
        let text = std::str::from_utf8(bytes).map_err(|e| TrainError::ModelFile {
            kind: ModelKind::Lightgbm,
            message: e.to_string(),
        })?;
        let booster = Booster::from_string(text).map_err(|e| TrainError::ModelFile {
            kind: ModelKind::Lightgbm,
            message: e.to_string(),
        })?;
        Ok(Self {
            booster,
            task,
            best_iteration: None,
        })
    }

    /// The parameters as logged.
    pub fn params_of(params: &LgbmParams, task: Task) -> Params {
        let mut p: Params =
            serde_json::from_value(serde_json::to_value(params).expect("params serialize"))
                .expect("object");
        p.insert(
            "objective".into(),
            match task {
                Task::Regression => "regression",
                Task::BinaryClassification => "binary",
            }
            .into(),
        );
        p
    }

    /// Predictions with LightGBM's prediction parameters (e.g. `num_threads=1`).
    pub fn predict_with(
        &self,
        x: &FeatureMatrix,
        parameters: &str,
    ) -> Result<Vec<f64>, TrainError> {
        self.booster
            .predict_with_params(&x.values, x.cols as i32, true, parameters)
            .map_err(lgbm_err)
    }

    /// The task the model was trained for.
    pub fn task(&self) -> Task {
        self.task
    }
}

impl Model for LgbmModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Lightgbm
    }

    fn predict(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        let expected = self.booster.num_features().max(0) as usize;
        if x.cols != expected {
            return Err(TrainError::Shape {
                expected,
                found: x.cols,
            });
        }
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        self.booster
            .predict(&x.values, x.cols as i32, true)
            .map_err(lgbm_err)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        Ok(self.booster.save_string().map_err(lgbm_err)?.into_bytes())
    }

    fn feature_importance(&self) -> Result<Vec<f64>, TrainError> {
        self.booster
            .feature_importance(ImportanceType::Gain)
            .map_err(lgbm_err)
    }

    fn contributions(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        self.booster
            .predict_contrib(&x.values, x.cols as i32, true)
            .map_err(lgbm_err)
    }

    fn best_iteration(&self) -> Option<usize> {
        self.best_iteration
    }
}
