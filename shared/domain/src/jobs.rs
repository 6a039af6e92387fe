//! Batch-prediction jobs: the job record the API keeps in the store, the checkpoint the job
//! writes after each committed output part (progress is read from it), and the job-queue port
//! (AWS Batch on AWS).
//!
//! Layout under the store root, per job `ID`:
//! - `batch-jobs/ID/job.json`: the [`BatchJob`] record;
//! - `batch-jobs/ID/input.csv`: the input, when uploaded through a presigned URL;
//! - `batch-jobs/ID/output/part-NNNNN.csv` and `batch-jobs/ID/output/_checkpoint.json`;
//! - `batch-jobs/idempotency/SHA256.json`: the job an idempotency key claimed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Prefix of job records.
pub const PREFIX: &str = "batch-jobs";

/// Key of a job record.
pub fn job_key(id: &str) -> String {
    format!("{PREFIX}/{id}/job.json")
}

/// Key of the uploaded input of a job.
pub fn input_key(id: &str) -> String {
    format!("{PREFIX}/{id}/input.csv")
}

/// Prefix of a job's output parts.
pub fn output_prefix(id: &str) -> String {
    format!("{PREFIX}/{id}/output/")
}

/// Key of a job's checkpoint.
pub fn checkpoint_key(id: &str) -> String {
    format!("{PREFIX}/{id}/output/_checkpoint.json")
}

/// Key of an idempotency claim (the key is hashed: it may hold anything).
pub fn idempotency_key(key_sha256: &str) -> String {
    format!("{PREFIX}/idempotency/{key_sha256}.json")
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the input to be uploaded to the presigned URL.
    AwaitingUpload,
    /// Being submitted to the queue.
    Submitting,
    /// In the queue (submitted, pending, runnable, starting).
    Queued,
    /// Running.
    Running,
    /// Finished; results are complete.
    Succeeded,
    /// Failed (see `reason`).
    Failed,
}

/// The job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// Job id.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Version resolved at submission (an alias is resolved once, so a promotion during the
    /// job does not mix versions).
    pub version: u64,
    /// Alias that was resolved, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Input CSV URI.
    pub input_uri: String,
    /// The uploaded input as it was when the job was started: the job reads exactly this
    /// version (by its S3 version id; else only while its tag is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_version: Option<crate::store::ObjectVersion>,
    /// Output prefix URI.
    pub output_uri: String,
    /// State.
    pub state: JobState,
    /// The queue's job id once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_job_id: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// SHA-256 of the request body that created it (for idempotency checks).
    pub request_sha256: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The checkpoint a batch-prediction job writes after each committed output part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Input rows fully processed (predicted or sent to the errors file).
    pub rows_done: u64,
    /// Input rows in total, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_total: Option<u64>,
    /// Committed output parts, in order.
    pub parts: Vec<String>,
    /// Rows rejected (listed in the errors file).
    #[serde(default)]
    pub rows_rejected: u64,
    /// Whether the job finished.
    pub complete: bool,
    /// What the output belongs to (model digest, input, part size): a rerun resumes only its
    /// own checkpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// Byte offset in the input just after the last committed row: a rerun resumes reading
    /// there instead of parsing the committed rows again.
    #[serde(default)]
    pub input_offset: u64,
    /// Input lines (header included) up to `input_offset`, so line numbers in error files stay
    /// those of the whole input after a resume.
    #[serde(default)]
    pub input_lines: u64,
    /// Size of the input in bytes (progress while the row count is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<u64>,
    /// Fencing token: each run of the job increments it when it starts and commits only while it
    /// is still the latest, so an older run (an AWS Batch retry while a slow attempt still runs)
    /// can never move the checkpoint backwards.
    #[serde(default)]
    pub generation: u64,
}

/// What to run on the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSubmission {
    /// Job name (letters, digits, `-`, `_`; at most 128).
    pub name: String,
    /// Container command.
    pub command: Vec<String>,
    /// Extra environment.
    pub environment: Vec<(String, String)>,
}

/// A queue job's state as the queue reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    /// Mapped state.
    pub state: JobState,
    /// The queue's own word for it (e.g. `RUNNABLE`).
    pub raw: String,
    /// Status reason, if any.
    pub reason: Option<String>,
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
#[error("job queue {operation}: {message}")]
pub struct QueueError {
    /// submit, find or describe.
    pub operation: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A job queue (AWS Batch).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Submits a job; returns the queue's job id.
    async fn submit(&self, job: &JobSubmission) -> Result<String, QueueError>;
    /// The id of a job submitted under `name` (names are unique per platform job), if the queue
    /// has one: how a retry finds a submission whose outcome was never recorded.
    async fn find(&self, name: &str) -> Result<Option<String>, QueueError>;
    /// The state of a submitted job; `None` when the queue no longer knows it.
    async fn status(&self, queue_job_id: &str) -> Result<Option<QueueStatus>, QueueError>;
    /// Where jobs go, for messages.
    fn describe(&self) -> String;
}
