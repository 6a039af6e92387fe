//! Crash scenarios of the registry and the batch-job state machines, shared by the tests on the
//! local store (`shared/store/tests/crash_safety.rs`) and on moto S3
//! (`tests/e2e/crash_safety_s3.rs`), each of which provides `fresh_store()`. Each operation is
//! cut at every one of its steps (store writes, queue calls) by each kind of fault, then retried,
//! and its invariants are checked (`mlops_domain::faults::explore`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::TimeDelta;
use mlops_domain::batch_jobs::{BatchJobs, NewJob, job_id_for_key, queue_job_name};
use mlops_domain::faults::{CrashScenario, FaultPlan, MemoryQueue, explore};
use mlops_domain::gate::GateDecision;
use mlops_domain::jobs::{BatchJob, JobQueue, JobState, input_key, job_key};
use mlops_domain::metrics::Metric;
use mlops_domain::registry::{
    AliasAction, AliasState, CHALLENGER, CHAMPION, CardEdit, RegisterOptions, Registry,
    VersionRecord,
};
use mlops_domain::schema::Task;
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_domain::testing::sample_bundle;

pub const MODEL: &str = "housing";

/// A fresh, empty store (and whatever keeps it alive: a temporary directory, a bucket).
pub struct Disk {
    pub store: Arc<dyn ObjectStore>,
    pub _guard: Box<dyn std::any::Any + Send + Sync>,
}

pub async fn disk() -> Disk {
    super::fresh_store().await
}

pub fn keyed(key: &str) -> RegisterOptions {
    RegisterOptions {
        idempotency_key: Some(key.into()),
        registered_by: "job".into(),
    }
}

impl Disk {
    /// A registry on this store, its writes going through `plan`.
    pub fn registry_with(&self, plan: &FaultPlan) -> Registry {
        Registry::new(plan.store(Arc::clone(&self.store)))
    }
}

/// An operation's result as a scenario reports it.
pub fn outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> Result<(), String> {
    result.map(drop).map_err(|e| e.to_string())
}

/// The registry after a run: its invariants checked, and its alias state.
pub async fn checked(d: &Disk) -> Result<(Registry, AliasState), String> {
    let r = Registry::new(Arc::clone(&d.store));
    registry_invariants(&r).await?;
    let state = r.aliases(MODEL).await.map_err(|e| e.to_string())?;
    Ok((r, state))
}

/// Invariants every registry state must keep: versions numbered 1..=n with loadable bundles and
/// cards, at most one version per idempotency key, alias revisions matching the audit log.
pub async fn registry_invariants(r: &Registry) -> Result<Vec<VersionRecord>, String> {
    let versions = r.versions(MODEL).await.map_err(|e| e.to_string())?;
    let mut keys = BTreeMap::new();
    for (i, v) in versions.iter().enumerate() {
        if v.version != i as u64 + 1 {
            return Err(format!("version numbers have a gap at {}", v.version));
        }
        r.load_bundle(v)
            .await
            .map_err(|e| format!("v{}: {e}", v.version))?;
        r.card(MODEL, v.version)
            .await
            .map_err(|e| format!("v{} has no card: {e}", v.version))?;
        if let Some(k) = &v.idempotency_key
            && let Some(other) = keys.insert(k.clone(), v.version)
        {
            return Err(format!(
                "key {k} registered twice: v{other} and v{}",
                v.version
            ));
        }
    }
    let state = r.aliases(MODEL).await.map_err(|e| e.to_string())?;
    if state.revision != state.history.len() as u64 {
        return Err(format!(
            "alias revision {} but {} audit entries",
            state.revision,
            state.history.len()
        ));
    }
    let mut replay = BTreeMap::new();
    for (i, e) in state.history.iter().enumerate() {
        if e.revision != i as u64 + 1 || replay.get(&e.alias).copied() != e.from {
            return Err(format!(
                "audit entry {i} does not follow the one before: {e:?}"
            ));
        }
        replay.insert(e.alias.clone(), e.to);
    }
    if replay != state.aliases {
        return Err(format!(
            "aliases {:?} are not the audit log's {replay:?}",
            state.aliases
        ));
    }
    // Every alias here was moved by this code, which records its version's bundle in the same
    // write: serving reads the bundle from it without the version record.
    for (alias, &version) in &state.aliases {
        let record = versions
            .get(version as usize - 1)
            .ok_or(format!("alias {alias} points at a missing v{version}"))?;
        if state.bundle(alias) != Some(&record.bundle_ref()) {
            return Err(format!(
                "alias {alias} (v{version}) carries {:?}, not its record's bundle",
                state.bundles.get(alias)
            ));
        }
    }
    Ok(versions)
}

