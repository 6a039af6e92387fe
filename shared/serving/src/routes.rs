//! Route handlers: plain async functions over the shared [`AppState`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlops_domain::data::{Value, record_from_json};
use mlops_domain::schema::Task;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{
    ApiError, ErrorBody, ExplanationOut, FieldProblem, PredictResponse, PredictionOut,
    current_request_id,
};
use crate::metrics::Served;
use crate::predlog::LoggedPrediction;

/// Most field problems listed in one response.
pub(crate) const MAX_FIELD_PROBLEMS: usize = 100;

/// Reads a JSON request body: checks the content type (415) and the size limit (413).
pub async fn json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type must be application/json, got '{}'",
                content_type.chars().take(100).collect::<String>()
            ),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {:.1} s (MLOPS_BODY_TIMEOUT_SECONDS)",
                    timeout.as_secs_f64()
                ),
            )
        })?
        .map_err(|_| too_large())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request body is empty: send a JSON record or a list of records",
        ));
    }
    Ok(bytes)
}

/// Parses `explain=true|false|1|0` from a query string (other parameters are ignored).
fn explain_flag(query: Option<&str>) -> Result<bool, ApiError> {
    let mut explain = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key == "explain" {
            explain = match value {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!(
                            "query parameter explain='{}': use true or false",
                            other.chars().take(40).collect::<String>()
                        ),
                    ));
                }
            };
        }
    }
    Ok(explain)
}

/// Splits a JSON body into records.
pub(crate) fn records(
    bytes: &[u8],
    limit: usize,
) -> Result<(Vec<serde_json::Map<String, serde_json::Value>>, bool), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let (items, single) = match value {
        serde_json::Value::Object(o) => (vec![serde_json::Value::Object(o)], true),
        serde_json::Value::Array(a) => (a, false),
        other => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!(
                    "expected a JSON object (one record) or a list of objects, got {}",
                    kind(&other)
                ),
            ));
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the list of records is empty",
        ));
    }
    if items.len() > limit {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_records",
            format!(
                "{} records is over the limit of {limit} per request",
                items.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            serde_json::Value::Object(o) => out.push(o),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    format!("record {i} is {}, expected a JSON object", kind(&other)),
                ));
            }
        }
    }
    Ok((out, single))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Predicts one record or a list of records.
