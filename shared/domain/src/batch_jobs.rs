//! The batch-job state machine behind `POST /v1/batch-jobs`, `…/start` and `GET …/{id}`, on the
//! store and [`JobQueue`] ports (the HTTP module only maps requests and errors).
//!
//! ```text
//! awaiting_upload ──start──▶ submitting ──submit──▶ queued ──▶ running ──▶ succeeded | failed
//!                               │   ▲
//!                  queue error  ▼   │ retry (same Idempotency-Key, or start)
//!                          failed (never submitted)
//! ```
//!
//! Every transition is a compare-and-swap of the job record, and every submission is preceded by
//! a look-up of the job's deterministic queue name (`mlops-batch-ID`), so:
//! - a retry with the same `Idempotency-Key` addresses the same record (its id is derived from
//!   the key) and finishes what the first request started — nothing is claimed before what can
//!   be checked (queue configured, model resolved, uploads possible) is checked;
//! - a submission whose outcome was never recorded is found and recorded, not repeated;
//! - a record left in `submitting` by a request that died is settled by the next request that
//!   reads it once it is older than the takeover window (queued if the queue has it, else failed
//!   and retryable), so no job sits in `submitting` for ever.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde::Serialize;

use crate::hashing::sha256_hex;
use crate::jobs::{
    BatchJob, Checkpoint, JobQueue, JobState, JobSubmission, QueueError, SHARD_PLAN, ShardPlan,
    checkpoint_key, input_key, job_key, output_prefix, shard_checkpoint_name,
};
use crate::store::{ETag, ObjectStore, PutCondition, StoreError};

/// How long a presigned upload URL is valid by default (short: it is a bearer credential).
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// A record in `submitting` this long without a change belongs to a request that died (the
/// Lambda timeout is far shorter), so another request may settle it.
pub const SUBMIT_TAKEOVER: TimeDelta = TimeDelta::seconds(60);

/// Batch-job failures, each with what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum BatchJobError {
    /// No queue is configured: nothing was written.
    #[error(
        "batch jobs are not configured here (set MLOPS_BATCH_QUEUE and MLOPS_BATCH_JOB_DEFINITION)"
    )]
    NoQueue,
    /// The store cannot presign uploads: nothing was written.
    #[error("{0} cannot hand out upload URLs: give input_uri")]
    NoUploads(String),
    /// The idempotency key was used for another request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    /// An input outside the allowed buckets and prefixes: nothing was written.
    #[error("input_uri {uri} is outside the allowed inputs ({}); set MLOPS_BATCH_INPUT_PREFIXES to allow more", allowed.join(", "))]
    InputNotAllowed {
        /// The refused URI.
        uri: String,
        /// The allowed prefixes.
        allowed: Vec<String>,
    },
    /// No such job.
    #[error("batch job '{0}' not found")]
    NotFound(String),
    /// `start` before the input was uploaded.
    #[error("the input has not been uploaded to {0} yet")]
    InputMissing(String),
    /// The queue refused or could not be reached; the job is recorded as failed and a retry
    /// (same key, or `start`) submits it again.
    #[error("{queue}: {source}")]
    Queue {
        /// The queue, for the message.
        queue: String,
        /// What it said.
        source: QueueError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record that does not parse.
    #[error("job record {key} is corrupt: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Parser message.
        message: String,
    },
}

/// A job to create; the model and version are already resolved and checked.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Model.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Alias that was resolved, if any.
    pub alias: Option<String>,
    /// Input on S3; `None` asks for a presigned upload URL.
    pub input_uri: Option<String>,
    /// Children of the array job that runs it (2 or more), or one container.
    pub shards: Option<u32>,
    /// SHA-256 of the request, to tell a retry from another request under the same key.
    pub request_sha256: String,
}

/// What [`BatchJobs::create`] did.
#[derive(Debug, Clone)]
pub struct Created {
    /// The job.
    pub job: BatchJob,
    /// A presigned PUT URL for the input, while it awaits its upload.
    pub upload_url: Option<String>,
    /// Whether an earlier request with the same idempotency key created it.
    pub existing: bool,
}

