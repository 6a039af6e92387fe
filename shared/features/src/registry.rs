//! Versioned definitions on the object store.
//!
//! Layout: `features/definitions/{entities|views}/{name}/{version:08}.json`, one immutable object
//! per version, created with a create-only write. A new name gets a fresh id and version 1; a
//! changed definition gets the next version under the same id; applying an unchanged definition
//! writes nothing. Two writers racing for the same version: one create wins, the other re-reads
//! and either finds its definition already there or takes the next number.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use mlops_domain::store::{ObjectStore, PutCondition, StoreError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::definition::{DefinitionError, Definitions, Entity, FeatureView, ViewRef, join_keys_of};

const PREFIX: &str = "features/definitions";

/// A stored version of a definition with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered<T> {
    /// Stable id of the definition across its versions.
    pub id: String,
    /// 1, 2, …
    pub version: u32,
    /// When this version was written.
    pub registered_at: DateTime<Utc>,
    /// Who wrote it.
    pub registered_by: String,
    /// SHA-256 of the definition's canonical JSON.
    pub sha256: String,
    /// The definition as written.
    pub definition: T,
}

/// A registered feature view with the join keys resolved at registration (so one version is
/// self-contained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDefinition {
    /// The view.
    #[serde(flatten)]
    pub view: FeatureView,
    /// Its entities' join keys, in order.
    pub join_keys: Vec<String>,
}

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad definition.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// No such definition or version.
    #[error("{kind} '{name}'{} is not registered{}", .version.map(|v| format!(" version {v}")).unwrap_or_default(), .hint)]
    NotFound {
        /// entity or feature view.
        kind: &'static str,
        /// Name.
        name: String,
        /// Version asked for.
        version: Option<u32>,
        /// What exists.
        hint: String,
    },
    /// A stored object that does not decode.
    #[error("stored definition '{key}' is unreadable: {message}")]
    Corrupt {
        /// Store key.
        key: String,
        /// Decoder message.
        message: String,
    },
    /// Lost the version race too many times in a row.
    #[error(
        "{kind} '{name}': gave up after {attempts} concurrent registrations took the next version"
    )]
    Contended {
        /// entity or feature view.
        kind: &'static str,
        /// Name.
        name: String,
        /// Attempts.
        attempts: u32,
    },
}

/// What applying one definition did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// `entity` or `feature_view`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// The version that now holds it.
    pub version: u32,
    /// Whether this apply wrote that version (false: it was already the latest).
    pub created: bool,
}

/// Kinds of definitions, with their store folder.
trait Kind: Serialize + DeserializeOwned + PartialEq + Clone {
    const KIND: &'static str;
    const FOLDER: &'static str;
}

impl Kind for Entity {
    const KIND: &'static str = "entity";
    const FOLDER: &'static str = "entities";
}

impl Kind for ViewDefinition {
    const KIND: &'static str = "feature_view";
    const FOLDER: &'static str = "views";
}

/// Definitions on a store.
#[derive(Clone)]
pub struct FeatureRegistry {
    store: Arc<dyn ObjectStore>,
}

fn sha256_of<T: Serialize>(definition: &T) -> String {
    let json = serde_json::to_vec(definition).expect("definitions serialize");
    hex::encode(Sha256::digest(json))
}

fn key(folder: &str, name: &str, version: u32) -> String {
    format!("{PREFIX}/{folder}/{name}/{version:08}.json")
}

