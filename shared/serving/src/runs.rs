//! `GET /v1/runs` and `GET /v1/runs/{id}`: training runs and search trials read back from the
//! tracker (the local run log, or MLflow) for the console's training page.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use mlops_domain::tracking::{RunRecord, TrackingError};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody, QueryParams, count_param, query_params};

/// Runs listed unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 200;

/// Runs of an experiment.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RunList {
    /// Newest first; search trials name their training run in `parent_run_id`.
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<RunRecord>,
}

fn tracker_error(e: TrackingError) -> ApiError {
    match e {
        TrackingError::NotFound(_) => ApiError::not_found(e.to_string()),
        other => ApiError::unavailable("tracking_unavailable", "the tracking runs", other),
    }
}

fn reader(state: &AppState) -> Result<&Arc<dyn mlops_domain::tracking::RunReader>, ApiError> {
    state.runs.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "no tracker is configured here (mlops serve reads its run log or MLFLOW_TRACKING_URI)",
        )
    })
}

/// The newest runs of an experiment (an experiment is named after its model unless training
/// was given `--experiment`).
#[utoipa::path(get, path = "/v1/runs", tag = "admin",
    params(
        ("experiment" = String, Query, min_length = 1, max_length = 256, pattern = "\\S", description = "Experiment name"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Most runs, 1 to 1000 (default 200)")
    ),
    responses(
        (status = 200, description = "Runs", body = RunList),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "No tracker configured", body = ErrorBody),
        (status = 503, description = "The tracker cannot be read", body = ErrorBody)
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    query: QueryParams,
) -> Result<Json<RunList>, ApiError> {
    let query = query_params(query)?;
    let experiment = query
        .get("experiment")
        .filter(|e| !e.trim().is_empty() && e.chars().count() <= 256)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_query", "query parameter experiment: name one")
        })?;
    let limit = count_param(
        query.get("limit").map(String::as_str),
        "limit",
        1..=1000,
        DEFAULT_LIMIT,
    )?;
    let runs = reader(&state)?
        .runs(experiment, limit)
        .await
        .map_err(tracker_error)?;
    Ok(Json(RunList { runs }))
}

/// One run with every metric's history (GPU telemetry, the search's best score by trial).
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "admin",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,200}$", description = "Run id")),
    responses(
        (status = 200, description = "The run", body = Object),
        (status = 400, description = "Invalid run id", body = ErrorBody),
        (status = 404, description = "Unknown run, or no tracker configured", body = ErrorBody),
        (status = 503, description = "The tracker cannot be read", body = ErrorBody)
    ))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    if id.is_empty()
        || id.len() > 200
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            "run id: letters, digits, '-', '_' and '.' only",
        ));
    }
    Ok(Json(reader(&state)?.run(&id).await.map_err(tracker_error)?))
}
