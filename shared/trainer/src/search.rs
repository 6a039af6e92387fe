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

use std::collections::{BTreeMap, BTreeSet};
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
    /// Place among the configurations its bracket sampled.
    pub slot: usize,
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

/// One fold fit of one trial: the unit of work a search can spread over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FoldUnit {
    /// Family index.
    pub family: usize,
    /// Bracket within the family.
    pub bracket: usize,
    /// The trial's place among its bracket's samples.
    pub slot: usize,
    /// Fold.
    pub fold: usize,
}

impl FoldUnit {
    /// Its name, usable as a file or store key: `f0-b00001-t003-k02`.
    pub fn name(&self) -> String {
        format!(
            "f{}-b{:05}-t{:03}-k{:02}",
            self.family, self.bracket, self.slot, self.fold
        )
    }

    /// Reads a [`FoldUnit::name`] back.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('-');
        let mut field = |prefix: char| parts.next()?.strip_prefix(prefix)?.parse::<usize>().ok();
        let unit = Self {
            family: field('f')?,
            bracket: field('b')?,
            slot: field('t')?,
            fold: field('k')?,
        };
        (parts.next().is_none() && unit.name() == name).then_some(unit)
    }
}

/// What one fold fit scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldScore {
    /// Primary metric on the fold's held-out rows.
    pub score: f64,
    /// Seconds the fit and its scoring took.
    pub seconds: f64,
    /// Seconds from the start of the search to the end of the fit.
    pub finished: f64,
}

/// A fold fit the search waits for, with the configuration to fit.
#[derive(Debug, Clone)]
pub struct PendingFit {
    /// Which fit.
    pub unit: FoldUnit,
    /// The trial's configuration.
    pub spec: CandidateSpec,
}

/// What the workers of a shared search know, as one of them read it from where they meet.
#[derive(Debug, Clone, Default)]
pub struct SharedProgress {
    /// Every fold fit scored so far.
    pub scores: BTreeMap<FoldUnit, FoldScore>,
    /// Fits a live worker has claimed and not yet scored.
    pub claimed: BTreeSet<FoldUnit>,
    /// Whether the time budget has run out: no new fit starts then, but for the configured
    /// parameters (bracket 0) and fits already claimed.
    pub out_of_time: bool,
}

/// Where a shared search stands.
#[derive(Debug)]
pub enum Step {
    /// These fits, earliest first, must be scored before the search can end; those not in
    /// [`SharedProgress::claimed`] are free to take. The list ends with the first bracket that
    /// has a free one, so it is short even with no trial budget.
    Wait(Vec<PendingFit>),
    /// Every fit the search needs is scored: its outcome, as one container would have found it.
    Done(SearchOutcome),
}

/// One search: the folds of the training split, the families and the budget. [`run`] searches
/// here, one fit after another; [`step`] and [`fit`] let workers share one search, each fitting
/// what [`step`] says is waiting, and end with the outcome [`run`] would have had.
///
/// [`run`]: SearchProblem::run
/// [`step`]: SearchProblem::step
/// [`fit`]: SearchProblem::fit
pub struct SearchProblem<'a> {
    schema: &'a Schema,
    folds: Folds,
    families: Vec<CandidateSpec>,
    config: SearchConfig,
    validation_fraction: f64,
    seed: u64,
    metric: Metric,
}

impl<'a> SearchProblem<'a> {
    /// Checks the budget and cuts `train_data` into the folds.
    pub fn new(
        schema: &'a Schema,
        train_data: &Dataset,
        families: &[CandidateSpec],
        config: &SearchConfig,
        (validation_fraction, seed): (f64, u64),
        metric: Metric,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if train_data.len() < config.folds * 2 {
            return Err(TrainError::Config(format!(
                "search: {} training rows are too few for {} folds",
                train_data.len(),
                config.folds
            )));
        }
        Ok(Self {
            schema,
            folds: Folds::new(train_data, config.folds, seed),
            families: families.to_vec(),
            config: config.clone(),
            validation_fraction,
            seed,
            metric,
        })
    }

