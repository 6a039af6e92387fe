//! Candidate training and selection.
//!
//! Protocol: a seeded train/test split; the feature pipeline is fitted on the training split
//! only; a validation set carved from the training split drives early stopping and selection
//! (or the mean of k-fold cross-validation when enabled); the selected candidate is scored once
//! on the untouched test split.

use std::time::Instant;

use mlops_domain::artifact::ModelKind;
use mlops_domain::data::Dataset;
use mlops_domain::features::{FeatureMatrix, FeaturePipeline, PipelineOptions};
use mlops_domain::metrics::{Metric, evaluate};
use mlops_domain::schema::{Schema, Task};
use mlops_domain::split::{k_fold, train_test_split};
use serde::{Deserialize, Serialize};

use crate::lightgbm::{LgbmModel, LgbmParams};
use crate::linear::LinearModel;
use crate::mlp::MlpParams;
use crate::search::{Here, SearchConfig, SearchEvent, SearchOutcome, SearchProblem, SearchRunner};
use crate::significance::{PairedTest, corrected_paired_t_test};
use crate::xgboost::{XgbModel, XgbParams};
use crate::{Labelled, Model, Params, TrainError};

/// One learner configuration to try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CandidateSpec {
    /// Ridge regression (regression) or logistic regression (classification).
    Linear {
        /// L2 penalty.
        l2: f64,
    },
    /// XGBoost.
    Xgboost(XgbParams),
    /// LightGBM.
    Lightgbm(LgbmParams),
    /// A multi-layer perceptron (libtorch; needs the `torch` feature).
    Mlp(MlpParams),
}

impl CandidateSpec {
    /// The model family for a task.
    pub fn model_kind(&self, task: Task) -> ModelKind {
        match (self, task) {
            (CandidateSpec::Linear { .. }, Task::Regression) => ModelKind::Linear,
            (CandidateSpec::Linear { .. }, Task::BinaryClassification) => ModelKind::Logistic,
            (CandidateSpec::Xgboost(_), _) => ModelKind::Xgboost,
            (CandidateSpec::Lightgbm(_), _) => ModelKind::Lightgbm,
            (CandidateSpec::Mlp(_), _) => ModelKind::Mlp,
        }
    }

