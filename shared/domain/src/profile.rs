//! Reference profiles of the training inputs, stored in the artifact for later drift checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Value};

/// Number of quantile bins of a numeric profile (percentiles: drift tests compare distributions
/// on these bins, so they are fine enough for a Wasserstein distance and a KS statistic).
pub const PROFILE_BINS: usize = 100;
/// Numeric columns with at most this many distinct values also keep their value counts (drift
/// tests treat columns with few values as categories).
pub const PROFILE_MAX_VALUES: usize = 16;

/// The distribution of one raw input column in the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureProfile {
    /// Quantile-binned histogram.
    Numeric {
        /// Column.
        name: String,
        /// Bin edges (`bins + 1` values, from min to max).
        edges: Vec<f64>,
        /// Rows per bin.
        counts: Vec<u64>,
        /// Missing values.
        missing: u64,
        /// Mean of the values (profiles written before drift monitoring lack it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mean: Option<f64>,
        /// Population standard deviation of the values.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        std: Option<f64>,
        /// Rows per value (by its shortest decimal form), for a column with at most
        /// [`PROFILE_MAX_VALUES`] distinct values.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        values: Option<BTreeMap<String, u64>>,
    },
    /// Category frequencies.
    Categorical {
        /// Column.
        name: String,
        /// Rows per category.
        counts: BTreeMap<String, u64>,
        /// Missing values.
        missing: u64,
    },
}

/// Profiles every feature column of a data set.
pub fn profile(data: &Dataset) -> Vec<FeatureProfile> {
    data.feature_columns
        .iter()
        .enumerate()
        .map(|(j, col)| {
            if col.is_numeric() {
                let values: Vec<f64> = data
                    .rows
                    .iter()
                    .map(|r| match r[j] {
                        Value::Number(x) => x,
                        _ => f64::NAN,
                    })
                    .collect();
                profile_values(&col.name, &values)
            } else {
                let (mut counts, mut missing) = (BTreeMap::new(), 0);
                for r in &data.rows {
                    match &r[j] {
                        Value::Category(c) => *counts.entry(c.clone()).or_default() += 1,
                        _ => missing += 1,
                    }
                }
                FeatureProfile::Categorical {
                    name: col.name.clone(),
                    counts,
                    missing,
                }
            }
        })
        .collect()
}

/// Profiles a numeric column given as values (NaN and infinities count as missing).
pub fn profile_values(name: &str, values: &[f64]) -> FeatureProfile {
    let mut xs: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let missing = (values.len() - xs.len()) as u64;
    xs.sort_by(f64::total_cmp);
    let (edges, counts) = quantile_histogram(&xs, PROFILE_BINS);
    let (mean, std) = moments(&xs);
    FeatureProfile::Numeric {
        name: name.into(),
        edges,
        counts,
        missing,
        mean,
        std,
        values: value_counts(&xs),
    }
}

/// Mean and population standard deviation; `None` without values.
fn moments(xs: &[f64]) -> (Option<f64>, Option<f64>) {
    if xs.is_empty() {
        return (None, None);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (Some(mean), Some(var.sqrt()))
}

/// Counts per distinct value of sorted values, when there are at most [`PROFILE_MAX_VALUES`].
fn value_counts(sorted: &[f64]) -> Option<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    let mut distinct = 0;
    let mut previous = None;
    for &x in sorted {
        if previous != Some(x) {
            distinct += 1;
            if distinct > PROFILE_MAX_VALUES {
                return None;
            }
            previous = Some(x);
        }
        *counts.entry(number_key(x)).or_default() += 1;
    }
    Some(counts)
}

/// The key of a number among a column's values: its shortest round-trip decimal form.
pub fn number_key(x: f64) -> String {
    format!("{x}")
}

/// Quantile edges of sorted values and the count of values per bin (edges deduplicated).
fn quantile_histogram(sorted: &[f64], bins: usize) -> (Vec<f64>, Vec<u64>) {
    if sorted.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let n = sorted.len();
    let mut edges: Vec<f64> = (0..=bins).map(|b| sorted[(b * (n - 1)) / bins]).collect();
    edges.dedup();
    if edges.len() == 1 {
        return (edges, vec![n as u64]);
    }
    let mut counts = vec![0u64; edges.len() - 1];
    for &x in sorted {
        // bin k holds edges[k] <= x < edges[k+1]; the last bin includes its upper edge
        let k = edges
            .partition_point(|&e| e <= x)
            .saturating_sub(1)
            .min(counts.len() - 1);
        counts[k] += 1;
    }
    (edges, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_value() {
        let xs: Vec<f64> = (0..100).map(f64::from).collect();
        let (edges, counts) = quantile_histogram(&xs, 10);
        assert_eq!(edges.len(), 11);
        assert_eq!(counts.iter().sum::<u64>(), 100);
        let (e, c) = quantile_histogram(&[1.0, 1.0, 1.0], 10);
        assert_eq!((e, c), (vec![1.0], vec![3]));
    }
}
