//! The API-key authorizer of the HTTP API (payload format 2.0, simple responses).
//!
//! It reads the `x-api-key` header, checks it against the SHA-256 hashes in the Secrets Manager
//! secret `MLOPS_API_KEYS_SECRET` (cached for `MLOPS_API_KEYS_TTL_SECONDS`, default 60) and the
//! scope the route needs (`predict` for predictions, model information and health; `admin` for
//! everything else). It answers `{"isAuthorized": …}`; API Gateway turns a refusal into 403, and a
//! request without the header (the identity source) into 401 before calling it. Keys are never
//! logged: only key ids are.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use mlops_domain::apikeys::KeyError;
use mlops_serving::auth::{API_KEY_HEADER, KeyCache};
use serde::Serialize;

/// The simple authorizer response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decision {
    is_authorized: bool,
    context: serde_json::Value,
}

async fn authorize(
    cache: &KeyCache,
    event: LambdaEvent<ApiGatewayV2CustomAuthorizerV2Request>,
) -> Result<Decision, Error> {
    let request = event.payload;
    let key = request
        .headers
        .get(API_KEY_HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let http = &request.request_context.http;
    let method = http.method.as_str();
    let path = http
        .path
        .as_deref()
        .or(request.raw_path.as_deref())
        .unwrap_or("/");
    match cache.authorize(key, method, path).await {
        Ok(record) => {
            tracing::info!(key_id = %record.id, method, path, "authorized");
            Ok(Decision {
                is_authorized: true,
                context: serde_json::json!({
                    "keyId": record.id,
                    "keyName": record.name,
                    "scopes": record.scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
                }),
            })
        }
        Err(KeyError::Store(e)) => {
            // Fail closed, loudly: API Gateway answers 403 and the alarm fires on the log.
            tracing::error!(error = %e, "cannot read the API keys");
            Ok(Decision {
                is_authorized: false,
                context: serde_json::json!({}),
            })
        }
        Err(e) => {
            tracing::info!(reason = %e, method, path, "refused");
            Ok(Decision {
                is_authorized: false,
                context: serde_json::json!({}),
            })
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    mlops_function_env::init_logging();
    let ttl = mlops_function_env::seconds("MLOPS_API_KEYS_TTL_SECONDS", 60.0)?;
    let cache = Arc::new(KeyCache::new(mlops_function_env::key_store().await?, ttl));
    lambda_runtime::run(service_fn(move |event| {
        let cache = Arc::clone(&cache);
        async move { authorize(&cache, event).await }
    }))
    .await
}
