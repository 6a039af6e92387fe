//! `mlops train --search-workers N`: one hyper-parameter search shared by N workers (the
//! children of an AWS Batch array job, or processes started by hand) that meet in the registry
//! store.
//!
//! Every worker replays the search over the scores stored so far ([`SearchProblem::step`]). What
//! the replay cannot get past is waiting: every fold fit of a rung before its survivors are chosen
//! (so each bracket's rungs are synchronized through the store), and the first rung of the
//! brackets after it. A worker claims the earliest waiting fit no live worker holds, makes it and
//! stores its score, until nothing is waiting:
//!
//! - `searches/ID/search.json`: what is searched and when it started (create-only, by the first
//!   worker); the time budget counts from there on every worker.
//! - `searches/ID/claims/FIT.json`: a worker's lease on a fit: create-only, renewed while it fits,
//!   taken over once unrenewed for the lease's length (a dead worker's fit is made by another) or
//!   at once by the same worker's retry.
//! - `searches/ID/scores/FIT.json`: the fit's score, create-only. A fit made twice after a
//!   takeover scores the same; the first write stands.
//!
//! Then the replay is the outcome a single container finds with the same seed and trial budget,
//! trial by trial (a time budget cuts where the clock says, so it may cut elsewhere). The ID is a
//! hash of the data, the training configuration and the code: a retried worker rejoins its
//! search and finds its scores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError};
use mlops_trainer::TrainError;
use mlops_trainer::search::{
    FoldScore, FoldUnit, PendingFit, SearchEvent, SearchOutcome, SearchProblem, SearchRunner,
    SharedProgress, Step,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::lease::{self, SeenLease};
use crate::write_once::write_once;

/// How long a claim on a fit lasts without a renewal.
pub(crate) const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// Where claims and scores live under a search's prefix.
const CLAIMS: &str = "claims/";
const SCORES: &str = "scores/";
/// How often a worker with nothing free to fit looks again.
const POLL: Duration = Duration::from_millis(500);

/// `searches/ID/search.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SearchRecord {
    /// The search's id.
    id: String,
    /// What it searches, for a reader.
    about: String,
    /// When the first worker started it: the time budget counts from here.
    started_at: DateTime<Utc>,
}

/// `searches/ID/scores/FIT.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ScoreRecord {
    /// The fit ([`FoldUnit::name`]).
    fit: String,
    /// The score's bits: exact, and defined for a NaN.
    score_bits: u64,
    /// The score, for a reader (absent when not finite).
    score: Option<f64>,
    /// Seconds the fit took.
    seconds: f64,
    /// Seconds from the search's start to the fit's end.
    finished: f64,
    /// Who made it.
    worker: String,
}

/// This worker's share of a search: an [`SearchRunner`] for the trainer.
pub(crate) struct SharedSearch {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    id: String,
    about: String,
    worker: String,
    lease: Duration,
    handle: Handle,
    /// Fits this worker made.
    pub made: usize,
}

