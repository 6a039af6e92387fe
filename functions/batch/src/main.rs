//! The batch function: `POST /v1/batch-jobs`, `GET /v1/batch-jobs/{id}` and
//! `POST /v1/batch-jobs/{id}/start`, over the registry store on S3 and the AWS Batch queue.
//! Batch jobs need no loaded model, so nothing is preloaded (`MLOPS_MODELS` is ignored).

use std::time::Instant;

use mlops_serving::{AppState, RouteSet, ServeConfig, router};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let started = Instant::now();
    mlops_function_env::init_logging();
    let config = ServeConfig {
        // Only `models/NAME/...` is read, on demand; nothing is served from memory.
        models: Some(Vec::new()),
        prediction_log: false,
        ..ServeConfig::from_env()?
    };
    let registry = mlops_function_env::registry().await?;
    let queue = mlops_function_env::job_queue().await?;
    if queue.is_none() {
        tracing::warn!("MLOPS_BATCH_QUEUE is not set: job submissions will be refused");
    }
    let state = AppState::start(registry, config, queue).await;
    let routes = RouteSet {
        models: false,
        admin: false,
        metrics: false,
        batch: true,
    };
    let app = router(state, routes);
    tracing::info!(
        cold_start_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch function initialized"
    );
    if let Ok(addr) = std::env::var("MLOPS_LISTEN") {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await?;
        return Ok(());
    }
    lambda_http::run(app).await
}
