//! `mlops job --spec FILE|s3://bucket/key`: the training job as AWS Batch (or `docker run`)
//! starts it — a TOML job spec names the data set, candidates, validation, seed, where the
//! registry and the tracker live, and the promotion rule. `AWS_BATCH_JOB_ID` (or the spec's
//! `job_id`) is the idempotency key: rerunning the same job never registers a second version.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[cfg(feature = "train")]
use crate::commands::train::{TrainArgs, run as train};
use crate::config::Settings;

/// Arguments of `mlops job`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The job spec: a TOML file or s3://bucket/key.
    #[arg(long, env = "MLOPS_JOB_SPEC")]
    pub spec: String,
}

/// A training-job spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Data-set name (a shipped schema) or schema file.
    pub dataset: String,
    /// Data file: a path or s3://bucket/key (default: found in MLOPS_DATA, ../shared/data beside the checkout or the working directory, or the download cache).
    pub data: Option<String>,
    /// Registry model name (default: the data-set name).
    pub model_name: Option<String>,
    /// Candidates (linear, xgboost, lightgbm, mlp).
    #[serde(default = "default_candidates")]
    pub candidates: Vec<String>,
    /// k-fold cross-validation on the training split (and the folds of the search).
    pub cv_folds: Option<usize>,
    /// Hyper-parameter search budget; without it the candidates train with their defaults.
    pub search: Option<SearchBudget>,
    /// Seed of the split, folds and learners.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Held-out share.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// auto (GPU when usable, else CPU, saying why), cpu or cuda.
    #[serde(default = "default_device")]
    pub device: String,
    /// GPU telemetry (NVML) sampling interval in seconds while training on a GPU.
    #[serde(default = "default_telemetry_seconds")]
    pub telemetry_seconds: f64,
    /// Registry store (s3://bucket/prefix or a directory); overrides MLOPS_STORE.
    pub registry: Option<String>,
    /// Tracking URI (MLflow http://…); overrides MLOPS_TRACKING_URI.
    pub tracking: Option<String>,
    /// Experiment name.
    pub experiment: Option<String>,
    /// Idempotency key when AWS_BATCH_JOB_ID is not set.
    pub job_id: Option<String>,
    /// CloudWatch namespace for the final scores (else MLOPS_CLOUDWATCH_NAMESPACE, else none).
    pub cloudwatch_namespace: Option<String>,
    /// The promotion rule.
    #[serde(default)]
    pub promotion: Promotion,
}

/// How much hyper-parameter search to do: trials, minutes or both.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBudget {
    /// Stop after this many trials.
    pub max_trials: Option<usize>,
    /// Stop after this many minutes.
    pub minutes: Option<f64>,
    /// Share the search with this many workers: run the job as an AWS Batch array job of this
    /// size (each child takes its index from AWS_BATCH_JOB_ARRAY_INDEX); child 0 registers.
    pub workers: Option<u32>,
}

/// What happens to the new version.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Champion–challenger gate margin (primary-metric units); without it the version is only
    /// registered.
    pub gate_margin: Option<f64>,
    /// Labelled rows the gate scores on instead of the run's held-out rows.
    pub gate_data: Option<PathBuf>,
    /// The new version's intended use, for its card (the gate approves only complete cards;
    /// empty fields are carried over from the champion's card).
    pub intended_use: Option<String>,
    /// The new version's known limitations, for its card.
    pub limitations: Option<String>,
}

fn default_candidates() -> Vec<String> {
    vec!["linear".into(), "xgboost".into(), "lightgbm".into()]
}
fn default_seed() -> u64 {
    42
}
fn default_test_fraction() -> f64 {
    0.2
}
fn default_device() -> String {
    "auto".into()
}
fn default_telemetry_seconds() -> f64 {
    5.0
}

impl JobSpec {
    /// Parses a spec; errors name the origin, the line and the field.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let spec: JobSpec =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("job spec {origin}: {e}"))?;
        if spec.candidates.is_empty() {
            bail!("job spec {origin}: 'candidates' is empty");
        }
        if spec
            .promotion
            .gate_margin
            .is_some_and(|m| !m.is_finite() || m < 0.0)
        {
            bail!("job spec {origin}: 'promotion.gate_margin' must be a non-negative number");
        }
        if !["auto", "cpu", "cuda"].contains(&spec.device.as_str()) {
            bail!(
                "job spec {origin}: 'device' must be auto, cpu or cuda, got '{}'",
                spec.device
            );
        }
        if let Some(search) = &spec.search {
            if search.max_trials.is_none() && search.minutes.is_none() {
                bail!("job spec {origin}: [search] needs max_trials, minutes or both");
            }
            if search.minutes.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
                bail!("job spec {origin}: 'search.minutes' must be a positive number");
            }
            if search.max_trials == Some(0) {
                bail!("job spec {origin}: 'search.max_trials' must be at least 1");
            }
            if search.workers.is_some_and(|w| !(1..=10_000).contains(&w)) {
                bail!("job spec {origin}: 'search.workers' must be between 1 and 10000");
            }
        }
        Ok(spec)
    }
}