    /// The budget.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// Searches here, fitting one fold after another until the budget is spent.
    pub fn run(&self, on: &mut dyn FnMut(SearchEvent)) -> Result<SearchOutcome, TrainError> {
        let here = FitHere {
            problem: self,
            started: Instant::now(),
            max_seconds: self.config.max_seconds,
            out_of_time: false,
        };
        let mut searcher = Searcher::new(self, here);
        searcher.search(on)?;
        Ok(searcher.outcome())
    }

    /// Fits and scores one fold fit (`finished` left at 0: the caller knows when it started).
    pub fn fit(&self, pending: &PendingFit) -> Result<FoldScore, TrainError> {
        let started = Instant::now();
        let (fold_train, fold_test) = self.folds.parts.get(pending.unit.fold).ok_or_else(|| {
            TrainError::Config(format!(
                "search: fold {} of {} folds",
                pending.unit.fold,
                self.folds.parts.len()
            ))
        })?;
        let fitted = fit_once(
            self.schema,
            &pending.spec,
            fold_train,
            self.validation_fraction,
            self.seed,
        )?;
        let (x, _) = fitted.pipeline.transform(fold_test);
        let predictions = fitted.model.predict(&x)?;
        Ok(FoldScore {
            score: self.metric.compute(&fold_test.labels, &predictions),
            seconds: started.elapsed().as_secs_f64(),
            finished: 0.0,
        })
    }

    /// Replays the search over what the workers know: the fits still waiting, or the outcome
    /// once none is (`on` then sees every trial end, in order).
    pub fn step(
        &self,
        progress: &SharedProgress,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<Step, TrainError> {
        let known = FromWorkers {
            progress,
            waiting: Vec::new(),
            latest: 0.0,
            out_of_time: false,
        };
        let mut searcher = Searcher::new(self, known);
        let mut events = Vec::new();
        searcher.search(&mut |e| events.push(e))?;
        if !searcher.source.waiting.is_empty() {
            return Ok(Step::Wait(std::mem::take(&mut searcher.source.waiting)));
        }
        events.into_iter().for_each(on);
        Ok(Step::Done(searcher.outcome()))
    }
}

/// Where a search's fits run: [`Here`] fits them one after another in this process; a shared
/// search spreads them over workers that meet in a store (the training job's `--search-workers`).
pub trait SearchRunner {
    /// Runs `problem` to its outcome; `on` sees every trial end, in order.
    fn run(
        &mut self,
        problem: &SearchProblem<'_>,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<SearchOutcome, TrainError>;
}

/// Every fit here, one after another.
pub struct Here;

impl SearchRunner for Here {
    fn run(
        &mut self,
        problem: &SearchProblem<'_>,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<SearchOutcome, TrainError> {
        problem.run(on)
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

/// What became of a fold fit the search asked for.
enum Fit {
    Scored(FoldScore),
    /// Not scored yet (a shared search waits for it).
    Waiting,
    /// The budget stops it.
    OutOfBudget,
}

/// Where the search's scores come from: fits made here, or what workers stored.
trait ScoreSource {
    /// Whether bracket `bracket` of `family` may start (the time budget).
    fn may_start(&mut self, family: usize, bracket: usize) -> bool;
    /// The score of `unit`, a fit of `spec`.
    fn fit(&mut self, unit: FoldUnit, spec: &CandidateSpec) -> Result<Fit, TrainError>;
    /// Seconds since the search started, as far as this source knows.
    fn elapsed(&self) -> f64;
    /// Whether the time budget stopped anything.
    fn out_of_time(&self) -> bool;
    /// Whether enough waiting work is known to stop looking further.
    fn enough(&self) -> bool {
        false
    }
}

/// Fits made here, one after another, within the time budget.
struct FitHere<'p> {
    problem: &'p SearchProblem<'p>,
    started: Instant,
    max_seconds: Option<f64>,
    out_of_time: bool,
}

impl FitHere<'_> {
    fn time_left(&mut self) -> bool {
        let ok = self
            .max_seconds
            .is_none_or(|s| self.started.elapsed().as_secs_f64() < s);
        self.out_of_time |= !ok;
        ok
    }
}

impl ScoreSource for FitHere<'_> {
    fn may_start(&mut self, _family: usize, bracket: usize) -> bool {
        bracket == 0 || self.time_left()
    }

