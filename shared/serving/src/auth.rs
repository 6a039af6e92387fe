//! API-key checks shared by the Lambda authorizer and `mlops serve`: the key set is read from
//! its [`KeyStore`] and cached for a TTL; keys are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mlops_domain::apikeys::{ApiKeyRecord, ApiKeySet, KeyError, KeyStore, required_scope};
use tokio::sync::RwLock;

use crate::api::ApiError;

/// Header that carries the key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// A key set cached for a TTL.
pub struct KeyCache {
    store: Arc<dyn KeyStore>,
    ttl: Duration,
    cached: RwLock<Option<(Instant, Arc<ApiKeySet>)>>,
}

impl KeyCache {
    /// Caches `store` for `ttl`.
    pub fn new(store: Arc<dyn KeyStore>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cached: RwLock::new(None),
        }
    }

    /// The key set: cached while fresh; reloaded after the TTL. If reloading fails, a stale
    /// copy is used (and the failure logged) rather than refusing every caller.
    pub async fn keys(&self) -> Result<Arc<ApiKeySet>, KeyError> {
        if let Some((at, keys)) = &*self.cached.read().await
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(keys));
        }
        let mut slot = self.cached.write().await;
        if let Some((at, keys)) = &*slot
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(keys));
        }
        match self.store.load().await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *slot = Some((Instant::now(), Arc::clone(&keys)));
                Ok(keys)
            }
            Err(e) => match &*slot {
                Some((_, stale)) => {
                    tracing::warn!(error = %e, store = %self.store.describe(), "cannot reload API keys; using the cached set");
                    Ok(Arc::clone(stale))
                }
                None => Err(e),
            },
        }
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
    match cache.authorize(presented, &method, &path).await {
        Ok(record) => {
            tracing::debug!(key_id = %record.id, "authorized");
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
