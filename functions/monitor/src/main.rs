//! The monitor function: runs the monitor ([`mlops_monitor`]) for the served models over the
//! last whole hours, when EventBridge Scheduler invokes it (hourly) or on demand.
//!
//! Event (every field optional): `{"models": ["m"], "hours": 1, "since": "RFC 3339",
//! "until": "RFC 3339"}`; the default window is the last `MLOPS_MONITOR_HOURS` whole hours.
//! `{"retrain": "manual"}` submits retraining instead, and `{"models": ["m"], "rollback":
//! {"reason": "…", "request_id": "…"}}` moves the champion alias back to the version before its
//! latest promotion (what `.github/workflows/rollback.yml` sends; with a request id, a retried
//! rollback reports the first instead of rolling back twice).
//! Environment, beside `MLOPS_STORE` and `AWS_ENDPOINT_URL` ([`mlops_function_env`]):
//! - `MLOPS_MODELS`: models to monitor (comma-separated; default every registered model);
//! - `MLOPS_MONITOR_HOURS` (1), `MLOPS_LABEL_DELAY_HOURS` (24), `MLOPS_CHAMPION_ALIAS`
//!   (`champion`);
//! - `MLOPS_ALERT_TOPIC_ARN`: alerts to this SNS topic; `MLOPS_ALERT_WEBHOOK` and
//!   `MLOPS_ALERT_WEBHOOK_SECRET`: and to a signed webhook;
//! - `MLOPS_CLOUDWATCH_NAMESPACE`: scores as CloudWatch metrics;
//! - `MLOPS_TRACKING_URI`: scores on each version's MLflow monitoring run;
//! - `MLOPS_RETRAIN_SPEC` (a training-job spec, s3://bucket/key), `MLOPS_TRAINING_QUEUE`,
//!   `MLOPS_TRAINING_JOB_DEFINITION`, `MLOPS_RETRAIN_WINDOW_HOURS` (24): retrain on drift or
//!   degraded quality, and on `{"retrain": "schedule"}` events, once per window;
//! - `MLOPS_AUTO_ROLLBACK=true`, `MLOPS_ROLLBACK_WINDOW_HOURS` (24): roll a champion back when it
//!   is significantly worse live than its predecessor.
//!
//! The answer lists, per model, the records read, labels joined, drifted versions, alerts and
//! where the report went. A model that fails is reported and the others still run; the
//! invocation fails (so the schedule's retry policy applies) when any did.

use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, DurationRound, Utc};
use lambda_runtime::{LambdaEvent, service_fn};
use mlops_domain::alerts::{AlertSink, Delivery};
use mlops_domain::drift::DriftRule;
use mlops_domain::registry::Registry;
use mlops_domain::retraining::{RetrainRecord, RetrainRequest, Trigger};
use mlops_domain::tracking::Tracker;
use mlops_monitor::rollback::{RollbackCheck, RollbackOutcome, check_rollback, rollback_alert};
use mlops_monitor::{AllSinks, Limits, MonitorReport, Window};
use serde::{Deserialize, Serialize};

/// What an invocation may ask for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    models: Option<Vec<String>>,
    hours: Option<u32>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Retrain (`schedule` or `manual`) instead of monitoring.
    retrain: Option<Trigger>,
    /// Roll the champion back instead of monitoring.
    rollback: Option<RollbackRequest>,
}

/// An operator's rollback of the champion alias.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// Why (kept in the audit log).
    reason: String,
    /// Who asked (default: the monitor function).
    by: Option<String>,
    /// Makes a retry return the first rollback's event.
    request_id: Option<String>,
}