    /// Linear models and MLPs need standardized features; trees do not.
    pub fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            standardize: matches!(self, CandidateSpec::Linear { .. } | CandidateSpec::Mlp(_)),
        }
    }

    /// Parameters as logged.
    pub fn params(&self, task: Task) -> Params {
        match self {
            CandidateSpec::Linear { l2 } => Params::from([("l2".to_string(), (*l2).into())]),
            CandidateSpec::Xgboost(p) => XgbModel::params_of(p, task),
            CandidateSpec::Lightgbm(p) => LgbmModel::params_of(p, task),
            CandidateSpec::Mlp(p) => p.params(),
        }
    }

    /// This configuration with exactly `rounds` boosting rounds (trees) or epochs (MLPs).
    pub fn with_rounds(&self, rounds: usize) -> CandidateSpec {
        let mut spec = self.clone();
        match &mut spec {
            CandidateSpec::Xgboost(p) => p.max_rounds = rounds,
            CandidateSpec::Lightgbm(p) => p.max_rounds = rounds,
            CandidateSpec::Mlp(p) => p.max_epochs = rounds,
            CandidateSpec::Linear { .. } => {}
        }
        spec
    }

    /// Trains this candidate on all of `train` without early stopping: trees grow exactly their
    /// `max_rounds`, MLPs train exactly `max_epochs`.
    pub fn fit_all(
        &self,
        task: Task,
        train: Labelled<'_>,
        seed: u64,
    ) -> Result<Box<dyn Model>, TrainError> {
        Ok(match (self, task) {
            (CandidateSpec::Linear { .. }, _) => self.fit(task, train, train, seed)?,
            (CandidateSpec::Xgboost(p), _) => {
                Box::new(XgbModel::train_rounds(task, p, train, seed)?)
            }
            (CandidateSpec::Lightgbm(p), _) => {
                Box::new(LgbmModel::train_rounds(task, p, train, seed)?)
            }
            (CandidateSpec::Mlp(p), _) => fit_mlp(task, p, train, None, seed)?,
        })
    }

    /// The default candidates: a linear baseline, XGBoost and LightGBM.
    pub fn defaults() -> Vec<CandidateSpec> {
        vec![
            CandidateSpec::Linear { l2: 1.0 },
            CandidateSpec::Xgboost(XgbParams::default()),
            CandidateSpec::Lightgbm(LgbmParams::default()),
        ]
    }

    /// Trains this candidate.
    pub fn fit(
        &self,
        task: Task,
        train: Labelled<'_>,
        valid: Labelled<'_>,
        seed: u64,
    ) -> Result<Box<dyn Model>, TrainError> {
        Ok(match (self, task) {
            (CandidateSpec::Linear { l2 }, Task::Regression) => {
                Box::new(LinearModel::fit_ridge(train, *l2)?)
            }
            (CandidateSpec::Linear { l2 }, Task::BinaryClassification) => {
                Box::new(LinearModel::fit_logistic(train, *l2)?)
            }
            (CandidateSpec::Xgboost(p), _) => {
                Box::new(XgbModel::train(task, p, train, valid, seed)?)
            }
            (CandidateSpec::Lightgbm(p), _) => {
                Box::new(LgbmModel::train(task, p, train, valid, seed)?)
            }
            (CandidateSpec::Mlp(p), _) => fit_mlp(task, p, train, Some(valid), seed)?,
        })
    }

    /// Checks the configuration before any training (the MLP needs the `torch` feature).
    pub fn validate(&self) -> Result<(), TrainError> {
        match self {
            CandidateSpec::Mlp(p) => {
                p.validate()?;
                if crate::mlp::AVAILABLE {
                    Ok(())
                } else {
                    Err(crate::mlp::unavailable())
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "torch")]
fn fit_mlp(
    task: Task,
    params: &MlpParams,
    train: Labelled<'_>,
    valid: Option<Labelled<'_>>,
    seed: u64,
) -> Result<Box<dyn Model>, TrainError> {
    Ok(Box::new(crate::mlp::MlpModel::train(
        task, params, train, valid, seed,
    )?))
}

#[cfg(not(feature = "torch"))]
fn fit_mlp(
    _task: Task,
    params: &MlpParams,
    _train: Labelled<'_>,
    _valid: Option<Labelled<'_>>,
    _seed: u64,
) -> Result<Box<dyn Model>, TrainError> {
    params.validate()?;
    Err(crate::mlp::unavailable())
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed of the split, the folds and the learners.
    pub seed: u64,
    /// Share of rows held out for the final test report.
    pub test_fraction: f64,
    /// Share of the training split carved out for early stopping and selection.
    pub validation_fraction: f64,
    /// k-fold cross-validation on the training split (selection by CV mean), if set.
    pub cv_folds: Option<usize>,
    /// Candidates to try (with search: the families to search, starting from these parameters).
    pub candidates: Vec<CandidateSpec>,
    /// Hyper-parameter search within a budget, scored by k-fold CV (replaces `cv_folds`).
    pub search: Option<SearchConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            test_fraction: 0.2,
            validation_fraction: 0.1,
            cv_folds: None,
            candidates: CandidateSpec::defaults(),
            search: None,
        }
    }
}

