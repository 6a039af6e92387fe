//! `mlops serve`: the serving API on localhost, the same router the Lambda functions run, over
//! the configured registry store; plus Prometheus `/metrics`. API keys are enforced when a key
//! set exists (or with `--require-api-key`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mlops_domain::apikeys::KeyStore;
use mlops_serving::auth::{KeyCache, require_key};
use mlops_serving::{AppState, RouteSet, ServeConfig, router};

use crate::config::Settings;

/// `mlops serve` options (environment variables of the functions work too).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Models to serve (comma-separated; default: every model with the alias).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Alias to serve when a model has no traffic split.
    #[arg(long)]
    pub alias: Option<String>,
    /// Re-check the registry at most this often (seconds).
    #[arg(long)]
    pub refresh_seconds: Option<f64>,
    /// Most records per request.
    #[arg(long)]
    pub max_records: Option<usize>,
    /// Secrets Manager secret with API keys (default: HOME/api-keys.json).
    #[arg(long, env = "MLOPS_API_KEYS_SECRET")]
    pub api_keys_secret: Option<String>,
    /// Refuse requests without a valid key even when no key exists yet.
    #[arg(long)]
    pub require_api_key: bool,
    /// Turn off API keys (local experiments only).
    #[arg(long, conflicts_with = "require_api_key")]
    pub no_auth: bool,
    /// Print CloudWatch EMF metric lines to stdout.
    #[arg(long)]
    pub emf: bool,
    /// Do not serve Prometheus metrics at /metrics.
    #[arg(long)]
    pub no_metrics: bool,
}

/// Runs the server until Ctrl-C.
pub async fn run(args: ServeArgs, settings: &Settings) -> Result<()> {
    let mut config = ServeConfig::from_env()?;
    if !args.models.is_empty() {
        config.models = Some(args.models.clone());
    }
    if let Some(a) = &args.alias {
        config.default_alias = a.clone();
    }
    if let Some(s) = args.refresh_seconds {
        anyhow::ensure!(
            (0.0..=86_400.0).contains(&s),
            "--refresh-seconds {s}: expected 0 to 86400"
        );
        config.refresh_every = Duration::from_secs_f64(s);
    }
    if let Some(n) = args.max_records {
        config.max_records = n.max(1);
    }
    config.emf |= args.emf;
    let registry = settings.registry().await?;
    let state = AppState::start(registry, config, None).await;
    let set = RouteSet {
        batch: false,
        metrics: !args.no_metrics,
        ..RouteSet::ALL
    };
    let mut app = router(Arc::clone(&state), set);
    let keys: Arc<dyn KeyStore> =
        crate::commands::keys::key_store(args.api_keys_secret.as_deref(), settings).await;
    let has_keys = !keys.load().await?.keys.is_empty();
    let auth = !args.no_auth && (args.require_api_key || has_keys);
    if auth {
        let cache = Arc::new(KeyCache::new(keys, Duration::from_secs(10)));
        app = app.layer(axum::middleware::from_fn_with_state(cache, require_key));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "serving {} from {} on http://{} (API keys {}; docs at /openapi.json{})",
        if state.models.names().is_empty() {
            "no model yet".to_string()
        } else {
            state.models.names().join(", ")
        },
        settings.store_uri(),
        listener.local_addr()?,
        if auth { "required" } else { "off" },
        if args.no_metrics {
            ""
        } else {
            ", metrics at /metrics"
        }
    );
    // Keep models fresh while idle, too.
    let models = Arc::clone(&state.models);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            models.refresh_if_due();
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(mlops_serving::shutdown_signal())
        .await?;
    if let Some(log) = &state.predictions_log {
        log.flush().await;
    }
    Ok(())
}