/// Registration with an idempotency key (the training job's `AWS_BATCH_JOB_ID`), next to an
/// earlier version registered without one.
pub struct Register;

#[async_trait]
impl CrashScenario for Register {
    type World = Disk;
    async fn world(&self) -> Disk {
        let d = disk().await;
        Registry::new(Arc::clone(&d.store))
            .register(MODEL, &sample_bundle(), RegisterOptions::default())
            .await
            .unwrap();
        d
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        outcome(
            d.registry_with(plan)
                .register(MODEL, &sample_bundle(), keyed("batch-job-1"))
                .await,
        )
    }
    async fn recover(&self, d: &Disk) -> Result<(), String> {
        let v = Registry::new(Arc::clone(&d.store))
            .register(MODEL, &sample_bundle(), keyed("batch-job-1"))
            .await
            .map_err(|e| e.to_string())?;
        (v.version == 2)
            .then_some(())
            .ok_or(format!("the retry got v{}", v.version))
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let versions = registry_invariants(&Registry::new(Arc::clone(&d.store))).await?;
        let keyed = versions.iter().filter(|v| v.idempotency_key.is_some());
        (versions.len() == 2 && keyed.count() == 1)
            .then_some(())
            .ok_or(format!("{} versions after the retry", versions.len()))
    }
}

/// A registry with v1 champion (approved) and v2 registered; both cards are filled in (a card
/// is approved only with its intended use and limitations).
pub async fn two_versions() -> Disk {
    let d = disk().await;
    let r = Registry::new(Arc::clone(&d.store));
    for _ in 0..2 {
        let v = r
            .register(MODEL, &sample_bundle(), RegisterOptions::default())
            .await
            .unwrap();
        let filled = CardEdit {
            intended_use: Some("tests".into()),
            limitations: Some("synthetic data".into()),
            ..CardEdit::default()
        };
        r.edit_card(MODEL, v.version, filled).await.unwrap();
    }
    r.approve_card(MODEL, 1, "alice", "ok").await.unwrap();
    r.promote(MODEL, CHAMPION, 1, "alice", "first")
        .await
        .unwrap();
    d
}

fn events(state: &AliasState, alias: &str, to: u64) -> usize {
    state
        .history
        .iter()
        .filter(|e| e.alias == alias && e.to == to)
        .count()
}

/// The champion–challenger gate promoting v2 (challenger, card approval, champion).
pub struct Gate {
    pub promote: bool,
}

#[async_trait]
impl CrashScenario for Gate {
    type World = Disk;
    async fn world(&self) -> Disk {
        two_versions().await
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        let decision = GateDecision::decide(
            Metric::primary(Task::Regression),
            if self.promote { 0.40 } else { 0.50 },
            Some(0.45),
            0.01,
        );
        d.registry_with(plan)
            .apply_gate(MODEL, 2, &decision, "job")
            .await
            .map_err(|e| e.to_string())
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let (r, state) = checked(d).await?;
        let champion = if self.promote { 2 } else { 1 };
        let approved = r.card(MODEL, 2).await.unwrap().approval.is_some();
        let ok = state.aliases.get(CHALLENGER) == Some(&2)
            && state.aliases.get(CHAMPION) == Some(&champion)
            && events(&state, CHALLENGER, 2) == 1
            && events(&state, CHAMPION, 2) == usize::from(self.promote)
            && approved == self.promote;
        ok.then_some(()).ok_or(format!(
            "after the gate: {:?}, v2 approved {approved}",
            state.aliases
        ))
    }
}

/// `registry promote` of v2 to challenger.
pub struct Promote;

#[async_trait]
impl CrashScenario for Promote {
    type World = Disk;
    async fn world(&self) -> Disk {
        two_versions().await
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        outcome(
            d.registry_with(plan)
                .promote(MODEL, CHALLENGER, 2, "bob", "try it")
                .await,
        )
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let (_, state) = checked(d).await?;
        (events(&state, CHALLENGER, 2) == 1)
            .then_some(())
            .ok_or(format!("challenger events: {:?}", state.history))
    }
}

/// `registry rollback --request-id` of the champion from v2 to v1.
pub struct Rollback;

