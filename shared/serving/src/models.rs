//! The models being served: loaded once at start, re-checked against the registry at most every
//! `refresh_every`, swapped atomically, and kept when the registry or a new bundle fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use mlops_domain::artifact::Manifest;
use mlops_domain::registry::{AliasState, BundleRef, ModelCard, Registry, VersionRecord};
use mlops_domain::traffic::{TrafficSplit, Variant};
use mlops_engine::Predictor;
use mlops_engine::image;

/// One loaded model version.
#[derive(Debug)]
pub struct LoadedModel {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Bundle digest.
    pub digest: String,
    /// The bundle manifest.
    pub manifest: Manifest,
    /// The compiled pipeline and model.
    pub predictor: Predictor,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
    /// Milliseconds spent fetching, verifying and compiling it.
    pub load_ms: f64,
    /// Loaded from the bundle's engine image rather than compiled from the model file.
    pub from_image: bool,
}

/// What one model serves: its split and the version behind each alias in it.
#[derive(Debug)]
pub struct ModelRoutes {
    /// The split in effect.
    pub split: TrafficSplit,
    /// Loaded versions by alias.
    pub by_alias: BTreeMap<String, Arc<LoadedModel>>,
    /// The registry's view of the model as of the last refresh (model info is answered from
    /// it, never with registry reads in the request).
    pub registry: Arc<RegistryView>,
}

/// Aliases, versions and the served card of a model, read by the refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryView {
    /// Alias → version.
    pub aliases: BTreeMap<String, u64>,
    /// Every version, oldest first.
    pub versions: Vec<VersionRecord>,
    /// The card of the primary variant's version.
    pub card: Option<ModelCard>,
    /// The monitor's latest A/B verdicts.
    pub ab: Option<mlops_domain::ab::AbStatus>,
}

impl ModelRoutes {
    /// The variant and model for a routing key.
    pub fn pick(&self, model: &str, key: &str) -> Option<(&Variant, &Arc<LoadedModel>)> {
        let variant = self.split.route(model, key);
        self.by_alias.get(&variant.alias).map(|m| (variant, m))
    }
}

/// Health of the model set.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RefreshState {
    /// Last refresh that failed, with its error; cleared by a successful one.
    pub last_error: Option<String>,
    /// When that failure happened.
    pub failed_at: Option<DateTime<Utc>>,
    /// Last successful refresh.
    pub refreshed_at: Option<DateTime<Utc>>,
}

/// Every served model.
pub struct ModelSet {
    registry: Registry,
    configured: Option<Vec<String>>,
    default_alias: String,
    refresh_every: Duration,
    deadline: Duration,
    routes: ArcSwap<BTreeMap<String, Arc<ModelRoutes>>>,
    state: ArcSwap<RefreshState>,
    last_check: std::sync::Mutex<Instant>,
    refreshing: AtomicBool,
    /// Read the registry views after the first load (see [`ServeConfig::view_after_ready`]).
    ///
    /// [`ServeConfig::view_after_ready`]: crate::ServeConfig::view_after_ready
    view_after_ready: bool,
    /// Some model serves with a provisional view: the next refresh reads it.
    views_pending: AtomicBool,
}

impl ModelSet {
    /// A model set that has loaded nothing yet; call [`ModelSet::refresh`].
    pub fn new(
        registry: Registry,
        models: Option<Vec<String>>,
        default_alias: &str,
        refresh_every: Duration,
        deadline: Duration,
    ) -> Self {
        Self {
            registry,
            configured: models,
            default_alias: default_alias.into(),
            refresh_every,
            deadline,
            routes: ArcSwap::from_pointee(BTreeMap::new()),
            state: ArcSwap::from_pointee(RefreshState::default()),
            last_check: std::sync::Mutex::new(Instant::now()),
            refreshing: AtomicBool::new(false),
            view_after_ready: false,
            views_pending: AtomicBool::new(false),
        }
    }

    /// Reads the registry views after the first load instead of before it.
    pub fn with_view_after_ready(mut self, enabled: bool) -> Self {
        self.view_after_ready = enabled;
        self
    }