pub(crate) async fn read(uri: &str, settings: &Settings) -> Result<Vec<u8>> {
    mlops_store::read_uri(uri, settings.s3_endpoint.clone())
        .await
        .with_context(|| format!("cannot read {uri}"))
}

/// Runs the training job.
#[cfg(feature = "train")]
pub async fn run(args: JobArgs, settings: &Settings) -> Result<()> {
    let text = read(&args.spec, settings).await?;
    let text =
        String::from_utf8(text).with_context(|| format!("job spec {} is not UTF-8", args.spec))?;
    let spec = JobSpec::parse(&text, &args.spec)?;
    let mut settings = settings.clone();
    if let Some(r) = &spec.registry {
        settings.store = Some(r.clone());
    }
    if let Some(t) = &spec.tracking {
        settings.tracking = Some(t.clone());
    }
    // Data on S3 is copied into the working directory first (training reads a local file).
    let data = match &spec.data {
        Some(uri) if uri.starts_with("s3://") => {
            let bytes = read(uri, &settings).await?;
            let dir = settings.home.join("job-data");
            std::fs::create_dir_all(&dir)?;
            let name = uri.rsplit('/').next().unwrap_or("data.csv");
            let path = dir.join(name);
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        Some(p) => Some(PathBuf::from(p)),
        None => None,
    };
    let job_id = std::env::var("AWS_BATCH_JOB_ID")
        .ok()
        .or(spec.job_id.clone());
    eprintln!(
        "job {}: {} on {} (device {})",
        job_id.as_deref().unwrap_or("(no id: not idempotent)"),
        spec.dataset,
        settings.store_uri(),
        spec.device
    );
    train(
        &TrainArgs {
            dataset: spec.dataset.clone(),
            features: Vec::new(),
            entities: None,
            time_column: "event_timestamp".into(),
            data,
            model_name: spec.model_name.clone(),
            seed: spec.seed,
            test_fraction: spec.test_fraction,
            cv_folds: spec.cv_folds,
            candidates: spec.candidates.clone(),
            device: spec.device.clone(),
            search_minutes: spec.search.as_ref().and_then(|s| s.minutes),
            search_trials: spec.search.as_ref().and_then(|s| s.max_trials),
            search_workers: spec.search.as_ref().and_then(|s| s.workers),
            search_worker_index: None,
            search_claim_seconds: 60.0,
            telemetry_seconds: spec.telemetry_seconds,
            experiment: spec.experiment.clone(),
            out: None,
            idempotency_key: job_id,
            promote: None,
            gate_margin: spec.promotion.gate_margin,
            gate_data: spec.promotion.gate_data.clone(),
            intended_use: spec.promotion.intended_use.clone(),
            limitations: spec.promotion.limitations.clone(),
            cloudwatch_namespace: spec
                .cloudwatch_namespace
                .clone()
                .or_else(|| std::env::var("MLOPS_CLOUDWATCH_NAMESPACE").ok()),
            registered_by: "training-job".into(),
        },
        &settings,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_bad_fields() {
        let spec = JobSpec::parse(
            "dataset = \"california_housing\"\ncandidates = [\"linear\"]\n[promotion]\ngate_margin = 0.01\n",
            "job.toml",
        )
        .unwrap();
        assert_eq!(spec.seed, 42);
        assert_eq!(spec.promotion.gate_margin, Some(0.01));
        let e = JobSpec::parse("dataset = \"x\"\ncandidate = [\"linear\"]\n", "job.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.toml") && e.contains("candidate"), "{e}");
        let e = JobSpec::parse("dataset = 3\n", "job.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dataset") && e.contains("line 1"), "{e}");
        let e = JobSpec::parse("dataset = \"x\"\ncandidates = []\n", "j.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = JobSpec::parse(
            "dataset = \"x\"\n[promotion]\ngate_margin = -1.0\n",
            "j.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gate_margin"), "{e}");
        let spec = JobSpec::parse(
            "dataset = \"x\"\n[search]\nminutes = 10\nmax_trials = 200\n",
            "j.toml",
        )
        .unwrap();
        assert_eq!(
            spec.search,
            Some(SearchBudget {
                max_trials: Some(200),
                minutes: Some(10.0),
                workers: None,
            })
        );
        assert_eq!(spec.device, "auto");
        for (text, field) in [
            ("dataset = \"x\"\n[search]\n", "max_trials, minutes"),
            (
                "dataset = \"x\"\n[search]\nminutes = -2.0\n",
                "search.minutes",
            ),
            (
                "dataset = \"x\"\n[search]\nmax_trials = 0\n",
                "search.max_trials",
            ),
            ("dataset = \"x\"\n[search]\nhours = 1\n", "hours"),
            (
                "dataset = \"x\"\n[search]\nmax_trials = 9\nworkers = 0\n",
                "search.workers",
            ),
            ("dataset = \"x\"\ndevice = \"tpu\"\n", "device"),
        ] {
            let e = JobSpec::parse(text, "j.toml").unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
