//! The model registry, on any [`ObjectStore`].
//!
//! Layout under the store root, per model `NAME`:
//! - `models/NAME/bundles/DIGEST/FILE`: bundle files, content-addressed by manifest digest;
//! - `models/NAME/versions/NNNNNN.json`: one [`VersionRecord`] per version, written create-only,
//!   so two registrations can never take the same number and numbers are never reused;
//! - `models/NAME/cards/NNNNNN.json`: the [`ModelCard`], updated by compare-and-swap;
//! - `models/NAME/aliases.json`: [`AliasState`] (aliases and the append-only audit log of every
//!   change), updated only by compare-and-swap, so concurrent promotions never lose an update;
//! - `models/NAME/registrations/KEY.json`: idempotency claims of registrations;
//! - `models/NAME/traffic.json`: the A/B [`TrafficSplit`] between aliases, by compare-and-swap.
//!
//! The bundle is written before the version record that points to it, so a crash leaves at most an
//! unreferenced bundle, never a version without its files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::artifact::{ArtifactError, Bundle, Lineage, MANIFEST_FILE, ModelKind};
use crate::gate::GateDecision;
use crate::hashing::sha256_hex;
use crate::schema::Task;
use crate::store::{ETag, ObjectStore, PutCondition, StoreError};
use crate::traffic::TrafficSplit;

/// The alias serving traffic; it may only point at a version whose card is approved.
pub const CHAMPION: &str = "champion";
/// The alias for the candidate under evaluation.
pub const CHALLENGER: &str = "challenger";
/// Who approves the cards of versions the champion–challenger gate promotes.
pub const GATE_APPROVER: &str = "champion-challenger gate";
/// Upper bound of compare-and-swap attempts before giving up.
const MAX_ATTEMPTS: usize = 200;

/// One registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Model name.
    pub model: String,
    /// Version number (1, 2, …).
    pub version: u64,
    /// Store prefix of the bundle files.
    pub bundle_prefix: String,
    /// SHA-256 of the bundle's manifest.
    pub bundle_digest: String,
    /// Task.
    pub task: Task,
    /// Model family.
    pub model_kind: ModelKind,
    /// Test metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Learner parameters.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Lineage (data hash, code commit, run).
    pub lineage: Lineage,
    /// Who registered it.
    pub registered_by: String,
    /// When.
    pub registered_at: DateTime<Utc>,
    /// Idempotency key of the registration, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Approval of a model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Approver.
    pub approved_by: String,
    /// When.
    pub approved_at: DateTime<Utc>,
    /// Note.
    #[serde(default)]
    pub note: String,
}

/// The model card of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModelCard {
    /// What the model is for, and what it is not for.
    pub intended_use: String,
    /// Training data description (data set, hash, rows).
    pub training_data: String,
    /// Test metrics, copied at registration.
    pub metrics: BTreeMap<String, f64>,
    /// Known limitations.
    pub limitations: String,
    /// Owner (team or person).
    pub owner: String,
    /// Approval, if given; editing any field clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

impl ModelCard {
    /// Fields a reviewer must fill before the card can be approved, by name, when empty.
    pub fn missing_for_approval(&self) -> Vec<&'static str> {
        [
            ("intended_use", &self.intended_use),
            ("limitations", &self.limitations),
        ]
        .into_iter()
        .filter(|(_, value)| value.trim().is_empty())
        .map(|(name, _)| name)
        .collect()
    }
}

/// Editable card fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct CardEdit {
    /// New intended use.
    pub intended_use: Option<String>,
    /// New limitations.
    pub limitations: Option<String>,
    /// New owner.
    pub owner: Option<String>,
    /// New training-data description.
    pub training_data: Option<String>,
}

/// What happened to an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasAction {
    /// Pointed at a version.
    Promote,
    /// Returned to the version it pointed at before the last promotion.
    Rollback,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    /// Revision of the alias state this change produced.
    pub revision: u64,
    /// Alias.
    pub alias: String,
    /// Action.
    pub action: AliasAction,
    /// Version before.
    pub from: Option<u64>,
    /// Version after.
    pub to: u64,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The caller's id for this change: a retry with the same id returns this event instead of
    /// changing the alias again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Aliases of a model and the full history of their changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AliasState {
    /// Incremented by every change.
    pub revision: u64,
    /// Alias → version.
    pub aliases: BTreeMap<String, u64>,
    /// Append-only audit log.
    pub history: Vec<AliasEvent>,
    /// Where each alias's version keeps its bundle, copied from the (immutable) version record
    /// when the alias moves, so that serving fetches the bundle without reading the record
    /// first; used only while it names the version the alias points at. Absent in files
    /// written before it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bundles: BTreeMap<String, BundleRef>,
}

