//! Retraining requests: a trigger (a schedule, a drift alert, a degraded live metric, or a
//! person) submits the training job to the job queue (AWS Batch) at most once per trigger
//! window, with the data-set version it trains on. The job (`mlops job --spec`) registers the new
//! version and its champion–challenger gate decides promotion.
//!
//! One record per model, trigger and window, `retraining/MODEL/TRIGGER/WINDOW_START.json`,
//! claimed create-only before anything is submitted. The queue job's name is derived from the
//! record, so a retry after a crash between the submission and the record's update finds the
//! job by name instead of submitting it again: every retry converges on one job.

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use crate::jobs::{JobQueue, JobSubmission, QueueError};
use crate::store::{ObjectStore, PutCondition, StoreError};

/// Prefix of the records.
pub const PREFIX: &str = "retraining";
/// Times a lost race on the record is retried before giving up.
const MAX_RACES: usize = 8;

/// What asked for the retraining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A person (`mlops retrain`).
    Manual,
    /// The retraining schedule.
    Schedule,
    /// A data-drift alert.
    Drift,
    /// A degraded (or estimated-degraded) live metric.
    Degraded,
}

impl Trigger {
    /// The name in keys and job names.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Drift => "drift",
            Trigger::Degraded => "degraded",
        }
    }
}

/// Production rows with labels added to the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppendedRows {
    /// The windows of logged predictions they came from.
    pub windows: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Rows appended.
    pub rows: u64,
}

/// One retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainRecord {
    /// Model.
    pub model: String,
    /// Trigger.
    pub trigger: Trigger,
    /// The trigger window this retraining belongs to.
    pub window_start: DateTime<Utc>,
    /// Its end.
    pub window_end: DateTime<Utc>,
    /// The queue job's name (derived from the above).
    pub job_name: String,
    /// The training-job spec the job runs.
    pub spec_uri: String,
    /// The data set it trains on.
    pub data_uri: String,
    /// The data set's version (S3 version id or SHA-256), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<String>,
    /// Production rows added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appended: Option<AppendedRows>,
    /// Why (alert ids and summaries, or a person's note).
    pub reasons: Vec<String>,
    /// The queue's job id once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_job_id: Option<String>,
    /// Children of the training job, when its spec shares the search among workers: it is
    /// submitted as an AWS Batch array job of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<u32>,
    /// When the record was claimed.
    pub created_at: DateTime<Utc>,
}

/// What to retrain.
#[derive(Debug, Clone)]
pub struct RetrainRequest {
    /// Model.
    pub model: String,
    /// Trigger.
    pub trigger: Trigger,
    /// Length of a trigger window (at most one job per window).
    pub window: Duration,
    /// The training-job spec (a store URI or s3://), passed to `mlops job --spec`.
    pub spec_uri: String,
    /// The data set.
    pub data_uri: String,
    /// Its version.
    pub data_version: Option<String>,
    /// Production rows added.
    pub appended: Option<AppendedRows>,
    /// Why.
    pub reasons: Vec<String>,
    /// Children of the training job (the spec's `search.workers`), if more than one.
    pub children: Option<u32>,
}

/// Retraining failures.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A record on the store is not readable.
    #[error("retraining record {key} is unreadable: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Why.
        message: String,
    },
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
}

/// The key of a trigger window's record.
pub fn record_key(model: &str, trigger: Trigger, window_start: DateTime<Utc>) -> String {
    format!(
        "{PREFIX}/{model}/{}/{}.json",
        trigger.name(),
        window_start.format("%Y%m%dT%H%M%SZ")
    )
}