    /// Starts a background refresh now when some model serves with a provisional view.
    pub fn complete_views(self: &Arc<Self>) {
        if !self.views_pending.swap(false, Ordering::AcqRel)
            || self.refreshing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.refresh().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// The registry behind it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The routes of a model, if it is served.
    pub fn routes(&self, model: &str) -> Option<Arc<ModelRoutes>> {
        self.routes.load().get(model).cloned()
    }

    /// Names of served models.
    pub fn names(&self) -> Vec<String> {
        self.routes.load().keys().cloned().collect()
    }

    /// Everything served now.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<ModelRoutes>>> {
        self.routes.load_full()
    }

    /// Refresh health.
    pub fn refresh_state(&self) -> RefreshState {
        (**self.state.load()).clone()
    }

    /// Ready: every configured model (or, when discovering, at least one) is loaded.
    pub fn is_ready(&self) -> bool {
        let routes = self.routes.load();
        match &self.configured {
            Some(names) => names.iter().all(|n| routes.contains_key(n)),
            None => !routes.is_empty(),
        }
    }

    /// Starts a background refresh when the last check is older than the refresh interval and
    /// none is running. Requests never wait for it.
    pub fn refresh_if_due(self: &Arc<Self>) {
        {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < self.refresh_every {
                return;
            }
            *last = Instant::now();
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.refresh().await;
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Re-reads the registry and swaps in changed versions. A model whose alias, split or bundle
    /// cannot be read keeps what it served; the failure is reported by the health route.
    /// Returns the errors (empty when all went well).
    pub async fn refresh(&self) -> Vec<String> {
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        // One deadline for the whole refresh: a registry that hangs (not refuses) cannot hold the
        // Lambda init or a refresh past it.
        let until = tokio::time::Instant::now() + self.deadline;
        let late = || {
            format!(
                "the registry did not answer within {:.1} s",
                self.deadline.as_secs_f64()
            )
        };
        let mut errors = Vec::new();
        let names = match &self.configured {
            Some(n) => n.clone(),
            None => match tokio::time::timeout_at(until, self.registry.models()).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    errors.push(format!("cannot list models: {e}"));
                    self.routes.load().keys().cloned().collect()
                }
                Err(_) => {
                    errors.push(format!("cannot list models: {}", late()));
                    self.routes.load().keys().cloned().collect()
                }
            },
        };
        let current = self.routes.load_full();
        let mut next = (*current).clone();
        for name in names {
            let loaded = tokio::time::timeout_at(until, self.load_model(&name, current.get(&name)))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!(late())));
            match loaded {
                Ok(Some(routes)) => {
                    next.insert(name, routes);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "refresh failed; keeping the last good model");
                    errors.push(format!("model '{name}': {e}"));
                }
            }
        }
        self.routes.store(Arc::new(next));
        let now = Utc::now();
        let previous = self.state.load();
        self.state.store(Arc::new(if errors.is_empty() {
            RefreshState {
                last_error: None,
                failed_at: None,
                refreshed_at: Some(now),
            }
        } else {
            RefreshState {
                last_error: Some(errors.join("; ")),
                failed_at: Some(now),
                refreshed_at: previous.refreshed_at,
            }
        }));
        errors
    }

    /// Loads what a model should serve now; `Ok(None)` for a discovered model without the
    /// default alias (nothing to serve).
    async fn load_model(
        &self,
        name: &str,
        current: Option<&Arc<ModelRoutes>>,
    ) -> anyhow::Result<Option<Arc<ModelRoutes>>> {
        let (split, aliases) =
            tokio::join!(self.registry.traffic(name), self.registry.aliases(name));
        let split = split?.unwrap_or_else(|| TrafficSplit::single(&self.default_alias));
        let aliases = aliases?;
        let split = self.approved_arms(name, split, &aliases.aliases).await?;
        // The registry view (listing, version records, card) is read while the arms load.
        let primary = split
            .variants
            .first()
            .and_then(|v| aliases.aliases.get(&v.alias))
            .copied();
        let arms = self.load_arms(name, &split, &aliases, current);
        if primary.is_none() {
            // Nothing to serve (or an unset alias, reported by `load_arms`): no view to read.
            arms.await?;
            return Ok(None);
        }
        let (by_alias, view) = if current.is_none() && self.view_after_ready {
            // Provisional: the aliases only; `complete_views` reads the rest.
            self.views_pending.store(true, Ordering::Release);
            let view = RegistryView {
                aliases: aliases.aliases.clone(),
                versions: Vec::new(),
                card: None,
                ab: None,
            };
            (arms.await, Ok(view))
        } else {
            tokio::join!(
                arms,
                self.registry_view(name, aliases.aliases.clone(), primary, current)
            )
        };
        let Some(by_alias) = by_alias? else {
            return Ok(None);
        };
        let view = Arc::new(view?);
        let unchanged = current.is_some_and(|c| {
            c.split.variants == split.variants
                && *c.registry == *view
                && c.by_alias.len() == by_alias.len()
                && c.by_alias
                    .iter()
                    .zip(&by_alias)
                    .all(|((a, m), (b, n))| a == b && Arc::ptr_eq(m, n))
        });
        if unchanged {
            return Ok(current.cloned());
        }
        for (alias, m) in &by_alias {
            tracing::info!(model = %name, alias = %alias, version = m.version, "serving");
        }
        Ok(Some(Arc::new(ModelRoutes {
            split,
            by_alias,
            registry: view,
        })))
    }

    /// The loaded version behind each arm of `split` (reusing what is served already);
    /// `Ok(None)` for a discovered model without the default alias.
    async fn load_arms(
        &self,
        name: &str,
        split: &TrafficSplit,
        aliases: &AliasState,
        current: Option<&Arc<ModelRoutes>>,
    ) -> anyhow::Result<Option<BTreeMap<String, Arc<LoadedModel>>>> {
        let mut by_alias = BTreeMap::new();
        for variant in &split.variants {
            let Some(&version) = aliases.aliases.get(&variant.alias) else {
                if self.configured.is_none() && split.revision == 0 {
                    return Ok(None);
                }
                anyhow::bail!("alias '{}' is not set", variant.alias);
            };
            let reuse = current
                .and_then(|c| c.by_alias.values().find(|m| m.version == version))
                .cloned()
                .or_else(|| {
                    by_alias
                        .values()
                        .find(|m: &&Arc<LoadedModel>| m.version == version)
                        .cloned()
                });
            let loaded = match reuse {
                Some(m) => m,
                None => {
                    let bundle = aliases.bundle(&variant.alias);
                    Arc::new(self.load_version(name, version, bundle).await?)
                }
            };
            by_alias.insert(variant.alias.clone(), loaded);
        }
        Ok(Some(by_alias))
    }

    /// The arms of a split whose version has an approved card: traffic never reaches an
    /// unreviewed version, even when an alias was moved after the split was set. A split of
    /// one arm is the served alias itself (`champion` cannot point at an unapproved version).
    async fn approved_arms(
        &self,
        name: &str,
        split: TrafficSplit,
        aliases: &BTreeMap<String, u64>,
    ) -> anyhow::Result<TrafficSplit> {
        if split.variants.len() < 2 {
            return Ok(split);
        }
        let mut kept = Vec::new();
        for arm in &split.variants {
            let approved = match aliases.get(&arm.alias) {
                Some(&version) => self.registry.card(name, version).await?.approval.is_some(),
                None => true, // reported as an unset alias by the caller
            };
            if approved {
                kept.push(arm.clone());
            } else {
                tracing::warn!(model = %name, alias = %arm.alias, "split arm left out: its version's card is not approved");
            }
        }
        anyhow::ensure!(
            !kept.is_empty(),
            "no arm of the traffic split points at a version with an approved card"
        );
        Ok(TrafficSplit {
            variants: kept,
            ..split
        })
    }

    /// The registry's view of a model: one listing, the records of new versions only, and the
    /// primary variant's card.
    async fn registry_view(
        &self,
        name: &str,
        aliases: BTreeMap<String, u64>,
        primary: Option<u64>,
        current: Option<&Arc<ModelRoutes>>,
    ) -> anyhow::Result<RegistryView> {
        let mut known: BTreeMap<u64, VersionRecord> = current
            .map(|c| {
                c.registry
                    .versions
                    .iter()
                    .map(|v| (v.version, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let numbers = self.registry.version_numbers(name).await?;
        // New records are read concurrently (a cold start reads them all), 16 at a time.
        let missing: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|n| !known.contains_key(n))
            .collect();
        for chunk in missing.chunks(16) {
            let mut reads = tokio::task::JoinSet::new();
            for &number in chunk {
                let (registry, name) = (self.registry.clone(), name.to_owned());
                reads.spawn(async move { registry.version(&name, number).await });
            }
            while let Some(read) = reads.join_next().await {
                let record = read??;
                known.insert(record.version, record);
            }
        }
        let versions = numbers.iter().filter_map(|n| known.remove(n)).collect();
        let card = async {
            match primary {
                Some(v) => self.registry.card(name, v).await.ok(),
                None => None,
            }
        };
        // Missing or unreadable verdicts are no verdicts: they never hold serving back.
        let ab = async {
            let key = mlops_domain::ab::status_key(name);
            match self.registry.store().get(&key).await {
                Ok(Some(object)) => serde_json::from_slice(&object.bytes).ok(),
                _ => None,
            }
        };
        let (card, ab) = tokio::join!(card, ab);
        Ok(RegistryView {
            aliases,
            versions,
            card,
            ab,
        })
    }

    /// Loads one version; `bundle` (recorded with its alias) spares reading its record.
    async fn load_version(
        &self,
        name: &str,
        version: u64,
        bundle: Option<&BundleRef>,
    ) -> anyhow::Result<LoadedModel> {
        let started = Instant::now();
        let record = match bundle {
            Some(b) => b.clone(),
            None => self.registry.version(name, version).await?.bundle_ref(),
        };
        let (manifest, predictor, source) =
            load_predictor(&self.registry, &record, name, version).await?;
        let digest = record.bundle_digest;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            model = %name,
            version,
            kind = %manifest.model_kind,
            from = %source,
            load_ms,
            "loaded model"
        );
        Ok(LoadedModel {
            model: name.into(),
            version,
            digest,
            manifest,
            predictor,
            loaded_at: Utc::now(),
            load_ms,
            from_image: source == LoadedFrom::Image,
        })
    }
}

/// Where a [`load_predictor`] predictor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedFrom {
    /// The bundle's engine image.
    Image,
    /// Its native model file, compiled.
    ModelFile,
}