/// One model's outcome.
#[derive(Debug, Serialize)]
struct ModelOutcome {
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labelled: Option<u64>,
    drifted_versions: Vec<u64>,
    alerts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retraining: Option<RetrainRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback: Option<RollbackOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rolled_back: Option<mlops_domain::registry::AliasEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Where retraining goes.
struct Retraining {
    spec_uri: String,
    queue: mlops_aws::BatchQueue,
    window: Duration,
}

/// Built once, at init.
struct Monitor {
    registry: Registry,
    models: Option<Vec<String>>,
    hours: u32,
    label_delay: Duration,
    champion: String,
    sinks: AllSinks,
    cloudwatch: Option<mlops_aws::CloudWatchMetrics>,
    tracker: Option<Box<dyn Tracker>>,
    retraining: Option<Retraining>,
    rollback: Option<RollbackCheck>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_u32(name: &str, default: u32, max: u32) -> Result<u32> {
    match env(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .with_context(|| format!("{name}='{v}': expected a whole number up to {max}")),
    }
}

impl Monitor {
    async fn from_env() -> Result<Self> {
        let registry = mlops_function_env::registry().await?;
        let aws = mlops_aws::sdk_config(env("AWS_ENDPOINT_URL").as_deref()).await;
        let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
        if let Some(topic) = env("MLOPS_ALERT_TOPIC_ARN") {
            sinks.push(Box::new(mlops_aws::SnsAlerts::new(&aws, &topic)));
        }
        if let Some(url) = env("MLOPS_ALERT_WEBHOOK") {
            let secret = env("MLOPS_ALERT_WEBHOOK_SECRET")
                .context("MLOPS_ALERT_WEBHOOK needs MLOPS_ALERT_WEBHOOK_SECRET (the HMAC key)")?;
            sinks.push(Box::new(mlops_monitor::webhook::WebhookSink::new(
                &url, &secret,
            )?));
        }
        let models = env("MLOPS_MODELS").map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        });
        let retraining = match env("MLOPS_RETRAIN_SPEC") {
            None => None,
            Some(spec_uri) => {
                let queue = env("MLOPS_TRAINING_QUEUE")
                    .context("MLOPS_RETRAIN_SPEC needs MLOPS_TRAINING_QUEUE")?;
                let definition = env("MLOPS_TRAINING_JOB_DEFINITION")
                    .context("MLOPS_RETRAIN_SPEC needs MLOPS_TRAINING_JOB_DEFINITION")?;
                Some(Retraining {
                    spec_uri,
                    queue: mlops_aws::BatchQueue::new(&aws, &queue, &definition),
                    window: Duration::hours(i64::from(
                        env_u32("MLOPS_RETRAIN_WINDOW_HOURS", 24, 24 * 366)?.max(1),
                    )),
                })
            }
        };
        let label_delay =
            Duration::hours(i64::from(env_u32("MLOPS_LABEL_DELAY_HOURS", 24, 24 * 90)?));
        let champion = env("MLOPS_CHAMPION_ALIAS").unwrap_or_else(|| "champion".into());
        let rollback = match env("MLOPS_AUTO_ROLLBACK").as_deref() {
            None | Some("false") => None,
            Some("true") => Some(RollbackCheck {
                alias: champion.clone(),
                window: Duration::hours(i64::from(
                    env_u32("MLOPS_ROLLBACK_WINDOW_HOURS", 24, 24 * 90)?.max(1),
                )),
                label_delay,
                test: Default::default(),
            }),
            Some(other) => anyhow::bail!("MLOPS_AUTO_ROLLBACK='{other}': expected true or false"),
        };
        Ok(Self {
            retraining,
            rollback,
            registry,
            models,
            hours: env_u32("MLOPS_MONITOR_HOURS", 1, 24 * 31)?.max(1),
            label_delay,
            champion,
            sinks: AllSinks(sinks),
            cloudwatch: env("MLOPS_CLOUDWATCH_NAMESPACE")
                .map(|ns| mlops_aws::CloudWatchMetrics::new(&aws, &ns)),
            tracker: env("MLOPS_TRACKING_URI")
                .map(|uri| Box::new(mlops_tracking::MlflowClient::new(&uri)) as Box<dyn Tracker>),
        })
    }