/// A job with what the queue and its checkpoint say.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The record, its state refreshed from the queue while queued or running.
    pub job: BatchJob,
    /// The queue's own word for the state.
    pub queue_state: Option<String>,
    /// The job's checkpoint, once written.
    pub checkpoint: Option<Checkpoint>,
}

/// The service.
#[derive(Clone)]
pub struct BatchJobs {
    store: Arc<dyn ObjectStore>,
    queue: Option<Arc<dyn JobQueue>>,
    takeover: TimeDelta,
    upload_ttl: Duration,
    input_prefixes: Vec<String>,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("records serialize")
}

/// The registry's bucket (`s3://bucket/`), or its directory for a local store.
fn default_input_prefix(store: &dyn ObjectStore) -> String {
    let root = store.uri("");
    match root.strip_prefix("s3://") {
        Some(rest) => format!("s3://{}/", rest.split('/').next().unwrap_or_default()),
        None => format!("{}/", root.trim_end_matches('/')),
    }
}

/// The job id an idempotency key addresses (hashed: the key may hold anything).
pub fn job_id_for_key(key: &str) -> String {
    sha256_hex(format!("batch-job\n{key}").as_bytes())[..32].to_owned()
}

/// The queue name of a job's submission; [`JobQueue::find`] looks it up.
pub fn queue_job_name(id: &str) -> String {
    format!("mlops-batch-{id}")
}

impl BatchJobs {
    /// A service over a store and, when configured, a queue.
    pub fn new(store: Arc<dyn ObjectStore>, queue: Option<Arc<dyn JobQueue>>) -> Self {
        let input_prefixes = vec![default_input_prefix(store.as_ref())];
        Self {
            store,
            queue,
            takeover: SUBMIT_TAKEOVER,
            upload_ttl: UPLOAD_URL_TTL,
            input_prefixes,
        }
    }

    /// Allows inputs under these prefixes only (`s3://bucket/` or `s3://bucket/some/prefix/`);
    /// the default is the registry's own bucket. Each prefix is taken to end at a `/`, so
    /// `s3://data` never allows `s3://data-other/…`.
    pub fn with_input_prefixes(mut self, prefixes: Vec<String>) -> Self {
        if !prefixes.is_empty() {
            self.input_prefixes = prefixes
                .into_iter()
                .map(|p| if p.ends_with('/') { p } else { format!("{p}/") })
                .collect();
        }
        self
    }

    /// The allowed input prefixes.
    pub fn input_prefixes(&self) -> &[String] {
        &self.input_prefixes
    }

    fn check_input(&self, uri: &str) -> Result<(), BatchJobError> {
        if self
            .input_prefixes
            .iter()
            .any(|p| uri.starts_with(p.as_str()))
        {
            Ok(())
        } else {
            Err(BatchJobError::InputNotAllowed {
                uri: uri.chars().take(256).collect(),
                allowed: self.input_prefixes.clone(),
            })
        }
    }

    /// Sets the takeover window of records left in `submitting` (tests use zero).
    pub fn with_takeover(mut self, takeover: TimeDelta) -> Self {
        self.takeover = takeover;
        self
    }

    fn queue(&self) -> Result<&Arc<dyn JobQueue>, BatchJobError> {
        self.queue.as_ref().ok_or(BatchJobError::NoQueue)
    }

    /// Reads a job record with its tag.
    pub async fn read(&self, id: &str) -> Result<Option<(BatchJob, ETag)>, BatchJobError> {
        let key = job_key(id);
        match self.store.get(&key).await? {
            Some(obj) => Ok(Some((parse(&key, &obj.bytes)?, obj.etag))),
            None => Ok(None),
        }
    }