    fn fit(&mut self, unit: FoldUnit, spec: &CandidateSpec) -> Result<Fit, TrainError> {
        // The configured parameters are scored on every fold whatever the time budget says.
        if unit.bracket != 0 && !self.time_left() {
            return Ok(Fit::OutOfBudget);
        }
        let pending = PendingFit {
            unit,
            spec: spec.clone(),
        };
        let mut score = self.problem.fit(&pending)?;
        score.finished = self.elapsed();
        Ok(Fit::Scored(score))
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn out_of_time(&self) -> bool {
        self.out_of_time
    }
}

/// The scores workers stored; what is missing is waiting, or out of the budget.
struct FromWorkers<'k> {
    progress: &'k SharedProgress,
    waiting: Vec<PendingFit>,
    latest: f64,
    out_of_time: bool,
}

impl FromWorkers<'_> {
    fn known(&self, family: usize, bracket: usize) -> bool {
        let first = FoldUnit {
            family,
            bracket,
            slot: 0,
            fold: 0,
        };
        let in_bracket = |u: &&FoldUnit| u.family == family && u.bracket == bracket;
        self.progress
            .scores
            .range(first..)
            .next()
            .map(|(u, _)| u)
            .filter(in_bracket)
            .is_some()
            || self
                .progress
                .claimed
                .range(first..)
                .next()
                .filter(in_bracket)
                .is_some()
    }
}

impl ScoreSource for FromWorkers<'_> {
    fn may_start(&mut self, family: usize, bracket: usize) -> bool {
        let ok = bracket == 0 || !self.progress.out_of_time || self.known(family, bracket);
        self.out_of_time |= !ok;
        ok
    }

    fn fit(&mut self, unit: FoldUnit, spec: &CandidateSpec) -> Result<Fit, TrainError> {
        if let Some(score) = self.progress.scores.get(&unit) {
            self.latest = self.latest.max(score.finished);
            return Ok(Fit::Scored(*score));
        }
        if unit.bracket == 0 || !self.progress.out_of_time || self.progress.claimed.contains(&unit)
        {
            self.waiting.push(PendingFit {
                unit,
                spec: spec.clone(),
            });
            return Ok(Fit::Waiting);
        }
        self.out_of_time = true;
        Ok(Fit::OutOfBudget)
    }

    fn elapsed(&self) -> f64 {
        self.latest
    }

    fn out_of_time(&self) -> bool {
        self.out_of_time
    }

    fn enough(&self) -> bool {
        self.waiting
            .iter()
            .any(|p| !self.progress.claimed.contains(&p.unit))
    }
}

/// How a bracket (or a trial's rung) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Done as far as it goes.
    Scored,
    /// Some fit is not scored yet.
    Waiting,
    /// The budget ran out: the search ends.
    OutOfBudget,
}

/// The search's algorithm, over a source of scores.
struct Searcher<'p, S> {
    problem: &'p SearchProblem<'p>,
    source: S,
    sampled: usize,
    trials: Vec<Trial>,
    best: Option<f64>,
}

impl<'p, S: ScoreSource> Searcher<'p, S> {
    fn new(problem: &'p SearchProblem<'p>, source: S) -> Self {
        Self {
            problem,
            source,
            sampled: 0,
            trials: Vec::new(),
            best: None,
        }
    }

    fn outcome(self) -> SearchOutcome {
        SearchOutcome {
            seconds: self.source.elapsed(),
            out_of_time: self.source.out_of_time(),
            trials: self.trials,
        }
    }

    fn trials_left(&self) -> usize {
        self.problem
            .config
            .max_trials
            .map_or(usize::MAX, |m| m.saturating_sub(self.sampled))
    }

