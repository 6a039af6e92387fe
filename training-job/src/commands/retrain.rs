//! `mlops retrain`: submits the training job (`mlops job --spec`) to the training queue (AWS
//! Batch), at most once per trigger window, recording the data-set version it trains on and,
//! with `--append-feedback-days`, the production rows with labels it adds to it.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{Duration, Utc};
use clap::{Args, ValueEnum};
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::JobQueue;
use mlops_domain::retraining::{AppendedRows, RetrainRequest, Trigger, request};
use mlops_domain::store::PutCondition;

use crate::commands::job::{JobSpec, read};
use crate::commands::registry::ensure_model;
use crate::config::Settings;

/// What asked for it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TriggerArg {
    /// A person.
    Manual,
    /// A schedule.
    Schedule,
    /// A drift alert.
    Drift,
    /// A degraded live metric.
    Degraded,
}

impl From<TriggerArg> for Trigger {
    fn from(t: TriggerArg) -> Self {
        match t {
            TriggerArg::Manual => Trigger::Manual,
            TriggerArg::Schedule => Trigger::Schedule,
            TriggerArg::Drift => Trigger::Drift,
            TriggerArg::Degraded => Trigger::Degraded,
        }
    }
}

/// `mlops retrain`.
#[derive(Args, Debug)]
pub struct RetrainArgs {
    /// Model to retrain.
    #[arg(long)]
    pub model: String,
    /// The training-job spec (TOML file or s3://bucket/key) the job runs; it must name its data.
    #[arg(long)]
    pub spec: String,
    /// What asked for it: one job per trigger and window.
    #[arg(long, value_enum, default_value = "manual")]
    pub trigger: TriggerArg,
    /// Length of the trigger window, in hours.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=24 * 366))]
    pub window_hours: u32,
    /// Add the logged predictions of the last N days that have feedback labels to the training
    /// data (a new data file and spec on the store; the record names the windows).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub append_feedback_days: Option<u32>,
    /// Longest a label may arrive after its prediction and still count, in hours.
    #[arg(long, default_value_t = 24)]
    pub label_delay_hours: u32,
    /// Why (recorded).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// AWS Batch job queue of the training job.
    #[arg(long, env = "MLOPS_TRAINING_QUEUE")]
    pub queue: String,
    /// AWS Batch job definition of the training job.
    #[arg(long, env = "MLOPS_TRAINING_JOB_DEFINITION")]
    pub job_definition: String,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub async fn run(args: RetrainArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    ensure_model(&registry, &args.model).await?;
    let text = String::from_utf8(read(&args.spec, settings).await?)
        .with_context(|| format!("job spec {} is not UTF-8", args.spec))?;
    let spec = JobSpec::parse(&text, &args.spec)?;
    let Some(data_uri) = spec.data.clone() else {
        bail!(
            "job spec {}: retraining needs 'data' (the data set to train on)",
            args.spec
        );
    };
    let data_version = data_version(&data_uri, settings).await?;
    let mut request_args = RetrainRequest {
        model: args.model.clone(),
        trigger: args.trigger.into(),
        window: Duration::hours(i64::from(args.window_hours)),
        spec_uri: args.spec.clone(),
        data_uri: data_uri.clone(),
        data_version,
        appended: None,
        reasons: if args.reason.is_empty() {
            Vec::new()
        } else {
            vec![args.reason.clone()]
        },
        children: spec.search.as_ref().and_then(|s| s.workers),
    };
    if let Some(days) = args.append_feedback_days {
        let until = Utc::now();
        let from = until - Duration::days(i64::from(days));
        let data = read(&data_uri, settings).await?;
        let header: Vec<String> = csv::Reader::from_reader(&data[..])
            .headers()
            .with_context(|| format!("{data_uri} has no CSV header"))?
            .iter()
            .map(str::to_owned)
            .collect();
        let delay = Duration::hours(i64::from(args.label_delay_hours));
        let (rows, n) = mlops_monitor::retrain::labelled_rows(
            &registry,
            &args.model,
            from,
            until,
            delay,
            &header,
        )
        .await?;
        let mut combined = data;
        if !combined.ends_with(b"\n") {
            combined.push(b'\n');
        }
        // The appended rows come without the header line the writer never wrote.
        combined.extend_from_slice(&rows);
        let full_digest = sha256_hex(&combined);
        let digest = &full_digest[..16];
        let store = registry.store();
        let data_key = format!("retraining/{}/data/{digest}.csv", args.model);
        store.put(&data_key, combined, PutCondition::None).await?;
        let mut spec_value: toml::Value = toml::from_str(&text)?;
        spec_value
            .as_table_mut()
            .context("the job spec is not a table")?
            .insert("data".into(), toml::Value::String(store.uri(&data_key)));
        let spec_text = toml::to_string(&spec_value)?;
        let spec_key = format!("retraining/{}/specs/{digest}.toml", args.model);
        store
            .put(&spec_key, spec_text.into_bytes(), PutCondition::None)
            .await?;
        request_args.spec_uri = store.uri(&spec_key);
        request_args.data_uri = store.uri(&data_key);
        request_args.data_version = Some(format!("sha256:{full_digest}"));
        request_args.appended = Some(AppendedRows {
            windows: vec![(from, until)],
            rows: n,
        });
        eprintln!("{n} labelled production rows of the last {days} days appended to {data_uri}");
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .or(settings.s3_endpoint.clone());
    let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
    let queue: Arc<dyn JobQueue> = Arc::new(mlops_aws::BatchQueue::new(
        &config,
        &args.queue,
        &args.job_definition,
    ));
    let (record, submitted) =
        request(registry.store(), queue.as_ref(), &request_args, Utc::now()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        println!(
            "{} {} ({} window from {}): queue job {} on {}, training {} ({})",
            if submitted {
                "submitted"
            } else {
                "already submitted"
            },
            record.job_name,
            record.trigger.name(),
            record.window_start.format("%Y-%m-%d %H:%M"),
            record.queue_job_id.as_deref().unwrap_or("?"),
            queue.describe(),
            record.data_uri,
            record.data_version.as_deref().unwrap_or("version unknown"),
        );
    }
    Ok(())
}

/// The version of a data set: its S3 version id (or ETag without versioning), or a local
/// file's content tag.
pub async fn data_version(uri: &str, settings: &Settings) -> Result<Option<String>> {
    Ok(Some(
        mlops_store::uri_version(uri, settings.s3_endpoint.clone())
            .await
            .with_context(|| format!("cannot read the version of {uri}"))?,
    ))
}
