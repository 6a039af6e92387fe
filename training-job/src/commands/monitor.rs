//! `mlops monitor` and `mlops ab report`: the monitor ([`mlops_monitor`]) over a window, its
//! report printed (a table, or JSON with `--json`), alerts to a webhook and scores to
//! CloudWatch when asked.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use chrono::{DateTime, Duration, Utc};
use clap::Args;
use mlops_domain::ab::SequentialTest;
use mlops_domain::alerts::{AlertSink, Delivery, QualityLimits};
use mlops_domain::drift::DriftRule;
use mlops_monitor::webhook::WebhookSink;
use mlops_monitor::{
    AllSinks, Limits, MonitorReport, Window, ab_lines, header, metric_data, monitor, quality_lines,
    report_key, table,
};

use crate::commands::registry::ensure_model;
use crate::config::Settings;
use crate::exit::ExitWith;

/// Exit status when `--fail-on-drift` is given and the data set drifted.
const EXIT_DRIFT: u8 = 5;

/// `mlops monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Model whose logged predictions to check.
    #[arg(long)]
    pub model: String,
    /// Length of the window, in hours, ending at --until.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=24 * 366), conflicts_with = "since")]
    pub hours: u32,
    /// Start of the window (RFC 3339, e.g. 2026-12-01T00:00:00Z), instead of --hours.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339); default now.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Share of drifted features at which the data set counts as drifted.
    #[arg(long, default_value_t = 0.5)]
    pub drift_share: f64,
    /// p-value below which a test (small references) says drift.
    #[arg(long, default_value_t = 0.05)]
    pub p_value: f64,
    /// Distance at or above which Wasserstein / Jensen–Shannon (large references) say drift.
    #[arg(long, default_value_t = 0.1)]
    pub distance: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 5 when the data set drifted for any version.
    #[arg(long)]
    pub fail_on_drift: bool,
    /// POST each alert (drift, prediction drift, data quality) to this URL, signed with HMAC-SHA256 under
    /// MLOPS_ALERT_WEBHOOK_SECRET; an alert already delivered for the window is not sent again.
    #[arg(long, env = "MLOPS_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
    /// Publish each alert to this SNS topic (as well as to the webhook, if one is given).
    #[arg(long, env = "MLOPS_ALERT_TOPIC_ARN")]
    pub alert_topic_arn: Option<String>,
    /// Put the scores in this CloudWatch namespace: per version (dimensions Model, Version) and
    /// per feature (Model, Version, Feature).
    #[arg(long, env = "MLOPS_CLOUDWATCH_NAMESPACE")]
    pub cloudwatch_namespace: Option<String>,
    /// Data-quality alert: rise of a feature's missing share over training's.
    #[arg(long, default_value_t = 0.1)]
    pub max_missing_rise: f64,
    /// Data-quality alert: share of a feature's values outside training's range or unseen.
    #[arg(long, default_value_t = 0.05)]
    pub max_outside_share: f64,
    /// Longest a label (feedback) may arrive after its prediction and still count, in hours.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(0..=24 * 90))]
    pub label_delay_hours: u32,
    /// Quality alerts: relative worsening of the primary metric (live, or estimated without
    /// labels) against the version's test metric.
    #[arg(long, default_value_t = 0.1)]
    pub max_metric_degradation: f64,
    /// Quality alerts: labelled rows (or rows, for estimates) a variant needs first.
    #[arg(long, default_value_t = 100)]
    pub min_quality_rows: u64,
    /// A/B verdicts compare every other variant with this one.
    #[arg(long, default_value = "champion")]
    pub champion: String,
    /// Log the scores to each version's monitoring run on the tracker (MLflow with
    /// --tracking or MLOPS_TRACKING_URI, else the local run log), at the window's end.
    #[arg(long)]
    pub track: bool,
    /// Retrain on drift or quality alerts: submit this training-job spec (TOML file or
    /// s3://bucket/key) to the training queue, at most once per trigger and --retrain-window-hours.
    #[arg(long, requires_all = ["training_queue", "training_job_definition"])]
    pub retrain_spec: Option<String>,
    /// Length of a retraining trigger window, in hours.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=24 * 366))]
    pub retrain_window_hours: u32,
    /// AWS Batch job queue of the training job.
    #[arg(long, env = "MLOPS_TRAINING_QUEUE")]
    pub training_queue: Option<String>,
    /// AWS Batch job definition of the training job.
    #[arg(long, env = "MLOPS_TRAINING_JOB_DEFINITION")]
    pub training_job_definition: Option<String>,
    /// Roll the champion back to its predecessor when its live per-row loss since its promotion
    /// is significantly worse than the predecessor's before it (sequential test; alerted).
    #[arg(long)]
    pub auto_rollback: bool,
    /// Longest stretch compared on each side of the promotion, in hours.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=24 * 90))]
    pub rollback_window_hours: u32,
}

