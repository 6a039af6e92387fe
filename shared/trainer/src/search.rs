//! Budgeted hyper-parameter search: seeded random sampling with successive halving over the
//! folds of k-fold cross-validation.
//!
//! Each family (linear, XGBoost, LightGBM) first scores its configured parameters on every fold
//! (trial 0 of the family, so the search never ends worse than the defaults). Then, until the
//! budget (trials and/or wall time) is spent, brackets run in turn for each family: a bracket
//! samples `bracket_size` configurations, scores them on the first fold, keeps the best
//! `1/eta`, scores those on more folds, and so on until the survivors have a score on every
//! fold. Only trials scored on every fold compete for selection, and all of them on the same
//! folds, so their scores are paired.

use std::time::Instant;

use mlops_domain::data::Dataset;
use mlops_domain::metrics::Metric;
use mlops_domain::schema::Schema;
use mlops_domain::split::{Split, k_fold};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::mlp::MlpActivation;
use crate::select::{CandidateSpec, fit_once};

/// How much searching to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Stop sampling after this many trials (all families together), if set.
    #[serde(default)]
    pub max_trials: Option<usize>,
    /// Stop starting fold fits after this many seconds, if set.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// Folds of the cross-validation every finished trial is scored on.
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// Configurations sampled per bracket.
    #[serde(default = "default_bracket_size")]
    pub bracket_size: usize,
    /// Reduction factor: each rung keeps the best `1/eta` of the trials.
    #[serde(default = "default_eta")]
    pub eta: usize,
}

fn default_folds() -> usize {
    5
}
fn default_bracket_size() -> usize {
    9
}
fn default_eta() -> usize {
    3
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            max_trials: None,
            max_seconds: Some(600.0),
            folds: default_folds(),
            bracket_size: default_bracket_size(),
            eta: default_eta(),
        }
    }
}

impl SearchConfig {
    /// Checks the numbers; the message names the bad field.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.max_trials.is_none() && self.max_seconds.is_none() {
            return Err(TrainError::Config(
                "search: set max_trials, max_seconds or both".into(),
            ));
        }
        if let Some(s) = self.max_seconds
            && !(s.is_finite() && s > 0.0)
        {
            return Err(TrainError::Config(format!(
                "search.max_seconds must be a positive number, got {s}"
            )));
        }
        if self.max_trials == Some(0) {
            return Err(TrainError::Config(
                "search.max_trials must be at least 1".into(),
            ));
        }
        if !(2..=20).contains(&self.folds) {
            return Err(TrainError::Config(format!(
                "search.folds must be between 2 and 20, got {}",
                self.folds
            )));
        }
        if !(1..=256).contains(&self.bracket_size) {
            return Err(TrainError::Config(format!(
                "search.bracket_size must be between 1 and 256, got {}",
                self.bracket_size
            )));
        }
        if !(2..=10).contains(&self.eta) {
            return Err(TrainError::Config(format!(
                "search.eta must be between 2 and 10, got {}",
                self.eta
            )));
        }
        Ok(())
    }

    /// Folds scored at each rung: 1, eta, eta², … then every fold.
    fn rungs(&self) -> Vec<usize> {
        let mut rungs = Vec::new();
        let mut n = 1;
        while n < self.folds {
            rungs.push(n);
            n *= self.eta;
        }
        rungs.push(self.folds);
        rungs
    }
}

/// Where a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialStatus {
    /// Scored on every fold.
    Complete,
    /// Stopped by successive halving after scoring this many folds.
    Pruned,
    /// Stopped because the budget ran out.
    OutOfBudget,
}

impl TrialStatus {
    /// Lower-case name, as logged.
    pub fn name(self) -> &'static str {
        match self {
            TrialStatus::Complete => "complete",
            TrialStatus::Pruned => "pruned",
            TrialStatus::OutOfBudget => "out_of_budget",
        }
    }
}

/// One configuration tried.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Sequence number over the whole search (0-based).
    pub id: usize,
    /// Family index (position in the configured candidates).
    pub family: usize,
    /// Bracket number within the family (0 holds the configured parameters).
    pub bracket: usize,
    /// The configuration.
    pub spec: CandidateSpec,
    /// Primary metric on folds 0, 1, … as far as the trial got.
    pub fold_scores: Vec<f64>,
    /// How it ended.
    pub status: TrialStatus,
    /// Seconds spent fitting it.
    pub seconds: f64,
}

impl Trial {
    /// Mean of the fold scores so far.
    pub fn mean_score(&self) -> f64 {
        self.fold_scores.iter().sum::<f64>() / self.fold_scores.len().max(1) as f64
    }
}