#[async_trait]
impl CrashScenario for Rollback {
    type World = Disk;
    async fn world(&self) -> Disk {
        let d = two_versions().await;
        let r = Registry::new(Arc::clone(&d.store));
        r.approve_card(MODEL, 2, "alice", "ok").await.unwrap();
        r.promote(MODEL, CHAMPION, 2, "alice", "second")
            .await
            .unwrap();
        d
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        outcome(
            d.registry_with(plan)
                .rollback(MODEL, CHAMPION, "bob", "regression", Some("incident-7"))
                .await,
        )
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let (_, state) = checked(d).await?;
        let rollbacks = state
            .history
            .iter()
            .filter(|e| e.action == AliasAction::Rollback)
            .count();
        (state.aliases.get(CHAMPION) == Some(&1) && rollbacks == 1)
            .then_some(())
            .ok_or(format!(
                "{rollbacks} rollbacks, aliases {:?}",
                state.aliases
            ))
    }
}

/// Card approval of v2.
pub struct ApproveCard;

#[async_trait]
impl CrashScenario for ApproveCard {
    type World = Disk;
    async fn world(&self) -> Disk {
        two_versions().await
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        outcome(
            d.registry_with(plan)
                .approve_card(MODEL, 2, "carol", "reviewed")
                .await,
        )
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let (r, _) = checked(d).await?;
        let card = r.card(MODEL, 2).await.map_err(|e| e.to_string())?;
        card.approval
            .filter(|a| a.approved_by == "carol")
            .map(drop)
            .ok_or("v2's card is not approved by carol".into())
    }
}

/// `registry compile`'s one write: an engine image added, create-only, to v1's existing bundle.
pub struct AddImage;

const IMAGE_NAME: &str = "engine-test.img";
const IMAGE: &[u8] = b"an engine image's bytes";

#[async_trait]
impl CrashScenario for AddImage {
    type World = Disk;
    async fn world(&self) -> Disk {
        two_versions().await
    }
    async fn run(&self, d: &Disk, plan: &FaultPlan) -> Result<(), String> {
        add_image_to_v1(&d.registry_with(plan)).await
    }
    async fn recover(&self, d: &Disk) -> Result<(), String> {
        // Written by this call or by the cut one: either way the retry succeeds.
        add_image_to_v1(&Registry::new(Arc::clone(&d.store))).await
    }
    async fn check(&self, d: &Disk) -> Result<(), String> {
        let (r, _) = checked(d).await?;
        let v1 = r.version(MODEL, 1).await.map_err(|e| e.to_string())?;
        let parts = r
            .serving_parts(&v1.bundle_ref(), IMAGE_NAME)
            .await
            .map_err(|e| e.to_string())?;
        match parts.image {
            Some(image) if image.bytes == IMAGE && !image.listed => Ok(()),
            other => Err(format!("v1's image after the retry: {other:?}")),
        }
    }
}

/// `registry compile` on v1: its engine image, written create-only into its bundle.
async fn add_image_to_v1(r: &Registry) -> Result<(), String> {
    let v1 = r.version(MODEL, 1).await.map_err(|e| e.to_string())?;
    outcome(
        r.add_image(&v1.bundle_ref(), IMAGE_NAME, IMAGE.to_vec())
            .await,
    )
}

pub async fn explore_and_print<S: CrashScenario>(name: &str, scenario: &S) {
    match explore(scenario).await {
        Ok(report) => println!("{name}: {report}"),
        Err(e) => panic!("{name}: {e}"),
    }
}

// --- batch jobs ------------------------------------------------------------------------------

/// A store and an in-memory queue.
pub struct Jobs {
    pub disk: Disk,
    pub queue: Arc<MemoryQueue>,
}

pub async fn jobs_world() -> Jobs {
    Jobs {
        disk: disk().await,
        queue: Arc::new(MemoryQueue::default()),
    }
}

/// The input bucket these jobs may read ([`new_job`]'s input is in it).
pub fn inputs() -> Vec<String> {
    vec!["s3://inputs/".into()]
}

pub fn service(store: Arc<dyn ObjectStore>, queue: Arc<dyn JobQueue>) -> BatchJobs {
    // Takeover at once: the retry in these tests comes after the crashed request is gone.
    BatchJobs::new(store, Some(queue))
        .with_takeover(TimeDelta::zero())
        .with_input_prefixes(inputs())
}

pub fn faulty(w: &Jobs, plan: &FaultPlan) -> BatchJobs {
    let queue: Arc<dyn JobQueue> = w.queue.clone();
    service(plan.store(Arc::clone(&w.disk.store)), plan.queue(queue))
}

pub fn plain(w: &Jobs) -> BatchJobs {
    service(Arc::clone(&w.disk.store), w.queue.clone())
}

