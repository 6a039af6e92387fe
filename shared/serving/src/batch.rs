//! Batch-prediction jobs: `POST /v1/batch-jobs` submits a job to the queue (AWS Batch) for an
//! input CSV on S3, or hands back a presigned PUT URL for the input and submits on
//! `POST /v1/batch-jobs/{id}/start`; `GET /v1/batch-jobs/{id}` reports status, progress (from the
//! job's checkpoint) and the results URI.
//!
//! Retries are safe: with an `Idempotency-Key` header, the first request claims the key
//! (create-only write) and every retry with the same body gets the same job; the same key with a
//! different body is refused (409). A job record is advanced only by compare-and-swap, so two
//! concurrent retries never submit twice.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::{
    BatchJob, Checkpoint, JobQueue, JobState, JobSubmission, checkpoint_key, idempotency_key,
    input_key, job_key, output_prefix,
};
use mlops_domain::registry::check_name;
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody};
use crate::routes::json_body;

/// How long a presigned upload URL is valid.
const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);
/// A job stuck in `submitting` this long (its submitter died) may be taken over by a retry.
const SUBMIT_TAKEOVER: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// A batch-prediction request.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "california_housing", "alias": "champion", "input_uri": "s3://my-bucket/inputs/houses.csv"}))]
pub struct BatchJobRequest {
    /// Model name.
    pub model: String,
    /// Alias to resolve (default `champion`); resolved once, at submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Exact version (instead of an alias).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::optional_whole_number"
    )]
    #[schema(minimum = 1)]
    pub version: Option<u64>,
    /// `s3://bucket/key.csv` of the input; omit it to get a presigned upload URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_uri: Option<String>,
}

/// Progress read from the job's checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    /// Rows processed.
    pub rows_done: u64,
    /// Rows in total, once known.
    pub rows_total: Option<u64>,
    /// Rows rejected (in the errors file).
    pub rows_rejected: u64,
    /// Output parts committed.
    pub parts: usize,
    /// rows_done / rows_total.
    pub fraction: Option<f64>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchJobOut {
    /// Job id.
    pub id: String,
    /// Model.
    pub model: String,
    /// Version that predicts.
    pub version: u64,
    /// Alias resolved at submission.
    pub alias: Option<String>,
    /// awaiting_upload, submitting, queued, running, succeeded or failed.
    pub state: String,
    /// The queue's own state (e.g. RUNNABLE).
    pub queue_state: Option<String>,
    /// Failure reason.
    pub reason: Option<String>,
    /// Input CSV.
    pub input_uri: String,
    /// Output prefix.
    pub output_uri: String,
    /// Presigned PUT URL for the input (only in the response that created the job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_url: Option<String>,
    /// Progress, once the job has written a checkpoint.
    pub progress: Option<Progress>,
    /// Where the results are, once complete.
    pub results_uri: Option<String>,
    /// Created.
    pub created_at: chrono::DateTime<Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<Utc>,
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
    )
}

fn queue(state: &AppState) -> Result<&Arc<dyn JobQueue>, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_job_queue",
            "batch jobs are not configured here (set MLOPS_BATCH_QUEUE and MLOPS_BATCH_JOB_DEFINITION)",
        )
    })
}

async fn read_job(store: &dyn ObjectStore, id: &str) -> Result<Option<(BatchJob, ETag)>, ApiError> {
    let key = job_key(id);
    match store.get(&key).await.map_err(store_error)? {
        Some(obj) => {
            let job: BatchJob = serde_json::from_slice(&obj.bytes)
                .map_err(|e| ApiError::internal(format!("job record {key} is corrupt: {e}")))?;
            Ok(Some((job, obj.etag)))
        }
        None => Ok(None),
    }
}

fn check_job_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "batch job '{}' not found (ids are 32 hex digits)",
            id.chars().take(40).collect::<String>()
        )))
    }
}

