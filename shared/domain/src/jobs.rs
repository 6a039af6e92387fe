//! Batch-prediction jobs: the job record the API keeps in the store, the checkpoint the job
//! writes after each committed output part (progress is read from it), and the job-queue port
//! (AWS Batch on AWS).
//!
//! Layout under the store root, per job `ID`:
//! - `batch-jobs/ID/job.json`: the [`BatchJob`] record;
//! - `batch-jobs/ID/input.csv`: the input, when uploaded through a presigned URL;
//! - `batch-jobs/ID/output/part-NNNNN.csv` and `batch-jobs/ID/output/_checkpoint.json`;
//! - for a job sharded over an array job: `batch-jobs/ID/output/_shards.json` (the
//!   [`ShardPlan`]), `_shards.lock` while a child makes it, and
//!   `batch-jobs/ID/output/_checkpoint-SSSSS.json`, one per shard;
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

/// Name of a sharded job's plan inside its output prefix.
pub const SHARD_PLAN: &str = "_shards.json";

/// Name of the lease the child making a sharded job's plan holds, inside the output prefix.
pub const SHARD_PLAN_LOCK: &str = "_shards.lock";

/// Name of one shard's checkpoint inside the output prefix.
pub fn shard_checkpoint_name(index: u32) -> String {
    format!("_checkpoint-{index:05}.json")
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
    /// Children of the AWS Batch array job that runs it (each predicts a contiguous share of
    /// the output's parts); absent for one container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
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

/// Where one output part starts in the input: what a run resuming there needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartStart {
    /// Index of the part (`part-NNNNN.csv`).
    pub part: u64,
    /// Input rows before it.
    pub rows_before: u64,
    /// Byte offset of its first row.
    pub offset: u64,
    /// Input lines (header included) before that offset.
    pub lines: u64,
}

/// How a sharded batch-prediction job splits its input: the parts a single run would write
/// (cut by the same rule, so the output is the same for any number of shards), dealt out in
/// contiguous runs. The first child to start writes it, create-only; every child reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The job's fingerprint (the checkpoint's): a plan for another job is never used.
    pub fingerprint: String,
    /// Size of the input in bytes.
    pub input_bytes: u64,
    /// Where the input ends, as if a part started there: `part` is the number of parts,
    /// `rows_before` the number of rows.
    pub end: PartStart,
    /// Where each shard starts; shard `i` writes the parts from `shards[i].part` up to where
    /// the next shard (or the input) starts.
    pub shards: Vec<PartStart>,
}

impl ShardPlan {
    /// Deals `parts` (the start of every part, in order; the input ends at `end`) out to
    /// `shards` shards as evenly as contiguous runs allow; with fewer parts than shards, some
    /// shards get none.
    pub fn new(
        fingerprint: String,
        parts: &[PartStart],
        end: PartStart,
        input_bytes: u64,
        shards: u32,
    ) -> Self {
        let total = parts.len() as u64;
        let starts = (0..u64::from(shards))
            .map(|i| {
                let first = (u128::from(i) * u128::from(total) / u128::from(shards)) as u64;
                parts.get(first as usize).copied().unwrap_or(end)
            })
            .collect();
        Self {
            fingerprint,
            input_bytes,
            end,
            shards: starts,
        }
    }

    /// Where shard `index`'s share ends: the next shard's start, or the input's end.
    pub fn end_of(&self, index: u32) -> PartStart {
        self.shards
            .get(index as usize + 1)
            .copied()
            .unwrap_or(self.end)
    }

    /// The parts shard `index` writes.
    pub fn parts_of(&self, index: u32) -> u64 {
        self.shards
            .get(index as usize)
            .map_or(0, |s| self.end_of(index).part - s.part)
    }

