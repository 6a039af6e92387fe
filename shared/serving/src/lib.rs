//! The serving API as one axum [`Router`]: the Lambda functions run it with `lambda_http`, and
//! `mlops serve` runs the same router on localhost.
//!
//! Routes: `POST /v1/models/{name}/predict`, `POST /v1/models/{name}/feedback`, `GET /v1/models`, `GET /v1/models/{name}`,
//! `PUT /v1/models/{name}/traffic`, the console's admin routes (`GET …/predictions`,
//! `GET …/predictions/export`, `GET …/audit`, `POST …/aliases/{alias}[/rollback]`,
//! `GET …/versions/{v}/card`, `POST …/versions/{v}/approve`, `GET …/monitoring`, `GET /v1/runs`,
//! `GET /v1/runs/{id}`), `GET|POST /v1/batch-jobs`, `GET /v1/batch-jobs/{id}`,
//! `POST /v1/batch-jobs/{id}/start`, `GET /health/live`, `GET /health/ready`, `GET /metrics`,
//! `GET /openapi.json`, `/docs` and `/console`. Every response carries `x-request-id`; every request is logged as one
//! structured line and counted in the metrics.

pub mod api;
pub mod auth;
pub mod batch;
pub mod config;
pub mod console;
pub mod docs;
pub mod features;
pub mod feedback;
pub mod history;
pub mod manage;
pub mod metrics;
pub mod models;
pub mod monitoring;
pub mod openapi;
pub mod predictions;
pub mod predlog;
pub mod routes;
pub mod runs;
pub mod traffic;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use mlops_domain::batch_jobs::BatchJobs;
use mlops_domain::jobs::JobQueue;
use mlops_domain::registry::Registry;
use mlops_domain::tracking::RunReader;

pub use crate::config::ServeConfig;
use crate::metrics::{Metrics, Served};
use crate::models::ModelSet;
use crate::predlog::{LogLimits, PredictionLog};

/// Everything the handlers share, built once at start (Lambda init).
pub struct AppState {
    /// Served models.
    pub models: Arc<ModelSet>,
    /// Configuration.
    pub config: ServeConfig,
    /// Metrics.
    pub metrics: Metrics,
    /// Prediction log writer, when enabled.
    pub predictions_log: Option<PredictionLog>,
    /// Batch jobs (submitted to the queue, when one is configured).
    pub batch_jobs: BatchJobs,
    /// Slots for large plain predictions on the blocking pool ([`ServeConfig::model_concurrency`]).
    pub model_work: Arc<tokio::sync::Semaphore>,
    /// Slots for explanations ([`ServeConfig::explain_concurrency`]).
    pub explain_work: Arc<tokio::sync::Semaphore>,
    /// Where training runs are read back from, when a tracker is configured.
    pub runs: Option<Arc<dyn RunReader>>,
    /// The online feature store (for models trained from feature views).
    pub online: Arc<dyn mlops_domain::online::OnlineStore>,
}

/// The services the state reaches besides the registry, when configured.
#[derive(Default)]
pub struct Backends {
    /// The queue batch jobs are submitted to.
    pub jobs: Option<Arc<dyn JobQueue>>,
    /// The tracker training runs are read from.
    pub runs: Option<Arc<dyn RunReader>>,
    /// The online feature store; default: the one on the registry's store.
    pub online: Option<Arc<dyn mlops_domain::online::OnlineStore>>,
}

impl AppState {
    /// Builds the state and loads the models (the cold-start work); a registry that cannot be
    /// read leaves the server live but not ready, and it keeps retrying on requests.
    pub async fn start(
        registry: Registry,
        config: ServeConfig,
        jobs: Option<Arc<dyn JobQueue>>,
    ) -> Arc<Self> {
        Self::start_with(
            registry,
            config,
            Backends {
                jobs,
                ..Backends::default()
            },
        )
        .await
    }

