//! Registry changes over the API (admin scope), what the console's models page calls: the audit
//! log, a version's card, promote, rollback and card approval. Each change is the registry's
//! own compare-and-swap, recorded in the audit log under the caller's key name; a retry with the
//! same `request_id` changes nothing twice.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mlops_domain::registry::{AliasEvent, AliasState, ModelCard};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody};
use crate::auth::Caller;
use crate::routes::{json_body, served_routes};

/// Body of a promotion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": 3, "reason": "better RMSE on the last 7 days"}))]
pub struct PromoteIn {
    /// The version the alias will point at.
    #[schema(minimum = 1)]
    pub version: u64,
    /// Why (kept in the audit log).
    #[schema(pattern = "\\S", max_length = 500)]
    pub reason: String,
}

/// Body of a rollback.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackIn {
    /// Why (kept in the audit log).
    #[schema(pattern = "\\S", max_length = 500)]
    pub reason: String,
    /// The caller's id for this rollback: a retry with the same id rolls back once.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub request_id: Option<String>,
}

/// Body of a card approval.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveIn {
    /// The reviewer's note.
    #[serde(default)]
    pub note: String,
}

/// Who changes the registry: the key's name and id, or the local server without keys.
fn actor(state: &AppState, caller: Option<axum::Extension<Caller>>) -> String {
    match caller {
        Some(axum::Extension(c)) => c.key,
        None if state.config.auth_off => "mlops serve --no-auth".into(),
        None => "unknown".into(),
    }
}

async fn body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = json_body(headers, body, 16 * 1024, state.config.body_timeout).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid body: {e}")))
}

/// A version number from the path (JSON 400 for anything else, as every error here).
fn version(text: &str) -> Result<u64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .map(|v| v as u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                format!(
                    "version '{}': expected a whole number from 1",
                    text.chars().take(40).collect::<String>()
                ),
            )
        })
}

fn reason(text: &str) -> Result<&str, ApiError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > 500 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "reason: say why in 1 to 500 characters (it is kept in the audit log)",
        ));
    }
    Ok(text)
}

/// Aliases, the versions they point at, and the audit log of every change.
#[utoipa::path(get, path = "/v1/models/{name}/audit", tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Aliases and their history, oldest first", body = Object),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 503, description = "The registry cannot be read", body = ErrorBody)
    ))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<AliasState>, ApiError> {
    served_routes(&state, &name)?;
    Ok(Json(state.models.registry().aliases(&name).await?))
}

/// The model card of a version.
#[utoipa::path(get, path = "/v1/models/{name}/versions/{version}/card", tag = "admin",
    params(("name" = String, Path, description = "Model name"), ("version" = i64, Path, minimum = 1, description = "Version")),
    responses(
        (status = 200, description = "The card", body = Object),
        (status = 400, description = "Invalid version", body = ErrorBody),
        (status = 404, description = "Model not served, or unknown version", body = ErrorBody),
        (status = 503, description = "No model loaded yet, or the registry cannot be read", body = ErrorBody)
    ))]
pub async fn card(
    State(state): State<Arc<AppState>>,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<ModelCard>, ApiError> {
    served_routes(&state, &name)?;
    let version = version(&number)?;
    Ok(Json(state.models.registry().card(&name, version).await?))
}

/// Points an alias at a version (`champion` needs an approved card). Servers pick it up within
/// their refresh interval; this one at once.
#[utoipa::path(post, path = "/v1/models/{name}/aliases/{alias}", tag = "admin",
    params(("name" = String, Path, description = "Model name"), ("alias" = String, Path, description = "Alias, e.g. champion")),
    request_body(content = PromoteIn, content_type = "application/json"),
    responses(
        (status = 200, description = "The audit entry of the change", body = Object),
        (status = 400, description = "Invalid body, name or version", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 404, description = "Model not served, or unknown version", body = ErrorBody),
        (status = 409, description = "The version's card is not approved", body = ErrorBody),
        (status = 503, description = "No model loaded yet, or the registry cannot be read", body = ErrorBody)
    ))]
pub async fn promote(
    State(state): State<Arc<AppState>>,
    Path((name, alias)): Path<(String, String)>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<AliasEvent>, ApiError> {
    served_routes(&state, &name)?;
    let input: PromoteIn = body(&state, &headers, raw).await?;
    let event = state
        .models
        .registry()
        .promote(
            &name,
            &alias,
            input.version,
            &actor(&state, caller),
            reason(&input.reason)?,
        )
        .await?;
    state.models.refresh().await;
    Ok(Json(event))
}

/// Returns an alias to the version it pointed at before its latest promotion.
#[utoipa::path(post, path = "/v1/models/{name}/aliases/{alias}/rollback", tag = "admin",
    params(("name" = String, Path, description = "Model name"), ("alias" = String, Path, description = "Alias")),
    request_body(content = RollbackIn, content_type = "application/json"),
    responses(
        (status = 200, description = "The audit entry of the change", body = Object),
        (status = 400, description = "Invalid body, name or version", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 404, description = "Model not served, or the alias is unset", body = ErrorBody),
        (status = 409, description = "Nothing earlier to roll back to", body = ErrorBody),
        (status = 503, description = "No model loaded yet, or the registry cannot be read", body = ErrorBody)
    ))]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    Path((name, alias)): Path<(String, String)>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<AliasEvent>, ApiError> {
    served_routes(&state, &name)?;
    let input: RollbackIn = body(&state, &headers, raw).await?;
    if input
        .request_id
        .as_deref()
        .is_some_and(|id| !mlops_domain::feedback::valid_request_id(id))
    {
        return Err(ApiError::bad_request(
            "invalid_body",
            "request_id: use 1 to 128 characters a-z, A-Z, 0-9, '-' or '_'",
        ));
    }
    let event = state
        .models
        .registry()
        .rollback(
            &name,
            &alias,
            &actor(&state, caller),
            reason(&input.reason)?,
            input.request_id.as_deref(),
        )
        .await?;
    state.models.refresh().await;
    Ok(Json(event))
}

/// Approves a version's model card (its intended use and limitations must be filled).
#[utoipa::path(post, path = "/v1/models/{name}/versions/{version}/approve", tag = "admin",
    params(("name" = String, Path, description = "Model name"), ("version" = i64, Path, minimum = 1, description = "Version")),
    request_body(content = ApproveIn, content_type = "application/json"),
    responses(
        (status = 200, description = "The approved card", body = Object),
        (status = 400, description = "Invalid body, name or version", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 404, description = "Model not served, or unknown version", body = ErrorBody),
        (status = 409, description = "The card misses fields a reviewer must fill", body = ErrorBody),
        (status = 503, description = "No model loaded yet, or the registry cannot be read", body = ErrorBody)
    ))]
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Path((name, number)): Path<(String, String)>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Response, ApiError> {
    served_routes(&state, &name)?;
    let version = version(&number)?;
    let input: ApproveIn = body(&state, &headers, raw).await?;
    let card = state
        .models
        .registry()
        .approve_card(&name, version, &actor(&state, caller), input.note.trim())
        .await?;
    state.models.refresh().await;
    Ok(Json(card).into_response())
}
