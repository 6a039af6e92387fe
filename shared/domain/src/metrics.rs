//! Evaluation metrics: RMSE, MAE, R² for regression; ROC AUC, log loss, accuracy, F1 for binary
//! classification.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schema::Task;

/// A named metric and whether larger values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Root mean squared error.
    Rmse,
    /// Mean absolute error.
    Mae,
    /// Coefficient of determination.
    R2,
    /// Area under the ROC curve.
    RocAuc,
    /// Binary cross-entropy.
    LogLoss,
    /// Share of correct 0.5-threshold decisions.
    Accuracy,
    /// F1 score of the positive class at threshold 0.5.
    F1,
}

impl Metric {
    /// The name used in reports and tracking.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rmse => "rmse",
            Metric::Mae => "mae",
            Metric::R2 => "r2",
            Metric::RocAuc => "roc_auc",
            Metric::LogLoss => "log_loss",
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::R2 | Metric::RocAuc | Metric::Accuracy | Metric::F1
        )
    }

    /// The metric candidates are selected by.
    pub fn primary(task: Task) -> Metric {
        match task {
            Task::Regression => Metric::Rmse,
            Task::BinaryClassification => Metric::RocAuc,
        }
    }

    /// All metrics reported for a task.
    pub fn all(task: Task) -> &'static [Metric] {
        match task {
            Task::Regression => &[Metric::Rmse, Metric::Mae, Metric::R2],
            Task::BinaryClassification => &[
                Metric::RocAuc,
                Metric::LogLoss,
                Metric::Accuracy,
                Metric::F1,
            ],
        }
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        if self.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }

    /// Computes the metric of predictions against labels.
    pub fn compute(self, labels: &[f64], predictions: &[f64]) -> f64 {
        match self {
            Metric::Rmse => rmse(labels, predictions),
            Metric::Mae => mae(labels, predictions),
            Metric::R2 => r2(labels, predictions),
            Metric::RocAuc => roc_auc(labels, predictions),
            Metric::LogLoss => log_loss(labels, predictions),
            Metric::Accuracy => accuracy(labels, predictions),
            Metric::F1 => f1(labels, predictions),
        }
    }
}

/// Every metric of the task, by name.
pub fn evaluate(task: Task, labels: &[f64], predictions: &[f64]) -> BTreeMap<String, f64> {
    Metric::all(task)
        .iter()
        .map(|m| (m.name().to_string(), m.compute(labels, predictions)))
        .collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// Root mean squared error.
pub fn rmse(y: &[f64], p: &[f64]) -> f64 {
    mean(y.iter().zip(p).map(|(a, b)| (a - b) * (a - b))).sqrt()
}

/// Mean absolute error.
pub fn mae(y: &[f64], p: &[f64]) -> f64 {
    mean(y.iter().zip(p).map(|(a, b)| (a - b).abs()))
}

/// Coefficient of determination.
pub fn r2(y: &[f64], p: &[f64]) -> f64 {
    let m = mean(y.iter().copied());
    let ss_res: f64 = y.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - m) * (a - m)).sum();
    1.0 - ss_res / ss_tot
}

/// Area under the ROC curve (Mann–Whitney, ties counted half).
pub fn roc_auc(y: &[f64], p: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if y[k] > 0.5 {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let n_pos = y.iter().filter(|&&v| v > 0.5).count() as f64;
    let n_neg = y.len() as f64 - n_pos;
    (rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Binary cross-entropy, probabilities clipped to [1e-15, 1 − 1e-15].
pub fn log_loss(y: &[f64], p: &[f64]) -> f64 {
    mean(y.iter().zip(p).map(|(&t, &q)| {
        let q = q.clamp(1e-15, 1.0 - 1e-15);
        -(t * q.ln() + (1.0 - t) * (1.0 - q).ln())
    }))
}

/// Share of correct decisions at threshold 0.5.
pub fn accuracy(y: &[f64], p: &[f64]) -> f64 {
    mean(
        y.iter()
            .zip(p)
            .map(|(&t, &q)| f64::from((q >= 0.5) == (t > 0.5))),
    )
}

/// F1 of the positive class at threshold 0.5.
pub fn f1(y: &[f64], p: &[f64]) -> f64 {
    let (mut tp, mut fp, mut fneg) = (0.0, 0.0, 0.0);
    for (&t, &q) in y.iter().zip(p) {
        match (q >= 0.5, t > 0.5) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fneg += 1.0,
            _ => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fneg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_metrics() {
        let y = [1.0, 2.0, 3.0, 4.0];
        let p = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(rmse(&y, &p), 1.0);
        assert_eq!(mae(&y, &p), 0.5);
        assert!((r2(&y, &p) - (1.0 - 4.0 / 5.0)).abs() < 1e-12);
    }

    #[test]
    fn auc_handles_ties_and_matches_pair_count() {
        // pairs (pos, neg): (0.8,0.1)=1, (0.8,0.4)=1, (0.4,0.1)=1, (0.4,0.4)=0.5 -> 3.5/4
        let y = [1.0, 0.0, 1.0, 0.0];
        let p = [0.8, 0.1, 0.4, 0.4];
        assert!((roc_auc(&y, &p) - 0.875).abs() < 1e-12);
    }

    #[test]
    fn classification_threshold_metrics() {
        let y = [1.0, 1.0, 0.0, 0.0];
        let p = [0.9, 0.2, 0.6, 0.1];
        assert_eq!(accuracy(&y, &p), 0.5);
        assert_eq!(f1(&y, &p), 0.5);
        let ll = log_loss(&[1.0], &[0.5]);
        assert!((ll - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
