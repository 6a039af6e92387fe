//! Serving configuration, from the environment (Lambda) or flags (`mlops serve`).

use std::time::Duration;

/// How the API serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Models to serve; `None` serves every registered model that has the default alias.
    pub models: Option<Vec<String>>,
    /// Alias served when a model has no traffic split (default `champion`).
    pub default_alias: String,
    /// Re-check aliases and traffic splits at most this often.
    pub refresh_every: Duration,
    /// Most records in one predict request.
    pub max_records: usize,
    /// Most records in one `?explain=true` request (explanations cost ~1,000× a prediction).
    pub max_explain_records: usize,
    /// Longest the registry (S3) may take to answer one refresh, the first one at start (Lambda
    /// init) included; past it the last good models keep serving and health says `degraded`.
    pub registry_deadline: Duration,
    /// At start, mark a model ready as soon as its arms are loaded and read the rest of its
    /// registry view (version list, card, A/B verdicts) right after, in the background: the
    /// predict function's cold start, where the view's reads would add their round trips.
    pub view_after_ready: bool,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Print CloudWatch Embedded Metric Format lines to stdout.
    pub emf: bool,
    /// CloudWatch namespace of the EMF metrics.
    pub metrics_namespace: String,
    /// Log every prediction to the store under `prediction-logs/`.
    pub prediction_log: bool,
    /// Records per prediction-log object.
    pub prediction_log_batch: usize,
    /// Longest a logged prediction waits before its batch is written.
    pub prediction_log_flush: Duration,
    /// Most bytes of prediction-log records held in memory (queued or awaiting a retry).
    pub prediction_log_max_bytes: usize,
    /// In Lambda, an invocation ends with a flush once the oldest buffered record is this old.
    pub prediction_log_max_age: Duration,
    /// Origins allowed by CORS (empty: no CORS headers).
    pub cors_allow_origins: Vec<String>,
    /// API keys were turned off on purpose (`mlops serve --no-auth`): readiness says so.
    pub auth_off: bool,
    /// Most large plain predict requests scored at once on the blocking pool.
    pub model_concurrency: usize,
    /// Most `?explain=true` requests scored at once (their own pool, so plain predictions never
    /// wait behind them).
    pub explain_concurrency: usize,
    /// Longest a request may take, waiting for a model slot included; past it the answer is
    /// 503 `request_timeout`.
    pub request_timeout: Duration,
    /// Longest the request body may take to arrive (a body trickled in slower is 408).
    pub body_timeout: Duration,
    /// Where batch-job inputs may come from (`s3://bucket/prefix/`); empty: the registry's
    /// own bucket.
    pub batch_input_prefixes: Vec<String>,
    /// Largest prediction export answered in one response, when responses are buffered (inside
    /// Lambda: API Gateway takes 6 MB at most); `None` streams exports of any size.
    pub export_max_bytes: Option<usize>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            models: None,
            default_alias: mlops_domain::registry::CHAMPION.into(),
            refresh_every: Duration::from_secs(30),
            max_records: 1_000,
            max_explain_records: 50,
            registry_deadline: Duration::from_secs(3),
            view_after_ready: false,
            max_body_bytes: 1 << 20,
            emf: false,
            metrics_namespace: "mlops".into(),
            prediction_log: true,
            prediction_log_batch: 1_000,
            prediction_log_flush: Duration::from_secs(5),
            prediction_log_max_bytes: 64 << 20,
            prediction_log_max_age: Duration::from_secs(60),
            cors_allow_origins: Vec::new(),
            auth_off: false,
            model_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            explain_concurrency: std::thread::available_parallelism()
                .map_or(1, |n| (n.get() / 2).max(1)),
            request_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            batch_input_prefixes: Vec::new(),
            export_max_bytes: None,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}='{value}': {why}")]
pub struct ConfigError {
    /// Variable.
    pub name: &'static str,
    /// Value.
    pub value: String,
    /// What is wrong.
    pub why: &'static str,
}

