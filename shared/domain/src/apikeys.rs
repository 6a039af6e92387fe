//! API keys: generation, the stored key set (only SHA-256 hashes, never keys), scopes,
//! revocation and constant-time verification.
//!
//! A key reads `mlk_<id>_<secret>`: the 12-hex-digit id finds the record (ids are not secret),
//! and the SHA-256 of the whole key is compared in constant time with the stored hash.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Predictions and model information.
    Predict,
    /// Everything, including batch jobs and traffic splits.
    Admin,
}

impl Scope {
    /// Parses `predict` or `admin`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        match text {
            "predict" => Ok(Scope::Predict),
            "admin" => Ok(Scope::Admin),
            other => Err(KeyError::Invalid(format!(
                "unknown scope '{other}' (use predict or admin)"
            ))),
        }
    }

    /// Name as written in the key set.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Predict => "predict",
            Scope::Admin => "admin",
        }
    }
}

/// The scope a route needs: predictions, feedback, model information, health and API documents need
/// `predict`; everything else (batch jobs, traffic splits, metrics) needs `admin`.
pub fn required_scope(method: &str, path: &str) -> Scope {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let read_or_predict = match parts.as_slice() {
        ["", "v1", "models", _, "predict" | "feedback"] => method == "POST",
        ["", "v1", "models"] | ["", "v1", "models", _] => method == "GET",
        ["", "health", _] | ["", "openapi.json"] => method == "GET",
        _ => false,
    };
    if read_or_predict {
        Scope::Predict
    } else {
        Scope::Admin
    }
}

/// One key as stored: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (the part after `mlk_`).
    pub id: String,
    /// Who or what the key is for.
    pub name: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Whether the key grants `scope` (`admin` grants everything).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// The stored set of keys (the secret's JSON value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeySet {
    /// Keys, revoked ones included.
    pub keys: Vec<ApiKeyRecord>,
}

/// Why a key was not accepted, or the key set cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No key in the request.
    #[error("missing API key: send it in the x-api-key header")]
    Missing,
    /// A key that matches no record.
    #[error("unknown API key")]
    Unknown,
    /// A revoked key.
    #[error("API key {0} has been revoked")]
    Revoked(String),
    /// A valid key without the scope.
    #[error("API key {id} lacks the '{}' scope", scope.name())]
    Forbidden {
        /// Key id.
        id: String,
        /// Scope needed.
        scope: Scope,
    },
    /// Bad arguments or a bad stored key set.
    #[error("{0}")]
    Invalid(String),
    /// The key store failed.
    #[error("key store: {0}")]
    Store(String),
}

const PREFIX: &str = "mlk_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;
/// Longest key accepted for hashing (longer input is refused without work).
pub const MAX_KEY_LEN: usize = 128;

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeySet {
    /// Parses the stored JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, KeyError> {
        serde_json::from_slice(bytes)
            .map_err(|e| KeyError::Invalid(format!("the API key set is not valid JSON: {e}")))
    }

    /// Serializes for storage.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("key sets serialize")
    }

    /// Makes a new key, adds its record, and returns the key (shown once, stored nowhere).
    pub fn create(&mut self, name: &str, scopes: &[Scope]) -> Result<String, KeyError> {
        if scopes.is_empty() {
            return Err(KeyError::Invalid("a key needs at least one scope".into()));
        }
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(KeyError::Invalid(
                "key name: 1–128 printable characters".into(),
            ));
        }
        let mut bytes = [0u8; 6 + 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let id = hex::encode(&bytes[..6]);
        let key = format!("{PREFIX}{id}_{}", hex::encode(&bytes[6..]));
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        self.keys.push(ApiKeyRecord {
            id,
            name: name.into(),
            sha256: hex::encode(hash(&key)),
            scopes,
            created_at: Utc::now(),
            revoked_at: None,
        });
        Ok(key)
    }

    /// Revokes a key by id (idempotent).
    pub fn revoke(&mut self, id: &str) -> Result<&ApiKeyRecord, KeyError> {
        let record = self
            .keys
            .iter_mut()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::Invalid(format!("no API key with id '{id}'")))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now());
        }
        Ok(record)
    }

    /// Checks a presented key and the scope a route needs. The hash comparison takes the same
    /// time whether or not the id exists or the hash matches.
    pub fn authorize(
        &self,
        presented: Option<&str>,
        scope: Scope,
    ) -> Result<&ApiKeyRecord, KeyError> {
        let presented = presented
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(KeyError::Missing)?;
        if presented.len() > MAX_KEY_LEN {
            return Err(KeyError::Unknown);
        }
        let id = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .filter(|(id, secret)| id.len() == ID_HEX && secret.len() == SECRET_HEX)
            .map(|(id, _)| id);
        let digest = hash(presented);
        let record = id.and_then(|id| self.keys.iter().find(|k| k.id == id));
        let stored: [u8; 32] = record
            .and_then(|r| hex::decode(&r.sha256).ok())
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0u8; 32]);
        let matches: bool = digest.ct_eq(&stored).into();
        let record = match record {
            Some(r) if matches => r,
            _ => return Err(KeyError::Unknown),
        };
        if record.revoked_at.is_some() {
            return Err(KeyError::Revoked(record.id.clone()));
        }
        if !record.allows(scope) {
            return Err(KeyError::Forbidden {
                id: record.id.clone(),
                scope,
            });
        }
        Ok(record)
    }
}

