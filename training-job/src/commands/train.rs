//! `mlops train`: validate → split → fit pipelines → train candidates → select → test → bundle →
//! register → track.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mlops_domain::artifact::{BUNDLE_FORMAT, Bundle, Lineage, Manifest};
use mlops_domain::data::{Dataset, TargetPolicy, load_csv};
use mlops_domain::gate::{
    GateDecision, GateRows, MIN_GATE_ROWS, RowSet, SPLIT_METHOD, SplitRecord,
};
use mlops_domain::hashing::{DvcManifest, sha256_hex};
use mlops_domain::profile::profile;
use mlops_domain::quality::Calibration;
use mlops_domain::registry::{
    CHALLENGER, CHAMPION, CardEdit, RegisterOptions, Registry, RegistryError, VersionRecord,
};
use mlops_domain::schema::Schema;
use mlops_domain::tracking::{RunStatus, Tracker};
use mlops_engine::Predictor;
use mlops_trainer::report::{ReportContext, write_report};
use mlops_trainer::search::{Here, SearchConfig, SearchRunner, TrialStatus};
use mlops_trainer::select::{CandidateSpec, TrainConfig, TrainingOutcome, search_training_split};
use mlops_trainer::{lightgbm::LgbmParams, mlp::MlpParams, xgboost::XgbParams};

use crate::commands::shared_search::SharedSearch;
use crate::config::{Settings, array_index, code_commit, load_schema, locate_data};
use crate::device::{self, DevicePlan};
use crate::monitor::{self, Monitor};
use crate::progress;
use mlops_domain::online::ServingView;
use tokio::runtime::Handle;

/// Arguments of `mlops train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Data-set name (california_housing, telco_churn) or schema file.
    pub dataset: String,
    /// Build the training set from these feature views instead of a data file (`NAME` or
    /// `NAME@VERSION`, comma-separated): point in time, for the rows of --entities.
    #[arg(
        long = "features",
        value_delimiter = ',',
        requires = "entities",
        conflicts_with = "data"
    )]
    pub features: Vec<mlops_features::definition::ViewRef>,
    /// Entity frame for --features: CSV with the views' join keys, --time-column and the label.
    #[arg(long, requires = "features")]
    pub entities: Option<PathBuf>,
    /// Time column of --entities (each row gets feature values as of this time).
    #[arg(long, default_value = "event_timestamp")]
    pub time_column: String,
    /// Data file (default: found in MLOPS_DATA, ../shared/data beside the checkout or the working directory, or the download cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Registry model name (default: the data-set name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Seed of the split, folds and learners.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Share of rows held out for the test report.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Run k-fold cross-validation on the training split and select by its mean.
    #[arg(long)]
    pub cv_folds: Option<usize>,
    /// Candidates to train, comma-separated: linear, xgboost, lightgbm, mlp (mlp: builds with the `torch` feature).
    #[arg(long, value_delimiter = ',', default_value = "linear,xgboost,lightgbm")]
    pub candidates: Vec<String>,
    /// Compute device of the tree learners: auto (a CUDA GPU when the driver reports one and
    /// the library can use it, else CPU, saying why), cpu, or cuda (fail without a usable GPU).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// Hyper-parameter search: stop after this many minutes (successive halving over k-fold
    /// CV; every trial is a child run). The configured parameters are always scored first.
    #[arg(long)]
    pub search_minutes: Option<f64>,
    /// Hyper-parameter search: stop after this many trials (all families together).
    #[arg(long)]
    pub search_trials: Option<usize>,
    /// Share the search with N workers, this process one of them: the children of an AWS Batch
    /// array job of N (each takes its index from AWS_BATCH_JOB_ARRAY_INDEX), or N processes given
    /// --search-worker-index 0 to N-1. They meet in the registry store and select what one
    /// container would (same seed and trial budget); worker 0 then trains, tests and registers
    /// the selected candidates, the others exit once the search is done.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub search_workers: Option<u32>,
    /// This process's index among --search-workers (default: AWS_BATCH_JOB_ARRAY_INDEX).
    #[arg(long, requires = "search_workers")]
    pub search_worker_index: Option<u32>,
    /// A search worker's claim on a fit lapses after this many seconds without a renewal (it is
    /// renewed every quarter of that while the fit runs); then another worker makes the fit.
    #[arg(long, default_value_t = 60.0, requires = "search_workers")]
    pub search_claim_seconds: f64,
    /// Sample GPU utilization, memory, temperature and power this often while training on a
    /// GPU (NVML), as metrics of the training run and in CloudWatch.
    #[arg(long, default_value_t = 5.0)]
    pub telemetry_seconds: f64,
    /// Experiment name in the tracker (default: the model name).
    #[arg(long)]
    pub experiment: Option<String>,
    /// Directory for the bundle and report (default: HOME/artifacts/MODEL/TIMESTAMP).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Retrying with the same key returns the version registered the first time.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Point this alias at the new version (champion needs an approved card).
    #[arg(long)]
    pub promote: Option<String>,
    /// Champion–challenger gate: the new version becomes `challenger`, and `champion` only if
    /// it beats the current champion by this margin (in units of the primary metric) on this
    /// run's held-out rows, scored with both models. The gate approves the card it promotes and
    /// records both scores in the audit log and the tracker.
    #[arg(long, conflicts_with = "promote")]
    pub gate_margin: Option<f64>,
    /// Gate on these labelled rows (a CSV in the data set's schema) instead of this run's
    /// held-out rows; rows either model trained on are left out.
    #[arg(long, requires = "gate_margin")]
    pub gate_data: Option<PathBuf>,
    /// The new version's intended use, for its model card (what it is for and not for).
    #[arg(long)]
    pub intended_use: Option<String>,
    /// The new version's known limitations, for its model card.
    #[arg(long)]
    pub limitations: Option<String>,
    /// Who registers the model.
    #[arg(long, env = "USER", default_value = "mlops")]
    pub registered_by: String,
    /// Also put the final scores into CloudWatch under this namespace (dimensions Model and
    /// ModelKind).
    #[arg(long, env = "MLOPS_CLOUDWATCH_NAMESPACE")]
    pub cloudwatch_namespace: Option<String>,
}