/// What the search observed, reported as it happens.
#[derive(Debug, Clone)]
pub enum SearchEvent {
    /// A trial ended (complete, pruned or out of budget); `best` is the best complete mean so
    /// far over every family.
    TrialEnded {
        /// The trial.
        trial: Trial,
        /// Best complete mean score so far, if any.
        best: Option<f64>,
        /// Seconds since the search started.
        elapsed: f64,
    },
}

/// Everything the search tried, in order of ending.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Wall time of the search.
    pub seconds: f64,
    /// Whether the time budget cut it short (rather than the trial budget).
    pub out_of_time: bool,
}

impl SearchOutcome {
    /// The best complete trial of `family`, by mean fold score.
    pub fn best_of_family(&self, family: usize, metric: Metric) -> Option<&Trial> {
        self.trials
            .iter()
            .filter(|t| t.family == family && t.status == TrialStatus::Complete)
            .fold(None, |best: Option<&Trial>, t| match best {
                Some(b) if !metric.better(t.mean_score(), b.mean_score()) => Some(b),
                _ => Some(t),
            })
    }
}

/// The folds of the training split, their data sets built once.
struct Folds {
    parts: Vec<(Dataset, Dataset)>,
}

impl Folds {
    fn new(data: &Dataset, k: usize, seed: u64) -> Self {
        let parts = k_fold(data.len(), k, seed)
            .into_iter()
            .map(|Split { train, test }| (data.subset(&train), data.subset(&test)))
            .collect();
        Self { parts }
    }
}

/// Budget bookkeeping.
struct Budget {
    started: Instant,
    max_seconds: Option<f64>,
    max_trials: Option<usize>,
    sampled: usize,
    out_of_time: bool,
}

impl Budget {
    fn time_left(&mut self) -> bool {
        let ok = self
            .max_seconds
            .is_none_or(|s| self.started.elapsed().as_secs_f64() < s);
        if !ok {
            self.out_of_time = true;
        }
        ok
    }

    fn trials_left(&self) -> usize {
        self.max_trials
            .map_or(usize::MAX, |m| m.saturating_sub(self.sampled))
    }
}

/// The shared state of one search.
struct Searcher<'a> {
    schema: &'a Schema,
    folds: Folds,
    validation_fraction: f64,
    seed: u64,
    metric: Metric,
    budget: Budget,
    trials: Vec<Trial>,
    best: Option<f64>,
}