/// Where the key set lives: a Secrets Manager secret on AWS, a file in the embedded default.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Reads the key set (empty if none was stored yet).
    async fn load(&self) -> Result<ApiKeySet, KeyError>;
    /// Replaces the key set.
    async fn save(&self, keys: &ApiKeySet) -> Result<(), KeyError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authorize_revoke() {
        let mut set = ApiKeySet::default();
        let predict = set.create("app", &[Scope::Predict]).unwrap();
        let admin = set.create("ops", &[Scope::Admin]).unwrap();
        assert!(predict.starts_with("mlk_") && predict.len() == 4 + 12 + 1 + 64);
        // Only hashes are stored.
        let stored = String::from_utf8(set.to_json()).unwrap();
        assert!(!stored.contains(&predict[17..]) && !stored.contains(&admin[17..]));

        assert!(set.authorize(Some(&predict), Scope::Predict).is_ok());
        assert!(matches!(
            set.authorize(Some(&predict), Scope::Admin),
            Err(KeyError::Forbidden { .. })
        ));
        assert!(set.authorize(Some(&admin), Scope::Predict).is_ok());
        assert_eq!(set.authorize(None, Scope::Predict), Err(KeyError::Missing));
        assert_eq!(
            set.authorize(Some("  "), Scope::Predict),
            Err(KeyError::Missing)
        );
        let mut forged = predict.clone();
        forged.pop();
        forged.push(if predict.ends_with('0') { '1' } else { '0' });
        assert_eq!(
            set.authorize(Some(&forged), Scope::Predict),
            Err(KeyError::Unknown)
        );
        assert_eq!(
            set.authorize(Some("mlk_x"), Scope::Predict),
            Err(KeyError::Unknown)
        );
        assert_eq!(
            set.authorize(Some(&"k".repeat(10_000)), Scope::Predict),
            Err(KeyError::Unknown)
        );

        let id = set.keys[0].id.clone();
        set.revoke(&id).unwrap();
        assert_eq!(
            set.authorize(Some(&predict), Scope::Predict),
            Err(KeyError::Revoked(id))
        );
        let reloaded = ApiKeySet::from_json(&set.to_json()).unwrap();
        assert_eq!(reloaded, set);
        assert!(set.revoke("nope").is_err());
        assert!(set.create("x", &[]).is_err());
    }

    #[test]
    fn scopes_of_routes() {
        assert_eq!(
            required_scope("POST", "/v1/models/m/predict"),
            Scope::Predict
        );
        assert_eq!(required_scope("GET", "/v1/models/m"), Scope::Predict);
        assert_eq!(
            required_scope("POST", "/v1/models/m/feedback"),
            Scope::Predict
        );
        assert_eq!(required_scope("GET", "/v1/models"), Scope::Predict);
        assert_eq!(required_scope("GET", "/health/ready"), Scope::Predict);
        assert_eq!(required_scope("POST", "/v1/batch-jobs"), Scope::Admin);
        assert_eq!(required_scope("GET", "/v1/batch-jobs/abc"), Scope::Admin);
        assert_eq!(required_scope("PUT", "/v1/models/m/traffic"), Scope::Admin);
        // The console's routes: logs hold callers' inputs; the rest change or read the registry.
        for (method, path) in [
            ("GET", "/v1/models/m/predictions"),
            ("GET", "/v1/models/m/predictions/export"),
            ("GET", "/v1/models/m/audit"),
            ("POST", "/v1/models/m/aliases/champion"),
            ("POST", "/v1/models/m/aliases/champion/rollback"),
            ("POST", "/v1/models/m/versions/2/approve"),
            ("GET", "/v1/models/m/monitoring"),
            ("GET", "/v1/runs"),
        ] {
            assert_eq!(
                required_scope(method, path),
                Scope::Admin,
                "{method} {path}"
            );
        }
        assert_eq!(required_scope("DELETE", "/v1/models/m"), Scope::Admin);
        assert_eq!(required_scope("GET", "/metrics"), Scope::Admin);
    }
}