/// What a training run produced.
pub struct TrainSummary {
    /// The registered version.
    pub version: VersionRecord,
    /// Where the bundle and report were written.
    pub artifact_dir: PathBuf,
    /// The training outcome.
    pub outcome: TrainingOutcome,
}

fn parse_candidates(names: &[String], devices: &DevicePlan) -> Result<Vec<CandidateSpec>> {
    let mut out = Vec::new();
    for name in names {
        let spec = match name.trim() {
            "linear" | "ridge" | "logistic" => CandidateSpec::Linear { l2: 1.0 },
            "xgboost" => CandidateSpec::Xgboost(XgbParams {
                device: devices.xgboost.clone(),
                ..XgbParams::default()
            }),
            "lightgbm" => CandidateSpec::Lightgbm(LgbmParams {
                device: devices.lightgbm.clone(),
                ..LgbmParams::default()
            }),
            "mlp" => CandidateSpec::Mlp(MlpParams {
                device: devices.mlp.clone(),
                ..MlpParams::default()
            }),
            other => bail!("unknown candidate '{other}': use linear, xgboost, lightgbm or mlp"),
        };
        out.push(spec);
    }
    if out.is_empty() {
        bail!("--candidates is empty");
    }
    for spec in &out {
        spec.validate()?;
    }
    Ok(out)
}

fn check_args(args: &TrainArgs) -> Result<()> {
    if !(args.test_fraction > 0.0 && args.test_fraction < 0.9) {
        bail!(
            "--test-fraction must be between 0 and 0.9, got {}",
            args.test_fraction
        );
    }
    if let Some(k) = args.cv_folds
        && !(2..=20).contains(&k)
    {
        bail!("--cv-folds must be between 2 and 20, got {k}");
    }
    if let Some(m) = args.search_minutes
        && !(m.is_finite() && m > 0.0)
    {
        bail!("--search-minutes must be a positive number, got {m}");
    }
    if args.search_trials == Some(0) {
        bail!("--search-trials must be at least 1");
    }
    if !(args.search_claim_seconds.is_finite() && args.search_claim_seconds >= 0.2) {
        bail!(
            "--search-claim-seconds must be at least 0.2, got {}",
            args.search_claim_seconds
        );
    }
    if args.search_workers.is_some() && search_config(args).is_none() {
        bail!("--search-workers shares a search: give --search-trials, --search-minutes or both");
    }
    if !(args.telemetry_seconds.is_finite() && args.telemetry_seconds >= 0.1) {
        bail!(
            "--telemetry-seconds must be at least 0.1, got {}",
            args.telemetry_seconds
        );
    }
    Ok(())
}

/// The search configuration the arguments ask for, if any.
fn search_config(args: &TrainArgs) -> Option<SearchConfig> {
    (args.search_minutes.is_some() || args.search_trials.is_some()).then(|| SearchConfig {
        max_trials: args.search_trials,
        max_seconds: args.search_minutes.map(|m| m * 60.0),
        folds: args.cv_folds.unwrap_or(5),
        ..SearchConfig::default()
    })
}

/// Loads and validates the data set, printing a short report.
pub fn load_dataset(schema: &Schema, path: &Path) -> Result<Dataset> {
    let spinner = progress::spinner(&format!("validating {}", path.display()));
    let loaded = load_csv(path, schema, TargetPolicy::Required);
    spinner.finish_and_clear();
    let (data, report) = loaded?;
    eprintln!(
        "validated {}: {} rows, {} columns, sha256 {}",
        path.display(),
        report.rows,
        report.columns.len(),
        &report.sha256[..16]
    );
    Ok(data)
}