impl Searcher<'_> {
    /// Scores `trial` on folds until it has `upto` scores; false if the budget ran out first.
    fn extend(&mut self, trial: &mut Trial, upto: usize) -> Result<bool, TrainError> {
        while trial.fold_scores.len() < upto {
            if !self.budget.time_left() {
                return Ok(false);
            }
            let started = Instant::now();
            let (fold_train, fold_test) = &self.folds.parts[trial.fold_scores.len()];
            let fitted = fit_once(
                self.schema,
                &trial.spec,
                fold_train,
                self.validation_fraction,
                self.seed,
            )?;
            let (x, _) = fitted.pipeline.transform(fold_test);
            let predictions = fitted.model.predict(&x)?;
            trial
                .fold_scores
                .push(self.metric.compute(&fold_test.labels, &predictions));
            trial.seconds += started.elapsed().as_secs_f64();
        }
        Ok(true)
    }

    fn end(&mut self, mut trial: Trial, status: TrialStatus, on: &mut impl FnMut(SearchEvent)) {
        trial.status = status;
        if status == TrialStatus::Complete {
            let score = trial.mean_score();
            if self.best.is_none_or(|b| self.metric.better(score, b)) {
                self.best = Some(score);
            }
        }
        on(SearchEvent::TrialEnded {
            trial: trial.clone(),
            best: self.best,
            elapsed: self.budget.started.elapsed().as_secs_f64(),
        });
        self.trials.push(trial);
    }

    /// Runs one successive-halving bracket over `specs`; false once the budget is spent.
    fn bracket(
        &mut self,
        family: usize,
        bracket: usize,
        specs: Vec<CandidateSpec>,
        rungs: &[usize],
        eta: usize,
        on: &mut impl FnMut(SearchEvent),
    ) -> Result<bool, TrainError> {
        let mut alive: Vec<Trial> = specs
            .into_iter()
            .map(|spec| {
                self.budget.sampled += 1;
                Trial {
                    id: 0,
                    family,
                    bracket,
                    spec,
                    fold_scores: Vec::new(),
                    status: TrialStatus::Complete,
                    seconds: 0.0,
                }
            })
            .collect();
        for (r, &folds) in rungs.iter().enumerate() {
            let mut scored = Vec::with_capacity(alive.len());
            let mut budget_left = true;
            for mut trial in alive.drain(..) {
                if budget_left && !self.extend(&mut trial, folds)? {
                    budget_left = false;
                }
                if budget_left {
                    scored.push(trial);
                } else {
                    trial.id = self.next_id();
                    self.end(trial, TrialStatus::OutOfBudget, on);
                }
            }
            if !budget_left {
                for mut trial in scored {
                    trial.id = self.next_id();
                    self.end(trial, TrialStatus::OutOfBudget, on);
                }
                return Ok(false);
            }
            let last = r + 1 == rungs.len();
            if last {
                for mut trial in scored {
                    trial.id = self.next_id();
                    self.end(trial, TrialStatus::Complete, on);
                }
                break;
            }
            // Keep the best 1/eta (at least one), by mean over the same folds.
            let metric = self.metric;
            scored.sort_by(|a, b| {
                let (x, y) = (a.mean_score(), b.mean_score());
                if metric.better(x, y) {
                    std::cmp::Ordering::Less
                } else if metric.better(y, x) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            let keep = (scored.len() / eta).max(1);
            for mut trial in scored.split_off(keep) {
                trial.id = self.next_id();
                self.end(trial, TrialStatus::Pruned, on);
            }
            alive = scored;
        }
        Ok(true)
    }

    fn next_id(&self) -> usize {
        self.trials.len()
    }
}

/// Searches every family in `families` (each a configured candidate) on `train_data` within the
/// budget; `on` sees every trial as it ends.
#[allow(clippy::too_many_arguments)]
pub fn search(
    schema: &Schema,
    train_data: &Dataset,
    families: &[CandidateSpec],
    config: &SearchConfig,
    validation_fraction: f64,
    seed: u64,
    metric: Metric,
    mut on: impl FnMut(SearchEvent),
) -> Result<SearchOutcome, TrainError> {
    config.validate()?;
    if train_data.len() < config.folds * 2 {
        return Err(TrainError::Config(format!(
            "search: {} training rows are too few for {} folds",
            train_data.len(),
            config.folds
        )));
    }
    let rungs = config.rungs();
    let mut searcher = Searcher {
        schema,
        folds: Folds::new(train_data, config.folds, seed),
        validation_fraction,
        seed,
        metric,
        budget: Budget {
            started: Instant::now(),
            max_seconds: config.max_seconds,
            max_trials: config.max_trials,
            sampled: 0,
            out_of_time: false,
        },
        trials: Vec::new(),
        best: None,
    };
    // Bracket 0 of each family: the configured parameters on every fold, whatever the budget
    // says, so that every family has a complete trial.
    let budget_seconds = searcher.budget.max_seconds.take();
    for (family, spec) in families.iter().enumerate() {
        searcher.bracket(
            family,
            0,
            vec![spec.clone()],
            &[config.folds],
            config.eta,
            &mut on,
        )?;
    }
    searcher.budget.max_seconds = budget_seconds;

    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ea7c4);
    let mut bracket = 1;
    'search: loop {
        for (family, base) in families.iter().enumerate() {
            let n = config.bracket_size.min(searcher.budget.trials_left());
            if n == 0 || !searcher.budget.time_left() {
                break 'search;
            }
            let specs = (0..n).map(|_| sample(base, &mut rng)).collect();
            if !searcher.bracket(family, bracket, specs, &rungs, config.eta, &mut on)? {
                break 'search;
            }
        }
        bracket += 1;
    }
    Ok(SearchOutcome {
        seconds: searcher.budget.started.elapsed().as_secs_f64(),
        out_of_time: searcher.budget.out_of_time,
        trials: searcher.trials,
    })
}

fn log_uniform(rng: &mut impl Rng, low: f64, high: f64) -> f64 {
    (rng.gen_range(low.ln()..high.ln())).exp()
}

