//! The champion–challenger gate: a new model becomes `challenger` always, and `champion` only if
//! it beats the current champion by a margin on the same held-out rows.

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// The gate's verdict, with what it was based on (recorded in the audit log and the tracker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Metric compared (the task's primary metric).
    pub metric: String,
    /// The new model's score on the held-out rows.
    pub challenger_score: f64,
    /// The champion's score on the same rows; `None` when there is no champion yet.
    pub champion_score: Option<f64>,
    /// Required improvement, in the metric's units.
    pub margin: f64,
    /// Whether the new model becomes champion.
    pub promote: bool,
}

impl GateDecision {
    /// Decides: with no champion the new model is promoted; otherwise it must be better by at
    /// least `margin` (lower for RMSE-like metrics, higher for AUC-like ones).
    pub fn decide(metric: Metric, challenger: f64, champion: Option<f64>, margin: f64) -> Self {
        let promote = match champion {
            None => challenger.is_finite(),
            Some(c) if metric.higher_is_better() => challenger >= c + margin,
            Some(c) => challenger <= c - margin,
        };
        Self {
            metric: metric.name().into(),
            challenger_score: challenger,
            champion_score: champion,
            margin,
            promote,
        }
    }

    /// One line for the audit log.
    pub fn summary(&self) -> String {
        match self.champion_score {
            None => format!(
                "gate: no champion yet; {} {:.6} → promoted",
                self.metric, self.challenger_score
            ),
            Some(c) => format!(
                "gate: {} {:.6} vs champion {:.6} (margin {}) → {}",
                self.metric,
                self.challenger_score,
                c,
                self.margin,
                if self.promote {
                    "promoted"
                } else {
                    "not promoted"
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_direction_and_margin() {
        let rmse = Metric::primary(crate::schema::Task::Regression);
        assert!(GateDecision::decide(rmse, 0.44, Some(0.47), 0.01).promote);
        assert!(!GateDecision::decide(rmse, 0.465, Some(0.47), 0.01).promote);
        assert!(!GateDecision::decide(rmse, 0.50, Some(0.47), 0.0).promote);
        assert!(GateDecision::decide(rmse, 0.50, None, 0.01).promote);
        let auc = Metric::primary(crate::schema::Task::BinaryClassification);
        assert!(GateDecision::decide(auc, 0.86, Some(0.84), 0.01).promote);
        assert!(!GateDecision::decide(auc, 0.845, Some(0.84), 0.01).promote);
        let d = GateDecision::decide(rmse, 0.465, Some(0.47), 0.01);
        assert!(d.summary().contains("not promoted") && d.summary().contains("0.470000"));
    }
}
