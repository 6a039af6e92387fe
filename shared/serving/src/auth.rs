//! API-key checks shared by the Lambda authorizer and `mlops serve`: the key set is read from
//! its [`KeyStore`] and cached for a TTL; keys are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mlops_domain::apikeys::{ApiKeyRecord, ApiKeySet, KeyError, KeyStore, required_scope};

use crate::api::ApiError;

/// Marks a health probe that presented no key (its answer leaves out models and errors).
#[derive(Debug, Clone, Copy)]
pub struct AnonymousProbe;

/// The key a request was authorized with (by `mlops serve`'s check or the Lambda authorizer):
/// handlers give admins more detail.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key has the admin scope.
    pub admin: bool,
    /// Who the key is for and its id, as the audit log names the actor: `NAME (key ID)`.
    pub key: String,
}

impl Caller {
    /// A caller authorized with `record`.
    pub fn of(record: &ApiKeyRecord) -> Self {
        Self::named(
            record.scopes.contains(&mlops_domain::apikeys::Scope::Admin),
            &record.name,
            &record.id,
        )
    }

    /// A caller from the names an authorizer passed on.
    pub fn named(admin: bool, name: &str, id: &str) -> Self {
        Self {
            admin,
            key: format!("{name} (key {id})"),
        }
    }
}

/// Header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Longest a reload of the key set may take before the caller goes on without it.
const RELOAD_DEADLINE: Duration = Duration::from_secs(2);
/// Longest a stale key set is used while reloads fail; after that, requests are refused.
const MAX_STALE: Duration = Duration::from_secs(15 * 60);
/// Longest a key set is cached (a revoked key stops working within it, whatever is configured).
pub const MAX_TTL: Duration = Duration::from_secs(5 * 60);

/// A key set cached for a TTL. Readers never wait on the key store while a cached set exists:
/// one caller reloads (with a deadline) while the others use the cached set; no lock is held
/// across the store call except the reload's own.
pub struct KeyCache {
    store: Arc<dyn KeyStore>,
    ttl: Duration,
    cached: ArcSwapOption<(Instant, Arc<ApiKeySet>)>,
    reloading: tokio::sync::Mutex<()>,
}

impl KeyCache {
    /// Caches `store` for `ttl`, at most [`MAX_TTL`].
    pub fn new(store: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        if ttl > MAX_TTL {
            tracing::warn!(
                configured_s = ttl.as_secs_f64(),
                max_s = MAX_TTL.as_secs_f64(),
                "API-key cache TTL capped"
            );
        }
        Self {
            store,
            ttl: ttl.min(MAX_TTL),
            cached: ArcSwapOption::empty(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The key set: cached while fresh; reloaded after the TTL by one caller at a time. While
    /// a reload runs or fails, a stale copy younger than [`MAX_STALE`] is used (and the failure
    /// logged) rather than refusing every caller.
    pub async fn keys(&self) -> Result<Arc<ApiKeySet>, KeyError> {
        let cached = self.cached.load_full();
        if let Some(c) = &cached
            && c.0.elapsed() < self.ttl
        {
            return Ok(Arc::clone(&c.1));
        }
        let usable_stale = cached
            .as_ref()
            .filter(|c| c.0.elapsed() < MAX_STALE)
            .map(|c| Arc::clone(&c.1));
        let _reload = match self.reloading.try_lock() {
            Ok(guard) => guard,
            // Someone else is reloading: use the stale set if there is one, else wait for them.
            Err(_) => match &usable_stale {
                Some(stale) => return Ok(Arc::clone(stale)),
                None => self.reloading.lock().await,
            },
        };
        if let Some(c) = self.cached.load_full()
            && c.0.elapsed() < self.ttl
        {
            return Ok(Arc::clone(&c.1));
        }
        let loaded = tokio::time::timeout(RELOAD_DEADLINE, self.store.load())
            .await
            .unwrap_or_else(|_| {
                Err(KeyError::Store(format!(
                    "no answer within {} s",
                    RELOAD_DEADLINE.as_secs()
                )))
            });
        match loaded {
            Ok(keys) => {
                let keys = Arc::new(keys);
                self.cached
                    .store(Some(Arc::new((Instant::now(), Arc::clone(&keys)))));
                Ok(keys)
            }
            Err(e) => match usable_stale {
                Some(stale) => {
                    tracing::warn!(error = %e, store = %self.store.describe(), "cannot reload API keys; using the cached set");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    /// The TTL in effect.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks a presented key for a route.
    pub async fn authorize(
        &self,
        presented: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<ApiKeyRecord, KeyError> {
        let keys = self.keys().await?;
        keys.authorize(presented, required_scope(method, path))
            .cloned()
    }
}

/// HTTP status of a refused key: 401 without a key, 403 for a bad or under-scoped one, 503 when
/// the key store cannot be read.
pub fn status_of(error: &KeyError) -> StatusCode {
    match error {
        KeyError::Missing => StatusCode::UNAUTHORIZED,
        KeyError::Unknown | KeyError::Revoked(_) | KeyError::Forbidden { .. } => {
            StatusCode::FORBIDDEN
        }
        KeyError::Invalid(_) | KeyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Routes a caller without a key may read (their handlers answer such a caller with less).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/health/live"
            | "/health/ready"
            | "/openapi.json"
            | "/docs"
            | "/docs/explorer.js"
            | "/docs/explorer.css"
            | "/console"
            | "/console/app.js"
            | "/console/app.css"
    )
}

/// axum middleware enforcing API keys (used by `mlops serve` when keys are configured; on AWS
/// the authorizer function does this in front of the functions).
pub async fn require_key(
    State(cache): State<Arc<KeyCache>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(API_KEY_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    // Load balancers and orchestrators probe health without credentials: liveness and a bare
    // readiness status answer them (the handlers leave out models and errors). The API's
    // generic contract and its explorer page are public too; the served models are not.
    if presented.is_none() && method == "GET" && is_public(&path) {
        let mut request = request;
        request.extensions_mut().insert(AnonymousProbe);
        return next.run(request).await;
    }
    match cache.authorize(presented, &method, &path).await {
        Ok(record) => {
            tracing::debug!(key_id = %record.id, "authorized");
            let mut request = request;
            request.extensions_mut().insert(Caller::of(&record));
            next.run(request).await
        }
        Err(e) => {
            let status = status_of(&e);
            let code = match status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                _ => "auth_unavailable",
            };
            let mut response = ApiError::new(status, code, e.to_string()).into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("ApiKey header=\"x-api-key\""),
                );
            }
            response
        }
    }
}
