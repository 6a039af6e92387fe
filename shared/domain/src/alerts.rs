//! Alerts from a drift report: which rules fired for a version's window, with the feature-level
//! details behind them, and delivery at most once per window and rule.
//!
//! An alert's id is derived from the model, version, rule and window, so checking the same
//! window again yields the same id: [`deliver`] records each delivered id on the store
//! (`monitoring/MODEL/alerts/ID.json`) and skips ids already there. A delivery whose record
//! could not be written (a crash right after the send) is sent again by the next run with the
//! same id, which receivers use to drop the duplicate.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::drift::{DatasetDrift, FeatureDrift};
use crate::hashing::sha256_hex;
use crate::store::{ObjectStore, PutCondition, StoreError};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// The data set drifted (share of drifted features at or above the configured share).
    Drift,
    /// Values went missing, out of the training range or unseen beyond the limits.
    DataQuality,
    /// The model's outputs drifted from its predictions on the training rows.
    PredictionDrift,
    /// The live metric from feedback is worse than the test metric beyond the limit, its whole
    /// 95 % interval.
    LiveQuality,
    /// The metric estimated without labels (CBPE) is worse than the test metric beyond the
    /// limit.
    EstimatedQuality,
    /// A new champion was significantly worse live than its predecessor and was rolled back.
    Rollback,
    /// The ranking of the features by mean |contribution| moved from training's (nDCG below
    /// the threshold).
    AttributionDrift,
}

/// One metric compared with the version's test metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    /// Variant (alias) served.
    pub variant: String,
    /// Metric.
    pub metric: String,
    /// Live value (realized, or estimated).
    pub value: f64,
    /// The end of its 95 % interval nearest the reference (the value for an estimate).
    pub bound: f64,
    /// The version's metric on its test split.
    pub reference: f64,
    /// Worse than this alerts.
    pub threshold: f64,
    /// Rows behind the value.
    pub rows: u64,
}

/// Limits of the data-quality rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityLimits {
    /// Rise of a feature's missing share over the reference's that alerts (0.1 = 10 points).
    pub missing_rise: f64,
    /// Share of a feature's values outside the reference's range, or never seen in it, that
    /// alerts.
    pub outside_share: f64,
}