    /// Bracket 0 of each family (the configured parameters on every fold), then brackets of
    /// sampled configurations in turn for each family until the budget is spent.
    fn search(&mut self, on: &mut dyn FnMut(SearchEvent)) -> Result<(), TrainError> {
        let config = &self.problem.config;
        let (folds, bracket_size) = (config.folds, config.bracket_size);
        let rungs = config.rungs();
        for (family, spec) in self.problem.families.iter().enumerate() {
            self.bracket(family, 0, vec![spec.clone()], &[folds], on)?;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.problem.seed ^ 0x5ea7c4);
        let mut bracket = 1;
        'search: loop {
            for (family, base) in self.problem.families.iter().enumerate() {
                let n = bracket_size.min(self.trials_left());
                if self.source.enough() || n == 0 || !self.source.may_start(family, bracket) {
                    break 'search;
                }
                let specs = (0..n).map(|_| sample(base, &mut rng)).collect();
                if self.bracket(family, bracket, specs, &rungs, on)? == Ended::OutOfBudget {
                    break 'search;
                }
            }
            bracket += 1;
        }
        Ok(())
    }

    /// Scores `trial` on folds until it has `upto` scores.
    fn extend(&mut self, trial: &mut Trial, upto: usize) -> Result<Ended, TrainError> {
        let mut ended = Ended::Scored;
        for fold in trial.fold_scores.len()..upto {
            let unit = FoldUnit {
                family: trial.family,
                bracket: trial.bracket,
                slot: trial.slot,
                fold,
            };
            match self.source.fit(unit, &trial.spec)? {
                Fit::Scored(score) if ended == Ended::Scored => {
                    trial.fold_scores.push(score.score);
                    trial.seconds += score.seconds;
                }
                Fit::Scored(_) => {}
                Fit::Waiting => ended = Ended::Waiting,
                Fit::OutOfBudget => return Ok(Ended::OutOfBudget),
            }
        }
        Ok(ended)
    }

    fn end(&mut self, mut trial: Trial, status: TrialStatus, on: &mut dyn FnMut(SearchEvent)) {
        trial.id = self.trials.len();
        trial.status = status;
        if status == TrialStatus::Complete {
            let score = trial.mean_score();
            if self
                .best
                .is_none_or(|b| self.problem.metric.better(score, b))
            {
                self.best = Some(score);
            }
        }
        on(SearchEvent::TrialEnded {
            trial: trial.clone(),
            best: self.best,
            elapsed: self.source.elapsed(),
        });
        self.trials.push(trial);
    }

    /// Runs one successive-halving bracket over `specs`.
    fn bracket(
        &mut self,
        family: usize,
        bracket: usize,
        specs: Vec<CandidateSpec>,
        rungs: &[usize],
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<Ended, TrainError> {
        let mut alive: Vec<Trial> = specs
            .into_iter()
            .enumerate()
            .map(|(slot, spec)| Trial {
                id: 0,
                family,
                bracket,
                slot,
                spec,
                fold_scores: Vec::new(),
                status: TrialStatus::Complete,
                seconds: 0.0,
            })
            .collect();
        self.sampled += alive.len();
        for (r, &folds) in rungs.iter().enumerate() {
            let mut scored = Vec::with_capacity(alive.len());
            let mut ended = Ended::Scored;
            for mut trial in alive.drain(..) {
                if ended != Ended::OutOfBudget {
                    match self.extend(&mut trial, folds)? {
                        Ended::Waiting => ended = Ended::Waiting,
                        Ended::OutOfBudget => ended = Ended::OutOfBudget,
                        Ended::Scored => {}
                    }
                }
                if ended == Ended::OutOfBudget {
                    self.end(trial, TrialStatus::OutOfBudget, on);
                } else {
                    scored.push(trial);
                }
            }
            match ended {
                Ended::OutOfBudget => {
                    for trial in scored {
                        self.end(trial, TrialStatus::OutOfBudget, on);
                    }
                    return Ok(Ended::OutOfBudget);
                }
                // The rung's scores decide who goes on: wait for all of them.
                Ended::Waiting => return Ok(Ended::Waiting),
                Ended::Scored => {}
            }
            if r + 1 == rungs.len() {
                for trial in scored {
                    self.end(trial, TrialStatus::Complete, on);
                }
                break;
            }
            // Keep the best 1/eta (at least one), by mean over the same folds.
            let metric = self.problem.metric;
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
            let keep = (scored.len() / self.problem.config.eta).max(1);
            for trial in scored.split_off(keep) {
                self.end(trial, TrialStatus::Pruned, on);
            }
            alive = scored;
        }
        Ok(Ended::Scored)
    }
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
