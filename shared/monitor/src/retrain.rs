//! Retraining from the monitor: production rows that got labels, as training rows, and the
//! retraining a window's alerts trigger ([`mlops_domain::retraining`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, Utc};
use mlops_domain::alerts::AlertRule;
use mlops_domain::feedback::Labels;
use mlops_domain::jobs::JobQueue;
use mlops_domain::predlog;
use mlops_domain::registry::Registry;
use mlops_domain::retraining::{RetrainRecord, RetrainRequest, Trigger, request};
use mlops_domain::schema::{Schema, Task};
use mlops_domain::store::ObjectStore;

use crate::{FeedbackIndex, MonitorReport, latest_schema, read_object};

/// The logged predictions of `[from, until)` that have a label (received within the label delay),
/// as CSV rows in the data set's `header` order: the logged inputs, the label as the target
/// column holds it (the raw value, or the class name), empty cells elsewhere. Also the number of
/// rows.
pub async fn labelled_rows(
    registry: &Registry,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    label_delay: Duration,
    header: &[String],
) -> Result<(Vec<u8>, u64)> {
    let schema = latest_schema(registry, model).await?;
    let mut index = FeedbackIndex::list(registry, model, from, until + label_delay).await?;
    let labels: &Labels = index.read(registry, model).await?;
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut rows = 0;
    if !labels.is_empty() {
        for key in
            predlog::objects_for_window(registry.store().as_ref(), model, from, until).await?
        {
            let Some(records) = read_object(Arc::clone(registry.store()), key).await? else {
                continue;
            };
            for logged in records.into_iter().flatten() {
                if logged.at < from || logged.at >= until {
                    continue;
                }
                let Some(label) = logged
                    .request_id
                    .as_deref()
                    .and_then(|id| labels.get(id, logged.record, logged.at + label_delay))
                else {
                    continue;
                };
                let target = target_cell(&schema, label);
                let cells = header.iter().map(|column| {
                    if *column == schema.target.column {
                        return target.clone();
                    }
                    match logged.input.get(column) {
                        None | Some(serde_json::Value::Null) => String::new(),
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    }
                });
                writer.write_record(cells)?;
                rows += 1;
            }
        }
    }
    Ok((writer.into_inner().context("writing CSV to memory")?, rows))
}

/// A label as the data set's target column holds it.
fn target_cell(schema: &Schema, label: f64) -> String {
    match schema.task {
        Task::Regression => (label / schema.target.scale).to_string(),
        Task::BinaryClassification => {
            let (positive, negative) = schema.class_names();
            if label > 0.5 { positive } else { negative }
        }
    }
}

/// Where retraining goes when alerts trigger it.
pub struct RetrainOnAlerts<'a> {
    /// The training-job spec the job runs.
    pub spec_uri: String,
    /// The data set it names, and its version.
    pub data_uri: String,
    /// Its version.
    pub data_version: Option<String>,
    /// One job per trigger per this long.
    pub window: Duration,
    /// Children of the training job (the spec's `search.workers`).
    pub children: Option<u32>,
    /// The training queue.
    pub queue: &'a dyn JobQueue,
}

/// Requests retraining when the report raised drift or quality alerts, at most once per
/// trigger window: one job for all of them, triggered `degraded` when a live or estimated
/// metric degraded, else `drift`. The record, and whether this call submitted the job.
pub async fn retrain_on_alerts(
    store: &Arc<dyn ObjectStore>,
    report: &MonitorReport,
    to: &RetrainOnAlerts<'_>,
    now: DateTime<Utc>,
) -> Result<Option<(RetrainRecord, bool)>> {
    let Some((trigger, reasons)) = trigger_of(report) else {
        return Ok(None);
    };
    let request = RetrainRequest {
        model: report.model.clone(),
        trigger,
        window: to.window,
        spec_uri: to.spec_uri.clone(),
        data_uri: to.data_uri.clone(),
        data_version: to.data_version.clone(),
        appended: None,
        reasons,
        children: to.children,
    };
    request_retrain(store, to.queue, &request, now)
        .await
        .map(Some)
}

/// The retraining a report's alerts call for, with the alerts behind it: `degraded` when a live
/// or estimated metric degraded, else `drift` for any drift alert; `None` without either.
pub fn trigger_of(report: &MonitorReport) -> Option<(Trigger, Vec<String>)> {
    let mut trigger = None;
    let mut reasons = Vec::new();
    for alert in &report.alerts {
        let this = match alert.rule {
            AlertRule::LiveQuality | AlertRule::EstimatedQuality => Trigger::Degraded,
            AlertRule::Drift | AlertRule::PredictionDrift | AlertRule::AttributionDrift => {
                Trigger::Drift
            }
            AlertRule::DataQuality | AlertRule::Rollback => continue,
        };
        if trigger != Some(Trigger::Degraded) {
            trigger = Some(this);
        }
        reasons.push(format!("{}: {}", alert.id, alert.summary));
    }
    trigger.map(|t| (t, reasons))
}

async fn request_retrain(
    store: &Arc<dyn ObjectStore>,
    queue: &dyn JobQueue,
    r: &RetrainRequest,
    now: DateTime<Utc>,
) -> Result<(RetrainRecord, bool)> {
    request(store, queue, r, now)
        .await
        .with_context(|| format!("retraining {} ({})", r.model, r.trigger.name()))
}

/// What retraining reads of a training-job spec (leniently: the job checks the rest).
#[derive(Debug, Default, PartialEq)]
pub struct SpecFields {
    /// The `data` it names.
    pub data: Option<String>,
    /// Its `search.workers`: the job runs as an array job of that many children.
    pub workers: Option<u32>,
}

/// Reads [`SpecFields`] from a spec's text; what is missing or unreadable is `None`.
pub fn spec_fields(spec: &str) -> SpecFields {
    let Ok(value) = toml::from_str::<toml::Value>(spec) else {
        return SpecFields::default();
    };
    SpecFields {
        data: value
            .get("data")
            .and_then(|d| d.as_str())
            .map(str::to_owned),
        workers: value
            .get("search")
            .and_then(|s| s.get("workers"))
            .and_then(toml::Value::as_integer)
            .and_then(|w| u32::try_from(w).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_its_data_and_its_search_workers() {
        let spec =
            "dataset = \"x\"\ndata = \"s3://b/d.csv\"\n[search]\nmax_trials = 9\nworkers = 4\n";
        assert_eq!(
            spec_fields(spec),
            SpecFields {
                data: Some("s3://b/d.csv".into()),
                workers: Some(4)
            }
        );
        assert_eq!(
            spec_fields("dataset = \"x\"\n[search]\nmax_trials = 9\n").workers,
            None
        );
        assert_eq!(
            spec_fields("dataset = \"x\"\n[search]\nworkers = -1\n").workers,
            None
        );
    }
}