/// Builds the training set point in time from `--features` for the rows of `--entities`, keeps
/// the schema's columns, and writes it under `HOME/feature-sets/` (the lineage's data file);
/// returns its path and what serving needs to know of each view.
async fn training_set_from_store(
    args: &TrainArgs,
    schema: &Schema,
    settings: &Settings,
) -> Result<(PathBuf, Vec<ServingView>)> {
    let entities = args
        .entities
        .as_deref()
        .context("--features needs --entities FILE")?;
    let store = settings.store().await?;
    let registry = mlops_features::registry::FeatureRegistry::new(store.clone());
    let views = crate::commands::features::resolve(&registry, &args.features).await?;
    let offline = mlops_features::offline::OfflineStore::new(store);
    let scratch = tempfile::tempdir()?;
    let joined = scratch.path().join("joined.csv");
    let started = std::time::Instant::now();
    let report = mlops_features::pit::historical_features(
        &offline,
        entities,
        &args.time_column,
        &views,
        &joined,
    )
    .await?;
    let dir = settings.home.join("feature-sets");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let refs: Vec<String> = views
        .iter()
        .map(|v| format!("{}@{}", v.definition.view.name, v.version))
        .collect();
    let path = dir.join(format!(
        "{}-{}-{}.csv",
        schema.name,
        refs.join("+").replace('@', "v"),
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    keep_schema_columns(&joined, &path, schema)?;
    for (name, version, matched, read) in &report.views {
        eprintln!(
            "{name}@{version}: {matched} of {} entity rows matched ({read} feature rows read)",
            report.rows
        );
    }
    println!(
        "training set: {} ({} rows, point in time from {} in {:.2} s)",
        path.display(),
        report.rows,
        refs.join(", "),
        started.elapsed().as_secs_f64()
    );
    let serving = views
        .iter()
        .map(|v| ServingView {
            name: v.definition.view.name.clone(),
            version: v.version,
            join_keys: v.definition.join_keys.clone(),
            features: v
                .definition
                .view
                .features
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            ttl_seconds: v
                .definition
                .view
                .ttl
                .map(|t| t.0.as_secs())
                .filter(|s| *s > 0),
        })
        .collect();
    Ok((path, serving))
}

/// Copies a CSV keeping only the columns the schema declares (the entity frame's time column
/// and any other extra column go).
fn keep_schema_columns(from: &Path, to: &Path, schema: &Schema) -> Result<()> {
    let mut reader =
        csv::Reader::from_path(from).with_context(|| format!("cannot read {}", from.display()))?;
    let header = reader.headers()?.clone();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| schema.column(&header[i]).is_some())
        .collect();
    let mut writer =
        csv::Writer::from_path(to).with_context(|| format!("cannot write {}", to.display()))?;
    writer.write_record(keep.iter().map(|&i| &header[i]))?;
    for record in reader.records() {
        let record = record?;
        writer.write_record(keep.iter().map(|&i| &record[i]))?;
    }
    writer.flush()?;
    Ok(())
}

/// Runs `mlops train`: the whole training, or, for a search worker other than worker 0, its
/// share of the search.
pub async fn run(args: &TrainArgs, settings: &Settings) -> Result<()> {
    match worker_of(args)? {
        Some((index, workers)) if index != 0 => {
            search_worker(args, settings, (index, workers)).await
        }
        _ => train(args, settings).await.map(|_| ()),
    }
}

/// `(index, workers)` with --search-workers.
fn worker_of(args: &TrainArgs) -> Result<Option<(u32, u32)>> {
    let Some(workers) = args.search_workers else {
        return Ok(None);
    };
    let index = array_index(
        args.search_worker_index,
        workers,
        "search workers",
        "--search-worker-index",
    )?;
    Ok(Some((index, workers)))
}

/// What a training run starts from.
struct Prepared {
    schema: Schema,
    model_name: String,
    devices: DevicePlan,
    data_path: PathBuf,
    feature_views: Vec<ServingView>,
    data: Dataset,
    config: TrainConfig,
}

async fn prepare(args: &TrainArgs, settings: &Settings) -> Result<Prepared> {
    check_args(args)?;
    let schema = load_schema(&args.dataset)?;
    let model_name = args
        .model_name
        .clone()
        .unwrap_or_else(|| schema.name.clone());
    mlops_domain::registry::check_name("model", &model_name)?;
    let devices = device::plan(&args.device)?;
    eprintln!("device: {}", devices.summary);
    let candidates = parse_candidates(&args.candidates, &devices)?;
    let (data_path, feature_views) = if args.features.is_empty() {
        (
            locate_data(&schema, args.data.as_deref(), settings)?,
            Vec::new(),
        )
    } else {
        training_set_from_store(args, &schema, settings).await?
    };
    let data = load_dataset(&schema, &data_path)?;
    let config = TrainConfig {
        seed: args.seed,
        test_fraction: args.test_fraction,
        cv_folds: args.cv_folds,
        candidates,
        search: search_config(args),
        ..TrainConfig::default()
    };
    Ok(Prepared {
        schema,
        model_name,
        devices,
        data_path,
        feature_views,
        data,
        config,
    })
}

/// The search this run shares, with `workers`: its id is a hash of the data, the training
/// configuration and the code, so every worker (and a retried one) finds the same.
async fn shared_search(
    args: &TrainArgs,
    prepared: &Prepared,
    settings: &Settings,
    worker: (u32, u32),
) -> Result<SharedSearch> {
    let material = serde_json::json!({
        "schema": prepared.schema.name,
        "data_sha256": prepared.data.digest.sha256,
        "config": prepared.config,
        "code": code_commit(),
    });
    let id = sha256_hex(material.to_string().as_bytes())[..24].to_string();
    let about = format!(
        "{} on {} rows (sha256 {}), seed {}",
        prepared.model_name,
        prepared.data.len(),
        &prepared.data.digest.sha256[..16],
        prepared.config.seed
    );
    let search = SharedSearch::new(
        settings.store().await?,
        &id,
        &about,
        worker,
        Handle::current(),
    )
    .with_lease(Duration::from_secs_f64(args.search_claim_seconds));
    eprintln!(
        "search worker {} of {}: sharing search {id} in {}",
        worker.0,
        worker.1,
        search.location()
    );
    Ok(search)
}

/// A search worker other than worker 0: its share of the search, then it exits.
async fn search_worker(args: &TrainArgs, settings: &Settings, worker: (u32, u32)) -> Result<()> {
    let prepared = prepare(args, settings).await?;
    let mut search = shared_search(args, &prepared, settings, worker).await?;
    let started = std::time::Instant::now();
    let outcome = tokio::task::block_in_place(|| {
        search_training_split(
            &prepared.schema,
            &prepared.data,
            &prepared.config,
            &mut search,
            &mut |_| {},
        )
    })?;
    let complete = outcome
        .trials
        .iter()
        .filter(|t| t.status == TrialStatus::Complete)
        .count();
    println!(
        "search complete: {} trials ({complete} complete); worker {} of {} made {} fits in {:.1} s; worker 0 trains and registers the selected candidates",
        outcome.trials.len(),
        worker.0,
        worker.1,
        search.made,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Trains, bundles, registers and tracks (with --search-workers, as worker 0 of the search).
pub async fn train(args: &TrainArgs, settings: &Settings) -> Result<TrainSummary> {
    let prepared = prepare(args, settings).await?;
    let mut search = match worker_of(args)? {
        Some(worker) => Some(shared_search(args, &prepared, settings, worker).await?),
        None => None,
    };
    let Prepared {
        schema,
        model_name,
        devices,
        data_path,
        feature_views,
        data,
        config,
    } = prepared;
    let registry = settings.registry().await?;
    let tracker = settings.tracker();
    let experiment = args
        .experiment
        .clone()
        .unwrap_or_else(|| model_name.clone());
    let commit = code_commit();

    let base_tags = vec![
        ("mlops.model".to_string(), model_name.clone()),
        ("mlops.data_sha256".to_string(), data.digest.sha256.clone()),
        ("mlops.code_commit".to_string(), commit.clone()),
        ("mlops.device".to_string(), devices.tag().to_string()),
        ("mlops.device.summary".to_string(), devices.summary.clone()),
        ("mlflow.source.git.commit".to_string(), commit.clone()),
    ];
    let parent = tracker
        .start_run(
            &experiment,
            &format!("train-{model_name}"),
            &base_tags,
            None,
        )
        .await
        .with_context(|| format!("cannot start a tracking run in {}", tracker.describe()))?;

    let cloudwatch = match &args.cloudwatch_namespace {
        Some(namespace) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
            Some(Arc::new(mlops_aws::CloudWatchMetrics::new(
                &config, namespace,
            )))
        }
        None => None,
    };
    let monitor = Monitor {
        tracker: settings.tracker(),
        experiment: experiment.clone(),
        parent_run: parent.run_id.clone(),
        base_tags: base_tags.clone(),
        telemetry_interval: devices
            .uses_gpu()
            .then(|| Duration::from_secs_f64(args.telemetry_seconds)),
        cloudwatch: cloudwatch.clone().map(|c| (c, model_name.clone())),
    };
    let runner: &mut (dyn SearchRunner + Send) = match &mut search {
        Some(shared) => shared,
        None => &mut Here,
    };
    let (outcome, gpu_samples) = match monitor.train(&schema, &data, &config, runner).await {
        Ok(o) => o,
        Err(e) => {
            let _ = tracker.end_run(&parent.run_id, RunStatus::Failed).await;
            return Err(e);
        }
    };
    if let Some(line) = monitor::summarize(&gpu_samples) {
        eprintln!("GPU telemetry: {line}");
    }
    record_search_and_selection(tracker.as_ref(), &parent.run_id, &outcome).await?;

    // One tracking run per candidate, children of the training run.
    let primary = outcome.primary;
    let mut selected_run = None;
    for (i, c) in outcome.candidates.iter().enumerate() {
        let mut tags = base_tags.clone();
        tags.push(("mlops.model_kind".into(), c.kind.name().into()));
        tags.push(("mlops.selected".into(), (i == outcome.best).to_string()));
        let run = tracker
            .start_run(&experiment, &c.name, &tags, Some(&parent.run_id))
            .await?;
        let params: Vec<(String, String)> = c
            .params
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        tracker.log_params(&run.run_id, &params).await?;
        let mut metrics: Vec<(String, f64)> = c
            .validation_metrics
            .iter()
            .map(|(k, v)| (format!("validation_{k}"), *v))
            .collect();
        metrics.push(("train_seconds".into(), c.train_seconds));
        tracker.log_metrics(&run.run_id, &metrics, 0).await?;
        for (fold, score) in c.cv_scores.iter().enumerate() {
            tracker
                .log_metrics(
                    &run.run_id,
                    &[(format!("cv_{}", primary.name()), *score)],
                    fold as i64,
                )
                .await?;
        }
        if i == outcome.best {
            selected_run = Some(run);
        } else {
            tracker.end_run(&run.run_id, RunStatus::Finished).await?;
        }
    }
    let selected_run = selected_run.expect("the best candidate has a run");
    let best = outcome.best();

    let train_indices =
        mlops_domain::split::train_test_split(data.len(), args.test_fraction, args.seed).train;
    let train_row_set = RowSet::of(&data, &train_indices);
    let lineage = Lineage {
        data_source: data_path.display().to_string(),
        data_sha256: data.digest.sha256.clone(),
        data_md5: data.digest.md5.clone(),
        data_size: data.digest.size,
        code_commit: commit.clone(),
        seed: args.seed,
        test_fraction: args.test_fraction,
        train_rows: outcome.train_rows,
        test_rows: outcome.test_labels.len(),
        run_id: Some(selected_run.run_id.clone()),
        tracking_uri: Some(tracker.describe()),
        split: Some(SplitRecord {
            method: SPLIT_METHOD.into(),
            rows: data.len(),
            train_rows_sha256: train_row_set.digest(),
        }),
    };
    let train_data = data.subset(&train_indices);
    let manifest = Manifest {
        format_version: BUNDLE_FORMAT,
        model_name: model_name.clone(),
        task: schema.task,
        model_kind: best.kind,
        model_file: best.kind.model_file().into(),
        feature_names: best.pipeline.feature_names.clone(),
        schema: schema.clone(),
        pipeline: best.pipeline.clone(),
        metrics: outcome.test_metrics.clone(),
        validation_metrics: best.validation_metrics.clone(),
        cv_score: (!best.cv_scores.is_empty()).then(|| best.selection_score(primary)),
        params: best.params.clone(),
        lineage,
        created_at: chrono::Utc::now(),
        reference_profile: profile(&train_data),
        prediction_profile: None,
        calibration: (schema.task == mlops_domain::schema::Task::BinaryClassification)
            .then(|| Calibration::fit(&outcome.test_predictions, &outcome.test_labels))
            .flatten(),
        attribution_profile: None,
        feature_views,
        files: BTreeMap::new(),
    };
    let files = BTreeMap::from([(best.kind.model_file().to_string(), best.model.to_bytes()?)]);
    let bundle = with_prediction_profile(Bundle::new(manifest, files)?, &train_data)?;
    let digest = bundle.digest();
    let artifact_dir = args.out.clone().unwrap_or_else(|| {
        settings
            .home
            .join("artifacts")
            .join(&model_name)
            .join(format!(
                "{}-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
                &digest[..12]
            ))
    });
    bundle.write_dir(&artifact_dir.join("bundle"))?;

    // Data-set version manifest, content-addressed in the store.
    let store = registry.store();
    let file = data_path
        .file_name()
        .map_or("data.csv".into(), |n| n.to_string_lossy().into_owned());
    DvcManifest::record(store.as_ref(), &schema.name, &file, &data.digest).await?;

    let version = registry
        .register(
            &model_name,
            &bundle,
            RegisterOptions {
                idempotency_key: args.idempotency_key.clone(),
                registered_by: args.registered_by.clone(),
            },
        )
        .await?;

    if args.intended_use.is_some() || args.limitations.is_some() {
        registry
            .edit_card(
                &model_name,
                version.version,
                CardEdit {
                    intended_use: args.intended_use.clone(),
                    limitations: args.limitations.clone(),
                    ..CardEdit::default()
                },
            )
            .await?;
    }

    let report_files = write_report(
        &artifact_dir.join("report"),
        &outcome,
        &ReportContext {
            model_name: model_name.clone(),
            data: format!("{} (sha256 {})", data_path.display(), data.digest.sha256),
            version: Some(version.version),
            run: Some(selected_run.location.clone()),
        },
    )?;

    // The selected candidate's run carries the test metrics, the bundle and the report.
    let run_id = &selected_run.run_id;
    let test_metrics: Vec<(String, f64)> = outcome
        .test_metrics
        .iter()
        .map(|(k, v)| (format!("test_{k}"), *v))
        .collect();
    tracker.log_metrics(run_id, &test_metrics, 0).await?;
    tracker
        .set_tags(
            run_id,
            &[
                ("mlops.registry_version".into(), version.version.to_string()),
                ("mlops.bundle_digest".into(), digest.clone()),
            ],
        )
        .await?;
    for (name, bytes) in bundle.all_files() {
        tracker
            .log_artifact(run_id, &format!("bundle/{name}"), bytes)
            .await?;
    }
    for name in &report_files {
        let bytes = std::fs::read(artifact_dir.join("report").join(name))?;
        tracker
            .log_artifact(run_id, &format!("report/{name}"), bytes)
            .await?;
    }
    tracker.end_run(run_id, RunStatus::Finished).await?;
    let source = store.uri(&version.bundle_prefix);
    let tracker_version = tracker
        .mirror_model_version(&model_name, version.version, run_id, &source)
        .await?;
    let mut gate_note = None;
    if let Some(margin) = args.gate_margin {
        let mut decision = gate(
            &registry,
            GateInput {
                model: &model_name,
                version: version.version,
                outcome: &outcome,
                data: &data,
                train_rows: &train_row_set,
                bundle: &bundle,
                margin,
                gate_data: args.gate_data.as_deref(),
            },
        )
        .await?;
        if decision.promote
            && !decision.already_champion
            && let Some(missing) = complete_card(&registry, &model_name, version.version).await?
        {
            decision = decision.hold_back(format!(
                "its card has no {missing}; fill it, approve it and promote \
                 (commands below)"
            ));
        }
        let note = decision.summary();
        registry
            .apply_gate(&model_name, version.version, &decision, &args.registered_by)
            .await?;
        tracker
            .mirror_alias(&model_name, CHALLENGER, &tracker_version)
            .await?;
        if decision.promote {
            tracker
                .mirror_alias(&model_name, CHAMPION, &tracker_version)
                .await?;
        }
        let mut tags = vec![
            (
                "mlops.gate.decision".to_string(),
                if decision.promote {
                    "promoted"
                } else {
                    "not_promoted"
                }
                .to_string(),
            ),
            ("mlops.gate.metric".into(), decision.metric.clone()),
            ("mlops.gate.margin".into(), margin.to_string()),
        ];
        let mut scores = vec![(
            "gate_challenger_score".to_string(),
            decision.challenger_score,
        )];
        if let Some(c) = decision.champion_score {
            scores.push(("gate_champion_score".into(), c));
            tags.push(("mlops.gate.champion_score".into(), c.to_string()));
        }
        tracker.set_tags(&parent.run_id, &tags).await?;
        tracker.log_metrics(&parent.run_id, &scores, 0).await?;
        gate_note = Some(note);
    }
    tracker
        .log_metrics(&parent.run_id, &test_metrics, 0)
        .await?;
    tracker
        .set_tags(
            &parent.run_id,
            &[("mlops.selected".into(), best.name.clone())],
        )
        .await?;
    tracker.end_run(&parent.run_id, RunStatus::Finished).await?;

    if let Some(alias) = &args.promote {
        registry
            .promote(
                &model_name,
                alias,
                version.version,
                &args.registered_by,
                "promoted by mlops train --promote",
            )
            .await?;
        tracker
            .mirror_alias(&model_name, alias, &tracker_version)
            .await?;
    }
    if let (Some(namespace), Some(cloudwatch)) = (&args.cloudwatch_namespace, &cloudwatch) {
        let mut values = test_metrics.clone();
        values.push(("train_seconds".into(), best.train_seconds));
        values.push(("registry_version".into(), version.version as f64));
        let sent = cloudwatch
            .put(
                &values,
                &[
                    ("Model", model_name.as_str()),
                    ("ModelKind", best.kind.name()),
                ],
            )
            .await
            .map_err(anyhow::Error::msg)?;
        eprintln!("{sent} metrics put to CloudWatch namespace {namespace}");
    }
    print_summary(
        &outcome,
        &version,
        &artifact_dir,
        tracker.as_ref(),
        &selected_run.location,
    );
    if let Some(note) = &gate_note {
        println!("{note}");
    }
    let next = next_commands(&registry, &model_name, version.version, settings).await?;
    if !next.is_empty() {
        println!("\nnext:");
        for line in next {
            println!("  {line}");
        }
    }
    Ok(TrainSummary {
        version,
        artifact_dir,
        outcome,
    })
}

/// The search's totals and the selection's significance test, on the training run and in the log.
async fn record_search_and_selection(
    tracker: &dyn Tracker,
    run_id: &str,
    outcome: &TrainingOutcome,
) -> Result<()> {
    let mut tags = Vec::new();
    let mut metrics = Vec::new();
    if let Some(search) = &outcome.search {
        let count = |s: TrialStatus| search.trials.iter().filter(|t| t.status == s).count();
        let (complete, pruned, stopped) = (
            count(TrialStatus::Complete),
            count(TrialStatus::Pruned),
            count(TrialStatus::OutOfBudget),
        );
        eprintln!(
            "search: {} trials in {:.0} s ({complete} complete, {pruned} pruned, {stopped} stopped by the budget)",
            search.trials.len(),
            search.seconds
        );
        tags.push((
            "mlops.search.trials".to_string(),
            search.trials.len().to_string(),
        ));
        tags.push((
            "mlops.search.out_of_time".into(),
            search.out_of_time.to_string(),
        ));
        metrics.extend([
            ("search_seconds".to_string(), search.seconds),
            ("search_trials".into(), search.trials.len() as f64),
            ("search_trials_complete".into(), complete as f64),
            ("search_trials_pruned".into(), pruned as f64),
        ]);
    }
    if let Some(s) = &outcome.selection_test {
        let metric = outcome.primary.name();
        eprintln!(
            "selection: {} over {} by {:+.4} cv {metric} (corrected paired t-test over {} folds: t = {:.2}, p = {:.4})",
            outcome.best().name,
            s.runner_up,
            s.test.mean_difference,
            s.test.folds,
            s.test.t,
            s.test.p_value
        );
        tags.push(("mlops.selection.runner_up".into(), s.runner_up.clone()));
        metrics.extend([
            (
                "selection_mean_difference".to_string(),
                s.test.mean_difference,
            ),
            ("selection_t".into(), s.test.t),
            ("selection_p_value".into(), s.test.p_value),
        ]);
    }
    if !tags.is_empty() {
        tracker.set_tags(run_id, &tags).await?;
    }
    // MLflow rejects non-finite values: a constant difference has t = ±inf (p = 0).
    metrics.retain(|(_, v)| v.is_finite());
    if !metrics.is_empty() {
        tracker.log_metrics(run_id, &metrics, 0).await?;
    }
    Ok(())
}

/// The commands that take a new version on from where it stands: fill and approve its card,
/// promote it, serve it — with the global flags this run was given.
async fn next_commands(
    registry: &Registry,
    model: &str,
    version: u64,
    settings: &Settings,
) -> Result<Vec<String>> {
    let mlops = settings.command_prefix();
    let card = registry.card(model, version).await?;
    let aliases = registry.aliases(model).await?.aliases;
    let mut next = Vec::new();
    if aliases.get(CHAMPION) == Some(&version) {
        next.push(format!(
            "{mlops} serve                       # serve champion v{version}"
        ));
        return Ok(next);
    }
    if card.approval.is_none() {
        if card.intended_use.trim().is_empty() || card.limitations.trim().is_empty() {
            next.push(format!(
                "{mlops} registry card {model} {version} --intended-use \"…\" --limitations \"…\""
            ));
        }
        next.push(format!(
            "{mlops} registry card {model} {version} --approve --by \"$USER\""
        ));
    }
    next.push(format!(
        "{mlops} registry promote {model} {version} --alias {CHAMPION} --reason \"…\""
    ));
    Ok(next)
}

/// Makes a gate winner's card approvable: empty intended use or limitations are carried over
/// from the champion's card (a retrained model keeps its purpose). Returns the fields still
/// empty, if any.
async fn complete_card(registry: &Registry, model: &str, version: u64) -> Result<Option<String>> {
    let card = registry.card(model, version).await?;
    if card.missing_for_approval().is_empty() {
        return Ok(None);
    }
    let card = match registry.resolve(model, CHAMPION).await {
        Ok(champion) if champion != version => {
            let from = registry.card(model, champion).await?;
            let fill = |mine: &str, theirs: &str| {
                (mine.trim().is_empty() && !theirs.trim().is_empty()).then(|| theirs.to_string())
            };
            let edit = CardEdit {
                intended_use: fill(&card.intended_use, &from.intended_use),
                limitations: fill(&card.limitations, &from.limitations),
                ..CardEdit::default()
            };
            if edit.intended_use.is_some() || edit.limitations.is_some() {
                eprintln!(
                    "card: intended use and limitations carried over from champion v{champion}"
                );
                registry.edit_card(model, version, edit).await?
            } else {
                card
            }
        }
        Ok(_) | Err(RegistryError::NotFound(_)) => card,
        Err(e) => return Err(e.into()),
    };
    let missing: Vec<String> = card
        .missing_for_approval()
        .iter()
        .map(|field| field.replace('_', " "))
        .collect();
    Ok((!missing.is_empty()).then(|| missing.join(" or ")))
}

/// What the gate needs from this run.
struct GateInput<'a> {
    model: &'a str,
    version: u64,
    outcome: &'a TrainingOutcome,
    /// The whole data set of this run and its training rows.
    data: &'a Dataset,
    train_rows: &'a RowSet,
    /// The bundle just registered (the challenger).
    bundle: &'a Bundle,
    margin: f64,
    /// Labelled rows to score on instead of this run's held-out rows (`--gate-data`).
    gate_data: Option<&'a Path>,
}

/// Scores the challenger and the current champion on the same rows, none of which either model
/// trained on, and decides. Refuses (an error naming why) when those rows cannot be known or
/// are too few.
async fn gate(registry: &Registry, input: GateInput<'_>) -> Result<GateDecision> {
    let margin = input.margin;
    if !margin.is_finite() || margin < 0.0 {
        bail!("--gate-margin must be a non-negative number, got {margin}");
    }
    let (model, primary) = (input.model, input.outcome.primary);
    let champion = match registry.resolve(model, CHAMPION).await {
        Ok(v) if v == input.version => {
            let own = input.outcome.test_metrics[primary.name()];
            return Ok(GateDecision::already_champion(primary, own, margin));
        }
        Ok(v) => v,
        Err(RegistryError::NotFound(_)) => {
            let own = input.outcome.test_metrics[primary.name()];
            return Ok(GateDecision::decide(primary, own, None, margin)
                .on_rows(input.outcome.test_labels.len()));
        }
        Err(e) => return Err(e.into()),
    };
    let record = registry.version(model, champion).await?;
    let champion_bundle = registry.load_bundle(&record).await?;
    let champion_rows = training_rows_of(&record, &champion_bundle.manifest, input.data)
        .with_context(|| {
            format!(
                "gate refused: no rows are known to be outside champion v{champion}'s training set. \
                 Version {} is registered but not promoted; score both on labelled rows neither \
                 trained on with --gate-data FILE, or review and promote by hand \
                 (`mlops registry promote {model} champion {}`)",
                input.version, input.version
            )
        })?;
    let (held_out, source) = match input.gate_data {
        Some(path) => (
            load_csv(path, &input.data_schema(), TargetPolicy::Required)
                .with_context(|| format!("cannot read --gate-data {}", path.display()))?
                .0,
            format!("--gate-data {}", path.display()),
        ),
        None => (
            input.outcome.test_data.clone(),
            "this run's held-out rows".to_string(),
        ),
    };
    let rows = GateRows::pick(&held_out, input.train_rows, &champion_rows);
    eprintln!("gate: scoring on {} ({source})", rows.describe());
    if rows.indices.len() < MIN_GATE_ROWS {
        bail!(
            "gate refused: only {} ({source}); the gate needs at least {MIN_GATE_ROWS}. \
             Version {} is registered but not promoted; pass --gate-data FILE with labelled rows \
             neither model trained on, or review and promote by hand (`mlops registry promote {model} champion {}`)",
            rows.describe(),
            input.version,
            input.version
        );
    }
    let scored = held_out.subset(&rows.indices);
    let score = |predictor: &Predictor, who: &str| -> Result<f64> {
        let (predictions, _) = predictor
            .predict(&scored.rows)
            .with_context(|| format!("cannot score {who} on the gate's rows"))?;
        Ok(primary.compute(&scored.labels, &predictions))
    };
    let challenger_score = score(&Predictor::from_bundle(input.bundle)?, "the new version")?;
    let champion_score = score(
        &Predictor::from_bundle(&champion_bundle)?,
        &format!("champion v{champion}"),
    )?;
    Ok(
        GateDecision::decide(primary, challenger_score, Some(champion_score), margin)
            .on_rows(rows.indices.len()),
    )
}

impl GateInput<'_> {
    fn data_schema(&self) -> Schema {
        self.bundle.manifest.schema.clone()
    }
}