/// A version's bundle location, as its record states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    /// Version.
    pub version: u64,
    /// Store prefix of the bundle.
    pub bundle_prefix: String,
    /// SHA-256 of its manifest.
    pub bundle_digest: String,
}

impl AliasState {
    /// The bundle of the version `alias` points at, when recorded for that version.
    pub fn bundle(&self, alias: &str) -> Option<&BundleRef> {
        let version = *self.aliases.get(alias)?;
        self.bundles.get(alias).filter(|b| b.version == version)
    }

    /// The versions an alias pointed at, oldest first, after replaying promotions and rollbacks.
    pub fn stack(&self, alias: &str) -> Vec<u64> {
        let mut stack = Vec::new();
        for e in self.history.iter().filter(|e| e.alias == alias) {
            match e.action {
                AliasAction::Promote => stack.push(e.to),
                AliasAction::Rollback => {
                    stack.pop();
                }
            }
        }
        stack
    }
}

impl VersionRecord {
    /// Where this version keeps its bundle.
    pub fn bundle_ref(&self) -> BundleRef {
        BundleRef {
            version: self.version,
            bundle_prefix: self.bundle_prefix.clone(),
            bundle_digest: self.bundle_digest.clone(),
        }
    }
}

/// The manifest and engine image of a version, for serving.
#[derive(Debug)]
pub struct ServingParts {
    /// The verified manifest.
    pub manifest: crate::artifact::Manifest,
    /// The engine image, when the bundle has one.
    pub image: Option<ServingImage>,
}

/// An engine image as fetched.
#[derive(Debug)]
pub struct ServingImage {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Listed (and so verified) in the manifest; otherwise added later, and verified by the
    /// hashes it carries.
    pub listed: bool,
}

/// Checks a stored manifest against the digest its version record pins.
fn check_manifest_digest(origin: &str, bytes: &[u8], expected: &str) -> Result<(), ArtifactError> {
    let actual = sha256_hex(bytes);
    if actual == expected {
        return Ok(());
    }
    Err(ArtifactError::Checksum {
        origin: origin.into(),
        name: MANIFEST_FILE.into(),
        expected: format!("sha256 {expected}"),
        actual: format!("sha256 {actual}"),
    })
}

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bundle failure.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// A model or alias name that is not allowed.
    #[error(
        "invalid {what} name '{name}': use 1–64 characters a-z, 0-9, '-' or '_', starting with a letter or digit"
    )]
    InvalidName {
        /// "model" or "alias".
        what: &'static str,
        /// Name.
        name: String,
    },
    /// Something that does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// `champion` needs an approved card.
    #[error(
        "model '{model}' version {version} cannot become '{CHAMPION}': its model card is not approved (run `mlops registry card {model} {version} --approve --by NAME`)"
    )]
    CardNotApproved {
        /// Model.
        model: String,
        /// Version.
        version: u64,
    },
    /// Nothing earlier to roll back to.
    #[error("alias '{alias}' of model '{model}' has no earlier version to roll back to")]
    NothingToRollBack {
        /// Model.
        model: String,
        /// Alias.
        alias: String,
    },
    /// A stored record that does not parse.
    #[error("registry object '{key}' is corrupt: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Parser message.
        message: String,
    },
    /// Too much contention.
    #[error("gave up on '{key}' after {attempts} conflicting concurrent updates")]
    Contention {
        /// Key.
        key: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A traffic split that cannot be used.
    #[error("invalid traffic split: {0}")]
    InvalidTraffic(String),
    /// Traffic may only reach versions whose card is approved.
    #[error(
        "alias '{alias}' of model '{model}' points at version {version}, whose model card is not approved: it may not receive traffic (run `mlops registry card {model} {version} --approve --by NAME` after review)"
    )]
    TrafficNotApproved {
        /// Model.
        model: String,
        /// Alias in the split.
        alias: String,
        /// Version behind it.
        version: u64,
    },
    /// A card cannot be approved while fields a reviewer must fill are empty.
    #[error(
        "model '{model}' version {version}: the card cannot be approved while {} empty (set them with `mlops registry card {model} {version} --intended-use \"…\" --limitations \"…\"`)",
        describe_missing(missing)
    )]
    CardIncomplete {
        /// Model.
        model: String,
        /// Version.
        version: u64,
        /// Empty fields, by name.
        missing: Vec<&'static str>,
    },
}