/// One trained candidate.
pub struct CandidateResult {
    /// Display name, e.g. `xgboost`.
    pub name: String,
    /// Configuration.
    pub spec: CandidateSpec,
    /// Model family.
    pub kind: ModelKind,
    /// Parameters as logged (plus the best iteration for trees).
    pub params: Params,
    /// Metrics on the validation set.
    pub validation_metrics: std::collections::BTreeMap<String, f64>,
    /// Primary metric of each CV fold (empty without CV).
    pub cv_scores: Vec<f64>,
    /// Wall time of the final fit.
    pub train_seconds: f64,
    /// The pipeline this candidate was trained with.
    pub pipeline: FeaturePipeline,
    /// The model: fitted on the training split minus the validation carve-out, or, for a
    /// searched configuration, refit on the whole training split for the early-stopped number
    /// of rounds scaled by 1 / (1 − validation fraction).
    pub model: Box<dyn Model>,
}

impl CandidateResult {
    /// The score selection uses: CV mean if CV ran, else the validation metric.
    pub fn selection_score(&self, metric: Metric) -> f64 {
        if self.cv_scores.is_empty() {
            self.validation_metrics[metric.name()]
        } else {
            self.cv_scores.iter().sum::<f64>() / self.cv_scores.len() as f64
        }
    }
}

/// Everything training produced.
pub struct TrainingOutcome {
    /// Task.
    pub task: Task,
    /// The metric selection used.
    pub primary: Metric,
    /// All candidates, in configuration order.
    pub candidates: Vec<CandidateResult>,
    /// Index of the selected candidate.
    pub best: usize,
    /// Test metrics of the selected candidate.
    pub test_metrics: std::collections::BTreeMap<String, f64>,
    /// Test labels and the selected candidate's predictions.
    pub test_labels: Vec<f64>,
    /// Predictions on the test split.
    pub test_predictions: Vec<f64>,
    /// The test split's raw rows (for parity checks and reports).
    pub test_data: Dataset,
    /// Test features as the selected model saw them.
    pub test_features: FeatureMatrix,
    /// Rows in the training split (including the validation carve-out).
    pub train_rows: usize,
    /// The search, if one ran.
    pub search: Option<SearchOutcome>,
    /// The selected candidate against the runner-up on the same CV folds (selected − runner-up),
    /// when both have CV scores.
    pub selection_test: Option<SelectionTest>,
}

/// How sure the selection is: the selected candidate against the runner-up, fold by fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionTest {
    /// The runner-up's name.
    pub runner_up: String,
    /// Corrected resampled paired t-test of selected − runner-up.
    pub test: PairedTest,
}

impl TrainingOutcome {
    /// The selected candidate.
    pub fn best(&self) -> &CandidateResult {
        &self.candidates[self.best]
    }
}

/// Progress events, for progress bars and logs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A candidate starts (index, total, name).
    CandidateStarted(usize, usize, String),
    /// A CV fold finished (candidate name, fold, score).
    FoldFinished(String, usize, f64),
    /// A candidate finished (name, validation score, seconds).
    CandidateFinished(String, f64, f64),
    /// The search reported something.
    Search(SearchEvent),
}

fn labelled<'a>(x: &'a FeatureMatrix, y: &'a [f64]) -> Labelled<'a> {
    Labelled { x, y }
}

/// A candidate fitted once: its pipeline, its model and its validation predictions.
pub(crate) struct FittedCandidate {
    pub(crate) pipeline: FeaturePipeline,
    pub(crate) model: Box<dyn Model>,
    pub(crate) valid_labels: Vec<f64>,
    pub(crate) valid_predictions: Vec<f64>,
}

/// Fits the pipeline on `data`, carves a validation set out of it and trains one candidate.
pub(crate) fn fit_once(
    schema: &Schema,
    spec: &CandidateSpec,
    data: &Dataset,
    validation_fraction: f64,
    seed: u64,
) -> Result<FittedCandidate, TrainError> {
    let pipeline = FeaturePipeline::fit(schema, data, spec.pipeline_options());
    let carve = train_test_split(data.len(), validation_fraction, seed ^ 0x5eed);
    let (fit_part, valid_part) = (data.subset(&carve.train), data.subset(&carve.test));
    let (x_fit, _) = pipeline.transform(&fit_part);
    let (x_valid, _) = pipeline.transform(&valid_part);
    let model = spec.fit(
        schema.task,
        labelled(&x_fit, &fit_part.labels),
        labelled(&x_valid, &valid_part.labels),
        seed,
    )?;
    let valid_predictions = model.predict(&x_valid)?;
    Ok(FittedCandidate {
        pipeline,
        model,
        valid_labels: valid_part.labels,
        valid_predictions,
    })
}

