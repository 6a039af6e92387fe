//! XGBoost through the `xgb` crate (libxgboost 3.4 from the official wheel).
//!
//! Training is boosted round by round with early stopping on the validation set; the model is
//! then sliced to the best round. The model file is XGBoost's own JSON format, loadable by
//! Python xgboost.

use std::cell::RefCell;

use mlops_domain::artifact::ModelKind;
use mlops_domain::features::FeatureMatrix;
use mlops_domain::schema::Task;
use serde::{Deserialize, Serialize};
use xgb::{Booster, DMatrix};

use crate::{Labelled, Model, Params, TrainError};

/// XGBoost hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XgbParams {
    /// Learning rate.
    pub eta: f64,
    /// Maximum tree depth.
    pub max_depth: u32,
    /// Minimum hessian in a child.
    pub min_child_weight: f64,
    /// Row subsampling per tree.
    pub subsample: f64,
    /// Column subsampling per tree.
    pub colsample_bytree: f64,
    /// L2 penalty on leaf weights.
    pub lambda: f64,
    /// L1 penalty on leaf weights.
    pub alpha: f64,
    /// Histogram bins.
    pub max_bin: u32,
    /// Upper bound of boosting rounds.
    pub max_rounds: usize,
    /// Rounds without improvement before stopping.
    pub early_stopping_rounds: usize,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Threads (0 = all cores).
    pub threads: usize,
}

impl Default for XgbParams {
    fn default() -> Self {
        Self {
            eta: 0.05,
            max_depth: 8,
            min_child_weight: 1.0,
            subsample: 0.8,
            colsample_bytree: 0.8,
            lambda: 1.0,
            alpha: 0.0,
            max_bin: 256,
            max_rounds: 2000,
            early_stopping_rounds: 50,
            device: "cpu".into(),
            threads: 0,
        }
    }
}

/// A trained or loaded XGBoost model.
pub struct XgbModel {
    booster: Booster,
    n_features: usize,
    best_iteration: Option<usize>,
    /// XGBoost's prediction calls are not re-entrant on one booster.
    lock: RefCell<()>,
}

/// libxgboost's messages end in a C++ stack trace; keep the message.
fn clean(message: &str) -> String {
    message
        .split("Stack trace:")
        .next()
        .unwrap_or(message)
        .trim()
        .to_string()
}

fn xgb_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Xgboost(clean(&e.to_string()))
}

/// Whether the libxgboost this process loaded was built with CUDA (`USE_CUDA` in
/// `XGBuildInfo`): the `xgboost` wheel's library is, the `xgboost-cpu` wheel's is not.
pub fn library_has_cuda() -> Result<bool, TrainError> {
    let mut out: *const std::os::raw::c_char = std::ptr::null();
    // SAFETY: XGBuildInfo points `out` at a NUL-terminated JSON string owned by the library.
    let rc = unsafe { xgboost_sys::XGBuildInfo(&mut out) };
    if rc != 0 || out.is_null() {
        return Err(TrainError::Xgboost("XGBuildInfo failed".into()));
    }
    // SAFETY: non-null and NUL-terminated, checked above; copied before any other call.
    let text = unsafe { std::ffi::CStr::from_ptr(out) }.to_string_lossy();
    let info: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::Xgboost(format!("XGBuildInfo is not JSON: {e}")))?;
    Ok(info.get("USE_CUDA").and_then(serde_json::Value::as_bool) == Some(true))
}

/// Builds a DMatrix with labels; missing values are NaN.
pub fn dmatrix(x: &FeatureMatrix, y: Option<&[f64]>) -> Result<DMatrix, TrainError> {
    let mut d = DMatrix::from_dense(&x.to_f32(), x.rows).map_err(xgb_err)?;
    if let Some(y) = y {
        let labels: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        d.set_labels(&labels).map_err(xgb_err)?;
    }
    Ok(d)
}

/// Objective, early-stopping metric and whether that metric grows when better. Classification
/// stops on log loss (a proper scoring rule): AUC plateaus within a few rounds, long before the
/// probabilities are calibrated.
fn objective(task: Task) -> (&'static str, &'static str, bool) {
    match task {
        Task::Regression => ("reg:squarederror", "rmse", false),
        Task::BinaryClassification => ("binary:logistic", "logloss", false),
    }
}

impl XgbModel {
    /// Trains with early stopping on `valid`, with a fixed `seed`.
    pub fn train(
        task: Task,
        params: &XgbParams,
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
        params: &XgbParams,
        train: Labelled<'_>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        Self::train_inner(task, params, train, None, seed)
    }