/// Runs the command.
pub async fn run(args: MonitorArgs, settings: &Settings) -> Result<()> {
    let within = |x: f64, low: f64, high: f64| x > low && x <= high;
    if !within(args.drift_share, 0.0, 1.0) {
        bail!("--drift-share {} must be in (0, 1]", args.drift_share);
    }
    if !within(args.p_value, 0.0, 1.0) || args.p_value == 1.0 {
        bail!("--p-value {} must be in (0, 1)", args.p_value);
    }
    if !within(args.distance, 0.0, f64::INFINITY) {
        bail!("--distance {} must be above 0", args.distance);
    }
    let registry = settings.registry().await?;
    ensure_model(&registry, &args.model).await?;
    let until = args.until.unwrap_or_else(Utc::now);
    let from = args
        .since
        .unwrap_or(until - Duration::hours(i64::from(args.hours)));
    if from >= until {
        bail!("the window is empty: --since {from} is not before --until {until}");
    }
    let rule = DriftRule {
        p_value: args.p_value,
        distance: args.distance,
        drift_share: args.drift_share,
    };
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    if let Some(url) = &args.alert_webhook {
        let secret = std::env::var("MLOPS_ALERT_WEBHOOK_SECRET").map_err(|_| {
            anyhow::anyhow!("--alert-webhook needs MLOPS_ALERT_WEBHOOK_SECRET (the HMAC key)")
        })?;
        sinks.push(Box::new(WebhookSink::new(url, &secret)?));
    }
    if let Some(topic) = &args.alert_topic_arn {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
        sinks.push(Box::new(mlops_aws::SnsAlerts::new(&config, topic)));
    }
    let sink = (!sinks.is_empty()).then(|| AllSinks(sinks));
    if !within(args.max_metric_degradation, 0.0, 1.0) {
        bail!(
            "--max-metric-degradation {} must be in (0, 1]",
            args.max_metric_degradation
        );
    }
    let window = Window {
        from,
        until,
        label_delay: Duration::hours(i64::from(args.label_delay_hours)),
        champion: args.champion.clone(),
        ab_test: SequentialTest::default(),
    };
    let limits = Limits {
        data: QualityLimits {
            missing_rise: args.max_missing_rise,
            outside_share: args.max_outside_share,
        },
        degradation: args.max_metric_degradation,
        min_quality_rows: args.min_quality_rows,
    };
    let sink = sink.as_ref().map(|s| s as &dyn AlertSink);
    let report = mlops_monitor::run(&registry, &args.model, window, &rule, &limits, sink).await?;
    if let Some(namespace) = &args.cloudwatch_namespace {
        let sent = put_metrics(namespace, &report).await?;
        eprintln!("{sent} metrics put to CloudWatch namespace {namespace}");
    }
    if args.track {
        let tracker = settings.tracker();
        let runs = mlops_monitor::tracking::log_report(
            registry.store().as_ref(),
            tracker.as_ref(),
            &report,
        )
        .await?;
        eprintln!(
            "scores logged to {} run(s) on {}",
            runs.len(),
            tracker.describe()
        );
    }
    // The spec and the data set's version are read only when alerts call for retraining.
    if let Some(spec) = args
        .retrain_spec
        .as_ref()
        .filter(|_| mlops_monitor::retrain::trigger_of(&report).is_some())
    {
        retrain_on_alerts(&args, spec, settings, &registry, &report).await?;
    }
    if args.auto_rollback {
        let check = mlops_monitor::rollback::RollbackCheck {
            alias: args.champion.clone(),
            window: Duration::hours(i64::from(args.rollback_window_hours)),
            label_delay: Duration::hours(i64::from(args.label_delay_hours)),
            test: SequentialTest::default(),
        };
        let now = Utc::now();
        let outcome =
            mlops_monitor::rollback::check_rollback(&registry, &args.model, &check, now).await?;
        eprintln!("rollback check: {}", serde_json::to_string(&outcome)?);
        if let (Some(alert), Some(sink)) = (
            mlops_monitor::rollback::rollback_alert(&args.model, &outcome, now),
            sink,
        ) {
            mlops_domain::alerts::deliver(registry.store().as_ref(), sink, &[alert]).await?;
        }
    }
    let key = report_key(&args.model, from, until);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
        for alert in &report.alerts {
            println!("ALERT {:?}: {}", alert.rule, alert.summary);
        }
        eprintln!("report: {}", registry.store().uri(&key));
    }
    for failed in report.deliveries.iter().filter_map(|d| match d {
        Delivery::Failed { id, error } => Some((id, error)),
        _ => None,
    }) {
        eprintln!(
            "warning: alert {} was not delivered: {}",
            failed.0, failed.1
        );
    }
    if args.fail_on_drift && report.versions.iter().any(|v| v.drift.drifted) {
        return Err(ExitWith {
            code: EXIT_DRIFT,
            message: format!("{}: the data set drifted", args.model),
        }
        .into());
    }
    Ok(())
}