#[utoipa::path(
    post,
    path = "/v1/models/{name}/predict",
    tag = "predict",
    params(
        ("name" = String, Path, description = "Model name, e.g. california_housing"),
        ("explain" = Option<bool>, Query, description = "Add per-feature contributions"),
        ("x-routing-key" = Option<String>, Header, description = "Sticky A/B routing key (e.g. a user id)")
    ),
    request_body(content = crate::api::PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Predictions", body = PredictResponse),
        (status = 400, description = "Malformed body, invalid fields, too many records, more records than MLOPS_MAX_EXPLAIN_RECORDS with explain=true, or (models trained from feature views) an entity key without values in the online store or with values past the view's TTL (`unknown_entity`)", body = ErrorBody),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "No model loaded yet", body = ErrorBody)
    )
)]
pub async fn predict(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    state.models.refresh_if_due();
    let explain = explain_flag(query.as_deref())?;
    let bytes = json_body(
        &headers,
        body,
        state.config.max_body_bytes,
        state.config.body_timeout,
    )
    .await?;
    let routes = served_routes(&state, &name)?;
    let (mut records, _single) = records(&bytes, state.config.max_records)?;
    if explain && records.len() > state.config.max_explain_records {
        return Err(ApiError::bad_request(
            "too_many_records_to_explain",
            format!(
                "{} records is over the limit of {} per request with explain=true (MLOPS_MAX_EXPLAIN_RECORDS); split the request or predict without explanations",
                records.len(),
                state.config.max_explain_records
            ),
        ));
    }
    let request_id = current_request_id();
    let routing_key = headers
        .get("x-routing-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .unwrap_or(&request_id);
    let (variant, model) = routes.pick(&name, routing_key).ok_or_else(|| {
        ApiError::internal(format!("model '{name}' has a variant without a model"))
    })?;
    if !model.manifest.feature_views.is_empty() {
        let now = chrono::Utc::now().timestamp_micros();
        crate::features::fill(
            state.online.as_ref(),
            &model.manifest.feature_views,
            &mut records,
            now,
        )
        .await?;
    }
    let schema = &model.manifest.schema;
    let rows: Vec<Vec<Value>> = validate_each(&records, |r| record_from_json(schema, r))?;
    let id_column = schema.id_column().map(|c| c.name.clone());
    let ids: Vec<Option<String>> = records
        .iter()
        .map(|r| {
            id_column.as_ref().and_then(|c| r.get(c)).and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| (!v.is_null()).then(|| v.to_string()))
            })
        })
        .collect();
    // A small plain request (microseconds) is scored in place. Larger ones and explanations
    // (milliseconds) run on the blocking pool, explanations in their own smaller pool, so the
    // async workers keep answering probes and plain predictions never queue behind
    // explanations; waiting for a slot counts against the request's deadline.
    let (values, stats, predictions) = if !explain && rows.len() <= INLINE_RECORDS {
        score(model, &rows, ids, false)?
    } else {
        let pool = if explain {
            &state.explain_work
        } else {
            &state.model_work
        };
        let permit = Arc::clone(pool)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the model pool is closed"))?;
        let model_for_work = Arc::clone(model);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            score(&model_for_work, &rows, ids, explain)
        })
        .await
        .map_err(|e| ApiError::internal(format!("model work failed: {e}")))??
    };
    if let Some(log) = &state.predictions_log {
        let latency_us = started.elapsed().as_micros() as u64;
        let at = chrono::Utc::now();
        for (i, (record, &p)) in records.into_iter().zip(&values).enumerate() {
            log.log(LoggedPrediction {
                at,
                request_id: request_id.clone(),
                record: u32::try_from(i + 1).unwrap_or(u32::MAX),
                model: name.clone(),
                version: model.version,
                variant: variant.alias.clone(),
                input: serde_json::Value::Object(record),
                output: p,
                latency_us,
            });
        }
    }
    let served = Served {
        model: name.clone(),
        version: Some(model.version),
        variant: variant.alias.clone(),
        records: predictions.len(),
    };
    let body = PredictResponse {
        model: name,
        version: model.version,
        variant: variant.alias.clone(),
        request_id,
        task: model.manifest.task.to_string(),
        predictions,
        unseen_categories: stats.unseen_categories,
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        "x-model-version",
        axum::http::HeaderValue::from(served.version.unwrap_or(0)),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&served.variant) {
        response.headers_mut().insert("x-model-variant", v);
    }
    response.extensions_mut().insert(served);
    Ok(response)
}

/// Each item of a request through `parse`, or the 400 naming every field problem with its item.
pub(crate) fn validate_each<T>(
    items: &[serde_json::Map<String, serde_json::Value>],
    parse: impl Fn(
        &serde_json::Map<String, serde_json::Value>,
    ) -> Result<T, Vec<mlops_domain::data::FieldError>>,
) -> Result<Vec<T>, ApiError> {
    let mut parsed = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse(item) {
            Ok(value) => parsed.push(value),
            Err(errors) => problems.extend(errors.into_iter().map(|e| FieldProblem {
                record: Some(i + 1),
                field: e.field,
                message: e.message,
            })),
        }
    }
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(invalid_fields(problems, items.len() > 1))
    }
}

/// The 400 for records with invalid fields: the first problem in the message, at most
/// [`MAX_FIELD_PROBLEMS`] listed.
fn invalid_fields(mut problems: Vec<FieldProblem>, many: bool) -> ApiError {
    let total = problems.len();
    problems.truncate(MAX_FIELD_PROBLEMS);
    let first = &problems[0];
    let message = format!(
        "{total} invalid field{}{}: '{}' {}",
        if total == 1 { "" } else { "s" },
        if many {
            format!(" (first in record {})", first.record.unwrap_or(1))
        } else {
            String::new()
        },
        first.field,
        first.message
    );
    ApiError {
        fields: problems,
        ..ApiError::bad_request("invalid_fields", message)
    }
}

/// The routes of a served model: 404 when it is not served, 503 before any model loaded.
pub(crate) fn served_routes(
    state: &AppState,
    name: &str,
) -> Result<Arc<crate::models::ModelRoutes>, ApiError> {
    state.models.routes(name).ok_or_else(|| {
        if state.models.names().is_empty() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "no model is loaded yet",
            )
        } else {
            ApiError::not_found(format!(
                "model '{}' is not served here (served: {})",
                name.chars().take(64).collect::<String>(),
                state.models.names().join(", ")
            ))
        }
    })
}