    /// [`AppState::start`] with every backend.
    pub async fn start_with(
        registry: Registry,
        config: ServeConfig,
        backends: Backends,
    ) -> Arc<Self> {
        let Backends { jobs, runs, online } = backends;
        let online = online.unwrap_or_else(|| {
            Arc::new(mlops_domain::online::StoreOnline::new(Arc::clone(
                registry.store(),
            )))
        });
        let started = Instant::now();
        let models = Arc::new(
            ModelSet::new(
                registry.clone(),
                config.models.clone(),
                &config.default_alias,
                config.refresh_every,
                config.registry_deadline,
            )
            .with_view_after_ready(config.view_after_ready),
        );
        let errors = models.refresh().await;
        models.complete_views();
        let metrics = Metrics::new(config.emf, &config.metrics_namespace);
        let predictions_log = config.prediction_log.then(|| {
            PredictionLog::start(
                Arc::clone(registry.store()),
                LogLimits {
                    batch: config.prediction_log_batch,
                    flush_every: config.prediction_log_flush,
                    max_bytes: config.prediction_log_max_bytes,
                },
                metrics.prediction_log_dropped.clone(),
                metrics.prediction_log_written.clone(),
            )
        });
        tracing::info!(
            init_ms = started.elapsed().as_secs_f64() * 1e3,
            models = ?models.names(),
            errors = ?errors,
            "serving state ready"
        );
        let batch_jobs = BatchJobs::new(Arc::clone(registry.store()), jobs)
            .with_input_prefixes(config.batch_input_prefixes.clone());
        Arc::new(Self {
            metrics,
            models,
            model_work: Arc::new(tokio::sync::Semaphore::new(config.model_concurrency)),
            explain_work: Arc::new(tokio::sync::Semaphore::new(config.explain_concurrency)),
            config,
            predictions_log,
            batch_jobs,
            runs,
            online,
        })
    }
}

/// The OpenAPI document of the API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "mlops serving API",
        description = "Predictions, model information and health of models served from the mlops registry.",
        version = env!("CARGO_PKG_VERSION")
    ),
    paths(
        routes::predict,
        feedback::post_feedback,
        routes::list_models,
        routes::model_info,
        traffic::set_traffic,
        predictions::list,
        predictions::export,
        manage::audit,
        manage::card,
        manage::promote,
        manage::rollback,
        manage::approve,
        monitoring::monitoring,
        runs::list,
        runs::get,
        batch::create_job,
        batch::start_job,
        batch::get_job,
        batch::list_jobs,
        routes::live,
        routes::ready
    ),
    components(schemas(api::PredictRequest, api::Record, api::ErrorBody, feedback::FeedbackIn, feedback::FeedbackRequest, manage::PromoteIn, manage::RollbackIn, manage::ApproveIn)),
    modifiers(&ApiKeyScheme),
    security(("api_key" = []))
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
    }
}

/// Which routes a binary mounts.
#[derive(Debug, Clone, Copy)]
pub struct RouteSet {
    /// Predict, model info, health, OpenAPI.
    pub models: bool,
    /// `PUT /v1/models/{name}/traffic` and the console's admin routes (prediction history,
    /// audit log, promote, rollback, card approval, monitoring reports, training runs).
    pub admin: bool,
    /// `GET /metrics` (Prometheus).
    pub metrics: bool,
    /// `/v1/batch-jobs` routes.
    pub batch: bool,
}

impl RouteSet {
    /// Everything (`mlops serve`).
    pub const ALL: RouteSet = RouteSet {
        models: true,
        admin: true,
        metrics: true,
        batch: true,
    };
}

/// The router over a state.
pub fn router(state: Arc<AppState>, set: RouteSet) -> Router {
    router_with_keys(state, set, None)
}

