//! The predict function. At init it loads the served models from the registry on S3; requests
//! are handled by the shared serving router. Outside Lambda, `MLOPS_LISTEN=127.0.0.1:PORT` serves
//! the same router over plain HTTP (used to measure cold starts).

use std::time::Instant;

use axum::extract::Request;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use mlops_serving::{AppState, PlatformRequestId, RouteSet, ServeConfig, router};

/// Carries API Gateway's request id (or the Lambda invocation's) into the router.
async fn platform_request_id(mut request: Request) -> Request {
    let id = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
        _ => None,
    }
    .or_else(|| request.lambda_context_ref().map(|c| c.request_id.clone()));
    if let Some(id) = id {
        request.extensions_mut().insert(PlatformRequestId(id));
    }
    request
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let started = Instant::now();
    mlops_function_env::init_logging();
    let config = ServeConfig::from_env()?;
    let registry = mlops_function_env::registry().await?;
    let state = AppState::start(registry, config, None).await;
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
        axum::serve(listener, app).await?;
        return Ok(());
    }
    lambda_http::run(app).await
}