impl SharedSearch {
    /// Worker `index` of `workers` in search `id` (under `searches/` in `store`); `about` says
    /// what is searched, for a reader of the store.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        id: &str,
        about: &str,
        (index, workers): (u32, u32),
        handle: Handle,
    ) -> Self {
        Self {
            store,
            prefix: format!("searches/{id}/"),
            id: id.to_string(),
            about: about.to_string(),
            worker: format!("worker {index} of {workers}"),
            lease: CLAIM_LEASE,
            handle,
            made: 0,
        }
    }

    /// Claims lapse after `lease` instead of [`CLAIM_LEASE`].
    pub(crate) fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Where the search's objects live.
    pub(crate) fn location(&self) -> String {
        self.store.uri(&self.prefix)
    }

    fn block<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T> {
        Ok(self.handle.block_on(op)?)
    }

    /// When the search started: the record this worker writes first, or the one another wrote.
    fn start(&self) -> Result<DateTime<Utc>> {
        let key = format!("{}search.json", self.prefix);
        let record = SearchRecord {
            id: self.id.clone(),
            about: self.about.clone(),
            started_at: Utc::now(),
        };
        let written = write_once(self.store.as_ref(), &key, record, "search record");
        Ok(self.handle.block_on(written)?.started_at)
    }

    /// The fits under `dir` ([`CLAIMS`] or [`SCORES`]) by their keys.
    fn listed(&self, dir: &str) -> Result<Vec<(FoldUnit, String)>> {
        let prefix = format!("{}{dir}", self.prefix);
        let keys = self.block(self.store.list(&prefix))?;
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let name = key.strip_prefix(&prefix)?.strip_suffix(".json")?;
                Some((FoldUnit::parse(name)?, key))
            })
            .collect())
    }

    /// Every claim, as read now.
    fn claims(&self) -> Result<BTreeMap<FoldUnit, SeenLease>> {
        let mut claims = BTreeMap::new();
        for (unit, key) in self.listed(CLAIMS)? {
            if let Some(object) = self.block(self.store.get(&key))? {
                claims.insert(unit, SeenLease::of(object));
            }
        }
        Ok(claims)
    }

    /// Reads the scores not in `scores` yet.
    fn read_scores(&self, scores: &mut BTreeMap<FoldUnit, FoldScore>) -> Result<()> {
        for (unit, key) in self.listed(SCORES)? {
            if scores.contains_key(&unit) {
                continue;
            }
            let Some(object) = self.block(self.store.get(&key))? else {
                continue;
            };
            let record: ScoreRecord = serde_json::from_slice(&object.bytes)
                .with_context(|| format!("{} is not a fit's score", self.store.uri(&key)))?;
            scores.insert(
                unit,
                FoldScore {
                    score: f64::from_bits(record.score_bits),
                    seconds: record.seconds,
                    finished: record.finished,
                },
            );
        }
        Ok(())
    }

    /// The key of `unit` under `dir` ([`CLAIMS`] or [`SCORES`]), as [`Self::listed`] reads it.
    fn key(&self, dir: &str, unit: FoldUnit) -> String {
        format!("{}{dir}{}.json", self.prefix, unit.name())
    }

    /// The search, shared: claim, fit and score what is waiting until nothing is.
    fn share(
        &mut self,
        problem: &SearchProblem<'_>,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<SearchOutcome> {
        let started = self.start()?;
        let deadline = problem
            .config()
            .max_seconds
            .map(|s| started + chrono::Duration::milliseconds((s * 1000.0) as i64));
        let mut progress = SharedProgress::default();
        loop {
            // Claims first: a fit whose claim is gone by now has its score stored.
            let claims = self.claims()?;
            self.read_scores(&mut progress.scores)?;
            progress.claimed = claims
                .iter()
                .filter(|(unit, seen)| {
                    !progress.scores.contains_key(unit)
                        && (seen.age < self.lease || seen.holder == self.worker)
                })
                .map(|(unit, _)| *unit)
                .collect();
            progress.out_of_time = deadline.is_some_and(|d| Utc::now() >= d);
            let waiting = match problem.step(&progress, on)? {
                Step::Done(outcome) => {
                    self.free_scored(&claims, &progress)?;
                    return Ok(outcome);
                }
                Step::Wait(waiting) => waiting,
            };
            let mut made = false;
            for fit in &waiting {
                // Writes nothing while another live worker holds the fit.
                let seen = claims.get(&fit.unit);
                let key = self.key(CLAIMS, fit.unit);
                let take = lease::take(self.store.as_ref(), &key, &self.worker, self.lease, seen);
                if let Some(claim) = self.block(take)? {
                    self.make(problem, fit, claim, started)?;
                    made = true;
                    break;
                }
            }
            if !made {
                std::thread::sleep(POLL.min(self.lease / 4));
            }
        }
    }

    /// Deletes the claims left on fits that are scored (their worker died before freeing them).
    fn free_scored(
        &self,
        claims: &BTreeMap<FoldUnit, SeenLease>,
        progress: &SharedProgress,
    ) -> Result<()> {
        for unit in claims.keys().filter(|u| progress.scores.contains_key(u)) {
            self.block(self.store.delete(&self.key(CLAIMS, *unit)))?;
        }
        Ok(())
    }

    /// Makes the claimed fit, renewing the claim meanwhile; stores its score; frees the claim.
    fn make(
        &mut self,
        problem: &SearchProblem<'_>,
        fit: &PendingFit,
        claim: ETag,
        started: DateTime<Utc>,
    ) -> Result<()> {
        let (claim_key, score_key) = (self.key(CLAIMS, fit.unit), self.key(SCORES, fit.unit));
        // Another worker may have scored it between the reads and the claim.
        if self.block(self.store.head(&score_key))?.is_none() {
            let renewing = self.handle.spawn(renew_while_fitting(
                Arc::clone(&self.store),
                claim_key.clone(),
                self.worker.clone(),
                claim,
                self.lease / 4,
            ));
            let scored = problem.fit(fit);
            renewing.abort();
            let score = scored?;
            let record = ScoreRecord {
                fit: fit.unit.name(),
                score_bits: score.score.to_bits(),
                score: score.score.is_finite().then_some(score.score),
                seconds: score.seconds,
                finished: (Utc::now() - started).as_seconds_f64(),
                worker: self.worker.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&record)?;
            match self
                .handle
                .block_on(self.store.put(&score_key, bytes, PutCondition::IfAbsent))
            {
                Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.made += 1;
            eprintln!(
                "  {}: fit {} scored {:.4} ({:.1} s)",
                self.worker,
                fit.unit.name(),
                score.score,
                score.seconds
            );
        }
        self.block(self.store.delete(&claim_key))
    }
}

