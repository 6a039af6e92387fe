//! Feature-attribution drift: whether the features the model leans on in production are the
//! ones it leaned on in training. Mean |TreeSHAP contribution| per feature over a sample of the
//! training rows is the reference (kept in the bundle); the same over a sample of a window's
//! logged records is summed in a mergeable sketch; the window's ranking is scored against the
//! reference's by normalized discounted cumulative gain (nDCG), as SageMaker Model Monitor
//! does, alerting below 0.9.

use serde::{Deserialize, Serialize};

/// The nDCG below which attributions count as drifted.
pub const NDCG_THRESHOLD: f64 = 0.9;

/// Mean |contribution| per model feature over training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionProfile {
    /// Model features, in the model's order.
    pub features: Vec<String>,
    /// Mean |contribution| of each.
    pub mean_abs: Vec<f64>,
    /// Rows averaged.
    pub rows: u64,
}

/// Summed |contribution| per model feature over a window's sampled records; merge by adding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributionSketch {
    /// Σ |contribution| per feature, in the profile's order.
    pub sum_abs: Vec<f64>,
    /// Records explained.
    pub rows: u64,
}

impl AttributionSketch {
    /// Adds one record's contributions (in the profile's order).
    pub fn add(&mut self, contributions: &[f64]) {
        if self.sum_abs.len() != contributions.len() {
            self.sum_abs = vec![0.0; contributions.len()];
            self.rows = 0;
        }
        for (s, c) in self.sum_abs.iter_mut().zip(contributions) {
            *s += c.abs();
        }
        self.rows += 1;
    }

    /// Adds another window's sums.
    pub fn merge(&mut self, other: &Self) {
        if other.rows == 0 {
            return;
        }
        if self.rows == 0 {
            *self = other.clone();
            return;
        }
        for (s, o) in self.sum_abs.iter_mut().zip(&other.sum_abs) {
            *s += o;
        }
        self.rows += other.rows;
    }
}

/// nDCG of the ranking by `current` with the reference's attributions as relevance: Σ a(fᵢ) /
/// log₂(i + 1) over the features in `current`'s order, divided by the same in the reference's
/// own order. 1 when the order is the reference's.
pub fn ndcg(reference: &[f64], current: &[f64]) -> f64 {
    let order = |by: &[f64]| {
        let mut idx: Vec<usize> = (0..by.len()).collect();
        idx.sort_by(|&a, &b| by[b].total_cmp(&by[a]).then(a.cmp(&b)));
        idx
    };
    let dcg = |idx: &[usize]| -> f64 {
        idx.iter()
            .enumerate()
            .map(|(i, &f)| reference[f] / ((i + 2) as f64).log2())
            .sum()
    };
    let ideal = dcg(&order(reference));
    if ideal <= 0.0 {
        return 1.0;
    }
    dcg(&order(current)) / ideal
}

/// A window's attribution drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionDrift {
    /// nDCG of the window's ranking against training's.
    pub ndcg: f64,
    /// Below it, drift.
    pub threshold: f64,
    /// Whether attributions drifted.
    pub drifted: bool,
    /// Records explained.
    pub rows: u64,
    /// The five features with the largest mean |contribution| in training, with it.
    pub reference_top: Vec<(String, f64)>,
    /// The same in the window.
    pub current_top: Vec<(String, f64)>,
}

impl AttributionProfile {
    /// The drift of a window's sketch; `None` without explained records.
    pub fn check(&self, sketch: &AttributionSketch) -> Option<AttributionDrift> {
        if sketch.rows == 0 || sketch.sum_abs.len() != self.mean_abs.len() {
            return None;
        }
        let current: Vec<f64> = sketch
            .sum_abs
            .iter()
            .map(|s| s / sketch.rows as f64)
            .collect();
        let score = ndcg(&self.mean_abs, &current);
        let top = |values: &[f64]| {
            let mut pairs: Vec<(String, f64)> = self
                .features
                .iter()
                .cloned()
                .zip(values.iter().copied())
                .collect();
            pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
            pairs.truncate(5);
            pairs
        };
        Some(AttributionDrift {
            ndcg: score,
            threshold: NDCG_THRESHOLD,
            drifted: score < NDCG_THRESHOLD,
            rows: sketch.rows,
            reference_top: top(&self.mean_abs),
            current_top: top(&current),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_is_one_for_the_same_order_and_drops_when_the_top_features_swap() {
        let reference = [5.0, 3.0, 1.0, 0.5];
        assert!((ndcg(&reference, &[10.0, 6.0, 2.0, 1.0]) - 1.0).abs() < 1e-12);
        // Small swaps at the bottom barely matter; the top feature falling to last does.
        assert!(ndcg(&reference, &[5.0, 3.0, 0.4, 1.0]) > 0.99);
        let reversed = ndcg(&reference, &[0.5, 1.0, 3.0, 5.0]);
        assert!(reversed < 0.9, "{reversed}");
        let profile = AttributionProfile {
            features: ["a", "b", "c", "d"].map(String::from).to_vec(),
            mean_abs: reference.to_vec(),
            rows: 100,
        };
        let mut window = AttributionSketch::default();
        window.add(&[-0.5, 1.0, -3.0, 5.0]);
        let mut other = AttributionSketch::default();
        other.add(&[0.5, 1.0, 3.0, 5.0]);
        window.merge(&other);
        let drift = profile.check(&window).unwrap();
        assert!(drift.drifted && drift.rows == 2, "{drift:?}");
        assert_eq!(drift.current_top[0].0, "d");
        assert!(profile.check(&AttributionSketch::default()).is_none());
    }
}