/// The rows a registered version trained on, rebuilt from its lineage: its data file (this
/// run's when the hashes match, else the file its lineage names) split as recorded, and checked
/// against the recorded digest of the training rows.
fn training_rows_of(
    record: &VersionRecord,
    manifest: &Manifest,
    current: &Dataset,
) -> Result<RowSet> {
    let l = &record.lineage;
    let loaded;
    let data = if l.data_sha256 == current.digest.sha256 {
        current
    } else {
        let path = Path::new(&l.data_source);
        anyhow::ensure!(
            path.is_file(),
            "v{} was trained on {} (sha256 {}), which is neither this run's data nor readable here",
            record.version,
            l.data_source,
            short(&l.data_sha256)
        );
        loaded = load_csv(path, &manifest.schema, TargetPolicy::Required)?.0;
        anyhow::ensure!(
            loaded.digest.sha256 == l.data_sha256,
            "{} has changed since v{} trained on it (sha256 {} now, {} then)",
            l.data_source,
            record.version,
            short(&loaded.digest.sha256),
            short(&l.data_sha256)
        );
        &loaded
    };
    let split = mlops_domain::split::train_test_split(data.len(), l.test_fraction, l.seed);
    let rows = RowSet::of(data, &split.train);
    match &l.split {
        Some(recorded) => anyhow::ensure!(
            recorded.method == SPLIT_METHOD
                && recorded.rows == data.len()
                && recorded.train_rows_sha256 == rows.digest(),
            "v{}'s training rows cannot be rebuilt: its lineage records {} over {} rows with digest {}",
            record.version,
            recorded.method,
            recorded.rows,
            short(&recorded.train_rows_sha256)
        ),
        None => anyhow::ensure!(
            l.train_rows == split.train.len() && l.test_rows == split.test.len(),
            "v{}'s training rows cannot be rebuilt: its lineage says {} training and {} test rows, \
             the split gives {} and {}",
            record.version,
            l.train_rows,
            l.test_rows,
            split.train.len(),
            split.test.len()
        ),
    }
    Ok(rows)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn print_summary(
    outcome: &TrainingOutcome,
    version: &VersionRecord,
    dir: &Path,
    tracker: &dyn Tracker,
    run: &str,
) {
    let primary = outcome.primary.name();
    println!("\ncandidates (validation {primary}):");
    for (i, c) in outcome.candidates.iter().enumerate() {
        let mark = if i == outcome.best { "*" } else { " " };
        let cv = if c.cv_scores.is_empty() {
            String::new()
        } else {
            format!("  cv mean {:.4}", c.selection_score(outcome.primary))
        };
        println!(
            " {mark} {:<10} {:.4}{cv}  ({:.1} s)",
            c.name, c.validation_metrics[primary], c.train_seconds
        );
    }
    let params: Vec<String> = outcome
        .best()
        .params
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            )
        })
        .collect();
    println!("\nselected {} ({})", outcome.best().name, params.join(", "));
    println!("test metrics ({} rows):", outcome.test_labels.len());
    for (k, v) in &outcome.test_metrics {
        println!("  {k:<9} {v:.4}");
    }
    println!("\nregistered {} version {}", version.model, version.version);
    println!("bundle and report: {}", dir.display());
    println!("tracking ({}): {run}", tracker.describe());
}