/// Renews a claim every `every` until aborted; a claim taken over is left to its new holder.
async fn renew_while_fitting(
    store: Arc<dyn ObjectStore>,
    key: String,
    holder: String,
    mut claim: ETag,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        match lease::renew(store.as_ref(), &key, &holder, &claim).await {
            Ok(Some(etag)) => claim = etag,
            Ok(None) => {
                eprintln!("{holder}: the claim {key} was taken over; its score is the same");
                return;
            }
            // A failed renewal is tried again next time; the lease is four renewals long.
            Err(e) => eprintln!("{holder}: cannot renew {key}: {e}"),
        }
    }
}

impl SearchRunner for SharedSearch {
    fn run(
        &mut self,
        problem: &SearchProblem<'_>,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<SearchOutcome, TrainError> {
        self.share(problem, on)
            .map_err(|e| match e.downcast::<TrainError>() {
                Ok(e) => e,
                Err(e) => TrainError::SharedSearch(format!("{e:#}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use async_trait::async_trait;
    use mlops_domain::data::{Dataset, TargetPolicy, load_csv};
    use mlops_domain::faults::{CrashScenario, FaultPlan, explore};
    use mlops_domain::schema::Schema;
    use mlops_store::LocalStore;
    use mlops_trainer::lightgbm::LgbmParams;
    use mlops_trainer::search::{Here, SearchConfig, TrialStatus};
    use mlops_trainer::select::{CandidateSpec, TrainConfig, search_training_split};

    use super::*;

    /// The first `rows` rows of California Housing.
    fn california(rows: usize) -> Arc<(Schema, Dataset)> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let schema = Schema::from_file(&repo.join("data/california_housing.schema.toml")).unwrap();
        let file = repo.join("../shared/data/california_housing.csv");
        let (data, _) = load_csv(&file, &schema, TargetPolicy::Required).unwrap();
        let data = data.subset(&(0..rows).collect::<Vec<_>>());
        Arc::new((schema, data))
    }

    fn config(candidates: Vec<CandidateSpec>, max_trials: usize) -> TrainConfig {
        TrainConfig {
            candidates,
            search: Some(SearchConfig {
                max_trials: Some(max_trials),
                max_seconds: None,
                ..SearchConfig::default()
            }),
            ..TrainConfig::default()
        }
    }

    fn lightgbm() -> CandidateSpec {
        CandidateSpec::Lightgbm(LgbmParams {
            max_rounds: 40,
            early_stopping_rounds: 10,
            threads: 1,
            ..LgbmParams::default()
        })
    }

    /// Worker `index` of `workers` searches to the end on `store`, on a blocking thread.
    async fn work(
        world: &Arc<(Schema, Dataset)>,
        config: &TrainConfig,
        store: Arc<dyn ObjectStore>,
        (index, workers): (u32, u32),
        lease: Duration,
    ) -> Result<(SearchOutcome, usize), TrainError> {
        let (world, config) = (Arc::clone(world), config.clone());
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut search = SharedSearch::new(store, "s1", "a test", (index, workers), handle)
                .with_lease(lease);
            let outcome =
                search_training_split(&world.0, &world.1, &config, &mut search, &mut |_| {})?;
            Ok((outcome, search.made))
        })
        .await
        .unwrap()
    }

    fn here(world: &(Schema, Dataset), config: &TrainConfig) -> SearchOutcome {
        search_training_split(&world.0, &world.1, config, &mut Here, &mut |_| {}).unwrap()
    }

    fn same_trials(a: &SearchOutcome, b: &SearchOutcome) -> Result<(), String> {
        if a.trials.len() != b.trials.len() {
            return Err(format!("{} trials, not {}", b.trials.len(), a.trials.len()));
        }
        for (x, y) in a.trials.iter().zip(&b.trials) {
            let bits = |t: &[f64]| t.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            if (
                x.family,
                x.bracket,
                x.slot,
                &x.spec,
                x.status,
                bits(&x.fold_scores),
            ) != (
                y.family,
                y.bracket,
                y.slot,
                &y.spec,
                y.status,
                bits(&y.fold_scores),
            ) {
                return Err(format!("trial {} differs: {x:?} vs {y:?}", x.id));
            }
        }
        Ok(())
    }

    fn fits(outcome: &SearchOutcome) -> usize {
        outcome.trials.iter().map(|t| t.fold_scores.len()).sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_workers_select_what_one_container_does_and_fit_nothing_twice() {
        let world = california(1_000);
        let config = config(vec![CandidateSpec::Linear { l2: 1.0 }, lightgbm()], 12);
        let one = here(&world, &config);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let worker = |i| work(&world, &config, Arc::clone(&store), (i, 3), CLAIM_LEASE);
        let (a, b, c) = tokio::join!(worker(0), worker(1), worker(2));
        let mut made = Vec::new();
        for run in [a, b, c] {
            let (outcome, n) = run.unwrap();
            same_trials(&one, &outcome).unwrap();
            made.push(n);
        }
        assert_eq!(
            made.iter().sum::<usize>(),
            fits(&one),
            "fits per worker: {made:?}"
        );
        assert_eq!(
            store.list("searches/s1/scores/").await.unwrap().len(),
            fits(&one)
        );
        assert!(store.list("searches/s1/claims/").await.unwrap().is_empty());
        // A worker that starts after the end replays the stored scores without fitting.
        let (late, n) = work(&world, &config, store, (0, 3), CLAIM_LEASE)
            .await
            .unwrap();
        same_trials(&one, &late).unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_workers_claim_is_taken_over_once_it_lapses() {
        let world = california(300);
        let config = config(vec![CandidateSpec::Linear { l2: 1.0 }], 4);
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let first = FoldUnit {
            family: 0,
            bracket: 0,
            slot: 0,
            fold: 0,
        };
        let claim = format!("searches/s1/claims/{}.json", first.name());
        lease::take(store.as_ref(), &claim, "worker 5 of 6", CLAIM_LEASE, None)
            .await
            .unwrap()
            .unwrap();
        let started = std::time::Instant::now();
        let lease = Duration::from_millis(400);
        let (outcome, made) = work(&world, &config, Arc::clone(&store), (0, 1), lease)
            .await
            .unwrap();
        assert!(started.elapsed() >= lease);
        same_trials(&here(&world, &config), &outcome).unwrap();
        assert_eq!(made, fits(&outcome));
        let score = store
            .get(&format!("searches/s1/scores/{}.json", first.name()))
            .await
            .unwrap()
            .unwrap();
        let score: ScoreRecord = serde_json::from_slice(&score.bytes).unwrap();
        assert_eq!(score.worker, "worker 0 of 1");
        assert!(store.list("searches/s1/claims/").await.unwrap().is_empty());
        assert!(
            outcome
                .trials
                .iter()
                .any(|t| t.status == TrialStatus::Pruned)
        );
    }

    /// One worker's whole search, crashed at each write and run again.
    struct Share {
        world: Arc<(Schema, Dataset)>,
        config: TrainConfig,
        one: SearchOutcome,
    }

    struct ShareWorld {
        _dir: tempfile::TempDir,
        store: Arc<dyn ObjectStore>,
    }

    #[async_trait]
    impl CrashScenario for Share {
        type World = ShareWorld;

        async fn world(&self) -> ShareWorld {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(LocalStore::new(dir.path()));
            ShareWorld { _dir: dir, store }
        }

        async fn run(&self, world: &ShareWorld, plan: &FaultPlan) -> Result<(), String> {
            let store = plan.store(Arc::clone(&world.store));
            let (outcome, _) = work(&self.world, &self.config, store, (0, 2), CLAIM_LEASE)
                .await
                .map_err(|e| e.to_string())?;
            same_trials(&self.one, &outcome)
        }

        async fn check(&self, world: &ShareWorld) -> Result<(), String> {
            let scores = world.store.list("searches/s1/scores/").await.unwrap();
            if scores.len() != fits(&self.one) {
                return Err(format!("{} scores, not {}", scores.len(), fits(&self.one)));
            }
            let claims = world.store.list("searches/s1/claims/").await.unwrap();
            if !claims.is_empty() {
                return Err(format!("claims left: {claims:?}"));
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_search_converges_at_every_crash_point() {
        let world = california(300);
        let config = config(vec![CandidateSpec::Linear { l2: 1.0 }], 3);
        let one = here(&world, &config);
        assert_eq!(fits(&one), 11);
        let scenario = Share { world, config, one };
        match explore(&scenario).await {
            Ok(report) => println!("shared search: {report}"),
            Err(e) => panic!("shared search: {e}"),
        }
    }
}
