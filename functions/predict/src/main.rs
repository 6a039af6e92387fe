//! The predict function. At init it loads the served models from the registry on S3; requests
//! are handled by the shared serving router. Outside Lambda, `MLOPS_LISTEN=127.0.0.1:PORT` serves
//! the same router over plain HTTP (used to measure cold starts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use mlops_serving::auth::{AnonymousProbe, Caller};
use mlops_serving::{AppState, PlatformRequestId, RouteSet, ServeConfig, router};

/// Carries API Gateway's request id (or the Lambda invocation's) into the router, and marks a
/// request that reached a public route without the authorizer (probes, the API's contract) so
/// that it learns only what anonymous callers may, and an authorized one with its key's scope.
async fn platform_request_id(mut request: Request) -> Request {
    let (id, caller) = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => (
            c.request_id.clone(),
            c.authorizer.as_ref().map(|a| {
                let field = |name: &str| a.fields.get(name).and_then(|v| v.as_str()).unwrap_or("");
                let admin = field("scopes").split(',').any(|x| x == "admin");
                Caller::named(admin, field("keyName"), field("keyId"))
            }),
        ),
        _ => (None, Some(Caller::named(true, "direct invocation", "none"))),
    };
    let id = id.or_else(|| request.lambda_context_ref().map(|c| c.request_id.clone()));
    if let Some(id) = id {
        request.extensions_mut().insert(PlatformRequestId(id));
    }
    // Only the public routes (probes, the API's contract and explorer) arrive without the
    // authorizer: such a caller gets the answers meant for anonymous callers.
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    } else {
        request.extensions_mut().insert(AnonymousProbe);
    }
    request
}

/// Ends an invocation with a flush of the prediction log once its oldest buffered record is older
/// than `MLOPS_PREDICTION_LOG_MAX_AGE_SECONDS`: between invocations Lambda freezes the
/// environment, and with it the writer's timer.
async fn flush_old_predictions(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(log) = &state.predictions_log {
        let bounded = tokio::time::timeout(
            state.config.registry_deadline,
            log.flush_if_older(state.config.prediction_log_max_age),
        );
        if bounded.await.is_err() {
            tracing::warn!("prediction log flush at the end of the invocation ran out of time");
        }
    }
    response
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let started = Instant::now();
    mlops_function_env::init_logging();
    let config = ServeConfig {
        view_after_ready: true,
        ..ServeConfig::from_env()?
    };
    let registry = mlops_function_env::registry().await?;
    let backends = mlops_serving::Backends {
        online: mlops_function_env::online_store().await,
        ..Default::default()
    };
    let state = AppState::start_with(registry, config, backends).await;
    let routes = RouteSet {
        models: true,
        admin: true,
        metrics: false,
        batch: false,
    };
    let app =
        router(state.clone(), routes).layer(axum::middleware::map_request(platform_request_id));
    tracing::info!(
        cold_start_ms = started.elapsed().as_secs_f64() * 1e3,
        ready = state.models.is_ready(),
        "predict function initialized"
    );
    if let Ok(addr) = std::env::var("MLOPS_LISTEN") {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(mlops_serving::shutdown_signal())
            .await?;
        if let Some(log) = &state.predictions_log {
            log.flush().await;
            tracing::info!(
                written = log.written(),
                dropped = log.dropped(),
                "prediction log flushed at shutdown"
            );
        }
        return Ok(());
    }
    // Lambda sends SIGTERM before it shuts an environment down (the runtime registers an
    // extension so that it does); what is buffered is written then, within Lambda's 500 ms.
    if let Some(log) = state.predictions_log.clone() {
        lambda_runtime::spawn_graceful_shutdown_handler(move || async move {
            if tokio::time::timeout(Duration::from_millis(450), log.flush())
                .await
                .is_err()
            {
                tracing::warn!("prediction log flush at shutdown ran out of time");
            }
        })
        .await;
    }
    let app = app.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        flush_old_predictions,
    ));
    lambda_http::run(app).await
}