/// Submits a job whose record is in `submitting` (or whose submitter died), by compare-and-swap
/// so only one caller submits.
async fn submit(state: &AppState, mut job: BatchJob, etag: ETag) -> Result<BatchJob, ApiError> {
    let store = state.models.registry().store();
    let jobs = queue(state)?;
    // Claim the submission.
    job.state = JobState::Submitting;
    job.updated_at = Utc::now();
    let claimed = match store
        .put(&job_key(&job.id), json(&job), PutCondition::IfMatch(etag))
        .await
    {
        Ok(tag) => tag,
        Err(StoreError::PreconditionFailed { .. }) => {
            // Someone else advanced it; report theirs.
            return read_job(&**store, &job.id)
                .await?
                .map(|(j, _)| j)
                .ok_or_else(|| ApiError::internal("job record vanished"));
        }
        Err(e) => return Err(store_error(e)),
    };
    let submission = JobSubmission {
        name: format!("mlops-batch-{}", job.id),
        command: vec![
            "mlops".into(),
            "batch-predict".into(),
            "--job".into(),
            store.uri(&job_key(&job.id)),
        ],
        environment: vec![
            ("MLOPS_JOB_ID".into(), job.id.clone()),
            ("MLOPS_STORE".into(), store.describe()),
        ],
    };
    let result = jobs.submit(&submission).await;
    match &result {
        Ok(queue_id) => {
            job.state = JobState::Queued;
            job.queue_job_id = Some(queue_id.clone());
        }
        Err(e) => {
            job.state = JobState::Failed;
            job.reason = Some(format!("submission failed: {e}"));
        }
    }
    job.updated_at = Utc::now();
    store
        .put(
            &job_key(&job.id),
            json(&job),
            PutCondition::IfMatch(claimed),
        )
        .await
        .map_err(store_error)?;
    if let Err(e) = result {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "queue_unavailable",
            format!("{}: {e}", jobs.describe()),
        ));
    }
    tracing::info!(job = %job.id, queue_job = ?job.queue_job_id, model = %job.model, version = job.version, "batch job submitted");
    Ok(job)
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("records serialize")
}

#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    job_id: String,
    request_sha256: String,
}

/// Submits a batch-prediction job (admin scope).
#[utoipa::path(
    post,
    path = "/v1/batch-jobs",
    tag = "batch",
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key and body return the same job")),
    request_body(content = BatchJobRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, awaiting the upload", body = BatchJobOut),
        (status = 202, description = "Submitted", body = BatchJobOut),
        (status = 200, description = "The job this idempotency key already created", body = BatchJobOut),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "Unknown model, alias or version", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with another body", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 502, description = "The queue refused the job", body = ErrorBody)
    )
)]
pub async fn create_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = json_body(&headers, body, 16 * 1024).await?;
    let request: BatchJobRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid batch job request: {e}"))
    })?;
    check_name("model", &request.model)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    if request.alias.is_some() && request.version.is_some() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give either alias or version, not both",
        ));
    }
    if let Some(uri) = &request.input_uri {
        let ok = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(bucket, key)| {
                !bucket.is_empty() && !key.is_empty() && uri.len() <= 1024
            });
        if !ok {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "input_uri '{}' is not s3://bucket/key",
                    uri.chars().take(100).collect::<String>()
                ),
            ));
        }
    }
    let idempotency = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| (1..=255).contains(&k.len()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Idempotency-Key must be 1–255 visible ASCII characters",
                    )
                })?;
            Some(k.to_owned())
        }
        None => None,
    };
    let registry = state.models.registry();
    let store = registry.store();
    let (version, alias) = match request.version {
        Some(v) => {
            registry.version(&request.model, v).await?;
            (v, None)
        }
        None => {
            let alias = request
                .alias
                .clone()
                .unwrap_or_else(|| state.config.default_alias.clone());
            (registry.resolve(&request.model, &alias).await?, Some(alias))
        }
    };
    let request_sha256 = sha256_hex(&json(&request));
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Some(key) = &idempotency {
        let claim_key = idempotency_key(&sha256_hex(key.as_bytes()));
        let claim = Claim {
            job_id: id.clone(),
            request_sha256: request_sha256.clone(),
        };
        match store
            .put(&claim_key, json(&claim), PutCondition::IfAbsent)
            .await
        {
            Ok(_) => {}
            Err(StoreError::PreconditionFailed { .. }) => {
                let obj = store
                    .get(&claim_key)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| ApiError::internal("idempotency claim vanished"))?;
                let earlier: Claim = serde_json::from_slice(&obj.bytes).map_err(|e| {
                    ApiError::internal(format!("claim {claim_key} is corrupt: {e}"))
                })?;
                if earlier.request_sha256 != request_sha256 {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_conflict",
                        "this Idempotency-Key was used for a different request",
                    ));
                }
                return match read_job(&**store, &earlier.job_id).await? {
                    Some((job, etag)) => {
                        let stale = job.state == JobState::Submitting
                            && job.queue_job_id.is_none()
                            && Utc::now() - job.updated_at > SUBMIT_TAKEOVER;
                        let job = if stale {
                            submit(&state, job, etag).await?
                        } else {
                            job
                        };
                        Ok((StatusCode::OK, Json(view(&state, job, None).await?)).into_response())
                    }
                    None => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "in_progress",
                        "a request with this Idempotency-Key is still being processed; retry shortly",
                    )),
                };
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    let now = Utc::now();
    let upload = request.input_uri.is_none();
    let mut job = BatchJob {
        id: id.clone(),
        model: request.model.clone(),
        version,
        alias,
        input_uri: request
            .input_uri
            .clone()
            .unwrap_or_else(|| store.uri(&input_key(&id))),
        output_uri: store.uri(&output_prefix(&id)),
        state: if upload {
            JobState::AwaitingUpload
        } else {
            JobState::Submitting
        },
        queue_job_id: None,
        reason: None,
        request_sha256,
        created_at: now,
        updated_at: now,
    };
    let upload_url = if upload {
        let url = store
            .presign_put(&input_key(&id), UPLOAD_URL_TTL)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::bad_request(
                    "no_uploads",
                    format!(
                        "{} cannot hand out upload URLs: give input_uri",
                        store.describe()
                    ),
                )
            })?;
        Some(url)
    } else {
        queue(&state)?;
        None
    };
    let etag = store
        .put(&job_key(&id), json(&job), PutCondition::IfAbsent)
        .await
        .map_err(store_error)?;
    if upload {
        return Ok((
            StatusCode::CREATED,
            Json(view(&state, job, upload_url).await?),
        )
            .into_response());
    }
    job = submit(&state, job, etag).await?;
    Ok((StatusCode::ACCEPTED, Json(view(&state, job, None).await?)).into_response())
}