impl Default for QualityLimits {
    fn default() -> Self {
        Self {
            missing_rise: 0.1,
            outside_share: 0.05,
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Same for the same model, version, rule and window.
    pub id: String,
    /// Rule.
    pub rule: AlertRule,
    /// Model.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Window start.
    pub from: DateTime<Utc>,
    /// Window end.
    pub until: DateTime<Utc>,
    /// One line for a human.
    pub summary: String,
    /// The features behind it, with their tests, scores and thresholds.
    pub features: Vec<FeatureDrift>,
    /// The metrics behind a quality alert, with their references and thresholds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricCheck>,
}

impl Alert {
    /// An alert of a version's window, its id derived from them ([`alert_id`]); no features or
    /// metrics yet.
    pub fn of_window(
        model: &str,
        version: u64,
        rule: AlertRule,
        (from, until): (DateTime<Utc>, DateTime<Utc>),
        summary: String,
    ) -> Self {
        Self {
            id: alert_id(model, version, rule, from, until),
            rule,
            model: model.into(),
            version,
            from,
            until,
            summary,
            features: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

/// The id of an alert: the same for the same model, version, rule and window.
pub fn alert_id(
    model: &str,
    version: u64,
    rule: AlertRule,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> String {
    sha256_hex(format!("{model}\n{version}\n{rule:?}\n{from:?}\n{until:?}").as_bytes())[..32]
        .to_owned()
}

/// The attribution-drift alert of a version's window, over at least `min_rows` explained
/// records.
pub fn attribution_alert(
    model: &str,
    version: u64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    drift: &crate::attribution::AttributionDrift,
    min_rows: u64,
) -> Option<Alert> {
    if !drift.drifted || drift.rows < min_rows {
        return None;
    }
    let names = |top: &[(String, f64)]| {
        top.iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(Alert::of_window(
        model,
        version,
        AlertRule::AttributionDrift,
        (from, until),
        format!(
            "{model} v{version}: feature attributions drifted (nDCG {:.3} < {}) over {} explained rows: top features now {}, in training {}",
            drift.ndcg,
            drift.threshold,
            drift.rows,
            names(&drift.current_top),
            names(&drift.reference_top)
        ),
    ))
}

/// The quality alerts of a version's window: per variant, the primary metric realized from
/// feedback (its whole interval worse than the test metric by more than `degradation`, a
/// relative share, over at least `min_rows` labels) and the one estimated without labels.
#[allow(clippy::too_many_arguments)]
pub fn quality_alerts(
    model: &str,
    version: u64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    primary: crate::metrics::Metric,
    reference: Option<f64>,
    quality: &std::collections::BTreeMap<String, crate::quality::LiveQuality>,
    degradation: f64,
    min_rows: u64,
) -> Vec<Alert> {
    let Some(reference) = reference else {
        return Vec::new();
    };
    let higher = primary.higher_is_better();
    let threshold = if higher {
        reference * (1.0 - degradation)
    } else {
        reference * (1.0 + degradation)
    };
    let worse = |x: f64| if higher { x < threshold } else { x > threshold };
    let name = primary.name();
    let (mut live, mut estimated) = (Vec::new(), Vec::new());
    for (variant, q) in quality {
        let check = |value, bound, rows| MetricCheck {
            variant: variant.clone(),
            metric: name.into(),
            value,
            bound,
            reference,
            threshold,
            rows,
        };
        if let Some(e) = q.metrics.get(name).filter(|_| q.labelled >= min_rows) {
            let bound = if higher { e.high } else { e.low };
            if worse(bound) {
                live.push(check(e.value, bound, q.labelled));
            }
        }
        if let Some(&e) = q.estimated.get(name).filter(|_| q.rows >= min_rows)
            && worse(e)
        {
            estimated.push(check(e, e, q.rows));
        }
    }
    let mut out = Vec::new();
    for (rule, checks, what) in [
        (AlertRule::LiveQuality, live, "live"),
        (AlertRule::EstimatedQuality, estimated, "estimated"),
    ] {
        if checks.is_empty() {
            continue;
        }
        let worst = checks
            .iter()
            .map(|c| format!("{} {name} {:.4} ({} rows)", c.variant, c.value, c.rows))
            .collect::<Vec<_>>()
            .join(", ");
        let summary = format!(
            "{model} v{version}: {what} {name} worse than {threshold:.4} (test {reference:.4}): {worst}"
        );
        out.push(Alert {
            metrics: checks,
            ..Alert::of_window(model, version, rule, (from, until), summary)
        });
    }
    out
}

/// The alerts a version's window raises.
pub fn alerts(
    model: &str,
    version: u64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    drift: &DatasetDrift,
    limits: &QualityLimits,
) -> Vec<Alert> {
    let alert = |rule: AlertRule, summary: String, features: Vec<FeatureDrift>| Alert {
        features,
        ..Alert::of_window(model, version, rule, (from, until), summary)
    };
    let mut out = Vec::new();
    if drift.drifted {
        let drifted: Vec<FeatureDrift> = drift
            .features
            .iter()
            .filter(|f| f.drifted)
            .cloned()
            .collect();
        let names: Vec<&str> = drifted.iter().map(|f| f.feature.as_str()).collect();
        out.push(alert(
            AlertRule::Drift,
            format!(
                "{model} v{version}: {} of {} features drifted ({}) over {} rows",
                drifted.len(),
                drift.features.len(),
                names.join(", "),
                drift.rows
            ),
            drifted,
        ));
    }
    if let Some(p) = drift.prediction.as_ref().filter(|p| p.drifted) {
        out.push(alert(
            AlertRule::PredictionDrift,
            format!(
                "{model} v{version}: predictions drifted from training ({:?} {:.4}, threshold {}) over {} rows",
                p.test,
                p.score.unwrap_or_default(),
                p.threshold,
                p.current_rows
            ),
            vec![p.clone()],
        ));
    }
    let poor: Vec<FeatureDrift> = drift
        .features
        .iter()
        .filter(|f| {
            f.missing_share - f.reference_missing_share >= limits.missing_rise
                || f.out_of_range_share.or(f.unseen_share).unwrap_or(0.0) >= limits.outside_share
        })
        .cloned()
        .collect();
    if !poor.is_empty() {
        let names: Vec<&str> = poor.iter().map(|f| f.feature.as_str()).collect();
        out.push(alert(
            AlertRule::DataQuality,
            format!(
                "{model} v{version}: missing, out-of-range or unseen values in {}",
                names.join(", ")
            ),
            poor,
        ));
    }
    out
}

/// Where alerts go (a webhook, an SNS topic).
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Delivers one alert (retrying as the sink sees fit); `Err` says why it could not.
    async fn send(&self, alert: &Alert) -> Result<(), String>;
    /// A human-readable destination.
    fn describe(&self) -> String;
}

/// What became of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Delivery {
    /// Sent now.
    Sent {
        /// Alert id.
        id: String,
    },
    /// Sent by an earlier run.
    AlreadySent {
        /// Alert id.
        id: String,
    },
    /// Not delivered.
    Failed {
        /// Alert id.
        id: String,
        /// Why.
        error: String,
    },
}

/// The record of a delivered alert.
pub fn alert_key(model: &str, id: &str) -> String {
    format!("monitoring/{model}/alerts/{id}.json")
}

/// Sends each alert not delivered before to the sink, recording each delivery.
pub async fn deliver(
    store: &dyn ObjectStore,
    sink: &dyn AlertSink,
    alerts: &[Alert],
) -> Result<Vec<Delivery>, StoreError> {
    let mut out = Vec::with_capacity(alerts.len());
    for alert in alerts {
        let key = alert_key(&alert.model, &alert.id);
        if store.head(&key).await?.is_some() {
            out.push(Delivery::AlreadySent {
                id: alert.id.clone(),
            });
            continue;
        }
        match sink.send(alert).await {
            Ok(()) => {
                let record = serde_json::to_vec_pretty(alert).expect("alerts serialize");
                match store.put(&key, record, PutCondition::IfAbsent).await {
                    Ok(_) | Err(StoreError::PreconditionFailed { .. }) => {}
                    Err(e) => return Err(e),
                }
                out.push(Delivery::Sent {
                    id: alert.id.clone(),
                });
            }
            Err(error) => out.push(Delivery::Failed {
                id: alert.id.clone(),
                error,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftTest;

    fn feature(name: &str, drifted: bool, missing: f64, outside: f64) -> FeatureDrift {
        FeatureDrift {
            feature: name.into(),
            test: DriftTest::Wasserstein,
            score: Some(if drifted { 0.3 } else { 0.01 }),
            threshold: 0.1,
            drifted,
            psi: Some(0.0),
            psi_band: None,
            reference_rows: 5000,
            current_rows: 100,
            missing_share: missing,
            reference_missing_share: 0.0,
            out_of_range_share: Some(outside),
            unseen_share: None,
        }
    }

    fn report(features: Vec<FeatureDrift>, drifted: bool) -> DatasetDrift {
        DatasetDrift {
            rows: 100,
            drifted_features: features.iter().filter(|f| f.drifted).count(),
            drifted_share: 0.5,
            drift_share: 0.5,
            drifted,
            features,
            prediction: None,
        }
    }

    #[test]
    fn rules_fire_with_the_features_behind_them_and_stable_ids() {
        let t = Utc::now();
        let drift = report(
            vec![
                feature("a", true, 0.0, 0.0),
                feature("b", false, 0.2, 0.0),
                feature("c", false, 0.0, 0.01),
            ],
            true,
        );
        let raised = alerts("m", 3, t, t, &drift, &QualityLimits::default());
        assert_eq!(raised.len(), 2);
        assert_eq!(
            (raised[0].rule, raised[0].features.len()),
            (AlertRule::Drift, 1)
        );
        assert!(
            raised[0].summary.contains("1 of 3 features drifted (a)"),
            "{}",
            raised[0].summary
        );
        assert_eq!(raised[1].rule, AlertRule::DataQuality);
        assert_eq!(raised[1].features[0].feature, "b");
        assert_eq!(
            raised,
            alerts("m", 3, t, t, &drift, &QualityLimits::default())
        );
        let later = alerts(
            "m",
            3,
            t,
            t + chrono::Duration::hours(1),
            &drift,
            &QualityLimits::default(),
        );
        assert_ne!(raised[0].id, later[0].id);
        let quiet = report(vec![feature("a", false, 0.0, 0.0)], false);
        assert!(alerts("m", 3, t, t, &quiet, &QualityLimits::default()).is_empty());
    }
}