/// Trains every candidate and selects the best; a search runs here.
pub fn train_and_select(
    schema: &Schema,
    data: &Dataset,
    config: &TrainConfig,
    progress: impl FnMut(Progress),
) -> Result<TrainingOutcome, TrainError> {
    train_and_select_with(schema, data, config, &mut Here, progress)
}

/// The held-out split: checks the candidates and the data, then cuts the training and test rows.
fn split(data: &Dataset, config: &TrainConfig) -> Result<(Dataset, Dataset), TrainError> {
    if config.candidates.is_empty() {
        return Err(TrainError::Config("no candidates to train".into()));
    }
    for candidate in &config.candidates {
        candidate.validate()?;
    }
    if data.labels.len() != data.len() {
        return Err(TrainError::Config("the data set has no labels".into()));
    }
    let split = train_test_split(data.len(), config.test_fraction, config.seed);
    if split.train.len() < 10 || split.test.is_empty() {
        return Err(TrainError::Config(format!(
            "too few rows to train and test: {} training, {} test",
            split.train.len(),
            split.test.len()
        )));
    }
    Ok((data.subset(&split.train), data.subset(&split.test)))
}

/// The search of `config` on the training split, through `runner`: what a search worker that
/// does not go on to train the selected candidates runs.
pub fn search_training_split(
    schema: &Schema,
    data: &Dataset,
    config: &TrainConfig,
    runner: &mut dyn SearchRunner,
    on: &mut dyn FnMut(SearchEvent),
) -> Result<SearchOutcome, TrainError> {
    let search = config
        .search
        .as_ref()
        .ok_or_else(|| TrainError::Config("no search is configured".into()))?;
    let (train_data, _) = split(data, config)?;
    let problem = search_problem(schema, &train_data, config, search)?;
    runner.run(&problem, on)
}

fn search_problem<'a>(
    schema: &'a Schema,
    train_data: &Dataset,
    config: &TrainConfig,
    search: &SearchConfig,
) -> Result<SearchProblem<'a>, TrainError> {
    SearchProblem::new(
        schema,
        train_data,
        &config.candidates,
        search,
        (config.validation_fraction, config.seed),
        Metric::primary(schema.task),
    )
}