pub fn new_job() -> NewJob {
    NewJob {
        model: MODEL.into(),
        version: 1,
        alias: None,
        input_uri: Some("s3://inputs/houses.csv".into()),
        shards: None,
        request_sha256: "r1".into(),
    }
}

pub async fn all_jobs(w: &Jobs) -> Vec<BatchJob> {
    let mut out = Vec::new();
    for key in w.disk.store.list("batch-jobs/").await.unwrap() {
        if key.ends_with("/job.json") {
            let bytes = w.disk.store.get(&key).await.unwrap().unwrap().bytes;
            out.push(serde_json::from_slice(&bytes).unwrap());
        }
    }
    out
}

/// Every job is queued with exactly its one submission, or failed with none; `queued` counts the
/// queued ones.
pub async fn jobs_invariants(w: &Jobs, queued: usize) -> Result<(), String> {
    let submissions = w.queue.submissions();
    let mut seen = 0;
    for job in all_jobs(w).await {
        let mine: Vec<_> = submissions
            .iter()
            .filter(|(_, s)| s.name == queue_job_name(&job.id))
            .collect();
        match job.state {
            JobState::Queued
                if mine.len() == 1 && job.queue_job_id.as_ref() == Some(&mine[0].0) =>
            {
                seen += 1
            }
            JobState::Failed if mine.is_empty() => {}
            _ => {
                return Err(format!(
                    "job {} is {:?} (queue id {:?}) with {} submissions",
                    job.id,
                    job.state,
                    job.queue_job_id,
                    mine.len()
                ));
            }
        }
    }
    if seen != queued || submissions.len() != queued {
        return Err(format!(
            "{seen} queued jobs, {} submissions, expected {queued}",
            submissions.len()
        ));
    }
    listed_as_stored(w).await
}

/// `GET /v1/batch-jobs` (`BatchJobs::recent`) lists every stored job once, newest first, in its
/// stored state, whatever step the writes stopped at.
async fn listed_as_stored(w: &Jobs) -> Result<(), String> {
    let listed = plain(w).recent(100).await.map_err(|e| e.to_string())?;
    let mut stored: Vec<(String, JobState)> = all_jobs(w)
        .await
        .into_iter()
        .map(|j| (j.id, j.state))
        .collect();
    let mut seen: Vec<(String, JobState)> =
        listed.iter().map(|j| (j.id.clone(), j.state)).collect();
    if listed.windows(2).any(|p| p[0].created_at < p[1].created_at) {
        return Err("the list is not newest first".into());
    }
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    (stored == seen)
        .then_some(())
        .ok_or(format!("listed {seen:?}, stored {stored:?}"))
}

/// `POST /v1/batch-jobs` with an `Idempotency-Key`, retried with the same key.
pub struct CreateWithKey;

#[async_trait]
impl CrashScenario for CreateWithKey {
    type World = Jobs;
    async fn world(&self) -> Jobs {
        jobs_world().await
    }
    async fn run(&self, w: &Jobs, plan: &FaultPlan) -> Result<(), String> {
        outcome(
            faulty(w, plan)
                .create(new_job(), Some("client-key-1"))
                .await,
        )
    }
    async fn recover(&self, w: &Jobs) -> Result<(), String> {
        let created = plain(w)
            .create(new_job(), Some("client-key-1"))
            .await
            .map_err(|e| e.to_string())?;
        (created.job.id == job_id_for_key("client-key-1") && created.job.state == JobState::Queued)
            .then_some(())
            .ok_or(format!("the retry left the job {:?}", created.job.state))
    }
    async fn check(&self, w: &Jobs) -> Result<(), String> {
        jobs_invariants(w, 1).await
    }
}

/// `POST /v1/batch-jobs` without a key: the client never learns the id if the request dies, so
/// the recovery is any later `GET` of the job (an operator finding it in the store).
pub struct CreateWithoutKey;

#[async_trait]
impl CrashScenario for CreateWithoutKey {
    type World = Jobs;
    async fn world(&self) -> Jobs {
        jobs_world().await
    }
    async fn run(&self, w: &Jobs, plan: &FaultPlan) -> Result<(), String> {
        outcome(faulty(w, plan).create(new_job(), None).await)
    }
    async fn recover(&self, w: &Jobs) -> Result<(), String> {
        for job in all_jobs(w).await {
            let view = plain(w).get(&job.id).await.map_err(|e| e.to_string())?;
            if view.job.state == JobState::Submitting {
                return Err(format!("job {} is still submitting", job.id));
            }
        }
        Ok(())
    }
    async fn check(&self, w: &Jobs) -> Result<(), String> {
        let queued = w.queue.submissions().len();
        if queued > 1 {
            return Err(format!("{queued} submissions for one request"));
        }
        jobs_invariants(w, queued).await
    }
}