    /// The job's progress over its shards' checkpoints (`None` where a shard has not started):
    /// rows and rejections summed, parts in order, complete once every shard is.
    pub fn progress(&self, shards: &[Option<Checkpoint>]) -> Checkpoint {
        let started: Vec<&Checkpoint> = shards.iter().flatten().collect();
        let complete = started.len() == self.shards.len() && started.iter().all(|c| c.complete);
        Checkpoint {
            rows_done: started.iter().map(|c| c.rows_done).sum(),
            rows_total: Some(self.end.rows_before),
            parts: started.iter().flat_map(|c| c.parts.clone()).collect(),
            rows_rejected: started.iter().map(|c| c.rows_rejected).sum(),
            complete,
            fingerprint: self.fingerprint.clone(),
            input_offset: if complete { self.end.offset } else { 0 },
            input_lines: if complete { self.end.lines } else { 0 },
            input_bytes: Some(self.input_bytes),
            generation: 0,
        }
    }
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
    /// Children of an array job (each gets `AWS_BATCH_JOB_ARRAY_INDEX`); `None` for one job.
    pub array_size: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: u64) -> Vec<PartStart> {
        (0..n)
            .map(|p| PartStart {
                part: p,
                rows_before: p * 10,
                offset: 7 + p * 100,
                lines: 1 + p * 10,
            })
            .collect()
    }

    fn end(parts: u64) -> PartStart {
        PartStart {
            part: parts,
            rows_before: parts * 10,
            offset: 7 + parts * 100,
            lines: 1 + parts * 10,
        }
    }

    #[test]
    fn a_plan_deals_every_part_to_exactly_one_shard() {
        for (total, shards) in [(100, 8), (7, 3), (3, 8), (1, 1), (0, 4), (16, 16)] {
            let plan = ShardPlan::new("f".into(), &parts(total), end(total), 9999, shards);
            assert_eq!(plan.shards.len(), shards as usize);
            let dealt: u64 = (0..shards).map(|i| plan.parts_of(i)).sum();
            assert_eq!(dealt, total, "{total} parts over {shards}");
            let mut next = 0;
            for i in 0..shards {
                let s = plan.shards[i as usize];
                assert_eq!(s.part, next, "shard {i} starts where the last ended");
                assert_eq!(s.rows_before, s.part * 10);
                next += plan.parts_of(i);
                let (fewest, most) = (total / u64::from(shards), total.div_ceil(u64::from(shards)));
                assert!((fewest..=most).contains(&plan.parts_of(i)));
            }
        }
        // With fewer parts than shards, some shards write nothing; every part is dealt once.
        let plan = ShardPlan::new("f".into(), &parts(3), end(3), 9999, 8);
        let writing: Vec<u32> = (0..8).filter(|i| plan.parts_of(*i) > 0).collect();
        assert_eq!(writing, [2, 5, 7]);
        assert_eq!(plan.shards[7].offset, 207);
        assert_eq!(plan.end_of(7), end(3));
        assert_eq!(plan.parts_of(8), 0);
        // No parts at all (an input with a header only): every shard starts at the end.
        let empty = ShardPlan::new("f".into(), &[], end(0), 50, 2);
        assert_eq!(empty.shards[1], end(0));
    }

    #[test]
    fn progress_sums_the_shards_and_completes_with_the_last() {
        let plan = ShardPlan::new("f".into(), &parts(4), end(4), 500, 2);
        let shard = |parts: &[&str], rows, complete| Checkpoint {
            rows_done: rows,
            parts: parts.iter().map(|p| p.to_string()).collect(),
            rows_rejected: 1,
            complete,
            input_lines: 41,
            ..Checkpoint::default()
        };
        let partial = plan.progress(&[None, Some(shard(&["part-00002.csv"], 10, false))]);
        assert_eq!(
            (partial.rows_done, partial.rows_total, partial.complete),
            (10, Some(40), false)
        );
        let whole = plan.progress(&[
            Some(shard(&["part-00000.csv", "part-00001.csv"], 20, true)),
            Some(shard(&["part-00002.csv", "part-00003.csv"], 20, true)),
        ]);
        assert!(whole.complete);
        assert_eq!(whole.rows_done, 40);
        assert_eq!(whole.rows_rejected, 2);
        assert_eq!(whole.parts[3], "part-00003.csv");
        assert_eq!((whole.input_offset, whole.input_lines), (407, 41));
    }
}