    /// The newest `limit` job records (as stored, without asking the queue), newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<BatchJob>, BatchJobError> {
        let mut keys: Vec<String> = self
            .store
            .list(&format!("{}/", crate::jobs::PREFIX))
            .await?
            .into_iter()
            .filter(|k| k.ends_with("/job.json"))
            .collect();
        keys.sort();
        let mut jobs = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(obj) = self.store.get(&key).await? {
                jobs.push(parse::<BatchJob>(&key, &obj.bytes)?);
            }
        }
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        jobs.truncate(limit);
        Ok(jobs)
    }

    async fn read_existing(&self, id: &str) -> Result<(BatchJob, ETag), BatchJobError> {
        self.read(id)
            .await?
            .ok_or_else(|| BatchJobError::NotFound(id.into()))
    }

    /// Creates a job: submits it, or hands back an upload URL. With an idempotency key, a retry
    /// of the same request returns the same job and finishes its submission.
    pub async fn create(
        &self,
        new: NewJob,
        idempotency_key: Option<&str>,
    ) -> Result<Created, BatchJobError> {
        self.queue()?;
        if let Some(uri) = &new.input_uri {
            self.check_input(uri)?;
        }
        let mut id = idempotency_key.map_or_else(random_job_id, job_id_for_key);
        if let Some(key) = idempotency_key
            && let Some(earlier) = self.legacy_claim(key).await?
        {
            id = earlier;
        }
        let upload = new.input_uri.is_none();
        let upload_url = if upload {
            Some(self.presign(&id).await?)
        } else {
            None
        };
        let now = Utc::now();
        let job = BatchJob {
            id: id.clone(),
            model: new.model,
            version: new.version,
            alias: new.alias,
            input_uri: new
                .input_uri
                .unwrap_or_else(|| self.store.uri(&input_key(&id))),
            input_version: None,
            output_uri: self.store.uri(&output_prefix(&id)),
            shards: new.shards,
            state: if upload {
                JobState::AwaitingUpload
            } else {
                JobState::Submitting
            },
            queue_job_id: None,
            reason: None,
            request_sha256: new.request_sha256,
            created_at: now,
            updated_at: now,
        };
        match self
            .store
            .put(&job_key(&id), json(&job), PutCondition::IfAbsent)
            .await
        {
            Ok(etag) => {
                let job = if upload {
                    job
                } else {
                    self.submit(job, etag).await?
                };
                Ok(Created {
                    job,
                    upload_url,
                    existing: false,
                })
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                let (earlier, etag) = self.read_existing(&id).await?;
                if earlier.request_sha256 != job.request_sha256 {
                    return Err(BatchJobError::IdempotencyConflict);
                }
                let upload_url = if earlier.state == JobState::AwaitingUpload {
                    Some(self.presign(&id).await?)
                } else {
                    None
                };
                let job = if self.may_resubmit(&earlier) {
                    self.submit(earlier, etag).await?
                } else {
                    earlier
                };
                Ok(Created {
                    job,
                    upload_url,
                    existing: true,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The job an idempotency key claimed under the layout of builds before job ids were
    /// derived from keys (`batch-jobs/idempotency/SHA256.json`), so a retry that spans an upgrade
    /// still finds its job.
    async fn legacy_claim(&self, key: &str) -> Result<Option<String>, BatchJobError> {
        #[derive(serde::Deserialize)]
        struct Claim {
            job_id: String,
        }
        let claim_key = crate::jobs::idempotency_key(&sha256_hex(key.as_bytes()));
        match self.store.get(&claim_key).await? {
            Some(obj) => Ok(Some(parse::<Claim>(&claim_key, &obj.bytes)?.job_id)),
            None => Ok(None),
        }
    }

    async fn presign(&self, id: &str) -> Result<String, BatchJobError> {
        self.store
            .presign_put(&input_key(id), self.upload_ttl)
            .await?
            .ok_or_else(|| BatchJobError::NoUploads(self.store.describe()))
    }

    /// Submits a job whose input was uploaded, pinned to the uploaded version; a retry of a
    /// failed or abandoned submission submits it again (after looking for the earlier one).
    pub async fn start(&self, id: &str) -> Result<BatchJob, BatchJobError> {
        let (mut job, etag) = self.read_existing(id).await?;
        if job.state == JobState::AwaitingUpload {
            let Some(uploaded) = self.store.head_version(&input_key(id)).await? else {
                return Err(BatchJobError::InputMissing(job.input_uri));
            };
            job.input_version = Some(uploaded);
            return self.submit(job, etag).await;
        }
        if self.may_resubmit(&job) {
            return self.submit(job, etag).await;
        }
        Ok(job)
    }

    /// A job with its queue state and checkpoint; a record abandoned in `submitting` is settled
    /// first (queued if the queue has it, failed otherwise).
    pub async fn get(&self, id: &str) -> Result<JobView, BatchJobError> {
        let (mut job, etag) = self.read_existing(id).await?;
        if self.abandoned(&job) {
            job = self.settle(job, etag).await?;
        }
        self.view(job).await
    }

    /// A job in hand (as [`BatchJobs::create`] or [`BatchJobs::start`] returned it) with its
    /// queue state and checkpoint.
    pub async fn view(&self, mut job: BatchJob) -> Result<JobView, BatchJobError> {
        let mut queue_state = None;
        if let (Some(queue_id), Some(queue)) = (&job.queue_job_id, &self.queue)
            && matches!(job.state, JobState::Queued | JobState::Running)
        {
            match queue.status(queue_id).await {
                Ok(Some(s)) => {
                    job.state = s.state;
                    queue_state = Some(s.raw);
                    if s.state == JobState::Failed {
                        job.reason = s.reason;
                    }
                }
                Ok(None) => queue_state = Some("UNKNOWN".into()),
                Err(e) => tracing::warn!(error = %e, "cannot read the job's queue state"),
            }
        }
        let checkpoint = match self.store.get(&checkpoint_key(&job.id)).await? {
            Some(obj) => serde_json::from_slice::<Checkpoint>(&obj.bytes).ok(),
            None if job.shards.is_some() => self.shard_progress(&job.id).await?,
            None => None,
        };
        Ok(JobView {
            job,
            queue_state,
            checkpoint,
        })
    }

    /// A sharded job's progress before its last child writes the checkpoint: the sum over the
    /// shards' checkpoints, once a child has written the plan.
    async fn shard_progress(&self, id: &str) -> Result<Option<Checkpoint>, BatchJobError> {
        let prefix = output_prefix(id);
        let Some(plan) = self.store.get(&format!("{prefix}{SHARD_PLAN}")).await? else {
            return Ok(None);
        };
        let Ok(plan) = serde_json::from_slice::<ShardPlan>(&plan.bytes) else {
            return Ok(None);
        };
        let mut shards = Vec::with_capacity(plan.shards.len());
        for index in 0..plan.shards.len() as u32 {
            let key = format!("{prefix}{}", shard_checkpoint_name(index));
            shards.push(match self.store.get(&key).await? {
                Some(obj) => serde_json::from_slice::<Checkpoint>(&obj.bytes).ok(),
                None => None,
            });
        }
        Ok(Some(plan.progress(&shards)))
    }

    /// Whether a record was left in `submitting` longer than the takeover window.
    fn abandoned(&self, job: &BatchJob) -> bool {
        job.state == JobState::Submitting && Utc::now() - job.updated_at >= self.takeover
    }

    /// Whether a retry may (re)submit: the submission failed before the queue took the job, or
    /// its request died.
    fn may_resubmit(&self, job: &BatchJob) -> bool {
        (job.state == JobState::Failed && job.queue_job_id.is_none()) || self.abandoned(job)
    }

    /// Takes a record for this request by compare-and-swap (so one request drives it at a time);
    /// `Err(current)` when another request changed it first.
    async fn claim(
        &self,
        mut job: BatchJob,
        etag: ETag,
    ) -> Result<Result<(BatchJob, ETag), BatchJob>, BatchJobError> {
        job.state = JobState::Submitting;
        job.reason = None;
        job.updated_at = Utc::now();
        match self
            .store
            .put(&job_key(&job.id), json(&job), PutCondition::IfMatch(etag))
            .await
        {
            Ok(etag) => Ok(Ok((job, etag))),
            Err(StoreError::PreconditionFailed { .. }) => {
                Ok(Err(self.read_existing(&job.id).await?.0))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records the outcome of a claimed submission.
    async fn record(
        &self,
        mut job: BatchJob,
        etag: ETag,
        outcome: Result<String, String>,
    ) -> Result<BatchJob, BatchJobError> {
        match outcome {
            Ok(queue_id) => {
                job.state = JobState::Queued;
                job.queue_job_id = Some(queue_id);
            }
            Err(reason) => {
                job.state = JobState::Failed;
                job.reason = Some(reason);
            }
        }
        job.updated_at = Utc::now();
        self.store
            .put(&job_key(&job.id), json(&job), PutCondition::IfMatch(etag))
            .await?;
        Ok(job)
    }

    /// Claims the record, finds an earlier submission under the job's queue name or submits,
    /// and records the outcome.
    async fn submit(&self, job: BatchJob, etag: ETag) -> Result<BatchJob, BatchJobError> {
        let queue = self.queue()?;
        let (job, etag) = match self.claim(job, etag).await? {
            Ok(claimed) => claimed,
            Err(current) => return Ok(current),
        };
        let name = queue_job_name(&job.id);
        let found = queue.find(&name).await;
        let outcome = match found {
            Ok(Some(queue_id)) => Ok(queue_id),
            Ok(None) => queue.submit(&self.submission(&job)).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(queue_id) => {
                let job = self.record(job, etag, Ok(queue_id)).await?;
                tracing::info!(job = %job.id, queue_job = ?job.queue_job_id, model = %job.model, version = job.version, "batch job submitted");
                Ok(job)
            }
            Err(source) => {
                self.record(job, etag, Err(format!("submission failed: {source}")))
                    .await?;
                Err(BatchJobError::Queue {
                    queue: queue.describe(),
                    source,
                })
            }
        }
    }

    /// Settles a record abandoned in `submitting`: queued if the queue has its submission,
    /// failed (and retryable) if not.
    async fn settle(&self, job: BatchJob, etag: ETag) -> Result<BatchJob, BatchJobError> {
        let queue = self.queue()?;
        let (job, etag) = match self.claim(job, etag).await? {
            Ok(claimed) => claimed,
            Err(current) => return Ok(current),
        };
        let outcome = match queue.find(&queue_job_name(&job.id)).await {
            Ok(Some(queue_id)) => Ok(queue_id),
            Ok(None) => Err(
                "abandoned before submission (the request that created it ended early); retry it with the same Idempotency-Key or POST …/start"
                    .to_owned(),
            ),
            Err(e) => Err(format!("submission unknown: {e}")),
        };
        self.record(job, etag, outcome).await
    }

    fn submission(&self, job: &BatchJob) -> JobSubmission {
        JobSubmission {
            name: queue_job_name(&job.id),
            command: vec![
                "mlops".into(),
                "batch-predict".into(),
                "--job".into(),
                self.store.uri(&job_key(&job.id)),
            ],
            environment: vec![
                ("MLOPS_JOB_ID".into(), job.id.clone()),
                ("MLOPS_STORE".into(), self.store.describe()),
            ],
            array_size: job.shards.filter(|n| *n > 1),
        }
    }
}

/// A fresh random job id (32 hex digits) for a request without an idempotency key.
fn random_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Parses a stored record, naming its key when it does not parse.
fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, BatchJobError> {
    serde_json::from_slice(bytes).map_err(|e| BatchJobError::Corrupt {
        key: key.into(),
        message: e.to_string(),
    })
}