    async fn handle(&self, request: Request) -> Result<Vec<ModelOutcome>> {
        let until = request
            .until
            .unwrap_or(Utc::now().duration_trunc(Duration::hours(1))?);
        let hours = request.hours.unwrap_or(self.hours).max(1);
        let from = request
            .since
            .unwrap_or(until - Duration::hours(i64::from(hours)));
        anyhow::ensure!(
            from < until,
            "the window is empty: since {from} is not before until {until}"
        );
        anyhow::ensure!(
            !(request.rollback.is_some() && request.models.is_none()),
            "a rollback names its models (\"models\": [\"m\"])"
        );
        anyhow::ensure!(
            !(request.rollback.is_some() && request.retrain.is_some()),
            "an event asks for a rollback or for retraining, not both"
        );
        let models = match request.models.or_else(|| self.models.clone()) {
            Some(models) => models,
            None => self.registry.models().await?,
        };
        let mut outcomes = Vec::new();
        for model in models {
            let result = match (&request.rollback, request.retrain) {
                (Some(rollback), _) => self.roll_back(&model, rollback).await,
                (None, Some(trigger)) => {
                    self.retrain(&model, trigger).await.map(|r| ModelOutcome {
                        retraining: r,
                        ..outcome_of(&model, None)
                    })
                }
                (None, None) => self.monitor(&model, from, until).await,
            };
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(model, error = %format!("{e:#}"), "monitor failed");
                    ModelOutcome {
                        error: Some(format!("{e:#}")),
                        ..outcome_of(&model, None)
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn monitor(
        &self,
        model: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<ModelOutcome> {
        let window = Window {
            from,
            until,
            label_delay: self.label_delay,
            champion: self.champion.clone(),
            ab_test: Default::default(),
        };
        let sink = (!self.sinks.0.is_empty()).then_some(&self.sinks as &dyn AlertSink);
        let report = mlops_monitor::run(
            &self.registry,
            model,
            window,
            &DriftRule::default(),
            &Limits::default(),
            sink,
        )
        .await?;
        if let Some(cloudwatch) = &self.cloudwatch {
            for (values, dimensions) in mlops_monitor::metric_data(&report) {
                let dimensions: Vec<(&str, &str)> =
                    dimensions.iter().map(|(k, v)| (*k, v.as_str())).collect();
                cloudwatch
                    .put(&values, &dimensions)
                    .await
                    .map_err(anyhow::Error::msg)?;
            }
        }
        if let Some(tracker) = &self.tracker {
            mlops_monitor::tracking::log_report(
                self.registry.store().as_ref(),
                tracker.as_ref(),
                &report,
            )
            .await?;
        }
        let failed: Vec<&str> = report
            .deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Failed { error, .. } => Some(error.as_str()),
                _ => None,
            })
            .collect();
        anyhow::ensure!(
            failed.is_empty(),
            "alerts not delivered: {}",
            failed.join("; ")
        );
        let mut outcome = outcome_of(model, Some(&report));
        // The spec and the data set's version are read only when alerts call for retraining.
        if let Some(r) = self
            .retraining
            .as_ref()
            .filter(|_| mlops_monitor::retrain::trigger_of(&report).is_some())
        {
            let (data_uri, data_version, children) = self.spec_data(r).await?;
            let to = mlops_monitor::retrain::RetrainOnAlerts {
                spec_uri: r.spec_uri.clone(),
                data_uri,
                data_version,
                window: r.window,
                children,
                queue: &r.queue,
            };
            let requested = mlops_monitor::retrain::retrain_on_alerts(
                self.registry.store(),
                &report,
                &to,
                Utc::now(),
            )
            .await?;
            outcome.retraining = requested.map(|(record, _)| record);
        }
        if let Some(check) = &self.rollback {
            let now = Utc::now();
            let rollback = check_rollback(&self.registry, model, check, now).await?;
            if let (Some(alert), Some(sink)) = (rollback_alert(model, &rollback, now), sink) {
                mlops_domain::alerts::deliver(self.registry.store().as_ref(), sink, &[alert])
                    .await?;
            }
            outcome.rollback = Some(rollback);
        }
        Ok(outcome)
    }

    /// The data set the training-job spec names, its version, and the spec's search workers.
    async fn spec_data(&self, r: &Retraining) -> Result<(String, Option<String>, Option<u32>)> {
        let endpoint = env("AWS_ENDPOINT_URL");
        let spec = mlops_store::read_uri(&r.spec_uri, endpoint.clone())
            .await
            .with_context(|| format!("MLOPS_RETRAIN_SPEC={}", r.spec_uri))?;
        let spec = String::from_utf8(spec).context("the training-job spec is not UTF-8")?;
        let fields = mlops_monitor::retrain::spec_fields(&spec);
        let data_uri = fields.data.with_context(|| {
            format!("training-job spec {}: retraining needs 'data'", r.spec_uri)
        })?;
        let data_version = mlops_store::uri_version(&data_uri, endpoint).await.ok();
        Ok((data_uri, data_version, fields.workers))
    }

    /// Moves the champion back to its previous version (recorded in the audit log).
    async fn roll_back(&self, model: &str, request: &RollbackRequest) -> Result<ModelOutcome> {
        let by = request
            .by
            .as_deref()
            .unwrap_or("monitor function (on request)");
        let event = self
            .registry
            .rollback(
                model,
                &self.champion,
                by,
                &request.reason,
                request.request_id.as_deref(),
            )
            .await?;
        tracing::warn!(model, alias = %self.champion, to = event.to, by, "rolled back");
        Ok(ModelOutcome {
            rolled_back: Some(event),
            ..outcome_of(model, None)
        })
    }

    /// Submits retraining for `trigger` (once per window), when retraining is configured.
    async fn retrain(&self, model: &str, trigger: Trigger) -> Result<Option<RetrainRecord>> {
        let Some(r) = &self.retraining else {
            anyhow::bail!("retraining is not configured (MLOPS_RETRAIN_SPEC)");
        };
        let (data_uri, data_version, children) = self.spec_data(r).await?;
        let request = RetrainRequest {
            model: model.into(),
            trigger,
            window: r.window,
            spec_uri: r.spec_uri.clone(),
            data_uri,
            data_version,
            appended: None,
            reasons: vec![format!("{} retraining", trigger.name())],
            children,
        };
        let (record, submitted) = mlops_domain::retraining::request(
            self.registry.store(),
            &r.queue,
            &request,
            Utc::now(),
        )
        .await?;
        tracing::info!(model, trigger = trigger.name(), submitted, job = ?record.queue_job_id, "retraining requested");
        Ok(Some(record))
    }
}

fn outcome_of(model: &str, report: Option<&MonitorReport>) -> ModelOutcome {
    ModelOutcome {
        model: model.into(),
        records: report.map(|r| r.records),
        labelled: report.map(|r| r.labelled),
        drifted_versions: report
            .into_iter()
            .flat_map(|r| &r.versions)
            .filter(|v| v.drift.drifted)
            .map(|v| v.version)
            .collect(),
        alerts: report
            .into_iter()
            .flat_map(|r| &r.alerts)
            .map(|a| a.summary.clone())
            .collect(),
        report: report.map(|r| mlops_monitor::report_key(model, r.from, r.until)),
        retraining: None,
        rollback: None,
        rolled_back: None,
        error: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    mlops_function_env::init_logging();
    let monitor = Arc::new(Monitor::from_env().await?);
    tracing::info!(
        models = ?monitor.models,
        alerts = monitor.sinks.describe(),
        "monitor function initialized"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let monitor = Arc::clone(&monitor);
        async move {
            invoke(&monitor, event.payload)
                .await
                .map_err(|e| lambda_runtime::Error::from(format!("{e:#}")))
        }
    }))
    .await
}

/// One invocation: the event as a [`Request`] (EventBridge Scheduler sends the schedule's
/// input; none is the default window), the outcome per model.
async fn invoke(monitor: &Monitor, payload: serde_json::Value) -> Result<serde_json::Value> {
    let request: Request = match payload {
        serde_json::Value::Null => Request::default(),
        value => serde_json::from_value(value).context("the event is not a monitor request")?,
    };
    let outcomes = monitor.handle(request).await?;
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| o.model.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "monitor failed for {}: {}",
            failed.join(", "),
            serde_json::to_string(&outcomes)?
        );
    }
    Ok(serde_json::json!({ "models": outcomes }))
}
