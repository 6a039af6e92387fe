//! Wiring from the environment, shared by the Lambda functions (built once, at init):
//! - `MLOPS_STORE`: the registry store (`s3://bucket/prefix`; a directory for local runs);
//! - `AWS_ENDPOINT_URL`: an endpoint override (moto) for every AWS client;
//! - `MLOPS_API_KEYS_SECRET`: the Secrets Manager secret holding the API-key set;
//! - `MLOPS_BATCH_QUEUE`, `MLOPS_BATCH_JOB_DEFINITION`: where batch-prediction jobs go;
//! - `RUST_LOG`: log filter (default `info`).

use std::sync::Arc;

use anyhow::{Context, Result};
use mlops_aws::{BatchQueue, SecretsKeyStore};
use mlops_domain::apikeys::KeyStore;
use mlops_domain::jobs::JobQueue;
use mlops_domain::registry::Registry;

/// The log filter: `RUST_LOG` (default `info`), with the Lambda runtime's own crates held at
/// `info` whatever it says — at `debug`/`trace` they log raw events, API keys included.
pub fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let runtime = ["lambda_runtime", "lambda_runtime_api_client", "lambda_http"];
    let base: Vec<&str> = rust_log
        .unwrap_or("info")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !runtime.iter().any(|t| d.starts_with(t)))
        .collect();
    let base = if base.is_empty() {
        "info".to_string()
    } else {
        base.join(",")
    };
    let pinned = runtime.map(|target| format!("{target}=info")).join(",");
    tracing_subscriber::EnvFilter::try_new(format!("{base},{pinned}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{pinned}")))
}

/// JSON log lines (one object per event, with the request's fields) on stdout, as CloudWatch
/// Logs Insights reads them.
pub fn init_logging() {
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}

fn required(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .with_context(|| format!("environment variable {name} is not set"))
}

/// The registry on the store `MLOPS_STORE` names.
pub async fn registry() -> Result<Registry> {
    let uri = required("MLOPS_STORE")?;
    let store = mlops_store::open_store(&uri, std::env::var("AWS_ENDPOINT_URL").ok())
        .await
        .with_context(|| format!("MLOPS_STORE={uri}"))?;
    Ok(Registry::new(store))
}

async fn aws() -> mlops_aws::SdkConfig {
    mlops_aws::sdk_config(std::env::var("AWS_ENDPOINT_URL").ok().as_deref()).await
}

/// The API-key store in the secret `MLOPS_API_KEYS_SECRET`.
pub async fn key_store() -> Result<Arc<dyn KeyStore>> {
    let secret = required("MLOPS_API_KEYS_SECRET")?;
    Ok(Arc::new(SecretsKeyStore::new(&aws().await, &secret)))
}

/// The online feature store in the DynamoDB table `MLOPS_ONLINE_TABLE`, when it is set (else
/// serving reads the one on the registry store).
pub async fn online_store() -> Option<Arc<dyn mlops_domain::online::OnlineStore>> {
    let table = required("MLOPS_ONLINE_TABLE").ok()?;
    Some(Arc::new(mlops_aws::DynamoOnline::new(&aws().await, &table)))
}

/// The Batch queue, when `MLOPS_BATCH_QUEUE` is set.
pub async fn job_queue() -> Result<Option<Arc<dyn JobQueue>>> {
    let Ok(queue) = required("MLOPS_BATCH_QUEUE") else {
        return Ok(None);
    };
    let definition = required("MLOPS_BATCH_JOB_DEFINITION")?;
    Ok(Some(Arc::new(BatchQueue::new(
        &aws().await,
        &queue,
        &definition,
    ))))
}

/// Seconds from an environment variable, with a default.
pub fn seconds(name: &str, default: f64) -> Result<std::time::Duration> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let s: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| (0.0..=86_400.0).contains(s))
                .with_context(|| format!("{name}='{v}': expected 0 to 86400 seconds"))?;
            Ok(std::time::Duration::from_secs_f64(s))
        }
        _ => Ok(std::time::Duration::from_secs_f64(default)),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;

    use super::log_filter;

    #[test]
    fn rust_log_trace_never_opens_the_runtime_logs() {
        for setting in [
            Some("trace"),
            Some("lambda_runtime=trace,trace"),
            Some("debug"),
            None,
        ] {
            let subscriber = tracing_subscriber::registry().with(log_filter(setting));
            tracing::subscriber::with_default(subscriber, || {
                assert!(
                    !tracing::enabled!(target: "lambda_runtime", Level::DEBUG),
                    "{setting:?}"
                );
                assert!(
                    !tracing::enabled!(target: "lambda_runtime::layers", Level::TRACE),
                    "{setting:?}"
                );
                assert!(
                    tracing::enabled!(target: "lambda_runtime", Level::INFO),
                    "{setting:?}"
                );
            });
        }
        let subscriber = tracing_subscriber::registry().with(log_filter(Some("trace")));
        tracing::subscriber::with_default(subscriber, || {
            assert!(tracing::enabled!(target: "mlops_serving", Level::TRACE));
        });
    }
}