/// Training rows explained for the attribution reference (evenly spaced).
const ATTRIBUTION_ROWS: usize = 500;

/// Mean |contribution| per model feature over up to [`ATTRIBUTION_ROWS`] training rows; `None`
/// for models the engine cannot explain (MLP).
fn attribution_profile(
    predictor: &Predictor,
    train_data: &Dataset,
) -> Option<mlops_domain::attribution::AttributionProfile> {
    let step = train_data.rows.len().div_ceil(ATTRIBUTION_ROWS).max(1);
    let mut sketch = mlops_domain::attribution::AttributionSketch::default();
    let mut features = Vec::new();
    for row in train_data.rows.iter().step_by(step) {
        let e = predictor.explain(row).ok()?;
        let values: Vec<f64> = e.contributions.iter().map(|(_, c)| *c).collect();
        if features.is_empty() {
            features = e.contributions.into_iter().map(|(name, _)| name).collect();
        }
        sketch.add(&values);
    }
    (sketch.rows > 0).then(|| mlops_domain::attribution::AttributionProfile {
        features,
        mean_abs: sketch
            .sum_abs
            .iter()
            .map(|s| s / sketch.rows as f64)
            .collect(),
        rows: sketch.rows,
    })
}

/// The bundle with the profile of its model's predictions on the training rows (as the pure-Rust
/// engine serves them), the reference of prediction drift, and the engine image of its model.
fn with_prediction_profile(bundle: Bundle, train_data: &Dataset) -> Result<Bundle> {
    let predictor = Predictor::from_bundle(&bundle)
        .context("the engine cannot load the model it just trained")?;
    let (predictions, _) = predictor
        .predict(&train_data.rows)
        .context("the engine cannot score the training rows")?;
    let image = predictor.model.image(bundle.model_bytes());
    let Bundle {
        mut manifest,
        mut files,
    } = bundle;
    // The engine image serving loads instead of compiling the model file (tree ensembles).
    if let Some(image) = image {
        files.insert(mlops_engine::image::file_name().into(), image);
    }
    manifest.prediction_profile = Some(mlops_domain::profile::profile_values(
        "prediction",
        &predictions,
    ));
    manifest.attribution_profile = attribution_profile(&predictor, train_data);
    Ok(Bundle::new(manifest, files)?)
}