fn describe_missing(missing: &[&str]) -> String {
    match missing {
        [one] => format!("{one} is"),
        many => format!("{} are", many.join(" and ")),
    }
}

/// Options of [`Registry::register`].
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    /// A key that makes retries of the same registration return the same version.
    pub idempotency_key: Option<String>,
    /// Who registers (user or job id).
    pub registered_by: String,
}

/// The claim of an idempotency key: the number its version record goes to, then the version.
#[derive(Debug, Serialize, Deserialize)]
struct RegistrationClaim {
    /// Digest of the bundle the first attempt registered (informational).
    bundle_digest: String,
    /// The version, once its record and card are written.
    version: Option<u64>,
    /// The number the version record is written at; moved forward only when another
    /// registration took it. Absent in claims written before numbers were reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reserved: Option<u64>,
}

/// The card a version starts with: training data, metrics and owner from its record.
fn initial_card(record: &VersionRecord) -> ModelCard {
    let l = &record.lineage;
    ModelCard {
        training_data: format!(
            "{} (sha256 {}, {} training rows, {} test rows)",
            l.data_source, l.data_sha256, l.train_rows, l.test_rows
        ),
        metrics: record.metrics.clone(),
        owner: record.registered_by.clone(),
        ..Default::default()
    }
}

/// The registry.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
}

/// Checks a model or alias name.
pub fn check_name(what: &'static str, name: &str) -> Result<(), RegistryError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName {
            what,
            name: name.into(),
        })
    }
}

fn version_key(model: &str, version: u64) -> String {
    format!("models/{model}/versions/{version:06}.json")
}

fn card_key(model: &str, version: u64) -> String {
    format!("models/{model}/cards/{version:06}.json")
}

fn traffic_key(model: &str) -> String {
    format!("models/{model}/traffic.json")
}

fn aliases_key(model: &str) -> String {
    format!("models/{model}/aliases.json")
}

fn parse<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        key: key.into(),
        message: e.to_string(),
    })
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("registry records serialize")
}

