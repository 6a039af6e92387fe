//! The API-key set as the JSON value of a Secrets Manager secret.

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use mlops_domain::apikeys::{ApiKeySet, KeyError, KeyStore};

use crate::describe;

/// Key set in a Secrets Manager secret (created on the first save).
pub struct SecretsKeyStore {
    client: Client,
    secret_id: String,
}

impl SecretsKeyStore {
    /// A key store on a secret name or ARN.
    pub fn new(config: &aws_config::SdkConfig, secret_id: &str) -> Self {
        Self {
            client: Client::new(config),
            secret_id: secret_id.into(),
        }
    }
}

#[async_trait]
impl KeyStore for SecretsKeyStore {
    async fn load(&self) -> Result<ApiKeySet, KeyError> {
        match self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
        {
            Ok(out) => {
                let text = out.secret_string().ok_or_else(|| {
                    KeyError::Invalid(format!("secret {} has no string value", self.secret_id))
                })?;
                ApiKeySet::from_json(text.as_bytes())
                    .map_err(|e| KeyError::Invalid(format!("secret {}: {e}", self.secret_id)))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                Ok(ApiKeySet::default())
            }
            Err(e) => Err(KeyError::Store(format!(
                "cannot read secret {}: {}",
                self.secret_id,
                describe(&e)
            ))),
        }
    }

    async fn save(&self, keys: &ApiKeySet) -> Result<(), KeyError> {
        let value = String::from_utf8(keys.to_json()).expect("JSON is UTF-8");
        let put = self
            .client
            .put_secret_value()
            .secret_id(&self.secret_id)
            .secret_string(&value)
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => self
                .client
                .create_secret()
                .name(&self.secret_id)
                .description("mlops API keys (SHA-256 hashes only)")
                .secret_string(value)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    KeyError::Store(format!(
                        "cannot create secret {}: {}",
                        self.secret_id,
                        describe(&e)
                    ))
                }),
            Err(e) => Err(KeyError::Store(format!(
                "cannot write secret {}: {}",
                self.secret_id,
                describe(&e)
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("secretsmanager:{}", self.secret_id)
    }
}