    fn train_inner(
        task: Task,
        params: &XgbParams,
        train: Labelled<'_>,
        valid: Option<Labelled<'_>>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let dtrain = dmatrix(train.x, Some(train.y))?;
        let dvalid = valid.map(|v| dmatrix(v.x, Some(v.y))).transpose()?;
        let cached: Vec<&DMatrix> = std::iter::once(&dtrain).chain(dvalid.as_ref()).collect();
        let mut booster =
            Booster::new_with_cached_dmats(&xgb::parameters::BoosterParameters::default(), &cached)
                .map_err(xgb_err)?;
        let (objective, metric, higher_is_better) = objective(task);
        let mean = train.y.iter().sum::<f64>() / train.y.len().max(1) as f64;
        // Intercept: the label mean (a probability for binary:logistic), as XGBoost estimates it.
        let base_score = if task == Task::BinaryClassification {
            mean.clamp(1e-6, 1.0 - 1e-6)
        } else {
            mean
        };
        let threads = if params.threads == 0 {
            crate::default_threads()
        } else {
            params.threads
        };
        let settings: Vec<(&str, String)> = vec![
            ("verbosity", "0".into()),
            ("booster", "gbtree".into()),
            ("objective", objective.into()),
            ("eval_metric", metric.into()),
            ("base_score", format!("{base_score}")),
            ("tree_method", "hist".into()),
            ("device", params.device.clone()),
            ("eta", params.eta.to_string()),
            ("max_depth", params.max_depth.to_string()),
            ("min_child_weight", params.min_child_weight.to_string()),
            ("subsample", params.subsample.to_string()),
            ("colsample_bytree", params.colsample_bytree.to_string()),
            ("lambda", params.lambda.to_string()),
            ("alpha", params.alpha.to_string()),
            ("max_bin", params.max_bin.to_string()),
            ("seed", seed.to_string()),
            ("nthread", threads.to_string()),
        ];
        for (k, v) in &settings {
            booster.set_param(k, v).map_err(xgb_err)?;
        }
        let Some(dvalid) = dvalid else {
            for round in 0..params.max_rounds {
                booster.update(&dtrain, round as i32).map_err(xgb_err)?;
            }
            return Ok(Self {
                booster,
                n_features: train.x.cols,
                best_iteration: Some(params.max_rounds),
                lock: RefCell::new(()),
            });
        };
        let mut best = (f64::NAN, 0usize);
        for round in 0..params.max_rounds {
            booster.update(&dtrain, round as i32).map_err(xgb_err)?;
            let scores = booster.evaluate(&dvalid).map_err(xgb_err)?;
            let score = *scores.get(metric).ok_or_else(|| {
                TrainError::Xgboost(format!("no '{metric}' in evaluation {scores:?}"))
            })? as f64;
            let improved = best.0.is_nan()
                || if higher_is_better {
                    score > best.0
                } else {
                    score < best.0
                };
            if improved {
                best = (score, round);
            } else if round - best.1 >= params.early_stopping_rounds {
                break;
            }
        }
        let booster = booster.slice(0, best.1 as i32 + 1).map_err(xgb_err)?;
        Ok(Self {
            booster,
            n_features: train.x.cols,
            best_iteration: Some(best.1 + 1),
            lock: RefCell::new(()),
        })
    }

    /// Loads an XGBoost JSON model. The bytes are checked to be a JSON document with a `learner`
    /// before libxgboost sees them: some malformed buffers (an empty one) abort the process
    /// inside the C++ library instead of returning an error.
    pub fn from_bytes(bytes: &[u8], n_features: usize) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::ModelFile {
            kind: ModelKind::Xgboost,
            message,
        };
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not an XGBoost JSON model: {e}")))?;
        if !json
            .get("learner")
            .is_some_and(serde_json::Value::is_object)
        {
            return Err(bad(
                "not an XGBoost JSON model: no \"learner\" object".into()
            ));
        }
        let booster = Booster::load_buffer(bytes).map_err(|e| bad(clean(&e.to_string())))?;
        Ok(Self {
            booster,
            n_features,
            best_iteration: None,
            lock: RefCell::new(()),
        })
    }

    /// Sets the number of threads libxgboost uses for prediction.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), TrainError> {
        self.booster
            .set_param("nthread", &threads.to_string())
            .map_err(xgb_err)
    }

    /// The parameters as logged.
    pub fn params_of(params: &XgbParams, task: Task) -> Params {
        let mut p: Params =
            serde_json::from_value(serde_json::to_value(params).expect("params serialize"))
                .expect("object");
        p.insert("objective".into(), objective(task).0.into());
        p.insert("tree_method".into(), "hist".into());
        p
    }
}

impl Model for XgbModel {
    fn kind(&self) -> ModelKind {
        ModelKind::Xgboost
    }

    fn predict(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        if x.cols != self.n_features {
            return Err(TrainError::Shape {
                expected: self.n_features,
                found: x.cols,
            });
        }
        let _guard = self.lock.borrow_mut();
        let d = dmatrix(x, None)?;
        Ok(self
            .booster
            .predict(&d)
            .map_err(xgb_err)?
            .into_iter()
            .map(f64::from)
            .collect())
    }

    fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        // The JSON form is what other tools (and the pure-Rust engine) read.
        self.booster.save_buffer(false).map_err(xgb_err)
    }

    fn feature_importance(&self) -> Result<Vec<f64>, TrainError> {
        let json: serde_json::Value = serde_json::from_slice(&self.to_bytes()?).map_err(xgb_err)?;
        let mut gain = vec![0.0; self.n_features];
        let trees = json["learner"]["gradient_booster"]["model"]["trees"]
            .as_array()
            .ok_or_else(|| TrainError::Xgboost("model JSON has no trees".into()))?;
        for tree in trees {
            let (Some(left), Some(split), Some(loss)) = (
                tree["left_children"].as_array(),
                tree["split_indices"].as_array(),
                tree["loss_changes"].as_array(),
            ) else {
                continue;
            };
            for ((l, f), g) in left.iter().zip(split).zip(loss) {
                if l.as_i64().unwrap_or(-1) >= 0
                    && let (Some(f), Some(g)) = (f.as_u64(), g.as_f64())
                    && (f as usize) < gain.len()
                {
                    gain[f as usize] += g;
                }
            }
        }
        Ok(gain)
    }

    fn contributions(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        let _guard = self.lock.borrow_mut();
        let d = dmatrix(x, None)?;
        let (values, _) = self.booster.predict_contributions(&d).map_err(xgb_err)?;
        Ok(values.into_iter().map(f64::from).collect())
    }

    fn best_iteration(&self) -> Option<usize> {
        self.best_iteration
    }
}