impl FeatureRegistry {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The store it writes to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Registers every definition of a file: entities first, then views (which may name entities
    /// of the file or already registered ones).
    pub async fn apply(&self, defs: &Definitions, by: &str) -> Result<Vec<Applied>, RegistryError> {
        let mut keys = BTreeMap::new();
        for name in self.names::<Entity>().await? {
            if let Some(e) = self.latest::<Entity>(&name).await? {
                keys.insert(name, e.definition.join_keys);
            }
        }
        defs.validate(&keys)?;
        let mut applied = Vec::new();
        for e in &defs.entities {
            applied.push(self.put_version(e.clone(), &e.name, by).await?);
            keys.insert(e.name.clone(), e.join_keys.clone());
        }
        for v in &defs.feature_views {
            let definition = ViewDefinition {
                join_keys: join_keys_of(v, &keys)?,
                view: v.clone(),
            };
            applied.push(self.put_version(definition, &v.name, by).await?);
        }
        Ok(applied)
    }

    /// An entity: the latest version, or the one named.
    pub async fn entity(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Registered<Entity>, RegistryError> {
        self.get(name, version).await
    }

    /// A feature view: the latest version, or the one named.
    pub async fn view(&self, at: &ViewRef) -> Result<Registered<ViewDefinition>, RegistryError> {
        self.get(&at.name, at.version).await
    }

    /// Every version of a feature view, oldest first.
    pub async fn view_versions(
        &self,
        name: &str,
    ) -> Result<Vec<Registered<ViewDefinition>>, RegistryError> {
        let mut out = Vec::new();
        for v in self.versions::<ViewDefinition>(name).await? {
            out.push(
                self.read::<ViewDefinition>(name, v)
                    .await?
                    .expect("listed version exists"),
            );
        }
        Ok(out)
    }

    /// Names of registered entities.
    pub async fn entity_names(&self) -> Result<Vec<String>, RegistryError> {
        self.names::<Entity>().await
    }

    /// Names of registered feature views.
    pub async fn view_names(&self) -> Result<Vec<String>, RegistryError> {
        self.names::<ViewDefinition>().await
    }

    async fn names<T: Kind>(&self) -> Result<Vec<String>, RegistryError> {
        let prefix = format!("{PREFIX}/{}/", T::FOLDER);
        let mut names: Vec<String> = self
            .store
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|k| {
                k.strip_prefix(&prefix)?
                    .split_once('/')
                    .map(|(n, _)| n.to_string())
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn versions<T: Kind>(&self, name: &str) -> Result<Vec<u32>, RegistryError> {
        let prefix = format!("{PREFIX}/{}/{name}/", T::FOLDER);
        let mut versions: Vec<u32> = self
            .store
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn read<T: Kind>(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Registered<T>>, RegistryError> {
        let key = key(T::FOLDER, name, version);
        let Some(object) = self.store.get(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&object.bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                key,
                message: e.to_string(),
            })
    }

    async fn latest<T: Kind>(&self, name: &str) -> Result<Option<Registered<T>>, RegistryError> {
        match self.versions::<T>(name).await?.last() {
            Some(&v) => self.read(name, v).await,
            None => Ok(None),
        }
    }

    async fn get<T: Kind>(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Registered<T>, RegistryError> {
        crate::definition::check_name(T::KIND, name)?;
        let found = match version {
            Some(v) => self.read::<T>(name, v).await?,
            None => self.latest::<T>(name).await?,
        };
        match found {
            Some(r) => Ok(r),
            None => {
                let versions = self.versions::<T>(name).await?;
                let hint = match versions.last() {
                    Some(1) => " (only version 1 is)".to_string(),
                    Some(last) => format!(" (versions 1 to {last} are)"),
                    None => format!(" (registered: {})", self.names::<T>().await?.join(", ")),
                };
                Err(RegistryError::NotFound {
                    kind: T::KIND,
                    name: name.into(),
                    version,
                    hint,
                })
            }
        }
    }

    /// Writes `definition` as the next version of `name`, unless it already is the latest.
    async fn put_version<T: Kind>(
        &self,
        definition: T,
        name: &str,
        by: &str,
    ) -> Result<Applied, RegistryError> {
        const ATTEMPTS: u32 = 16;
        let sha256 = sha256_of(&definition);
        for _ in 0..ATTEMPTS {
            let latest = self.latest::<T>(name).await?;
            let (id, version) = match &latest {
                Some(r) if r.sha256 == sha256 && r.definition == definition => {
                    return Ok(Applied {
                        kind: T::KIND,
                        name: name.into(),
                        id: r.id.clone(),
                        version: r.version,
                        created: false,
                    });
                }
                Some(r) => (r.id.clone(), r.version + 1),
                None => (uuid::Uuid::new_v4().to_string(), 1),
            };
            let record = Registered {
                id: id.clone(),
                version,
                registered_at: Utc::now(),
                registered_by: by.into(),
                sha256: sha256.clone(),
                definition: definition.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&record).expect("definitions serialize");
            match self
                .store
                .put(
                    &key(T::FOLDER, name, version),
                    bytes,
                    PutCondition::IfAbsent,
                )
                .await
            {
                Ok(_) => {
                    return Ok(Applied {
                        kind: T::KIND,
                        name: name.into(),
                        id,
                        version,
                        created: true,
                    });
                }
                Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contended {
            kind: T::KIND,
            name: name.into(),
            attempts: ATTEMPTS,
        })
    }
}