/// A version as a `predict` key sees it: no data paths, tracking locations or bundle prefixes
/// (an admin key sees the whole record).
fn public_version(
    record: &mlops_domain::registry::VersionRecord,
) -> mlops_domain::registry::VersionRecord {
    let mut public = record.clone();
    public.bundle_prefix = String::new();
    public.idempotency_key = None;
    let l = &mut public.lineage;
    l.data_source = std::path::Path::new(&l.data_source)
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    l.run_id = None;
    l.tracking_uri = None;
    public
}

/// Plain requests of at most this many records are scored on the async worker (tens of
/// microseconds); larger ones go to the blocking pool.
const INLINE_RECORDS: usize = 64;

/// Predicts (and explains) validated rows: the values, the pipeline's statistics and the
/// predictions in the API's shape. Runs on a blocking thread.
fn score(
    model: &crate::models::LoadedModel,
    rows: &[Vec<Value>],
    ids: Vec<Option<String>>,
    explain: bool,
) -> Result<
    (
        Vec<f64>,
        mlops_domain::features::TransformStats,
        Vec<PredictionOut>,
    ),
    ApiError,
> {
    let (values, stats) = model
        .predictor
        .predict(rows)
        .map_err(|e| ApiError::bad_request("invalid_record", e.to_string()))?;
    let classes = (model.manifest.task == Task::BinaryClassification)
        .then(|| model.manifest.schema.class_names());
    let mut predictions = Vec::with_capacity(values.len());
    for (i, ((row, &p), id)) in rows.iter().zip(&values).zip(ids).enumerate() {
        let explanation = if explain {
            let e = model
                .predictor
                .explain(row)
                .map_err(|e| ApiError::bad_request("cannot_explain", e.to_string()))?;
            Some(ExplanationOut::from_engine(e))
        } else {
            None
        };
        predictions.push(PredictionOut::new(
            i + 1,
            id,
            p,
            classes.as_ref(),
            explanation,
        ));
    }
    Ok((values, stats, predictions))
}

/// One served variant of a model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServedVariant {
    /// Alias.
    pub alias: String,
    /// Traffic weight.
    pub weight: u32,
    /// Version behind the alias.
    pub version: u64,
    /// Model family (xgboost, lightgbm, linear, logistic, mlp).
    pub model_kind: String,
    /// Bundle digest.
    pub digest: String,
    /// Test metrics of this version.
    pub metrics: BTreeMap<String, f64>,
    /// When the bundle was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When this server loaded it.
    pub loaded_at: chrono::DateTime<chrono::Utc>,
}

/// Model information.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// `regression` or `binary_classification`.
    pub task: String,
    /// What serves now, per variant.
    pub served: Vec<ServedVariant>,
    /// Aliases and the versions they point at, from the registry.
    pub aliases: BTreeMap<String, u64>,
    /// Registered versions (number, kind, metrics, lineage), from the registry.
    #[schema(value_type = Vec<Object>)]
    pub versions: Vec<mlops_domain::registry::VersionRecord>,
    /// The model card of the version the default alias serves.
    #[schema(value_type = Object)]
    pub card: Option<mlops_domain::registry::ModelCard>,
    /// The input schema: what each record must contain.
    #[schema(value_type = Object)]
    pub input_schema: mlops_domain::schema::Schema,
    /// The monitor's latest A/B verdicts (per challenger: rows, mean loss, decision, rows still
    /// needed), when variants are under test.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub ab_test: Option<mlops_domain::ab::AbStatus>,
    /// Model features after the pipeline (the names used in explanations).
    pub features: Vec<String>,
}