fn parse_env<T: std::str::FromStr>(
    name: &'static str,
    why: &'static str,
) -> Result<Option<T>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| ConfigError {
            name,
            value: v,
            why,
        }),
        _ => Ok(None),
    }
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl ServeConfig {
    /// Reads `MLOPS_MODELS`, `MLOPS_ALIAS`, `MLOPS_REFRESH_SECONDS`, `MLOPS_MAX_RECORDS`,
    /// `MLOPS_MAX_EXPLAIN_RECORDS`, `MLOPS_REGISTRY_DEADLINE_SECONDS`, `MLOPS_MAX_BODY_BYTES`,
    /// `MLOPS_EMF`, `MLOPS_METRICS_NAMESPACE`, `MLOPS_PREDICTION_LOG`,
    /// `MLOPS_PREDICTION_LOG_BATCH`, `MLOPS_PREDICTION_LOG_FLUSH_SECONDS`,
    /// `MLOPS_PREDICTION_LOG_MAX_BYTES`, `MLOPS_PREDICTION_LOG_MAX_AGE_SECONDS`,
    /// `MLOPS_CORS_ORIGINS`, `MLOPS_MODEL_CONCURRENCY`, `MLOPS_EXPLAIN_CONCURRENCY`, `MLOPS_REQUEST_TIMEOUT_SECONDS`,
    /// `MLOPS_BODY_TIMEOUT_SECONDS`, `MLOPS_BATCH_INPUT_PREFIXES` over the defaults. EMF is on by
    /// default inside Lambda, and exports are bounded to what a Lambda response can carry.
    pub fn from_env() -> Result<Self, ConfigError> {
        let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
        let mut c = Self {
            emf: in_lambda,
            // Lambda's response limit is 6 MB; headers and encoding need some of it.
            export_max_bytes: in_lambda.then_some(5_500_000),
            ..Self::default()
        };
        if let Ok(m) = std::env::var("MLOPS_MODELS") {
            let names = list(&m);
            if !names.is_empty() {
                c.models = Some(names);
            }
        }
        if let Ok(a) = std::env::var("MLOPS_ALIAS")
            && !a.trim().is_empty()
        {
            c.default_alias = a.trim().into();
        }
        if let Some(s) = parse_env::<f64>("MLOPS_REFRESH_SECONDS", "expected seconds")? {
            if !(0.0..=86_400.0).contains(&s) {
                return Err(ConfigError {
                    name: "MLOPS_REFRESH_SECONDS",
                    value: s.to_string(),
                    why: "expected 0 to 86400 seconds",
                });
            }
            c.refresh_every = Duration::from_secs_f64(s);
        }
        if let Some(n) = parse_env::<usize>("MLOPS_MAX_RECORDS", "expected a whole number")? {
            c.max_records = n.max(1);
        }
        if let Some(n) = parse_env::<usize>("MLOPS_MAX_EXPLAIN_RECORDS", "expected a whole number")?
        {
            c.max_explain_records = n.max(1);
        }
        if let Some(s) = parse_env::<f64>("MLOPS_REGISTRY_DEADLINE_SECONDS", "expected seconds")? {
            if !(0.1..=600.0).contains(&s) {
                return Err(ConfigError {
                    name: "MLOPS_REGISTRY_DEADLINE_SECONDS",
                    value: s.to_string(),
                    why: "expected 0.1 to 600 seconds",
                });
            }
            c.registry_deadline = Duration::from_secs_f64(s);
        }
        if let Some(n) = parse_env::<usize>("MLOPS_MAX_BODY_BYTES", "expected a whole number")? {
            c.max_body_bytes = n.max(1);
        }
        if let Some(b) = parse_env::<bool>("MLOPS_EMF", "expected true or false")? {
            c.emf = b;
        }
        if let Ok(ns) = std::env::var("MLOPS_METRICS_NAMESPACE")
            && !ns.trim().is_empty()
        {
            c.metrics_namespace = ns.trim().into();
        }
        if let Some(b) = parse_env::<bool>("MLOPS_PREDICTION_LOG", "expected true or false")? {
            c.prediction_log = b;
        }
        if let Some(n) =
            parse_env::<usize>("MLOPS_PREDICTION_LOG_BATCH", "expected a whole number")?
        {
            c.prediction_log_batch = n.max(1);
        }
        if let Some(s) = parse_env::<f64>("MLOPS_PREDICTION_LOG_FLUSH_SECONDS", "expected seconds")?
        {
            c.prediction_log_flush = Duration::from_secs_f64(s.clamp(0.0, 3600.0));
        }
        if let Some(n) =
            parse_env::<usize>("MLOPS_PREDICTION_LOG_MAX_BYTES", "expected a whole number")?
        {
            c.prediction_log_max_bytes = n.max(1);
        }
        if let Some(s) =
            parse_env::<f64>("MLOPS_PREDICTION_LOG_MAX_AGE_SECONDS", "expected seconds")?
        {
            c.prediction_log_max_age = Duration::from_secs_f64(s.clamp(0.0, 86_400.0));
        }
        if let Ok(o) = std::env::var("MLOPS_CORS_ORIGINS") {
            c.cors_allow_origins = list(&o);
        }
        if let Some(n) = parse_env::<usize>("MLOPS_MODEL_CONCURRENCY", "expected a whole number")? {
            c.model_concurrency = n.max(1);
        }
        if let Some(n) = parse_env::<usize>("MLOPS_EXPLAIN_CONCURRENCY", "expected a whole number")?
        {
            c.explain_concurrency = n.max(1);
        }
        if let Some(s) = parse_env::<f64>("MLOPS_REQUEST_TIMEOUT_SECONDS", "expected seconds")? {
            c.request_timeout = Duration::from_secs_f64(s.clamp(0.1, 900.0));
        }
        if let Some(s) = parse_env::<f64>("MLOPS_BODY_TIMEOUT_SECONDS", "expected seconds")? {
            c.body_timeout = Duration::from_secs_f64(s.clamp(0.1, 900.0));
        }
        if let Ok(p) = std::env::var("MLOPS_BATCH_INPUT_PREFIXES") {
            c.batch_input_prefixes = list(&p);
        }
        Ok(c)
    }
}
