//! `mlops serve`: the serving API on localhost, the same router the Lambda functions run, over
//! the configured registry store; plus Prometheus `/metrics`. API keys are always required
//! (no key set yet means every request is refused) and the key set is re-read every
//! `--keys-refresh-seconds`, so keys created or revoked while serving take effect without a
//! restart; only an explicit `--no-auth` turns them off, loudly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mlops_domain::apikeys::KeyStore;
use mlops_serving::auth::KeyCache;
use mlops_serving::{AppState, Backends, RouteSet, ServeConfig, router_with_keys};

use crate::config::Settings;
use crate::local_queue::LocalQueue;

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
    /// Keys are always required now; kept so older scripts still start.
    #[arg(long, hide = true)]
    pub require_api_key: bool,
    /// Re-read the key set at most this often (seconds), so new and revoked keys take effect.
    #[arg(long, default_value_t = 10.0)]
    pub keys_refresh_seconds: f64,
    /// Turn off API keys: anyone who can reach the port may predict and change traffic (local
    /// experiments only; said at start and on /health/ready).
    #[arg(long, conflicts_with = "require_api_key")]
    pub no_auth: bool,
    /// Print CloudWatch EMF metric lines to stdout.
    #[arg(long)]
    pub emf: bool,
    /// Do not serve Prometheus metrics at /metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// Close a connection whose first byte or request headers have not all arrived within this
    /// many seconds (slow-loris clients, silent connections, idle keep-alive connections).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout_seconds: f64,
    /// Most open connections; past it new ones wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

/// Connections the kernel may queue before they are accepted (capped by `net.core.somaxconn`).
/// tokio's `bind` asks for 128: a burst of a few hundred connections then overflowed the queue,
/// and the dropped handshakes came back a second later or, for a client that never sends, never.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
    config.auth_off = args.no_auth;
    anyhow::ensure!(
        (0.1..=3_600.0).contains(&args.keys_refresh_seconds),
        "--keys-refresh-seconds {}: expected 0.1 to 3600",
        args.keys_refresh_seconds
    );
    anyhow::ensure!(
        (0.1..=3_600.0).contains(&args.header_timeout_seconds),
        "--header-timeout-seconds {}: expected 0.1 to 3600",
        args.header_timeout_seconds
    );
    let registry = settings.registry().await?;
    let exe = std::env::current_exe().context("cannot find the mlops executable")?;
    let backends = Backends {
        jobs: Some(Arc::new(LocalQueue::new(exe, settings.global_args()))),
        runs: Some(settings.run_reader()),
        online: Some(settings.online_store().await?),
    };
    let state = AppState::start_with(registry, config, backends).await;
    let set = RouteSet {
        metrics: !args.no_metrics,
        ..RouteSet::ALL
    };
    let keys: Arc<dyn KeyStore> =
        crate::commands::keys::key_store(args.api_keys_secret.as_deref(), settings).await;
    let (key_note, cache) = if args.no_auth {
        ("OFF (--no-auth)".to_string(), None)
    } else {
        let create = match &args.api_keys_secret {
            Some(secret) => {
                format!("mlops keys create --secret {secret} --name APP --scope predict")
            }
            None => format!(
                "mlops --home {} keys create --name APP --scope predict",
                settings.home.display()
            ),
        };
        let note = key_set_note(keys.as_ref(), &create).await;
        let ttl = Duration::from_secs_f64(args.keys_refresh_seconds);
        (note, Some(Arc::new(KeyCache::new(keys, ttl))))
    };
    let app = router_with_keys(Arc::clone(&state), set, cache);
    let listener =
        listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    if args.no_auth {
        eprintln!(
            "WARNING: API keys are OFF (--no-auth): anyone who can reach http://{} can predict, \
             read models and change traffic splits. /health/ready says \"auth\": \"off\".",
            listener.local_addr()?
        );
    }
    eprintln!(
        "serving {} from {} on http://{} (API keys {key_note}; docs at /docs{})",
        if state.models.names().is_empty() {
            "no model yet".to_string()
        } else {
            state.models.names().join(", ")
        },
        settings.store_uri(),
        listener.local_addr()?,
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
    serve_connections(
        listener,
        app,
        ConnectionLimits {
            header: Duration::from_secs_f64(args.header_timeout_seconds),
            max_connections: args.max_connections as usize,
        },
    )
    .await;
    if let Some(log) = &state.predictions_log {
        log.flush().await;
    }
    Ok(())
}

/// How the key set stands at start, for the start line: keys are required either way.
async fn key_set_note(keys: &dyn KeyStore, create: &str) -> String {
    match keys.load().await {
        Ok(set) if set.keys.iter().any(|k| k.revoked_at.is_none()) => "required".into(),
        Ok(_) => format!(
            "required, and none exists yet: every request is refused until you run \
             `{create}`"
        ),
        Err(e) => {
            format!("required; the key set cannot be read yet ({e}), so requests are refused")
        }
    }
}

/// What one client connection may hold.
struct ConnectionLimits {
    /// The first byte, and each request's headers (counted from the previous response on a
    /// kept-alive connection), must arrive within it.
    header: Duration,
    /// Most connections open at once.
    max_connections: usize,
}

/// Accepts connections until SIGTERM/Ctrl-C: at most `max_connections` open at once (further
/// ones wait in the backlog); a connection is closed when its first byte or a request's headers
/// take longer than `header` (hyper's HTTP/1 header-read timer, which also closes a kept-alive
/// connection left idle). Request bodies and whole requests have their own deadlines in the router
/// (`MLOPS_BODY_TIMEOUT_SECONDS`, `MLOPS_REQUEST_TIMEOUT_SECONDS`). In-flight requests finish
/// before it returns (at most 10 s).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
) {
    let ConnectionLimits {
        header: header_timeout,
        max_connections,
    } = limits;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let shutdown = mlops_serving::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // A client that connects and sends nothing is closed at the header timeout.
            let mut first = [0u8; 1];
            if !matches!(
                tokio::time::timeout(header_timeout, stream.peek(&mut first)).await,
                Ok(Ok(1..))
            ) {
                return;
            }
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; stopping anyway");
        }
    }
}
