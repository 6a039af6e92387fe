//! `PUT /v1/models/{name}/traffic`: changes the A/B split without a redeploy.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mlops_domain::registry::RegistryError;
use mlops_domain::traffic::{TrafficSplit, Variant};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody};
use crate::routes::json_body;

/// One arm of a split.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantIn {
    /// Alias (must exist).
    pub alias: String,
    /// Relative weight, 0–10000.
    pub weight: u32,
}

/// A new split.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"variants": [{"alias": "champion", "weight": 90}, {"alias": "challenger", "weight": 10}]}))]
pub struct TrafficIn {
    /// Arms.
    pub variants: Vec<VariantIn>,
}

/// The stored split.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrafficOut {
    /// Arms.
    pub variants: Vec<VariantIn>,
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
        (status = 400, description = "Invalid split", body = ErrorBody),
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
    let bytes = json_body(&headers, body, 64 * 1024).await?;
    let input: TrafficIn = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid traffic split: {e}"))
    })?;
    let split = TrafficSplit {
        variants: input
            .variants
            .into_iter()
            .map(|v| Variant {
                alias: v.alias,
                weight: v.weight,
            })
            .collect(),
        ..TrafficSplit::single("champion")
    };
    let stored = state
        .models
        .registry()
        .set_traffic(&name, &split, "api")
        .await
        .map_err(|e| match e {
            RegistryError::InvalidName { .. } | RegistryError::InvalidTraffic(_) => {
                ApiError::bad_request("invalid_traffic", e.to_string())
            }
            RegistryError::NotFound(_) => ApiError::not_found(e.to_string()),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_unavailable",
                other.to_string(),
            ),
        })?;
    state.models.refresh().await;
    Ok(Json(TrafficOut {
        variants: stored
            .variants
            .into_iter()
            .map(|v| VariantIn {
                alias: v.alias,
                weight: v.weight,
            })
            .collect(),
        revision: stored.revision,
    })
    .into_response())
}
