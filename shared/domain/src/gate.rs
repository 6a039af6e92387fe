//! The champion–challenger gate: a new model becomes `challenger` always, and `champion` only if
//! it beats the current champion by a margin on the same rows — rows that neither model trained
//! on. Rows are matched by content ([`row_hash`]), so the rule holds across seeds, split
//! fractions and data files that share rows.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{Dataset, Value};
use crate::metrics::Metric;

/// Fewest rows outside both training sets the gate scores on; with fewer it refuses.
pub const MIN_GATE_ROWS: usize = 50;

/// How the training rows were drawn (recorded in lineage so the set can be rebuilt).
pub const SPLIT_METHOD: &str = "chacha20-permutation-v1";

/// A 64-bit content hash of one row: its feature values and its label. Equal rows in
/// different files hash the same; the hash does not depend on the platform.
pub fn row_hash(row: &[Value], label: f64) -> u64 {
    let mut h = Sha256::new();
    for v in row {
        match v {
            Value::Missing => h.update([0u8]),
            Value::Number(x) => {
                h.update([1u8]);
                // -0.0 and 0.0 are the same value in a data file.
                h.update(
                    (if *x == 0.0 { 0.0f64 } else { *x })
                        .to_bits()
                        .to_le_bytes(),
                );
            }
            Value::Category(c) => {
                h.update([2u8]);
                h.update((c.len() as u64).to_le_bytes());
                h.update(c.as_bytes());
            }
        }
    }
    h.update(label.to_bits().to_le_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// A set of rows by content (the rows a model trained on).
#[derive(Debug, Default, Clone)]
pub struct RowSet(HashSet<u64>);

impl RowSet {
    /// The rows `indices` of `data`.
    pub fn of(data: &Dataset, indices: &[usize]) -> Self {
        Self(
            indices
                .iter()
                .map(|&i| {
                    row_hash(
                        &data.rows[i],
                        data.labels.get(i).copied().unwrap_or(f64::NAN),
                    )
                })
                .collect(),
        )
    }

    /// Whether a row (by hash) is in the set.
    pub fn contains(&self, hash: u64) -> bool {
        self.0.contains(&hash)
    }

    /// Distinct rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hex SHA-256 over the sorted row hashes: the set's identity in lineage.
    pub fn digest(&self) -> String {
        let mut sorted: Vec<u64> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let mut h = Sha256::new();
        for x in sorted {
            h.update(x.to_le_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// The training rows of a version, as recorded in its lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// [`SPLIT_METHOD`] of the split.
    pub method: String,
    /// Rows of the data set the split was drawn from.
    pub rows: usize,
    /// [`RowSet::digest`] of the training rows (validation carve-out included).
    pub train_rows_sha256: String,
}

/// Which of this run's held-out rows the gate may score on.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRows {
    /// Indices into the held-out rows that neither model trained on.
    pub indices: Vec<usize>,
    /// Held-out rows considered.
    pub held_out: usize,
    /// Of those, rows the champion trained on (left out).
    pub champion_trained_on: usize,
    /// Of those, rows whose duplicate the challenger trained on (left out).
    pub challenger_trained_on: usize,
}

impl GateRows {
    /// Picks the rows of `held_out` in neither training set.
    pub fn pick(held_out: &Dataset, challenger: &RowSet, champion: &RowSet) -> Self {
        let (mut indices, mut by_champion, mut by_challenger) = (Vec::new(), 0, 0);
        for i in 0..held_out.len() {
            let hash = row_hash(&held_out.rows[i], held_out.labels[i]);
            if champion.contains(hash) {
                by_champion += 1;
            } else if challenger.contains(hash) {
                by_challenger += 1;
            } else {
                indices.push(i);
            }
        }
        Self {
            indices,
            held_out: held_out.len(),
            champion_trained_on: by_champion,
            challenger_trained_on: by_challenger,
        }
    }

    /// One line: how many rows were scored and why the others were left out.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} held-out rows (left out: {} the champion trained on, {} the challenger trained on)",
            self.indices.len(),
            self.held_out,
            self.champion_trained_on,
            self.challenger_trained_on
        )
    }
}

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
    /// Rows both models were scored on (none of them trained on by either); absent in
    /// decisions recorded before rows were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// The version already was champion (a rerun of a gate that promoted it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_champion: bool,
    /// Why a version that won was still not promoted (e.g. its card cannot be approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
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
            rows: None,
            already_champion: false,
            held_back: None,
        }
    }

    /// The decision with a winner held back from promotion, saying why.
    pub fn hold_back(mut self, reason: String) -> Self {
        self.promote = false;
        self.held_back = Some(reason);
        self
    }

    /// The same decision, scored on `rows` rows.
    pub fn on_rows(mut self, rows: usize) -> Self {
        self.rows = Some(rows);
        self
    }

    /// The decision of a rerun whose version is champion already: it stays.
    pub fn already_champion(metric: Metric, challenger: f64, margin: f64) -> Self {
        Self {
            already_champion: true,
            ..Self::decide(metric, challenger, None, margin)
        }
    }

    /// One line for the audit log.
    pub fn summary(&self) -> String {
        let verdict = if self.promote {
            "promoted".to_string()
        } else if let Some(why) = &self.held_back {
            format!("not promoted: {why}")
        } else {
            "not promoted".to_string()
        };
        if self.already_champion {
            return format!(
                "gate: this version is champion already (a rerun); {} {:.6} → kept",
                self.metric, self.challenger_score
            );
        }
        match self.champion_score {
            None => format!(
                "gate: no champion yet; {} {:.6} → {verdict}",
                self.metric, self.challenger_score
            ),
            Some(c) => {
                let rows = self.rows.map_or(String::new(), |n| {
                    format!(" on {n} rows neither model trained on")
                });
                format!(
                    "gate: {} {:.6} vs champion {:.6}{rows} (margin {}) → {verdict}",
                    self.metric, self.challenger_score, c, self.margin
                )
            }
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
        let d = GateDecision::decide(rmse, 0.465, Some(0.47), 0.01).on_rows(812);
        assert!(d.summary().contains("not promoted") && d.summary().contains("0.470000"));
        assert!(d.summary().contains("on 812 rows"), "{}", d.summary());
        let rerun = GateDecision::already_champion(rmse, 0.44, 0.01);
        assert!(rerun.promote && rerun.summary().contains("champion already"));
    }

    fn data(rows: &[(f64, &str, f64)]) -> Dataset {
        Dataset {
            feature_columns: Vec::new(),
            rows: rows
                .iter()
                .map(|(x, c, _)| vec![Value::Number(*x), Value::Category((*c).into())])
                .collect(),
            labels: rows.iter().map(|r| r.2).collect(),
            ids: Vec::new(),
            lines: Vec::new(),
            digest: Default::default(),
            source: "test".into(),
        }
    }

    #[test]
    fn rows_match_by_content_and_gate_rows_leave_out_both_training_sets() {
        let a = data(&[
            (1.0, "a", 1.0),
            (2.0, "b", 0.0),
            (3.0, "a", 1.0),
            (4.0, "b", 1.0),
        ]);
        assert_eq!(
            row_hash(&a.rows[0], 1.0),
            row_hash(&[Value::Number(1.0), Value::Category("a".into())], 1.0)
        );
        assert_ne!(row_hash(&a.rows[0], 1.0), row_hash(&a.rows[0], 0.0));
        assert_ne!(
            row_hash(
                &[Value::Category("ab".into()), Value::Category("c".into())],
                0.0
            ),
            row_hash(
                &[Value::Category("a".into()), Value::Category("bc".into())],
                0.0
            )
        );
        let champion = RowSet::of(&a, &[0, 1]);
        let challenger = RowSet::of(&a, &[2]);
        assert_eq!(champion.digest(), RowSet::of(&a, &[1, 0]).digest());
        let held_out = data(&[
            (1.0, "a", 1.0),
            (3.0, "a", 1.0),
            (5.0, "c", 0.0),
            (6.0, "c", 1.0),
        ]);
        let rows = GateRows::pick(&held_out, &challenger, &champion);
        assert_eq!(rows.indices, vec![2, 3]);
        assert_eq!(
            (rows.champion_trained_on, rows.challenger_trained_on),
            (1, 1)
        );
        assert!(rows.describe().starts_with("2 of 4 held-out rows"));
    }
}