/// `POST /v1/batch-jobs/{id}/start` after the input was uploaded, retried.
pub struct Start;

pub const UPLOADED: &str = "0123456789abcdef0123456789abcdef";

#[async_trait]
impl CrashScenario for Start {
    type World = Jobs;
    async fn world(&self) -> Jobs {
        let w = jobs_world().await;
        let now = chrono::Utc::now();
        let job = BatchJob {
            id: UPLOADED.into(),
            model: MODEL.into(),
            version: 1,
            alias: None,
            input_uri: w.disk.store.uri(&input_key(UPLOADED)),
            input_version: None,
            output_uri: "out".into(),
            shards: None,
            state: JobState::AwaitingUpload,
            queue_job_id: None,
            reason: None,
            request_sha256: "r".into(),
            created_at: now,
            updated_at: now,
        };
        let store = &w.disk.store;
        store
            .put(
                &job_key(UPLOADED),
                serde_json::to_vec(&job).unwrap(),
                PutCondition::IfAbsent,
            )
            .await
            .unwrap();
        store
            .put(&input_key(UPLOADED), b"x\n1\n".to_vec(), PutCondition::None)
            .await
            .unwrap();
        w
    }
    async fn run(&self, w: &Jobs, plan: &FaultPlan) -> Result<(), String> {
        outcome(faulty(w, plan).start(UPLOADED).await)
    }
    async fn recover(&self, w: &Jobs) -> Result<(), String> {
        let job = plain(w).start(UPLOADED).await.map_err(|e| e.to_string())?;
        if job.state != JobState::Queued {
            return Err(format!("the retry left the job {:?}", job.state));
        }
        // The job reads the input as it was uploaded, whatever happens to the object later.
        let uploaded = w.disk.store.head_version(&input_key(UPLOADED)).await;
        match (&job.input_version, uploaded) {
            (Some(pinned), Ok(Some(now))) if *pinned == now => Ok(()),
            (pinned, now) => Err(format!(
                "the job is pinned to {pinned:?}, the upload is {now:?}"
            )),
        }
    }
    async fn check(&self, w: &Jobs) -> Result<(), String> {
        jobs_invariants(w, 1).await
    }
}

// --- retraining ------------------------------------------------------------------------------

/// A retraining request for the current day's window.
pub fn retrain_request() -> mlops_domain::retraining::RetrainRequest {
    mlops_domain::retraining::RetrainRequest {
        model: MODEL.into(),
        trigger: mlops_domain::retraining::Trigger::Drift,
        window: chrono::Duration::days(1),
        spec_uri: "s3://b/spec.toml".into(),
        data_uri: "s3://b/data.csv".into(),
        data_version: Some("v1".into()),
        appended: None,
        reasons: vec!["drift alert".into()],
        children: None,
    }
}

/// Retraining on a drift alert: record claimed, job submitted, record updated.
pub struct Retrain;

#[async_trait::async_trait]
impl CrashScenario for Retrain {
    type World = Jobs;
    async fn world(&self) -> Jobs {
        jobs_world().await
    }
    async fn run(&self, w: &Jobs, plan: &FaultPlan) -> Result<(), String> {
        let store = plan.store(Arc::clone(&w.disk.store));
        let queue = plan.queue(Arc::clone(&w.queue) as Arc<dyn JobQueue>);
        mlops_domain::retraining::request(
            &store,
            queue.as_ref(),
            &retrain_request(),
            chrono::Utc::now(),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
    async fn check(&self, w: &Jobs) -> Result<(), String> {
        // Asked again: the one job of the window, nothing new submitted.
        let queue = Arc::clone(&w.queue) as Arc<dyn JobQueue>;
        let (record, submitted) = mlops_domain::retraining::request(
            &w.disk.store,
            queue.as_ref(),
            &retrain_request(),
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let jobs = w.queue.submissions();
        if submitted || jobs.len() != 1 {
            return Err(format!("{} jobs submitted for one window", jobs.len()));
        }
        if record.queue_job_id.as_deref() != Some(jobs[0].0.as_str()) {
            return Err(format!(
                "the record names {:?}, the queue has {}",
                record.queue_job_id, jobs[0].0
            ));
        }
        Ok(())
    }
}