/// `mlops ab`.
#[derive(Args, Debug)]
pub struct AbArgs {
    #[command(subcommand)]
    command: AbCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AbCommand {
    /// Per-variant live metrics from the logs and feedback since the test began, and the
    /// sequential verdict of each challenger against the champion: promote, keep, or need more
    /// data (with about how many more labelled rows). Valid however often it is run.
    Report(AbReportArgs),
}

/// `mlops ab report`.
#[derive(Args, Debug)]
pub struct AbReportArgs {
    /// Model under test.
    #[arg(long)]
    pub model: String,
    /// When the test began (RFC 3339): the verdict covers everything since.
    #[arg(long)]
    pub since: DateTime<Utc>,
    /// End of the window (RFC 3339); default now.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// The variant the others are compared with.
    #[arg(long, default_value = "champion")]
    pub champion: String,
    /// Longest a label may arrive after its prediction and still count, in hours.
    #[arg(long, default_value_t = 24)]
    pub label_delay_hours: u32,
    /// Chance of a verdict between equal variants, over every look.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// The difference the test is most sensitive to, in standard deviations of the loss.
    #[arg(long, default_value_t = 0.1)]
    pub effect: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `mlops ab`.
pub async fn run_ab(args: AbArgs, settings: &Settings) -> Result<()> {
    let AbCommand::Report(args) = args.command;
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        bail!("--alpha {} must be in (0, 1)", args.alpha);
    }
    if !(args.effect > 0.0 && args.effect.is_finite()) {
        bail!("--effect {} must be above 0", args.effect);
    }
    let registry = settings.registry().await?;
    ensure_model(&registry, &args.model).await?;
    let until = args.until.unwrap_or_else(Utc::now);
    if args.since >= until {
        bail!(
            "the window is empty: --since {} is not before {until}",
            args.since
        );
    }
    let window = Window {
        from: args.since,
        until,
        label_delay: Duration::hours(i64::from(args.label_delay_hours)),
        champion: args.champion.clone(),
        ab_test: SequentialTest {
            alpha: args.alpha,
            effect: args.effect,
            ..SequentialTest::default()
        },
    };
    let report = monitor(&registry, &args.model, window, &DriftRule::default()).await?;
    if args.json {
        let out = serde_json::json!({
            "model": report.model, "from": report.from, "until": report.until,
            "labelled": report.labelled,
            "quality": report.versions.iter().map(|v| (v.version, &v.quality)).collect::<BTreeMap<_, _>>(),
            "verdicts": report.ab,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let seen: std::collections::BTreeSet<&str> = report
        .versions
        .iter()
        .flat_map(|v| v.quality.keys().map(String::as_str))
        .collect();
    if !seen.contains(args.champion.as_str()) {
        bail!(
            "no predictions of variant '{}' of {} logged since {} (variants seen: {})",
            args.champion,
            args.model,
            args.since,
            seen.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let mut out = header(&report);
    for v in &report.versions {
        out.push_str(&format!("v{}:\n", v.version));
        out.push_str(&quality_lines(v));
    }
    out.push_str(&ab_lines(&report));
    if report.ab.is_empty() {
        out.push_str("no challenger with labelled predictions yet\n");
    }
    print!("{out}");
    Ok(())
}

/// The report's scores as CloudWatch metrics ([`metric_data`]).
async fn put_metrics(namespace: &str, report: &MonitorReport) -> Result<usize> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
    let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
    let cloudwatch = mlops_aws::CloudWatchMetrics::new(&config, namespace);
    let mut sent = 0;
    for (values, dimensions) in metric_data(report) {
        let dimensions: Vec<(&str, &str)> =
            dimensions.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sent += cloudwatch
            .put(&values, &dimensions)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(sent)
}

/// Submits retraining for the report's alerts, if any.
async fn retrain_on_alerts(
    args: &MonitorArgs,
    spec: &str,
    settings: &Settings,
    registry: &mlops_domain::registry::Registry,
    report: &MonitorReport,
) -> Result<()> {
    let text = String::from_utf8(crate::commands::job::read(spec, settings).await?)?;
    let fields = mlops_monitor::retrain::spec_fields(&text);
    let data_uri = fields
        .data
        .ok_or_else(|| anyhow::anyhow!("job spec {spec}: retraining needs 'data'"))?;
    let data_version = crate::commands::retrain::data_version(&data_uri, settings).await?;
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .or(settings.s3_endpoint.clone());
    let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
    let queue = mlops_aws::BatchQueue::new(
        &config,
        args.training_queue.as_deref().unwrap_or_default(),
        args.training_job_definition.as_deref().unwrap_or_default(),
    );
    let to = mlops_monitor::retrain::RetrainOnAlerts {
        spec_uri: spec.to_owned(),
        data_uri,
        data_version,
        window: Duration::hours(i64::from(args.retrain_window_hours)),
        children: fields.workers,
        queue: &queue,
    };
    let requested =
        mlops_monitor::retrain::retrain_on_alerts(registry.store(), report, &to, Utc::now())
            .await?;
    if let Some((record, submitted)) = requested {
        eprintln!(
            "retraining ({}): {} queue job {}",
            record.trigger.name(),
            if submitted {
                "submitted"
            } else {
                "already submitted as"
            },
            record.queue_job_id.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}