/// The router, checking API keys with `keys` when given (`mlops serve`; on AWS the authorizer
/// does it). The check sits inside the request log and metrics, so refused requests (401/403)
/// are logged and counted like any other.
pub fn router_with_keys(
    state: Arc<AppState>,
    set: RouteSet,
    keys: Option<Arc<auth::KeyCache>>,
) -> Router {
    let mut app = Router::new();
    if set.models {
        app = app
            .route("/v1/models", get(routes::list_models))
            .route("/v1/models/{name}", get(routes::model_info))
            .route("/v1/models/{name}/predict", post(routes::predict))
            .route("/v1/models/{name}/feedback", post(feedback::post_feedback))
            .route("/health/live", get(routes::live))
            .route("/health/ready", get(routes::ready))
            .route(
                "/openapi.json",
                get(
                    move |State(state): State<Arc<AppState>>,
                          anonymous: Option<axum::Extension<auth::AnonymousProbe>>| async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            openapi::render(&state, set, anonymous.is_none()),
                        )
                    },
                ),
            )
            .route("/docs", get(docs::page))
            .route("/docs/explorer.js", get(docs::script))
            .route("/docs/explorer.css", get(docs::style))
            .route("/console", get(console::page))
            .route("/console/app.js", get(console::script))
            .route("/console/app.css", get(console::style));
    }
    if set.admin {
        app = app
            .route("/v1/models/{name}/traffic", put(traffic::set_traffic))
            .route("/v1/models/{name}/predictions", get(predictions::list))
            .route(
                "/v1/models/{name}/predictions/export",
                get(predictions::export),
            )
            .route("/v1/models/{name}/audit", get(manage::audit))
            .route(
                "/v1/models/{name}/versions/{version}/card",
                get(manage::card),
            )
            .route(
                "/v1/models/{name}/versions/{version}/approve",
                post(manage::approve),
            )
            .route("/v1/models/{name}/aliases/{alias}", post(manage::promote))
            .route(
                "/v1/models/{name}/aliases/{alias}/rollback",
                post(manage::rollback),
            )
            .route("/v1/models/{name}/monitoring", get(monitoring::monitoring))
            .route("/v1/runs", get(runs::list))
            .route("/v1/runs/{id}", get(runs::get));
    }
    if set.batch {
        app = app
            .route(
                "/v1/batch-jobs",
                post(batch::create_job).get(batch::list_jobs),
            )
            .route("/v1/batch-jobs/{id}", get(batch::get_job))
            .route("/v1/batch-jobs/{id}/start", post(batch::start_job));
    }
    if set.metrics {
        app = app.route("/metrics", get(routes::metrics));
    }
    let mut app = app
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), deadline));
    if let Some(keys) = keys {
        app = app.layer(middleware::from_fn_with_state(keys, auth::require_key));
    }
    let mut app = app
        .layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .with_state(Arc::clone(&state));
    if !state.config.cors_allow_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_allow_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([
                    axum::http::Method::GET,
                    axum::http::Method::POST,
                    axum::http::Method::PUT,
                ])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("x-api-key"),
                    axum::http::HeaderName::from_static("x-routing-key"),
                ]),
        );
    }
    app
}

/// A request id supplied by the platform (the Lambda binary inserts API Gateway's).
#[derive(Debug, Clone)]
pub struct PlatformRequestId(pub String);

fn request_id(request: &Request) -> String {
    if let Some(PlatformRequestId(id)) = request.extensions().get::<PlatformRequestId>() {
        return id.clone();
    }
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Request id, latency, metrics and one structured log line per request.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&request);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let mut response = api::REQUEST_ID.scope(id.clone(), next.run(request)).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let served = response
        .extensions()
        .get::<Served>()
        .cloned()
        .unwrap_or_default();
    state.metrics.record(&route, status, seconds, &served);
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        status,
        latency_us = (seconds * 1e6) as u64,
        model = %served.model,
        version = served.version.unwrap_or(0),
        variant = %served.variant,
        records = served.records,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Answers 503 `request_timeout` (with `Retry-After`) when a request takes longer than
/// [`ServeConfig::request_timeout`], so no caller waits unbounded on a busy model pool.
async fn deadline(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = api::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request took longer than {:.1} s (MLOPS_REQUEST_TIMEOUT_SECONDS); retry later",
                    limit.as_secs_f64()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            response
        }
    }
}

/// Resolves on SIGTERM (what Lambda, ECS and Kubernetes send before stopping a process) or
/// Ctrl-C: the servers stop accepting, finish what is in flight and flush the prediction log.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