async fn backoff(attempt: usize) {
    let cap = 2u64.saturating_pow(attempt.min(7) as u32).min(100);
    let ms = rand::thread_rng().gen_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl Registry {
    /// A registry on a store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Registers a bundle as a new version of `model` (the bundle's own name is not used).
    ///
    /// Steps: the bundle files (content-addressed, create-only), then — with an idempotency key —
    /// the claim of the key, then the version record (create-only), its card, and the claim's
    /// completion. A crash at any step leaves a state that the same call finishes: the claim
    /// reserves the number its version record goes to, so every retry (or a concurrent duplicate)
    /// writes the same record and exactly one version carries the key. Without a key a retry
    /// registers a new version.
    pub async fn register(
        &self,
        model: &str,
        bundle: &Bundle,
        options: RegisterOptions,
    ) -> Result<VersionRecord, RegistryError> {
        check_name("model", model)?;
        let digest = bundle.digest();
        let prefix = format!("models/{model}/bundles/{digest}");
        for (name, bytes) in bundle.all_files() {
            let key = format!("{prefix}/{name}");
            match self.store.put(&key, bytes, PutCondition::IfAbsent).await {
                // Same digest means same content: an earlier upload of this bundle is fine.
                Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let m = &bundle.manifest;
        let record = VersionRecord {
            model: model.into(),
            version: 0,
            bundle_prefix: prefix,
            bundle_digest: digest,
            task: m.task,
            model_kind: m.model_kind,
            metrics: m.metrics.clone(),
            params: m.params.clone(),
            lineage: m.lineage.clone(),
            registered_by: options.registered_by.clone(),
            registered_at: Utc::now(),
            idempotency_key: options.idempotency_key.clone(),
        };
        match &options.idempotency_key {
            Some(key) => self.register_once(record, key).await,
            None => self.register_next(record).await,
        }
    }

    /// Writes `record` at the next free number.
    async fn register_next(
        &self,
        mut record: VersionRecord,
    ) -> Result<VersionRecord, RegistryError> {
        let model = record.model.clone();
        let mut next = self.latest_version(&model).await? + 1;
        for attempt in 0..MAX_ATTEMPTS {
            record.version = next;
            match self
                .store
                .put(
                    &version_key(&model, next),
                    json(&record),
                    PutCondition::IfAbsent,
                )
                .await
            {
                Ok(_) => {
                    self.write_card(&record).await?;
                    return Ok(record);
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    // Someone took this number: move past everything that exists now.
                    next = (self.latest_version(&model).await? + 1).max(next + 1);
                    if attempt > 3 {
                        backoff(attempt).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contention {
            key: format!("models/{model}/versions/"),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Writes `record` once per idempotency key, at the number the key's claim reserves.
    async fn register_once(
        &self,
        mut record: VersionRecord,
        key: &str,
    ) -> Result<VersionRecord, RegistryError> {
        let model = record.model.clone();
        let claim_key = format!(
            "models/{model}/registrations/{}.json",
            &sha256_hex(key.as_bytes())[..32]
        );
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 3 {
                backoff(attempt).await;
            }
            let (claim, etag) = match self.store.get(&claim_key).await? {
                Some(obj) => (
                    parse::<RegistrationClaim>(&claim_key, &obj.bytes)?,
                    obj.etag,
                ),
                None => {
                    let claim = RegistrationClaim {
                        bundle_digest: record.bundle_digest.clone(),
                        version: None,
                        reserved: Some(self.latest_version(&model).await? + 1),
                    };
                    match self
                        .store
                        .put(&claim_key, json(&claim), PutCondition::IfAbsent)
                        .await
                    {
                        Ok(tag) => (claim, tag),
                        Err(StoreError::PreconditionFailed { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(v) = claim.version {
                return self.version(&model, v).await;
            }
            let Some(n) = claim.reserved else {
                // A claim written before numbers were reserved: its version may exist already.
                let found = self.find_registration(&model, key).await?;
                let moved = RegistrationClaim {
                    version: found,
                    reserved: Some(self.latest_version(&model).await? + 1),
                    ..claim
                };
                self.swap_claim(&claim_key, &moved, etag).await?;
                continue;
            };
            record.version = n;
            match self
                .store
                .put(
                    &version_key(&model, n),
                    json(&record),
                    PutCondition::IfAbsent,
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::PreconditionFailed { .. }) => {
                    let existing = self.version(&model, n).await?;
                    if existing.idempotency_key.as_deref() != Some(key) {
                        // Another registration took the number: reserve one past all that exist.
                        let moved = RegistrationClaim {
                            reserved: Some((self.latest_version(&model).await? + 1).max(n + 1)),
                            ..claim
                        };
                        self.swap_claim(&claim_key, &moved, etag).await?;
                        continue;
                    }
                    record = existing;
                }
                Err(e) => return Err(e.into()),
            }
            self.write_card(&record).await?;
            let done = RegistrationClaim {
                version: Some(n),
                ..claim
            };
            if !self.swap_claim(&claim_key, &done, etag).await? {
                continue; // changed meanwhile: the next look finds it done or `n` ours
            }
            return Ok(record);
        }
        Err(RegistryError::Contention {
            key: claim_key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Replaces a claim by compare-and-swap; `false` when it changed meanwhile.
    async fn swap_claim(
        &self,
        claim_key: &str,
        claim: &RegistrationClaim,
        etag: ETag,
    ) -> Result<bool, RegistryError> {
        match self
            .store
            .put(claim_key, json(claim), PutCondition::IfMatch(etag))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::PreconditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The version whose record carries an idempotency key (a scan: only for legacy claims).
    async fn find_registration(
        &self,
        model: &str,
        key: &str,
    ) -> Result<Option<u64>, RegistryError> {
        for v in self.version_numbers(model).await?.into_iter().rev() {
            if self.version(model, v).await?.idempotency_key.as_deref() == Some(key) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Writes the card a version starts with (the same card [`Registry::card`] derives while it
    /// is missing, so a crash between the version and its card loses nothing).
    async fn write_card(&self, record: &VersionRecord) -> Result<(), RegistryError> {
        match self
            .store
            .put(
                &card_key(&record.model, record.version),
                json(&initial_card(record)),
                PutCondition::IfAbsent,
            )
            .await
        {
            Ok(_) | Err(StoreError::PreconditionFailed { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Registered model names.
    pub async fn models(&self) -> Result<Vec<String>, RegistryError> {
        let keys = self.store.list("models/").await?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                k.strip_prefix("models/")?
                    .split('/')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    /// The version numbers of a model, ascending (one listing, no record read).
    pub async fn version_numbers(&self, model: &str) -> Result<Vec<u64>, RegistryError> {
        let prefix = format!("models/{model}/versions/");
        let mut v: Vec<u64> = self
            .store
            .list(&prefix)
            .await?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json")?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    async fn latest_version(&self, model: &str) -> Result<u64, RegistryError> {
        Ok(self
            .version_numbers(model)
            .await?
            .last()
            .copied()
            .unwrap_or(0))
    }

    /// All versions of a model, oldest first.
    pub async fn versions(&self, model: &str) -> Result<Vec<VersionRecord>, RegistryError> {
        check_name("model", model)?;
        let mut out = Vec::new();
        for v in self.version_numbers(model).await? {
            out.push(self.version(model, v).await?);
        }
        Ok(out)
    }

    /// One version.
    pub async fn version(&self, model: &str, version: u64) -> Result<VersionRecord, RegistryError> {
        check_name("model", model)?;
        let key = version_key(model, version);
        let obj =
            self.store.get(&key).await?.ok_or_else(|| {
                RegistryError::NotFound(format!("model '{model}' version {version}"))
            })?;
        parse(&key, &obj.bytes)
    }

    /// Fetches and verifies the bundle of a version.
    pub async fn load_bundle(&self, record: &VersionRecord) -> Result<Bundle, RegistryError> {
        let manifest_key = format!("{}/{MANIFEST_FILE}", record.bundle_prefix);
        let manifest =
            self.store.get(&manifest_key).await?.ok_or_else(|| {
                RegistryError::NotFound(format!("bundle manifest '{manifest_key}'"))
            })?;
        let origin = self.store.uri(&record.bundle_prefix);
        check_manifest_digest(&origin, &manifest.bytes, &record.bundle_digest)?;
        // Fetch the listed files first (async), then verify synchronously.
        let probe: crate::artifact::Manifest =
            serde_json::from_slice(&manifest.bytes).map_err(|e| {
                ArtifactError::CorruptManifest {
                    origin: origin.clone(),
                    message: e.to_string(),
                }
            })?;
        let mut fetched = BTreeMap::new();
        for name in probe.files.keys() {
            if let Some(obj) = self
                .store
                .get(&format!("{}/{name}", record.bundle_prefix))
                .await?
            {
                fetched.insert(name.clone(), obj.bytes);
            }
        }
        Ok(Bundle::from_parts(&origin, &manifest.bytes, |name| {
            Ok(fetched.remove(name))
        })?)
    }

    /// What serving needs of a version, fetched together: its manifest (verified against the
    /// record's digest) and the file `image` of its bundle when there is one (verified against
    /// the manifest when it is listed there). Only a manifest failure is an error: an image that
    /// cannot be read is `None`, and the caller compiles the model file
    /// ([`Registry::bundle_file`]).
    pub async fn serving_parts(
        &self,
        record: &BundleRef,
        image: &str,
    ) -> Result<ServingParts, RegistryError> {
        let manifest_key = format!("{}/{MANIFEST_FILE}", record.bundle_prefix);
        let image_key = format!("{}/{image}", record.bundle_prefix);
        let (manifest, image_object) =
            tokio::join!(self.store.get(&manifest_key), self.store.get(&image_key));
        let manifest = manifest?
            .ok_or_else(|| RegistryError::NotFound(format!("bundle manifest '{manifest_key}'")))?;
        let origin = self.store.uri(&record.bundle_prefix);
        check_manifest_digest(&origin, &manifest.bytes, &record.bundle_digest)?;
        let manifest = crate::artifact::Manifest::parse(&origin, &manifest.bytes)?;
        let image = match image_object {
            Ok(Some(object)) if manifest.files.contains_key(image) => {
                match manifest.verify_file(&origin, image, &object.bytes) {
                    Ok(()) => Some(ServingImage {
                        bytes: object.bytes,
                        listed: true,
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "engine image does not match the manifest");
                        None
                    }
                }
            }
            Ok(Some(object)) => Some(ServingImage {
                bytes: object.bytes,
                listed: false,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, key = %image_key, "engine image not readable");
                None
            }
        };
        Ok(ServingParts { manifest, image })
    }

    /// One file of a version's bundle, verified against its (verified) manifest.
    pub async fn bundle_file(
        &self,
        record: &BundleRef,
        manifest: &crate::artifact::Manifest,
        name: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let key = format!("{}/{name}", record.bundle_prefix);
        let origin = self.store.uri(&record.bundle_prefix);
        let object = self.store.get(&key).await?.ok_or_else(|| {
            RegistryError::from(ArtifactError::MissingFile {
                origin: origin.clone(),
                name: name.into(),
            })
        })?;
        manifest.verify_file(&origin, name, &object.bytes)?;
        Ok(object.bytes)
    }

    /// Adds an engine image to an existing version's bundle, create-only (its manifest, hashed
    /// in the version record, cannot change: the image carries the hash of the model file it
    /// was compiled from and of its own body instead). `false` when the bundle already has one.
    pub async fn add_image(
        &self,
        record: &BundleRef,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<bool, RegistryError> {
        let key = format!("{}/{name}", record.bundle_prefix);
        match self.store.put(&key, bytes, PutCondition::IfAbsent).await {
            Ok(_) => Ok(true),
            Err(StoreError::PreconditionFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Current aliases and audit log (with the tag for compare-and-swap).
    async fn alias_state(&self, model: &str) -> Result<(AliasState, Option<ETag>), RegistryError> {
        let key = aliases_key(model);
        match self.store.get(&key).await? {
            Some(obj) => Ok((parse(&key, &obj.bytes)?, Some(obj.etag))),
            None => Ok((AliasState::default(), None)),
        }
    }

    /// Aliases and the audit log of a model.
    pub async fn aliases(&self, model: &str) -> Result<AliasState, RegistryError> {
        check_name("model", model)?;
        Ok(self.alias_state(model).await?.0)
    }

    /// The version an alias points at.
    pub async fn resolve(&self, model: &str, alias: &str) -> Result<u64, RegistryError> {
        self.aliases(model)
            .await?
            .aliases
            .get(alias)
            .copied()
            .ok_or_else(|| RegistryError::NotFound(format!("alias '{alias}' of model '{model}'")))
    }

    /// Applies one alias change by compare-and-swap, retrying on conflicts. `change` decides the
    /// new target from the current state (or refuses). A change already recorded under
    /// `request_id`, or a promotion to the version the alias already points at, returns the
    /// recorded event and writes nothing, so retries after a lost reply change nothing twice.
    #[allow(clippy::too_many_arguments)]
    async fn change_alias(
        &self,
        model: &str,
        alias: &str,
        action: AliasAction,
        actor: &str,
        reason: &str,
        request_id: Option<&str>,
        change: impl Fn(&AliasState) -> Result<u64, RegistryError>,
    ) -> Result<AliasEvent, RegistryError> {
        check_name("model", model)?;
        check_name("alias", alias)?;
        let key = aliases_key(model);
        for attempt in 0..MAX_ATTEMPTS {
            let (mut state, etag) = self.alias_state(model).await?;
            if let Some(id) = request_id
                && let Some(done) = state
                    .history
                    .iter()
                    .rev()
                    .find(|e| e.request_id.as_deref() == Some(id))
            {
                return Ok(done.clone());
            }
            let to = change(&state)?;
            let from = state.aliases.get(alias).copied();
            if action == AliasAction::Promote
                && from == Some(to)
                && let Some(last) = state.history.iter().rev().find(|e| e.alias == alias)
            {
                return Ok(last.clone());
            }
            let record = self.version(model, to).await?;
            if (alias == CHAMPION || self.in_split(model, alias).await?)
                && self.card(model, to).await?.approval.is_none()
            {
                return Err(if alias == CHAMPION {
                    RegistryError::CardNotApproved {
                        model: model.into(),
                        version: to,
                    }
                } else {
                    RegistryError::TrafficNotApproved {
                        model: model.into(),
                        alias: alias.into(),
                        version: to,
                    }
                });
            }
            state.revision += 1;
            let event = AliasEvent {
                revision: state.revision,
                alias: alias.into(),
                action,
                from,
                to,
                actor: actor.into(),
                reason: reason.into(),
                at: Utc::now(),
                request_id: request_id.map(str::to_owned),
            };
            state.aliases.insert(alias.into(), to);
            state.bundles.insert(alias.into(), record.bundle_ref());
            state.history.push(event.clone());
            let condition = etag.map_or(PutCondition::IfAbsent, PutCondition::IfMatch);
            match self.store.put(&key, json(&state), condition).await {
                Ok(_) => return Ok(event),
                Err(StoreError::PreconditionFailed { .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contention {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Points an alias at a version (atomically; recorded in the audit log). Promoting to the
    /// version the alias already points at is a no-op that returns the event that put it there.
    pub async fn promote(
        &self,
        model: &str,
        alias: &str,
        version: u64,
        actor: &str,
        reason: &str,
    ) -> Result<AliasEvent, RegistryError> {
        self.change_alias(
            model,
            alias,
            AliasAction::Promote,
            actor,
            reason,
            None,
            |_| Ok(version),
        )
        .await
    }

    /// Returns an alias to the version it pointed at before its latest promotion. With a
    /// `request_id`, a retry of a rollback that already happened returns its event instead of
    /// rolling back a second time.
    pub async fn rollback(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
        reason: &str,
        request_id: Option<&str>,
    ) -> Result<AliasEvent, RegistryError> {
        self.change_alias(
            model,
            alias,
            AliasAction::Rollback,
            actor,
            reason,
            request_id,
            |state| {
                let stack = state.stack(alias);
                if stack.len() < 2 {
                    return Err(RegistryError::NothingToRollBack {
                        model: model.into(),
                        alias: alias.into(),
                    });
                }
                Ok(stack[stack.len() - 2])
            },
        )
        .await
    }

    /// Whether an alias takes traffic in the model's split (a split of more than one arm; a
    /// single-alias split is the served alias, checked like `champion`).
    async fn in_split(&self, model: &str, alias: &str) -> Result<bool, RegistryError> {
        Ok(self
            .traffic(model)
            .await?
            .is_some_and(|t| t.variants.iter().any(|v| v.alias == alias)))
    }

    /// Applies a champion–challenger [`GateDecision`] to a registered version: it becomes
    /// `challenger`; if the gate promotes it, its card is approved by the gate and it becomes
    /// `champion`. Every step is idempotent, so a rerun after a crash finishes the same change.
    pub async fn apply_gate(
        &self,
        model: &str,
        version: u64,
        decision: &GateDecision,
        actor: &str,
    ) -> Result<(), RegistryError> {
        let note = decision.summary();
        self.promote(model, CHALLENGER, version, actor, &note)
            .await?;
        if decision.promote {
            self.approve_card(model, version, GATE_APPROVER, &note)
                .await?;
            self.promote(model, CHAMPION, version, actor, &note).await?;
        }
        Ok(())
    }

    async fn card_with_tag(
        &self,
        model: &str,
        version: u64,
    ) -> Result<(ModelCard, Option<ETag>), RegistryError> {
        let key = card_key(model, version);
        match self.store.get(&key).await? {
            Some(obj) => Ok((parse(&key, &obj.bytes)?, Some(obj.etag))),
            // Registration writes the card after the version: until then it is the initial one.
            None => Ok((initial_card(&self.version(model, version).await?), None)),
        }
    }

    /// The model card of a version.
    pub async fn card(&self, model: &str, version: u64) -> Result<ModelCard, RegistryError> {
        check_name("model", model)?;
        Ok(self.card_with_tag(model, version).await?.0)
    }

    async fn update_card(
        &self,
        model: &str,
        version: u64,
        f: impl Fn(&mut ModelCard) -> bool,
    ) -> Result<ModelCard, RegistryError> {
        check_name("model", model)?;
        let key = card_key(model, version);
        for attempt in 0..MAX_ATTEMPTS {
            let (mut card, tag) = self.card_with_tag(model, version).await?;
            if !f(&mut card) {
                return Ok(card);
            }
            let condition = tag.map_or(PutCondition::IfAbsent, PutCondition::IfMatch);
            match self.store.put(&key, json(&card), condition).await {
                Ok(_) => return Ok(card),
                Err(StoreError::PreconditionFailed { .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contention {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Edits card fields; any edit clears an earlier approval.
    pub async fn edit_card(
        &self,
        model: &str,
        version: u64,
        edit: CardEdit,
    ) -> Result<ModelCard, RegistryError> {
        self.update_card(model, version, |card| {
            let mut changed = false;
            for (field, value) in [
                (&mut card.intended_use, &edit.intended_use),
                (&mut card.limitations, &edit.limitations),
                (&mut card.owner, &edit.owner),
                (&mut card.training_data, &edit.training_data),
            ] {
                if let Some(v) = value
                    && field != v
                {
                    *field = v.clone();
                    changed = true;
                }
            }
            if changed {
                card.approval = None;
            }
            changed
        })
        .await
    }

    /// Approves a card. Approving an approved card again by the same approver changes nothing,
    /// so a retried approval writes once.
    pub async fn approve_card(
        &self,
        model: &str,
        version: u64,
        approver: &str,
        note: &str,
    ) -> Result<ModelCard, RegistryError> {
        let missing = self.card(model, version).await?.missing_for_approval();
        if !missing.is_empty() {
            return Err(RegistryError::CardIncomplete {
                model: model.into(),
                version,
                missing,
            });
        }
        self.update_card(model, version, |card| {
            if card
                .approval
                .as_ref()
                .is_some_and(|a| a.approved_by == approver && a.note == note)
            {
                return false;
            }
            card.approval = Some(Approval {
                approved_by: approver.into(),
                approved_at: Utc::now(),
                note: note.into(),
            });
            true
        })
        .await
    }

    /// The traffic split of a model; `None` when none was set (all traffic to one alias).
    pub async fn traffic(&self, model: &str) -> Result<Option<TrafficSplit>, RegistryError> {
        check_name("model", model)?;
        let key = traffic_key(model);
        match self.store.get(&key).await? {
            Some(obj) => {
                // A stored split is checked like a new one: an empty or malformed split is an
                // error to report, never a split to route by.
                let split: TrafficSplit = parse(&key, &obj.bytes)?;
                split.check().map_err(|e| RegistryError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
                Ok(Some(split))
            }
            None => Ok(None),
        }
    }

    /// Replaces the traffic split of a model by compare-and-swap. Every alias must exist and
    /// point at a registered version.
    pub async fn set_traffic(
        &self,
        model: &str,
        variants: &TrafficSplit,
        actor: &str,
    ) -> Result<TrafficSplit, RegistryError> {
        check_name("model", model)?;
        variants.check()?;
        variants.check_percentages()?;
        let aliases = self.aliases(model).await?;
        for v in &variants.variants {
            let Some(&version) = aliases.aliases.get(&v.alias) else {
                return Err(RegistryError::NotFound(format!(
                    "alias '{}' of model '{model}'",
                    v.alias
                )));
            };
            if self.card(model, version).await?.approval.is_none() {
                return Err(RegistryError::TrafficNotApproved {
                    model: model.into(),
                    alias: v.alias.clone(),
                    version,
                });
            }
        }
        let key = traffic_key(model);
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.store.get(&key).await?;
            let (revision, condition) = match &current {
                Some(obj) => (
                    parse::<TrafficSplit>(&key, &obj.bytes)?.revision,
                    PutCondition::IfMatch(obj.etag.clone()),
                ),
                None => (0, PutCondition::IfAbsent),
            };
            let next = TrafficSplit {
                variants: variants.variants.clone(),
                revision: revision + 1,
                updated_by: actor.into(),
                updated_at: Some(Utc::now()),
            };
            match self.store.put(&key, json(&next), condition).await {
                Ok(_) => return Ok(next),
                Err(StoreError::PreconditionFailed { .. }) => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Contention {
            key,
            attempts: MAX_ATTEMPTS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("model", "california_housing").is_ok());
        for bad in ["", "A", "-x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name("model", bad).is_err(), "{bad}");
        }
    }
}
