//! `PUT /v1/models/{name}/traffic`: changes the A/B split without a redeploy.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mlops_domain::traffic::{TrafficSplit, Variant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody};
use crate::routes::json_body;

/// A new split: weight by alias.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"weights": {"champion": 90, "challenger": 10}}))]
pub struct TrafficIn {
    /// Percentage of the traffic (1–100, adding up to 100) for each alias (1 to 8 aliases,
    /// each pointing at a version with an approved card); the heaviest is the primary.
    #[schema(value_type = BTreeMap<String, u32>)]
    pub weights: BTreeMap<String, Weight>,
}

/// A whole-number weight.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Weight(#[serde(deserialize_with = "crate::api::whole_number")] pub u32);

/// The stored split: the same `weights` the route takes, and its revision.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficOut {
    /// Percentage of the traffic by alias (adding up to 100).
    pub weights: BTreeMap<String, u32>,
    /// Revision (increases with every change).
    pub revision: u64,
}

/// Sets the traffic split between aliases (admin scope). Servers pick it up within their
/// refresh interval.
#[utoipa::path(
    put,
    path = "/v1/models/{name}/traffic",
    tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    request_body(content = TrafficIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored split", body = TrafficOut),
        (status = 400, description = "Invalid split (weights not adding up to 100)", body = ErrorBody),
        (status = 409, description = "An alias points at a version whose card is not approved", body = ErrorBody),
        (status = 404, description = "Unknown model or alias", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody)
    )
)]
pub async fn set_traffic(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = json_body(&headers, body, 64 * 1024, state.config.body_timeout).await?;
    let input: TrafficIn = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid traffic split: {e}"))
    })?;
    let mut variants: Vec<Variant> = input
        .weights
        .into_iter()
        .map(|(alias, w)| Variant { alias, weight: w.0 })
        .collect();
    variants.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.alias.cmp(&b.alias)));
    let split = TrafficSplit {
        variants,
        ..TrafficSplit::single("champion")
    };
    let stored = state
        .models
        .registry()
        .set_traffic(&name, &split, "api")
        .await?;
    state.models.refresh().await;
    Ok(Json(TrafficOut {
        weights: stored
            .variants
            .into_iter()
            .map(|v| (v.alias, v.weight))
            .collect(),
        revision: stored.revision,
    })
    .into_response())
}
