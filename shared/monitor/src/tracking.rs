//! Monitoring metrics on the experiment tracker (MLflow, or the local run log): one run per
//! served version, `v{VERSION}` in the experiment `monitoring/{MODEL}`, kept across monitor runs,
//! with each window's scores logged at the window's end (step = hours since the Unix epoch), so
//! the tracker's charts show drift and live quality over time next to the training runs.
//!
//! The run id of a version is recorded on the store (`monitoring/MODEL/tracking/vN.json`,
//! create-only), so every monitor run, on any machine, logs to the same run. A crash between
//! creating the run and recording it leaves an empty run behind; the retry makes another.

use anyhow::{Context, Result};
use mlops_domain::store::{ObjectStore, PutCondition, StoreError};
use mlops_domain::tracking::{RunStatus, Tracker};
use serde::{Deserialize, Serialize};

use crate::{MonitorReport, metric_data};

#[derive(Serialize, Deserialize)]
struct RunRecord {
    run_id: String,
}

fn record_key(model: &str, version: u64) -> String {
    format!("monitoring/{model}/tracking/v{version}.json")
}

/// Logs each version's scores in the report to its monitoring run; the runs logged to.
pub async fn log_report(
    store: &dyn ObjectStore,
    tracker: &dyn Tracker,
    report: &MonitorReport,
) -> Result<Vec<String>> {
    let step = report.until.timestamp().div_euclid(3600);
    let mut runs = Vec::new();
    for v in &report.versions {
        let run_id = monitoring_run(store, tracker, &report.model, v.version).await?;
        let version = v.version.to_string();
        let mut metrics = Vec::new();
        for (values, dimensions) in metric_data(report) {
            let of_version = dimensions
                .iter()
                .any(|(k, value)| *k == "Version" && *value == version);
            if !of_version {
                continue;
            }
            // Per-variant and per-feature values are named after their variant or feature.
            let prefix = dimensions
                .iter()
                .find(|(k, _)| *k == "Variant" || *k == "Feature")
                .map(|(k, value)| format!("{}.{value}.", k.to_lowercase()))
                .unwrap_or_default();
            metrics.extend(
                values
                    .into_iter()
                    .filter(|(_, x)| x.is_finite())
                    .map(|(name, x)| (format!("{prefix}{name}"), x)),
            );
        }
        tracker
            .log_metrics(&run_id, &metrics, step)
            .await
            .with_context(|| format!("logging monitoring metrics to {}", tracker.describe()))?;
        runs.push(run_id);
    }
    Ok(runs)
}

/// The monitoring run of a version: the recorded one, or a new one recorded create-only (a
/// concurrent monitor that recorded first wins; the loser's run is ended).
async fn monitoring_run(
    store: &dyn ObjectStore,
    tracker: &dyn Tracker,
    model: &str,
    version: u64,
) -> Result<String> {
    let key = record_key(model, version);
    if let Some(object) = store.get(&key).await? {
        let record: RunRecord = serde_json::from_slice(&object.bytes)
            .with_context(|| format!("{} is not a run record", store.uri(&key)))?;
        return Ok(record.run_id);
    }
    let tags = [
        ("mlops.model".to_owned(), model.to_owned()),
        ("mlops.version".to_owned(), version.to_string()),
        ("mlops.kind".to_owned(), "monitoring".to_owned()),
    ];
    let run = tracker
        .start_run(
            &format!("monitoring/{model}"),
            &format!("v{version}"),
            &tags,
            None,
        )
        .await
        .with_context(|| format!("starting the monitoring run on {}", tracker.describe()))?;
    let record = serde_json::to_vec(&RunRecord {
        run_id: run.run_id.clone(),
    })?;
    match store.put(&key, record, PutCondition::IfAbsent).await {
        Ok(_) => Ok(run.run_id),
        Err(StoreError::PreconditionFailed { .. }) => {
            let _ = tracker.end_run(&run.run_id, RunStatus::Killed).await;
            Box::pin(monitoring_run(store, tracker, model, version)).await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{Duration, DurationRound, Utc};
    use mlops_domain::drift::DriftRule;
    use mlops_domain::registry::{RegisterOptions, Registry};
    use mlops_domain::testing::sample_bundle;
    use mlops_store::LocalStore;
    use mlops_tracking::LocalRunLog;

    use super::*;

    #[tokio::test]
    async fn each_version_logs_every_window_to_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
        let registry = Registry::new(Arc::clone(&store));
        registry
            .register("m", &sample_bundle(), RegisterOptions::default())
            .await
            .unwrap();
        let hour = (Utc::now() - Duration::hours(3))
            .duration_trunc(Duration::hours(1))
            .unwrap();
        let lines = format!(
            "{}\n",
            serde_json::json!({"at": hour + Duration::minutes(5), "request_id": "r", "model": "m",
                "version": 1, "variant": "champion", "input": {"x": 1.0}, "output": 0.5})
        );
        let key = mlops_domain::predlog::object_key("m", hour + Duration::minutes(6), "a");
        store
            .put(
                &key,
                mlops_domain::predlog::encode(lines.as_bytes()),
                PutCondition::None,
            )
            .await
            .unwrap();
        let tracker = LocalRunLog::new(dir.path().join("runs"));
        let mut runs = Vec::new();
        for h in 0..2 {
            let window = crate::Window {
                from: hour + Duration::hours(h),
                until: hour + Duration::hours(h + 1),
                label_delay: Duration::hours(1),
                champion: "champion".into(),
                ab_test: Default::default(),
            };
            let report = crate::monitor(&registry, "m", window, &DriftRule::default())
                .await
                .unwrap();
            runs.extend(log_report(store.as_ref(), &tracker, &report).await.unwrap());
        }
        assert_eq!(runs.len(), 1, "the second window has no predictions");
        let run = tracker.read_run(&runs[0]).unwrap();
        let rows = &run.metrics["rows"];
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].value, rows[0].step),
            (1.0, (hour + Duration::hours(1)).timestamp() / 3600)
        );
        assert!(
            run.metrics.contains_key("feature.x.drift_score"),
            "{:?}",
            run.metrics.keys()
        );
        assert!(run.metrics.contains_key("variant.champion.labelled"));
        // Logged again: the same run.
        let window = crate::Window {
            from: hour,
            until: hour + Duration::hours(2),
            label_delay: Duration::hours(1),
            champion: "champion".into(),
            ab_test: Default::default(),
        };
        let report = crate::monitor(&registry, "m", window, &DriftRule::default())
            .await
            .unwrap();
        assert_eq!(
            log_report(store.as_ref(), &tracker, &report).await.unwrap(),
            runs
        );
        assert_eq!(tracker.read_run(&runs[0]).unwrap().metrics["rows"].len(), 2);
    }
}