impl std::fmt::Display for LoadedFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadedFrom::Image => "engine image",
            LoadedFrom::ModelFile => "model file",
        })
    }
}

/// A version's predictor with its verified manifest, loaded as serving loads it: the manifest
/// and the engine image fetched together, and the model file fetched and compiled only when the
/// bundle has no usable image (`model` and `version` name it in the log).
pub async fn load_predictor(
    registry: &Registry,
    record: &BundleRef,
    model: &str,
    version: u64,
) -> anyhow::Result<(Manifest, Predictor, LoadedFrom)> {
    let parts = registry.serving_parts(record, image::file_name()).await?;
    let manifest = &parts.manifest;
    let from_image = parts.image.and_then(|image| {
        Predictor::from_fetched_image(manifest, &image)
            .inspect_err(|e| {
                if e.is_stale() {
                    tracing::info!(model = %model, version, reason = %e, "compiling the model file instead of the engine image");
                } else {
                    tracing::warn!(model = %model, version, error = %e, "engine image refused; compiling the model file");
                }
            })
            .ok()
    });
    let manifest = parts.manifest;
    Ok(match from_image {
        Some(predictor) => (manifest, predictor, LoadedFrom::Image),
        None => {
            let bytes = registry
                .bundle_file(record, &manifest, &manifest.model_file)
                .await?;
            let predictor = Predictor::from_model_file(&manifest, &bytes)?;
            (manifest, predictor, LoadedFrom::ModelFile)
        }
    })
}
