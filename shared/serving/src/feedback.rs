//! `POST /v1/models/{name}/feedback`: ground truth for served predictions, stored as one
//! feedback object per request beside the prediction logs ([`mlops_domain::feedback`]), where
//! the monitor joins it to the predictions by request id and record.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mlops_domain::feedback::{self, Feedback};
use mlops_domain::predlog;
use mlops_domain::store::PutCondition;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody, current_request_id};
use crate::routes::{json_body, records, served_routes, validate_each};

/// One label.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"request_id": "6f1c2d0e-7a9b-4c1e-9d55-0b7f3a2e8c41", "record": 1, "actual": 452600, "observed_at": "2026-12-01T07:00:00Z"}))]
pub struct FeedbackIn {
    /// The `request_id` of the prediction.
    pub request_id: String,
    /// 1-based number of the record in that request (default 1).
    pub record: Option<u32>,
    /// The true outcome: for regression the target column's value as in the training data;
    /// for classification a class name of the target, true/false or 1/0.
    #[schema(value_type = Object)]
    pub actual: serde_json::Value,
    /// When the outcome was observed (RFC 3339; default: when received).
    pub observed_at: Option<String>,
}

/// A feedback request: one label, or a list of labels (at most the configured limit, 1,000 by
/// default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FeedbackRequest {
    /// One label.
    One(FeedbackIn),
    /// Several labels.
    Many(Vec<FeedbackIn>),
}

/// What was stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackOut {
    /// Model.
    pub model: String,
    /// Labels stored (sending one again is harmless: one label per request id and record counts).
    pub accepted: usize,
    /// This request's id.
    pub request_id: String,
}

/// Stores ground truth for served predictions: one label or a list, each naming the
/// prediction's request id and record. Labels may come any time after the prediction; the
/// monitor counts them in the prediction's window.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/feedback",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    request_body(content = FeedbackRequest, content_type = "application/json", description = "One label object, or a list of them"),
    responses(
        (status = 202, description = "Stored; joined to the predictions by the monitor", body = FeedbackOut),
        (status = 400, description = "Malformed body, invalid fields or too many labels", body = ErrorBody),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "No model loaded yet, or the store cannot be written", body = ErrorBody)
    )
)]
pub async fn post_feedback(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = json_body(
        &headers,
        body,
        state.config.max_body_bytes,
        state.config.body_timeout,
    )
    .await?;
    let routes = served_routes(&state, &name)?;
    let (items, _single) = records(&bytes, state.config.max_records)?;
    let model = routes
        .by_alias
        .values()
        .next()
        .ok_or_else(|| ApiError::internal(format!("model '{name}' has no loaded variant")))?;
    let schema = &model.manifest.schema;
    let now = chrono::Utc::now();
    let labels: Vec<Feedback> =
        validate_each(&items, |item| feedback::from_json(schema, item, now))?;
    let request_id = current_request_id();
    let key = predlog::object_key_under(
        feedback::PREFIX,
        &name,
        now,
        &uuid::Uuid::new_v4().to_string(),
    );
    let body = predlog::encode(&feedback::to_lines(&labels));
    state
        .models
        .registry()
        .store()
        .put(&key, body, PutCondition::None)
        .await
        .map_err(|e| ApiError::unavailable("store_unavailable", "the feedback store", e))?;
    let out = FeedbackOut {
        model: name,
        accepted: labels.len(),
        request_id,
    };
    Ok((StatusCode::ACCEPTED, Json(out)).into_response())
}