/// Rounds to 4 significant digits so that logged parameters stay readable.
fn round4(v: f64) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(3 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// A random configuration of `base`'s family (device, threads and round limits kept).
pub fn sample(base: &CandidateSpec, rng: &mut impl Rng) -> CandidateSpec {
    match base {
        CandidateSpec::Linear { .. } => CandidateSpec::Linear {
            l2: round4(log_uniform(rng, 1e-4, 1e3)),
        },
        CandidateSpec::Xgboost(p) => {
            let mut p = p.clone();
            p.eta = round4(log_uniform(rng, 0.01, 0.3));
            p.max_depth = rng.gen_range(3..=12);
            p.min_child_weight = round4(log_uniform(rng, 0.5, 30.0));
            p.subsample = round4(rng.gen_range(0.5..1.0));
            p.colsample_bytree = round4(rng.gen_range(0.4..1.0));
            p.lambda = round4(log_uniform(rng, 0.01, 30.0));
            p.alpha = if rng.gen_bool(0.5) {
                0.0
            } else {
                round4(log_uniform(rng, 1e-3, 5.0))
            };
            CandidateSpec::Xgboost(p)
        }
        CandidateSpec::Lightgbm(p) => {
            let mut p = p.clone();
            p.learning_rate = round4(log_uniform(rng, 0.01, 0.2));
            p.num_leaves = log_uniform(rng, 8.0, 256.0).round() as u32;
            p.min_data_in_leaf = log_uniform(rng, 3.0, 100.0).round() as u32;
            p.feature_fraction = round4(rng.gen_range(0.4..1.0));
            p.bagging_fraction = round4(rng.gen_range(0.5..1.0));
            p.bagging_freq = [0, 1, 5][rng.gen_range(0..3)];
            p.lambda_l2 = round4(log_uniform(rng, 1e-3, 30.0));
            CandidateSpec::Lightgbm(p)
        }
        CandidateSpec::Mlp(p) => {
            let mut p = p.clone();
            let depth = rng.gen_range(1..=3);
            let first = [64, 128, 256, 512][rng.gen_range(0..4)];
            // Funnel-shaped: each layer at most as wide as the one before.
            p.hidden = (0..depth).map(|i| (first >> i).max(16)).collect();
            p.activation = if rng.gen_bool(0.5) {
                MlpActivation::Relu
            } else {
                MlpActivation::Gelu
            };
            p.learning_rate = round4(log_uniform(rng, 3e-4, 1e-2));
            p.weight_decay = round4(log_uniform(rng, 1e-6, 1e-2));
            p.batch_size = [128, 256, 512][rng.gen_range(0..3)];
            p.dropout = if rng.gen_bool(0.5) {
                0.0
            } else {
                round4(rng.gen_range(0.02..0.2))
            };
            CandidateSpec::Mlp(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lightgbm::LgbmParams;
    use crate::xgboost::XgbParams;

    #[test]
    fn rungs_grow_by_eta_up_to_every_fold() {
        let c = |folds, eta| SearchConfig {
            folds,
            eta,
            ..SearchConfig::default()
        };
        assert_eq!(c(5, 3).rungs(), vec![1, 3, 5]);
        assert_eq!(c(10, 3).rungs(), vec![1, 3, 9, 10]);
        assert_eq!(c(2, 2).rungs(), vec![1, 2]);
        assert_eq!(c(4, 2).rungs(), vec![1, 2, 4]);
    }

    #[test]
    fn bad_budgets_name_the_field() {
        let bad = [
            (
                SearchConfig {
                    max_trials: None,
                    max_seconds: None,
                    ..SearchConfig::default()
                },
                "max_trials, max_seconds",
            ),
            (
                SearchConfig {
                    max_seconds: Some(-1.0),
                    ..SearchConfig::default()
                },
                "search.max_seconds",
            ),
            (
                SearchConfig {
                    max_trials: Some(0),
                    ..SearchConfig::default()
                },
                "search.max_trials",
            ),
            (
                SearchConfig {
                    folds: 1,
                    ..SearchConfig::default()
                },
                "search.folds",
            ),
            (
                SearchConfig {
                    eta: 1,
                    ..SearchConfig::default()
                },
                "search.eta",
            ),
        ];
        for (config, field) in bad {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        SearchConfig::default().validate().unwrap();
    }

    #[test]
    fn samples_stay_in_range_and_keep_device_and_limits() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let xgb = CandidateSpec::Xgboost(XgbParams {
            device: "cuda".into(),
            max_rounds: 123,
            ..XgbParams::default()
        });
        let lgbm = CandidateSpec::Lightgbm(LgbmParams::default());
        for _ in 0..500 {
            match sample(&xgb, &mut rng) {
                CandidateSpec::Xgboost(p) => {
                    assert!((0.01..=0.3).contains(&p.eta), "{p:?}");
                    assert!((3..=12).contains(&p.max_depth));
                    assert!((0.5..=1.0).contains(&p.subsample));
                    assert_eq!((p.device.as_str(), p.max_rounds), ("cuda", 123));
                }
                other => panic!("family changed: {other:?}"),
            }
            match sample(&lgbm, &mut rng) {
                CandidateSpec::Lightgbm(p) => {
                    assert!((8..=256).contains(&p.num_leaves), "{p:?}");
                    assert!((3..=100).contains(&p.min_data_in_leaf));
                    assert!((0.01..=0.2).contains(&p.learning_rate));
                }
                other => panic!("family changed: {other:?}"),
            }
        }
    }

    #[test]
    fn round4_keeps_four_significant_digits() {
        assert_eq!(round4(0.0123456), 0.01235);
        assert_eq!(round4(123.456), 123.5);
        assert_eq!(round4(0.0), 0.0);
    }
}