/// Versions, aliases, metrics, model card and input schema of a served model.
#[utoipa::path(
    get,
    path = "/v1/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Model information", body = ModelInfo),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 503, description = "The registry cannot be read", body = ErrorBody)
    )
)]
pub async fn model_info(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<Response, ApiError> {
    state.models.refresh_if_due();
    let routes = state.models.routes(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "model '{}' is not served here",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    // Answered from what the last refresh read: no registry call in the request.
    let first = routes
        .split
        .variants
        .first()
        .and_then(|v| routes.by_alias.get(&v.alias))
        .ok_or_else(|| ApiError::internal("split without a model"))?;
    let view = &routes.registry;
    let served = routes
        .split
        .variants
        .iter()
        .filter_map(|v| {
            routes.by_alias.get(&v.alias).map(|m| ServedVariant {
                alias: v.alias.clone(),
                weight: v.weight,
                version: m.version,
                model_kind: m.manifest.model_kind.to_string(),
                digest: m.digest.clone(),
                metrics: m.manifest.metrics.clone(),
                created_at: m.manifest.created_at,
                loaded_at: m.loaded_at,
            })
        })
        .collect();
    let info = ModelInfo {
        name: name.clone(),
        task: first.manifest.task.to_string(),
        served,
        aliases: view.aliases.clone().into_iter().collect(),
        versions: if state.config.auth_off || caller.is_some_and(|c| c.admin) {
            view.versions.clone()
        } else {
            view.versions.iter().map(public_version).collect()
        },
        card: view.card.clone(),
        input_schema: first.manifest.schema.clone(),
        features: first.manifest.feature_names.clone(),
        ab_test: view.ab.clone(),
    };
    let mut response = Json(info).into_response();
    response.extensions_mut().insert(Served {
        model: name,
        version: Some(first.version),
        variant: routes
            .split
            .variants
            .first()
            .map(|v| v.alias.clone())
            .unwrap_or_default(),
        records: 0,
    });
    Ok(response)
}

/// Names of the served models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Served model names.
    pub models: Vec<String>,
}

/// Lists the served models.
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, description = "Served models", body = ModelList)))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    state.models.refresh_if_due();
    Json(ModelList {
        models: state.models.names(),
    })
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// Always `live`.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health",
    security((), ("api_key" = [])),
    responses((status = 200, description = "Alive", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live {
        status: "live".into(),
    })
}

/// A served model in the readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyModel {
    /// Model.
    pub name: String,
    /// Alias → version served.
    pub variants: BTreeMap<String, u64>,
}

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready`, `degraded` (serving the last good models; the registry or a new bundle failed)
    /// or `not_ready`.
    pub status: String,
    /// Served models.
    pub models: Vec<ReadyModel>,
    /// The last refresh error, while degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Last successful registry check.
    pub refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `off` when API keys were turned off on purpose (`mlops serve --no-auth`); absent when
    /// keys are enforced (by this server or, on AWS, by the authorizer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// Ready once the models are loaded; reports degraded health while refreshes fail.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Ready or degraded", body = Ready),
        (status = 503, description = "Not ready", body = Ready)
    ))]
pub async fn ready(
    State(state): State<Arc<AppState>>,
    probe: Option<axum::Extension<crate::auth::AnonymousProbe>>,
) -> Response {
    state.models.refresh_if_due();
    let snapshot = state.models.snapshot();
    let refresh = state.models.refresh_state();
    let ready = state.models.is_ready();
    // A registry check that has not succeeded for 3 refresh intervals (at least 5 s) counts as
    // failing even while it is still waiting on the store.
    let overdue = state
        .config
        .refresh_every
        .mul_f64(3.0)
        .max(std::time::Duration::from_secs(5));
    let stale = refresh.refreshed_at.and_then(|at| {
        let age = (chrono::Utc::now() - at).to_std().ok()?;
        (age > overdue).then(|| format!("no successful registry check for {} s", age.as_secs()))
    });
    let error = refresh.last_error.clone().or(stale);
    let status = match (ready, &error) {
        (false, _) => "not_ready",
        (true, Some(_)) => "degraded",
        (true, None) => "ready",
    };
    let body = Ready {
        status: status.into(),
        models: snapshot
            .iter()
            .map(|(name, r)| ReadyModel {
                name: name.clone(),
                variants: r
                    .by_alias
                    .iter()
                    .map(|(a, m)| (a.clone(), m.version))
                    .collect(),
            })
            .collect(),
        error,
        refreshed_at: refresh.refreshed_at,
        auth: state.config.auth_off.then(|| "off".to_string()),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // A probe without a key learns the status, nothing about models or the store.
    let body = if probe.is_some() {
        Ready {
            models: Vec::new(),
            error: None,
            ..body
        }
    } else {
        body
    };
    (code, Json(body)).into_response()
}

/// Prometheus text metrics.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.prometheus_text(),
    )
        .into_response()
}

/// 404 for unknown routes.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

/// 405 for known routes with the wrong method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route; see /openapi.json",
    )
}
