//! Batch-prediction jobs: `POST /v1/batch-jobs` submits a job to the queue (AWS Batch) for an
//! input CSV on S3, or hands back a presigned PUT URL for the input and submits on
//! `POST /v1/batch-jobs/{id}/start`; `GET /v1/batch-jobs/{id}` reports status, progress (from the
//! job's checkpoint) and the results URI.
//!
//! The state machine is [`mlops_domain::batch_jobs::BatchJobs`]; this module maps requests and
//! errors. Retries are safe: with an `Idempotency-Key` header every retry with the same body
//! addresses the same job and finishes its submission; the same key with a different body is
//! refused (409).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use mlops_domain::batch_jobs::{BatchJobError, JobView, NewJob};
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::JobState;
use mlops_domain::registry::check_name;
use mlops_domain::store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody};
use crate::routes::json_body;

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
    /// Spread the job over an AWS Batch array job of this many containers, each predicting a
    /// contiguous share of the output (the same output as one container). Default 1.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::api::optional_whole_number"
    )]
    #[schema(minimum = 1, maximum = 10000)]
    pub shards: Option<u32>,
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
    /// rows_done / rows_total once known, else the share of the input's bytes read.
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
    /// Containers of the array job that runs it (absent: one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Presigned PUT URL for the input (only in the response that created the job; valid for
    /// 5 minutes and for one upload: send it with `upload_headers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_url: Option<String>,
    /// Headers the upload must carry (signed into the URL): `If-None-Match: *`, so the URL
    /// creates the input once and cannot replace it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub upload_headers: Option<BTreeMap<String, String>>,
    /// Progress, once the job has written a checkpoint.
    pub progress: Option<Progress>,
    /// Where the results are, once complete.
    pub results_uri: Option<String>,
    /// Created.
    pub created_at: chrono::DateTime<Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<Utc>,
}

/// Most children of one AWS Batch array job.
pub const MAX_SHARDS: u32 = 10_000;

fn store_error(e: StoreError) -> ApiError {
    ApiError::unavailable("store_unavailable", "the job store", e)
}

impl From<BatchJobError> for ApiError {
    fn from(e: BatchJobError) -> Self {
        let message = e.to_string();
        match e {
            BatchJobError::NoQueue => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_job_queue", message)
            }
            BatchJobError::NoUploads(_) => ApiError::bad_request("no_uploads", message),
            BatchJobError::InputNotAllowed { .. } => {
                ApiError::bad_request("input_not_allowed", message)
            }
            BatchJobError::IdempotencyConflict => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message)
            }
            BatchJobError::NotFound(_) => ApiError::not_found(message),
            BatchJobError::InputMissing(_) => {
                ApiError::new(StatusCode::CONFLICT, "input_missing", message)
            }
            BatchJobError::Queue { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "queue_unavailable", message)
            }
            BatchJobError::Store(e) => store_error(e),
            BatchJobError::Corrupt { .. } => ApiError::internal(message),
        }
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

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("records serialize")
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
    let bytes = json_body(&headers, body, 16 * 1024, state.config.body_timeout).await?;
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
    if request
        .shards
        .is_some_and(|n| !(1..=MAX_SHARDS).contains(&n))
    {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!(
                "shards must be from 1 to {MAX_SHARDS} (the children of one AWS Batch array job)"
            ),
        ));
    }
    if let Some(uri) = &request.input_uri {
        let s3 = uri
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(bucket, key)| !bucket.is_empty() && !key.is_empty());
        // A local store (`mlops serve`) takes a file path under it.
        let local_store = state
            .batch_jobs
            .input_prefixes()
            .iter()
            .any(|p| p.starts_with('/'));
        let path = local_store
            && uri.starts_with('/')
            && !uri.split('/').any(|part| part == ".." || part == ".");
        let ok = (s3 || path) && uri.len() <= 1024;
        if !ok {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "input_uri '{}' is not s3://bucket/key (or, on a local store, a file path under it)",
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
    let new = NewJob {
        model: request.model.clone(),
        version,
        alias,
        input_uri: request.input_uri.clone(),
        shards: request.shards.filter(|n| *n > 1),
        request_sha256: sha256_hex(&json(&request)),
    };
    let created = state.batch_jobs.create(new, idempotency.as_deref()).await?;
    let status = if created.existing {
        StatusCode::OK
    } else if created.upload_url.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::ACCEPTED
    };
    let view = state.batch_jobs.view(created.job).await?;
    Ok((status, Json(out(view, created.upload_url))).into_response())
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
    let job = state.batch_jobs.start(&id).await?;
    let view = state.batch_jobs.view(job).await?;
    Ok((StatusCode::ACCEPTED, Json(out(view, None))).into_response())
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
    let view = state.batch_jobs.get(&id).await?;
    Ok(Json(out(view, None)).into_response())
}

/// Recent jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchJobList {
    /// The newest 100 jobs, newest first; those queued or running with their queue state and
    /// progress.
    pub jobs: Vec<BatchJobOut>,
}

/// The newest jobs (admin scope).
#[utoipa::path(
    get,
    path = "/v1/batch-jobs",
    tag = "batch",
    responses((status = 200, description = "Recent jobs", body = BatchJobList))
)]
pub async fn list_jobs(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut jobs = Vec::new();
    for job in state.batch_jobs.recent(100).await? {
        // Jobs still in the queue are asked about (their state and progress); finished ones are
        // shown as recorded.
        let view = if matches!(job.state, JobState::Queued | JobState::Running) {
            state.batch_jobs.view(job).await?
        } else {
            JobView {
                job,
                queue_state: None,
                checkpoint: None,
            }
        };
        jobs.push(out(view, None));
    }
    Ok(Json(BatchJobList { jobs }).into_response())
}

/// The API view of a job.
fn out(view: JobView, upload_url: Option<String>) -> BatchJobOut {
    let JobView {
        job,
        queue_state,
        checkpoint,
    } = view;
    let complete = checkpoint.as_ref().is_some_and(|c| c.complete);
    let progress = checkpoint.map(|c| Progress {
        rows_done: c.rows_done,
        rows_total: c.rows_total,
        rows_rejected: c.rows_rejected,
        parts: c.parts.len(),
        // Rows are counted as they are read; until the end, progress is the input's bytes.
        fraction: match (c.rows_total, c.input_bytes) {
            (Some(t), _) if t > 0 => Some(c.rows_done as f64 / t as f64),
            (None, Some(b)) if b > 0 => Some((c.input_offset as f64 / b as f64).min(1.0)),
            _ => None,
        },
    });
    let state_name = serde_json::to_value(job.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    BatchJobOut {
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
        shards: job.shards,
        upload_headers: upload_url
            .is_some()
            .then(|| BTreeMap::from([("If-None-Match".to_string(), "*".to_string())])),
        upload_url,
        progress,
        created_at: job.created_at,
        updated_at: job.updated_at,
    }
}