/// Submits a job once its input is uploaded (admin scope).
#[utoipa::path(
    post,
    path = "/v1/batch-jobs/{id}/start",
    tag = "batch",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 202, description = "Submitted (or already submitted)", body = BatchJobOut),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The input has not been uploaded", body = ErrorBody)
    )
)]
pub async fn start_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_job_id(&id)?;
    let store = state.models.registry().store();
    let (job, etag) = read_job(&**store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("batch job '{id}' not found")))?;
    let job = if job.state == JobState::AwaitingUpload {
        let uploaded = store.list(&input_key(&id)).await.map_err(store_error)?;
        if !uploaded.iter().any(|k| *k == input_key(&id)) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "input_missing",
                format!("the input has not been uploaded to {} yet", job.input_uri),
            ));
        }
        submit(&state, job, etag).await?
    } else {
        job
    };
    Ok((StatusCode::ACCEPTED, Json(view(&state, job, None).await?)).into_response())
}

/// Status, progress and results of a job (admin scope).
#[utoipa::path(
    get,
    path = "/v1/batch-jobs/{id}",
    tag = "batch",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = BatchJobOut),
        (status = 404, description = "Unknown job", body = ErrorBody)
    )
)]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_job_id(&id)?;
    let store = state.models.registry().store();
    let (job, _) = read_job(&**store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("batch job '{id}' not found")))?;
    Ok(Json(view(&state, job, None).await?).into_response())
}

/// The API view: the record, the queue's live state and the checkpoint's progress.
async fn view(
    state: &AppState,
    mut job: BatchJob,
    upload_url: Option<String>,
) -> Result<BatchJobOut, ApiError> {
    let store = state.models.registry().store();
    let mut queue_state = None;
    if let (Some(queue_id), Some(jobs)) = (&job.queue_job_id, &state.jobs)
        && matches!(job.state, JobState::Queued | JobState::Running)
    {
        match jobs.status(queue_id).await {
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
    let checkpoint = match store
        .get(&checkpoint_key(&job.id))
        .await
        .map_err(store_error)?
    {
        Some(obj) => serde_json::from_slice::<Checkpoint>(&obj.bytes).ok(),
        None => None,
    };
    let complete = checkpoint.as_ref().is_some_and(|c| c.complete);
    let progress = checkpoint.map(|c| Progress {
        rows_done: c.rows_done,
        rows_total: c.rows_total,
        rows_rejected: c.rows_rejected,
        parts: c.parts.len(),
        fraction: c
            .rows_total
            .filter(|&t| t > 0)
            .map(|t| c.rows_done as f64 / t as f64),
    });
    let state_name = serde_json::to_value(job.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(BatchJobOut {
        results_uri: (complete || job.state == JobState::Succeeded).then(|| job.output_uri.clone()),
        id: job.id,
        model: job.model,
        version: job.version,
        alias: job.alias,
        state: state_name,
        queue_state,
        reason: job.reason,
        input_uri: job.input_uri,
        output_uri: job.output_uri,
        upload_url,
        progress,
        created_at: job.created_at,
        updated_at: job.updated_at,
    })
}