/// Submits retraining, at most once per trigger window: the window's record (with the queue
/// job id) and whether this call submitted the job.
pub async fn request(
    store: &Arc<dyn ObjectStore>,
    queue: &dyn JobQueue,
    request: &RetrainRequest,
    now: DateTime<Utc>,
) -> Result<(RetrainRecord, bool), RetrainError> {
    if request.window <= Duration::zero() {
        return Err(RetrainError::Invalid(
            "the trigger window must be positive".into(),
        ));
    }
    let window_start = now
        .duration_trunc(request.window)
        .map_err(|e| RetrainError::Invalid(format!("trigger window: {e}")))?;
    let key = record_key(&request.model, request.trigger, window_start);
    for _ in 0..MAX_RACES {
        let (mut record, etag) = match store.get(&key).await? {
            Some(object) => {
                let record: RetrainRecord =
                    serde_json::from_slice(&object.bytes).map_err(|e| RetrainError::Corrupt {
                        key: store.uri(&key),
                        message: e.to_string(),
                    })?;
                (record, object.etag)
            }
            None => {
                let record = RetrainRecord {
                    model: request.model.clone(),
                    trigger: request.trigger,
                    window_start,
                    window_end: window_start + request.window,
                    job_name: job_name(&request.model, request.trigger, window_start),
                    spec_uri: request.spec_uri.clone(),
                    data_uri: request.data_uri.clone(),
                    data_version: request.data_version.clone(),
                    appended: request.appended.clone(),
                    reasons: request.reasons.clone(),
                    queue_job_id: None,
                    children: request.children,
                    created_at: now,
                };
                let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
                match store.put(&key, bytes, PutCondition::IfAbsent).await {
                    Ok(etag) => (record, etag),
                    Err(StoreError::PreconditionFailed { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if record.queue_job_id.is_some() {
            return Ok((record, false));
        }
        // Claimed but not known to be submitted: find the job by name, else submit it.
        let (id, submitted) = match queue.find(&record.job_name).await? {
            Some(id) => (id, false),
            None => (queue.submit(&submission(&record)).await?, true),
        };
        record.queue_job_id = Some(id);
        let bytes = serde_json::to_vec_pretty(&record).expect("records serialize");
        match store.put(&key, bytes, PutCondition::IfMatch(etag)).await {
            Ok(_) => return Ok((record, submitted)),
            Err(StoreError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RetrainError::Invalid(format!(
        "retraining record {} kept changing under {MAX_RACES} attempts",
        store.uri(&key)
    )))
}

/// The queue job name of a window (AWS Batch: up to 128 letters, digits, - and _).
fn job_name(model: &str, trigger: Trigger, window_start: DateTime<Utc>) -> String {
    let name = format!(
        "retrain-{model}-{}-{}",
        trigger.name(),
        window_start.format("%Y%m%dT%H%M%SZ")
    );
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

/// The training job of a record: `mlops job --spec SPEC`.
fn submission(record: &RetrainRecord) -> JobSubmission {
    JobSubmission {
        name: record.job_name.clone(),
        command: vec![
            "mlops".into(),
            "job".into(),
            "--spec".into(),
            record.spec_uri.clone(),
        ],
        environment: vec![
            ("MLOPS_RETRAIN_TRIGGER".into(), record.trigger.name().into()),
            (
                "MLOPS_RETRAIN_WINDOW".into(),
                record.window_start.to_rfc3339(),
            ),
        ],
        array_size: record.children.filter(|&n| n > 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_batch_safe_and_keys_name_the_window() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T07:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            job_name("m.x", Trigger::Drift, t),
            "retrain-m-x-drift-20261201T070000Z"
        );
        assert_eq!(
            record_key("m", Trigger::Schedule, t),
            "retraining/m/schedule/20261201T070000Z.json"
        );
        let record = RetrainRecord {
            model: "m".into(),
            trigger: Trigger::Manual,
            window_start: t,
            window_end: t,
            job_name: "j".into(),
            spec_uri: "s3://b/spec.toml".into(),
            data_uri: "s3://b/data.csv".into(),
            data_version: None,
            appended: None,
            reasons: Vec::new(),
            queue_job_id: None,
            children: None,
            created_at: t,
        };
        assert_eq!(
            submission(&record).command,
            ["mlops", "job", "--spec", "s3://b/spec.toml"]
        );
        assert_eq!(submission(&record).array_size, None);
        let shared = RetrainRecord {
            children: Some(4),
            ..record
        };
        assert_eq!(submission(&shared).array_size, Some(4));
    }
}