/// Trains every candidate and selects the best; a search runs through `runner`.
pub fn train_and_select_with(
    schema: &Schema,
    data: &Dataset,
    config: &TrainConfig,
    runner: &mut dyn SearchRunner,
    mut progress: impl FnMut(Progress),
) -> Result<TrainingOutcome, TrainError> {
    let task = schema.task;
    let primary = Metric::primary(task);
    let (train_data, test_data) = split(data, config)?;

    // With a search, each family's best complete trial is its candidate, with its CV scores.
    let (specs, searched): (Vec<SearchedSpec>, _) = match &config.search {
        Some(search_config) => {
            let problem = search_problem(schema, &train_data, config, search_config)?;
            let outcome = runner.run(&problem, &mut |event| progress(Progress::Search(event)))?;
            let specs = (0..config.candidates.len())
                .filter_map(|family| outcome.best_of_family(family, primary))
                .map(|t| (t.spec.clone(), Some(t.fold_scores.clone())))
                .collect();
            (specs, Some(outcome))
        }
        None => (
            config
                .candidates
                .iter()
                .map(|c| (c.clone(), None))
                .collect(),
            None,
        ),
    };

    let mut candidates = Vec::new();
    let total = specs.len();
    for (i, (spec, searched_scores)) in specs.iter().enumerate() {
        let name = spec.model_kind(task).name().to_string();
        progress(Progress::CandidateStarted(i, total, name.clone()));
        let mut cv_scores = searched_scores.clone().unwrap_or_default();
        if let Some(k) = config.cv_folds.filter(|_| searched_scores.is_none()) {
            for (f, fold) in k_fold(train_data.len(), k, config.seed).iter().enumerate() {
                let fold_train = train_data.subset(&fold.train);
                let fold_test = train_data.subset(&fold.test);
                let fitted = fit_once(
                    schema,
                    spec,
                    &fold_train,
                    config.validation_fraction,
                    config.seed,
                )?;
                let (x, _) = fitted.pipeline.transform(&fold_test);
                let score = primary.compute(&fold_test.labels, &fitted.model.predict(&x)?);
                progress(Progress::FoldFinished(name.clone(), f, score));
                cv_scores.push(score);
            }
        }
        let started = Instant::now();
        let FittedCandidate {
            pipeline,
            model,
            valid_labels,
            valid_predictions,
        } = fit_once(
            schema,
            spec,
            &train_data,
            config.validation_fraction,
            config.seed,
        )?;
        let validation_metrics = evaluate(task, &valid_labels, &valid_predictions);
        let mut params = spec.params(task);
        if let Some(best) = model.best_iteration() {
            params.insert("best_iteration".into(), best.into());
        }
        // A searched configuration was chosen by CV, so the carve-out served only to find the
        // number of rounds: refit on the whole training split, with the rounds scaled to its size.
        let model = match (searched_scores, model.best_iteration()) {
            (Some(_), Some(rounds)) => {
                let rounds = (rounds as f64 / (1.0 - config.validation_fraction)).ceil() as usize;
                let (x, _) = pipeline.transform(&train_data);
                params.insert("refit_rounds".into(), rounds.into());
                spec.with_rounds(rounds).fit_all(
                    task,
                    labelled(&x, &train_data.labels),
                    config.seed,
                )?
            }
            _ => model,
        };
        let train_seconds = started.elapsed().as_secs_f64();
        progress(Progress::CandidateFinished(
            name.clone(),
            validation_metrics[primary.name()],
            train_seconds,
        ));
        candidates.push(CandidateResult {
            name,
            kind: spec.model_kind(task),
            spec: spec.clone(),
            params,
            validation_metrics,
            cv_scores,
            train_seconds,
            pipeline,
            model,
        });
    }
    let mut best = 0;
    for (i, c) in candidates.iter().enumerate() {
        if primary.better(
            c.selection_score(primary),
            candidates[best].selection_score(primary),
        ) {
            best = i;
        }
    }
    let selection_test = runner_up(&candidates, best, primary).and_then(|r| {
        corrected_paired_t_test(&candidates[best].cv_scores, &candidates[r].cv_scores).map(|test| {
            SelectionTest {
                runner_up: candidates[r].name.clone(),
                test,
            }
        })
    });
    let (test_features, _) = candidates[best].pipeline.transform(&test_data);
    let test_predictions = candidates[best].model.predict(&test_features)?;
    let test_metrics = evaluate(task, &test_data.labels, &test_predictions);
    Ok(TrainingOutcome {
        task,
        primary,
        best,
        test_metrics,
        test_labels: test_data.labels.clone(),
        test_predictions,
        test_features,
        test_data,
        train_rows: train_data.len(),
        candidates,
        search: searched,
        selection_test,
    })
}

/// A configuration to fit, with its CV fold scores when a search found it.
type SearchedSpec = (CandidateSpec, Option<Vec<f64>>);

/// The best candidate other than `best`, by selection score.
fn runner_up(candidates: &[CandidateResult], best: usize, primary: Metric) -> Option<usize> {
    (0..candidates.len()).filter(|&i| i != best).reduce(|a, b| {
        if primary.better(
            candidates[b].selection_score(primary),
            candidates[a].selection_score(primary),
        ) {
            b
        } else {
            a
        }
    })
}
