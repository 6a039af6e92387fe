//! Drift of served inputs against the training reference every artifact carries
//! ([`FeatureProfile`]s), computed from mergeable window sketches.
//!
//! A [`WindowSketch`] holds, per feature, counts in the reference's own percentile bins (with the
//! mass and summed distance beyond the reference's range) or per value, and missing counts. Two
//! windows' sketches merge by addition, so a month of logs is a merge of hourly sketches, never a
//! rescan; a sketch's size depends on the features, not the rows.
//!
//! [`DriftRule::check`] compares a sketch with the reference by the size-aware defaults Evidently
//! documents. With at most 1,000 reference rows: a two-sample Kolmogorov–Smirnov test for numeric
//! columns with more than 5 values, chi-square for categories, a two-proportion z-test for two
//! categories (drift when p < 0.05). With more: the Wasserstein distance divided by the reference's
//! standard deviation for numeric columns, the Jensen–Shannon distance for categories (drift at
//! ≥ 0.1). PSI is reported for every feature, with 0.1 / 0.2 warning / alert bands. The data set
//! drifts when the share of drifted features reaches [`DriftRule::drift_share`].
//!
//! Numeric distributions are compared on the reference's bins, taking values as spread evenly
//! inside a bin: exact at the bin edges (the KS statistic is the largest gap at an edge), and within
//! a bin's width for the Wasserstein distance; beyond the reference's range it is exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

use crate::hashing::sha256_hex;
use crate::profile::{FeatureProfile, number_key};

/// Reference sizes up to this use p-value tests; larger ones use distances.
pub const SMALL_REFERENCE_ROWS: u64 = 1000;
/// Numeric columns with at most this many values are compared as categories.
pub const MAX_DISCRETE_VALUES: usize = 5;
/// Distinct values a window keeps beyond the reference's before it pools the rest, so an input
/// full of new categories cannot grow a sketch without bound.
pub const MAX_UNSEEN_VALUES: usize = 64;
/// The pool of unseen values past [`MAX_UNSEEN_VALUES`].
pub const OTHER_UNSEEN: &str = "(other unseen values)";
/// Smallest share PSI uses for an empty bin (as Evidently does).
const PSI_FLOOR: f64 = 1e-4;
/// Bins PSI groups the reference into.
const PSI_GROUPS: usize = 10;

/// How a feature is compared, decided from its reference.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Percentile bins of the reference: `edges` (strictly increasing) and rows per bin.
    Continuous {
        edges: Vec<f64>,
        counts: Vec<u64>,
        std: f64,
    },
    /// Rows per value (categories, or numbers with few values).
    Discrete {
        counts: BTreeMap<String, u64>,
        numeric: bool,
    },
}

/// One feature's reference.
#[derive(Debug, Clone, PartialEq)]
struct FeatureReference {
    /// Column.
    pub name: String,
    shape: Shape,
    missing: u64,
}

impl FeatureReference {
    fn rows(&self) -> u64 {
        let present: u64 = match &self.shape {
            Shape::Continuous { counts, .. } => counts.iter().sum(),
            Shape::Discrete { counts, .. } => counts.values().sum(),
        };
        present + self.missing
    }
}

/// The training reference of a model version, ready to sketch windows and test them.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    features: Vec<FeatureReference>,
    prediction: Option<FeatureReference>,
    digest: String,
}

/// A summary of one window of logged inputs, in a [`Reference`]'s bins; merge two by
/// [`WindowSketch::merge`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSketch {
    /// Digest of the reference whose bins these are (sketches of other references never merge).
    pub reference: String,
    /// Records summarized.
    pub rows: u64,
    /// One per reference feature, in order.
    pub features: Vec<FeatureSketch>,
    /// The model's outputs, when the reference has their profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureSketch>,
}

/// One feature of a [`WindowSketch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureSketch {
    /// Rows below the reference's range, per reference bin, and above it; the summed distances
    /// of the rows outside the range to its ends.
    Continuous {
        /// `[below, bin 1, …, bin m, above]`.
        counts: Vec<u64>,
        /// Σ (min − x) over the rows below the range.
        below_distance: f64,
        /// Σ (x − max) over the rows above it.
        above_distance: f64,
        /// Missing or non-numeric values.
        missing: u64,
    },
    /// Rows per value.
    Discrete {
        /// Rows per value the reference has.
        counts: BTreeMap<String, u64>,
        /// Rows per value it never had (at most [`MAX_UNSEEN_VALUES`] kept, the rest pooled
        /// under [`OTHER_UNSEEN`]).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        unseen: BTreeMap<String, u64>,
        /// Missing values.
        missing: u64,
    },
}

/// Sketches of different references, or of differently shaped ones.
#[derive(Debug, thiserror::Error)]
#[error("window sketches of different references cannot be merged ({0} and {1})")]
pub struct MergeError(String, String);

impl Reference {
    /// The reference of an artifact's input profiles.
    pub fn from_profiles(profiles: &[FeatureProfile]) -> Self {
        Self::new(profiles, None)
    }

    /// The reference of an artifact's input profiles and, when it has one, the profile of its
    /// predictions on the training rows.
    pub fn new(profiles: &[FeatureProfile], prediction: Option<&FeatureProfile>) -> Self {
        let features: Vec<FeatureReference> = profiles.iter().map(feature_reference).collect();
        let prediction = prediction.map(feature_reference);
        let layout: Vec<String> = features
            .iter()
            .chain(&prediction)
            .map(|f| match &f.shape {
                Shape::Continuous { edges, .. } => format!("{}:c:{edges:?}", f.name),
                Shape::Discrete { counts, numeric } => {
                    format!(
                        "{}:d{numeric}:{:?}",
                        f.name,
                        counts.keys().collect::<Vec<_>>()
                    )
                }
            })
            .collect();
        let digest = sha256_hex(layout.join("\n").as_bytes())[..16].to_owned();
        Self {
            features,
            prediction,
            digest,
        }
    }

    /// The digest of its layout, which its sketches carry ([`WindowSketch::reference`]).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The reference's and the window's distributions of every feature (and of the
    /// predictions) as shares over the same bars, for plots: the reference's deciles (with the
    /// window's values below and above its range) or its categories (with the window's unseen
    /// ones).
    pub fn histograms(&self, sketch: &WindowSketch) -> Vec<Histogram> {
        self.features
            .iter()
            .zip(&sketch.features)
            .chain(self.prediction.iter().zip(&sketch.prediction))
            .map(|(reference, current)| histogram(reference, current))
            .collect()
    }

    /// An empty sketch in this reference's bins.
    pub fn sketch(&self) -> WindowSketch {
        WindowSketch {
            reference: self.digest.clone(),
            rows: 0,
            features: self.features.iter().map(empty_sketch).collect(),
            prediction: self.prediction.as_ref().map(empty_sketch),
        }
    }

    /// Adds one logged prediction's output to a sketch of this reference (nothing when the
    /// reference has no prediction profile).
    pub fn add_prediction(&self, sketch: &mut WindowSketch, output: f64) {
        if let (Some(reference), Some(feature)) = (&self.prediction, &mut sketch.prediction) {
            add_value(reference, feature, Some(&serde_json::json!(output)));
        }
    }

    /// Adds one logged input record (a JSON object of field → value) to a sketch of this
    /// reference.
    pub fn add(
        &self,
        sketch: &mut WindowSketch,
        record: &serde_json::Map<String, serde_json::Value>,
    ) {
        sketch.rows += 1;
        for (reference, feature) in self.features.iter().zip(&mut sketch.features) {
            add_value(reference, feature, record.get(&reference.name));
        }
    }
}

fn empty_sketch(reference: &FeatureReference) -> FeatureSketch {
    match &reference.shape {
        Shape::Continuous { counts, .. } => FeatureSketch::Continuous {
            counts: vec![0; counts.len() + 2],
            below_distance: 0.0,
            above_distance: 0.0,
            missing: 0,
        },
        Shape::Discrete { .. } => FeatureSketch::Discrete {
            counts: BTreeMap::new(),
            unseen: BTreeMap::new(),
            missing: 0,
        },
    }
}

fn feature_reference(profile: &FeatureProfile) -> FeatureReference {
    match profile {
        FeatureProfile::Numeric {
            name,
            edges,
            counts,
            missing,
            std,
            values,
            ..
        } => {
            let shape = match values {
                Some(values) if values.len() <= MAX_DISCRETE_VALUES => Shape::Discrete {
                    counts: values.clone(),
                    numeric: true,
                },
                // A constant column (one edge), or one with no values at all.
                _ if edges.len() < 2 => Shape::Discrete {
                    counts: edges
                        .iter()
                        .zip(counts)
                        .map(|(&e, &c)| (number_key(e), c))
                        .collect(),
                    numeric: true,
                },
                _ => Shape::Continuous {
                    edges: edges.clone(),
                    counts: counts.clone(),
                    std: std.unwrap_or_else(|| binned_std(edges, counts)),
                },
            };
            FeatureReference {
                name: name.clone(),
                shape,
                missing: *missing,
            }
        }
        FeatureProfile::Categorical {
            name,
            counts,
            missing,
        } => FeatureReference {
            name: name.clone(),
            shape: Shape::Discrete {
                counts: counts.clone(),
                numeric: false,
            },
            missing: *missing,
        },
    }
}

/// The standard deviation of a histogram, values spread evenly in each bin (profiles written
/// before they recorded it).
fn binned_std(edges: &[f64], counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 || edges.len() < 2 {
        return 0.0;
    }
    let bins = || edges.windows(2).zip(counts);
    let mean = bins()
        .map(|(e, &c)| c as f64 * (e[0] + e[1]) / 2.0)
        .sum::<f64>()
        / n as f64;
    let var = bins()
        .map(|(e, &c)| {
            let (m, w) = ((e[0] + e[1]) / 2.0, e[1] - e[0]);
            c as f64 * ((m - mean).powi(2) + w * w / 12.0)
        })
        .sum::<f64>()
        / n as f64;
    var.sqrt()
}

fn add_value(
    reference: &FeatureReference,
    sketch: &mut FeatureSketch,
    value: Option<&serde_json::Value>,
) {
    use serde_json::Value as J;
    match (&reference.shape, sketch) {
        (
            Shape::Continuous { edges, .. },
            FeatureSketch::Continuous {
                counts,
                below_distance,
                above_distance,
                missing,
            },
        ) => {
            let x = match value {
                Some(J::Number(n)) => n.as_f64(),
                Some(J::String(s)) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match x.filter(|x| x.is_finite()) {
                None => *missing += 1,
                Some(x) => {
                    let (lo, hi) = (edges[0], edges[edges.len() - 1]);
                    if x < lo {
                        counts[0] += 1;
                        *below_distance += lo - x;
                    } else if x > hi {
                        let last = counts.len() - 1;
                        counts[last] += 1;
                        *above_distance += x - hi;
                    } else {
                        counts[1 + bin_of(edges, x)] += 1;
                    }
                }
            }
        }
        (
            Shape::Discrete {
                counts: known,
                numeric,
            },
            FeatureSketch::Discrete {
                counts,
                unseen,
                missing,
            },
        ) => {
            let key = match value {
                Some(J::String(s)) if *numeric => s.trim().parse::<f64>().ok().map(number_key),
                Some(J::String(s)) => Some(s.clone()),
                Some(J::Number(n)) => n.as_f64().map(number_key),
                Some(J::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            match key {
                None => *missing += 1,
                Some(key) if known.contains_key(&key) => *counts.entry(key).or_default() += 1,
                Some(key) => {
                    *unseen.entry(key).or_default() += 1;
                    pool_unseen(unseen);
                }
            }
        }
        _ => unreachable!("a sketch is made from its reference"),
    }
}

/// Keeps the [`MAX_UNSEEN_VALUES`] most frequent unseen values (ties by value) and pools the
/// rest under [`OTHER_UNSEEN`].
fn pool_unseen(unseen: &mut BTreeMap<String, u64>) {
    let other = unseen.remove(OTHER_UNSEEN).unwrap_or(0);
    let pooled = if unseen.len() > MAX_UNSEEN_VALUES {
        let mut by_count: Vec<(String, u64)> = std::mem::take(unseen).into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest: u64 = by_count[MAX_UNSEEN_VALUES..].iter().map(|(_, c)| c).sum();
        by_count.truncate(MAX_UNSEEN_VALUES);
        *unseen = by_count.into_iter().collect();
        other + rest
    } else {
        other
    };
    if pooled > 0 {
        unseen.insert(OTHER_UNSEEN.to_owned(), pooled);
    }
}

/// The bin of `x` within `[edges[0], edges[last]]`: bin k holds `edges[k] <= x < edges[k+1]`,
/// and the last bin its upper edge too.
fn bin_of(edges: &[f64], x: f64) -> usize {
    edges
        .partition_point(|&e| e <= x)
        .saturating_sub(1)
        .min(edges.len() - 2)
}

impl WindowSketch {
    /// Adds another window's sketch of the same reference.
    pub fn merge(&mut self, other: &WindowSketch) -> Result<(), MergeError> {
        let (mine, theirs) = (self.reference.clone(), other.reference.clone());
        let mismatch = || MergeError(mine.clone(), theirs.clone());
        if self.reference != other.reference || self.features.len() != other.features.len() {
            return Err(mismatch());
        }
        for (mine, theirs) in self.features.iter_mut().zip(&other.features) {
            merge_feature(mine, theirs).map_err(|()| mismatch())?;
        }
        match (&mut self.prediction, &other.prediction) {
            (Some(mine), Some(theirs)) => merge_feature(mine, theirs).map_err(|()| mismatch())?,
            (None, None) => {}
            _ => return Err(mismatch()),
        }
        self.rows += other.rows;
        Ok(())
    }
}

/// Adds `theirs` into `mine`; `Err` when their shapes differ.
fn merge_feature(mine: &mut FeatureSketch, theirs: &FeatureSketch) -> Result<(), ()> {
    match (mine, theirs) {
        (
            FeatureSketch::Continuous {
                counts,
                below_distance,
                above_distance,
                missing,
            },
            FeatureSketch::Continuous {
                counts: c,
                below_distance: b,
                above_distance: a,
                missing: m,
            },
        ) if counts.len() == c.len() => {
            counts.iter_mut().zip(c).for_each(|(x, y)| *x += y);
            *below_distance += b;
            *above_distance += a;
            *missing += m;
        }
        (
            FeatureSketch::Discrete {
                counts,
                unseen,
                missing,
            },
            FeatureSketch::Discrete {
                counts: c,
                unseen: u,
                missing: m,
            },
        ) => {
            for (k, v) in c {
                *counts.entry(k.clone()).or_default() += v;
            }
            for (k, v) in u {
                *unseen.entry(k.clone()).or_default() += v;
            }
            pool_unseen(unseen);
            *missing += m;
        }
        _ => return Err(()),
    }
    Ok(())
}

/// The test behind a feature's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftTest {
    /// Two-sample Kolmogorov–Smirnov; the score is its p-value.
    Ks,
    /// Chi-square goodness of fit against the reference's shares; the score is its p-value.
    ChiSquare,
    /// Two-proportion z-test; the score is its p-value.
    ZTest,
    /// Wasserstein-1 distance over the reference's standard deviation.
    Wasserstein,
    /// Jensen–Shannon distance (natural log).
    JensenShannon,
}

impl DriftTest {
    /// Whether the score is a p-value (drift below the threshold) rather than a distance (drift
    /// at or above it).
    pub fn is_p_value(self) -> bool {
        matches!(self, Self::Ks | Self::ChiSquare | Self::ZTest)
    }
}

/// PSI bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// Below 0.1.
    Stable,
    /// 0.1 to 0.2.
    Warning,
    /// 0.2 or more.
    Alert,
}

impl PsiBand {
    fn of(psi: f64) -> Self {
        if psi >= 0.2 {
            Self::Alert
        } else if psi >= 0.1 {
            Self::Warning
        } else {
            Self::Stable
        }
    }
}

/// One feature's reference and window distributions over the same bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Column (`prediction` for the model's outputs).
    pub feature: String,
    /// Bar labels (value ranges or categories).
    pub labels: Vec<String>,
    /// The reference's share of its present values per bar.
    pub reference: Vec<f64>,
    /// The window's share of its present values per bar.
    pub current: Vec<f64>,
}

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .collect()
}

fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

fn histogram(reference: &FeatureReference, current: &FeatureSketch) -> Histogram {
    let (mut labels, mut ref_counts, mut cur_counts) = (Vec::new(), Vec::new(), Vec::new());
    match (&reference.shape, current) {
        (
            Shape::Continuous { edges, counts, .. },
            FeatureSketch::Continuous { counts: cur, .. },
        ) => {
            let n_ref: u64 = counts.iter().sum();
            labels.push(format!("< {}", short(edges[0])));
            ref_counts.push(0);
            cur_counts.push(cur[0]);
            let (mut seen, mut open, mut start) = (0u64, (0u64, 0u64), 0usize);
            for (k, &c) in counts.iter().enumerate() {
                open.0 += c;
                open.1 += cur[k + 1];
                seen += c;
                let boundary = (labels.len() as u64) * n_ref / PSI_GROUPS as u64;
                if seen >= boundary || k + 1 == counts.len() {
                    labels.push(format!("{}–{}", short(edges[start]), short(edges[k + 1])));
                    ref_counts.push(open.0);
                    cur_counts.push(open.1);
                    open = (0, 0);
                    start = k + 1;
                }
            }
            labels.push(format!("> {}", short(edges[edges.len() - 1])));
            ref_counts.push(0);
            cur_counts.push(cur[cur.len() - 1]);
        }
        (
            Shape::Discrete { counts, .. },
            FeatureSketch::Discrete {
                counts: cur,
                unseen,
                ..
            },
        ) => {
            for (value, &c) in counts {
                labels.push(value.clone());
                ref_counts.push(c);
                cur_counts.push(cur.get(value).copied().unwrap_or(0));
            }
            let new: u64 = unseen.values().sum();
            if new > 0 {
                labels.push("(unseen)".into());
                ref_counts.push(0);
                cur_counts.push(new);
            }
        }
        _ => {}
    }
    Histogram {
        feature: reference.name.clone(),
        labels,
        reference: shares(&ref_counts),
        current: shares(&cur_counts),
    }
}

/// One feature's drift and data quality in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Column.
    pub feature: String,
    /// Test chosen by the rule.
    pub test: DriftTest,
    /// Its p-value or distance; `None` when the window has no value of the feature.
    pub score: Option<f64>,
    /// The threshold it is held against.
    pub threshold: f64,
    /// Whether the feature drifted.
    pub drifted: bool,
    /// Population stability index over the reference's deciles (or categories).
    pub psi: Option<f64>,
    /// Its band.
    pub psi_band: Option<PsiBand>,
    /// Reference rows (missing included).
    pub reference_rows: u64,
    /// Window rows (missing included).
    pub current_rows: u64,
    /// Share of the window's rows missing the feature (or not of its type).
    pub missing_share: f64,
    /// The same share in the reference.
    pub reference_missing_share: f64,
    /// Share of the window's values outside the reference's range (numeric columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range_share: Option<f64>,
    /// Share of the window's values the reference never had (categories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_share: Option<f64>,
}

/// The whole window's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    /// Records in the window.
    pub rows: u64,
    /// Per feature, in the reference's order.
    pub features: Vec<FeatureDrift>,
    /// Features that drifted.
    pub drifted_features: usize,
    /// Their share of all features.
    pub drifted_share: f64,
    /// The share at which the data set counts as drifted.
    pub drift_share: f64,
    /// Whether it does.
    pub drifted: bool,
    /// Drift of the model's outputs against its predictions on the training rows (not counted
    /// in the drifted share); absent for models registered before those were profiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<FeatureDrift>,
}

/// The thresholds (Evidently's defaults unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftRule {
    /// p-value below which a test says drift.
    pub p_value: f64,
    /// Distance at or above which a distance says drift.
    pub distance: f64,
    /// Share of drifted features at or above which the data set drifted.
    pub drift_share: f64,
}

impl Default for DriftRule {
    fn default() -> Self {
        Self {
            p_value: 0.05,
            distance: 0.1,
            drift_share: 0.5,
        }
    }
}

impl DriftRule {
    /// Tests every feature of a window against the reference.
    pub fn check(
        &self,
        reference: &Reference,
        window: &WindowSketch,
    ) -> Result<DatasetDrift, MergeError> {
        if window.reference != reference.digest || window.features.len() != reference.features.len()
        {
            return Err(MergeError(
                reference.digest.clone(),
                window.reference.clone(),
            ));
        }
        let features: Vec<FeatureDrift> = reference
            .features
            .iter()
            .zip(&window.features)
            .map(|(r, w)| self.feature(r, w))
            .collect::<Result<_, _>>()
            .map_err(|()| MergeError(reference.digest.clone(), window.reference.clone()))?;
        let drifted_features = features.iter().filter(|f| f.drifted).count();
        let drifted_share = if features.is_empty() {
            0.0
        } else {
            drifted_features as f64 / features.len() as f64
        };
        let prediction = match (&reference.prediction, &window.prediction) {
            (Some(r), Some(w)) => Some(
                self.feature(r, w)
                    .map_err(|()| MergeError(reference.digest.clone(), window.reference.clone()))?,
            ),
            _ => None,
        };
        Ok(DatasetDrift {
            prediction,
            rows: window.rows,
            drifted: !features.is_empty() && drifted_share >= self.drift_share,
            features,
            drifted_features,
            drifted_share,
            drift_share: self.drift_share,
        })
    }

    fn feature(
        &self,
        reference: &FeatureReference,
        window: &FeatureSketch,
    ) -> Result<FeatureDrift, ()> {
        let reference_rows = reference.rows();
        let small = reference_rows <= SMALL_REFERENCE_ROWS;
        let (test, score, psi, missing, present, out_of_range, unseen) =
            match (&reference.shape, window) {
                (
                    Shape::Continuous { edges, counts, std },
                    FeatureSketch::Continuous {
                        counts: current,
                        below_distance,
                        above_distance,
                        missing,
                    },
                ) if current.len() == counts.len() + 2 => {
                    let present: u64 = current.iter().sum();
                    let test = if small {
                        DriftTest::Ks
                    } else {
                        DriftTest::Wasserstein
                    };
                    let score = (present > 0).then(|| match test {
                        DriftTest::Ks => ks_p_value(counts, current),
                        _ => {
                            let w = wasserstein(
                                edges,
                                counts,
                                current,
                                *below_distance,
                                *above_distance,
                            );
                            normalized(w, *std)
                        }
                    });
                    let outside = current[0] + current[current.len() - 1];
                    let psi = (present > 0).then(|| continuous_psi(counts, current));
                    (
                        test,
                        score,
                        psi,
                        *missing,
                        present,
                        Some(share(outside, present)),
                        None,
                    )
                }
                (
                    Shape::Discrete { counts, .. },
                    FeatureSketch::Discrete {
                        counts: seen,
                        unseen: new,
                        missing,
                    },
                ) => {
                    let mut current = seen.clone();
                    current.extend(new.iter().map(|(k, v)| (k.clone(), *v)));
                    let current = &current;
                    let present: u64 = current.values().sum();
                    let test = match (small, counts.len()) {
                        (true, 0..=2) => DriftTest::ZTest,
                        (true, _) => DriftTest::ChiSquare,
                        (false, _) => DriftTest::JensenShannon,
                    };
                    let comparable = present > 0 && counts.values().any(|&c| c > 0);
                    let score = comparable.then(|| match test {
                        DriftTest::ZTest => z_test_p_value(counts, current),
                        DriftTest::ChiSquare => chi_square_p_value(counts, current),
                        _ => jensen_shannon(counts, current),
                    });
                    let unseen: u64 = new.values().sum();
                    let psi = comparable.then(|| discrete_psi(counts, current));
                    (
                        test,
                        score,
                        psi,
                        *missing,
                        present,
                        None,
                        Some(share(unseen, present)),
                    )
                }
                _ => return Err(()),
            };
        let threshold = if test.is_p_value() {
            self.p_value
        } else {
            self.distance
        };
        let drifted = score.is_some_and(|s| {
            if test.is_p_value() {
                s < threshold
            } else {
                s >= threshold
            }
        });
        Ok(FeatureDrift {
            feature: reference.name.clone(),
            test,
            score,
            threshold,
            drifted,
            psi,
            psi_band: psi.map(PsiBand::of),
            reference_rows,
            current_rows: present + missing,
            missing_share: share(missing, present + missing),
            reference_missing_share: share(reference.missing, reference_rows),
            out_of_range_share: out_of_range,
            unseen_share: unseen,
        })
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A distance over the reference's spread; a constant reference makes any move infinite
/// (reported as 1e6).
fn normalized(distance: f64, std: f64) -> f64 {
    if std > 0.0 {
        distance / std
    } else if distance > 0.0 {
        1e6
    } else {
        0.0
    }
}

/// The share of rows below each reference edge, for the reference (`counts`, one per bin) and a
/// window (`[below, bins…, above]`), at edges `0..=m` and past the last one.
fn cdfs_at_edges(counts: &[u64], current: &[u64]) -> Vec<(f64, f64)> {
    let (n_ref, n_cur) = (
        counts.iter().sum::<u64>() as f64,
        current.iter().sum::<u64>() as f64,
    );
    let mut out = Vec::with_capacity(counts.len() + 2);
    let (mut r, mut c) = (0u64, current[0]);
    out.push((0.0, c as f64 / n_cur));
    for k in 0..counts.len() {
        r += counts[k];
        c += current[k + 1];
        out.push((r as f64 / n_ref, c as f64 / n_cur));
    }
    out
}

/// Two-sample KS p-value (asymptotic Kolmogorov distribution, with the small-sample correction
/// of Stephens) from the largest CDF gap at the reference's edges.
fn ks_p_value(counts: &[u64], current: &[u64]) -> f64 {
    let d = cdfs_at_edges(counts, current)
        .iter()
        .map(|(r, c)| (r - c).abs())
        .fold(0.0, f64::max);
    let (n, m) = (
        counts.iter().sum::<u64>() as f64,
        current.iter().sum::<u64>() as f64,
    );
    let en = (n * m / (n + m)).sqrt();
    kolmogorov_q((en + 0.12 + 0.11 / en) * d)
}

/// P(K > λ) of the Kolmogorov distribution.
fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let term = (-2.0 * (j * j) as f64 * lambda * lambda).exp();
        sum += if j % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Wasserstein-1 distance between the reference and a window on the reference's bins (both
/// spread evenly within a bin), plus the exact contribution of the window's rows outside the
/// reference's range.
fn wasserstein(edges: &[f64], counts: &[u64], current: &[u64], below: f64, above: f64) -> f64 {
    let n_cur = current.iter().sum::<u64>() as f64;
    let cdf = cdfs_at_edges(counts, current);
    let mut w = below / n_cur + above / n_cur;
    for k in 0..counts.len() {
        let width = edges[k + 1] - edges[k];
        // Inside the bin both CDFs run linearly from their value at one edge to the other (the
        // window's rows below the range count from the first edge on, those above never).
        let (d0, d1) = (cdf[k].0 - cdf[k].1, cdf[k + 1].0 - cdf[k + 1].1);
        w += width * linear_abs_integral(d0, d1);
    }
    w
}

/// ∫₀¹ |d0 + (d1 − d0) t| dt.
fn linear_abs_integral(d0: f64, d1: f64) -> f64 {
    if d0 * d1 >= 0.0 {
        (d0.abs() + d1.abs()) / 2.0
    } else {
        (d0 * d0 + d1 * d1) / (2.0 * (d0.abs() + d1.abs()))
    }
}

/// PSI of a window over groups of the reference's bins holding about a tenth of its rows each
/// (the window's rows outside the range join the first and last group).
fn continuous_psi(counts: &[u64], current: &[u64]) -> f64 {
    let n_ref: u64 = counts.iter().sum();
    let mut groups: Vec<(u64, u64)> = Vec::new();
    let mut seen = 0u64;
    let mut open = (0u64, current[0]);
    for (k, &c) in counts.iter().enumerate() {
        open.0 += c;
        open.1 += current[k + 1];
        seen += c;
        let boundary = (groups.len() as u64 + 1) * n_ref / PSI_GROUPS as u64;
        if seen >= boundary && k + 1 < counts.len() {
            groups.push(open);
            open = (0, 0);
        }
    }
    open.1 += current[current.len() - 1];
    groups.push(open);
    psi(&groups)
}

fn discrete_psi(counts: &BTreeMap<String, u64>, current: &BTreeMap<String, u64>) -> f64 {
    psi(&pairs(counts, current))
}

/// (reference, window) counts per value of either.
fn pairs(counts: &BTreeMap<String, u64>, current: &BTreeMap<String, u64>) -> Vec<(u64, u64)> {
    let mut keys: Vec<&String> = counts.keys().chain(current.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            (
                counts.get(k).copied().unwrap_or(0),
                current.get(k).copied().unwrap_or(0),
            )
        })
        .collect()
}

fn psi(groups: &[(u64, u64)]) -> f64 {
    let (n_ref, n_cur) = groups
        .iter()
        .fold((0u64, 0u64), |(a, b), (r, c)| (a + r, b + c));
    groups
        .iter()
        .map(|&(r, c)| {
            let p = (r as f64 / n_ref as f64).max(PSI_FLOOR);
            let q = (c as f64 / n_cur as f64).max(PSI_FLOOR);
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Jensen–Shannon distance (square root of the divergence, natural log) over the values of
/// either side.
fn jensen_shannon(counts: &BTreeMap<String, u64>, current: &BTreeMap<String, u64>) -> f64 {
    let groups = pairs(counts, current);
    let (n_ref, n_cur) = groups
        .iter()
        .fold((0u64, 0u64), |(a, b), (r, c)| (a + r, b + c));
    let kl = |p: f64, m: f64| if p > 0.0 { p * (p / m).ln() } else { 0.0 };
    let divergence: f64 = groups
        .iter()
        .map(|&(r, c)| {
            let (p, q) = (r as f64 / n_ref as f64, c as f64 / n_cur as f64);
            let m = (p + q) / 2.0;
            (kl(p, m) + kl(q, m)) / 2.0
        })
        .sum();
    divergence.max(0.0).sqrt()
}

/// Chi-square goodness of fit of the window's counts to the reference's shares; a value the
/// reference never had makes the statistic infinite (p = 0).
fn chi_square_p_value(counts: &BTreeMap<String, u64>, current: &BTreeMap<String, u64>) -> f64 {
    let groups = pairs(counts, current);
    let (n_ref, n_cur) = groups
        .iter()
        .fold((0u64, 0u64), |(a, b), (r, c)| (a + r, b + c));
    let mut statistic = 0.0;
    for &(r, c) in &groups {
        let expected = r as f64 * n_cur as f64 / n_ref as f64;
        if expected == 0.0 {
            if c > 0 {
                return 0.0;
            }
            continue;
        }
        statistic += (c as f64 - expected).powi(2) / expected;
    }
    let df = groups
        .iter()
        .filter(|(r, _)| *r > 0)
        .count()
        .saturating_sub(1);
    if df == 0 {
        return 1.0;
    }
    ChiSquared::new(df as f64).map_or(1.0, |d| d.sf(statistic))
}

/// Two-sided two-proportion z-test on the share of the reference's first value.
fn z_test_p_value(counts: &BTreeMap<String, u64>, current: &BTreeMap<String, u64>) -> f64 {
    let Some(first) = counts.keys().next() else {
        return 1.0;
    };
    let (n1, n2) = (
        counts.values().sum::<u64>() as f64,
        current.values().sum::<u64>() as f64,
    );
    let (x1, x2) = (
        counts[first] as f64,
        current.get(first).copied().unwrap_or(0) as f64,
    );
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 {
        return if (x1 / n1 - x2 / n2).abs() > 0.0 {
            0.0
        } else {
            1.0
        };
    }
    let z = (x1 / n1 - x2 / n2) / se;
    let normal = Normal::standard();
    2.0 * normal.sf(z.abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Value};
    use crate::schema::{ColumnSpec, ColumnType};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::json;

    fn reference_of(columns: &[(&str, bool)], rows: &[Vec<Value>]) -> Reference {
        Reference::from_profiles(&crate::profile::profile(&dataset(columns, rows)))
    }

    fn dataset(columns: &[(&str, bool)], rows: &[Vec<Value>]) -> Dataset {
        Dataset {
            feature_columns: columns
                .iter()
                .map(|(name, numeric)| ColumnSpec {
                    name: (*name).into(),
                    column_type: if *numeric {
                        ColumnType::Float
                    } else {
                        ColumnType::Categorical
                    },
                    role: Default::default(),
                    nullable: true,
                    min: None,
                    max: None,
                    categories: Vec::new(),
                    description: String::new(),
                })
                .collect(),
            rows: rows.to_vec(),
            labels: Vec::new(),
            ids: Vec::new(),
            lines: Vec::new(),
            digest: Default::default(),
            source: "test".into(),
        }
    }

    fn numbers(xs: &[f64]) -> Vec<Vec<Value>> {
        xs.iter().map(|&x| vec![Value::Number(x)]).collect()
    }

    fn window(
        reference: &Reference,
        name: &str,
        values: impl IntoIterator<Item = serde_json::Value>,
    ) -> WindowSketch {
        let mut sketch = reference.sketch();
        for v in values {
            let record = json!({ name: v });
            reference.add(&mut sketch, record.as_object().unwrap());
        }
        sketch
    }

    /// W1 between two samples, exactly (∫ |F − G|).
    fn exact_wasserstein(a: &[f64], b: &[f64]) -> f64 {
        let mut points: Vec<(f64, bool)> = a
            .iter()
            .map(|&x| (x, true))
            .chain(b.iter().map(|&x| (x, false)))
            .collect();
        points.sort_by(|x, y| x.0.total_cmp(&y.0));
        let (mut fa, mut fb, mut w) = (0.0, 0.0, 0.0);
        for pair in points.windows(2) {
            if pair[0].1 {
                fa += 1.0 / a.len() as f64
            } else {
                fb += 1.0 / b.len() as f64
            }
            w += (fa - fb).abs() * (pair[1].0 - pair[0].0);
        }
        w
    }

    fn normal_sample(rng: &mut ChaCha8Rng, n: usize, mean: f64, sd: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.r#gen::<f64>().max(1e-12), rng.r#gen());
                mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect()
    }

    #[test]
    fn the_binned_wasserstein_distance_is_close_to_the_exact_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let reference_rows = normal_sample(&mut rng, 5000, 10.0, 2.0);
        let reference = reference_of(&[("x", true)], &numbers(&reference_rows));
        for (shift, scale) in [(0.0, 1.0), (0.5, 1.0), (2.0, 1.0), (0.0, 1.5), (-6.0, 0.5)] {
            let current: Vec<f64> = normal_sample(&mut rng, 3000, 10.0 + shift, 2.0 * scale);
            let sketch = window(&reference, "x", current.iter().map(|&x| json!(x)));
            let drift = DriftRule::default().check(&reference, &sketch).unwrap();
            let f = &drift.features[0];
            assert_eq!(f.test, DriftTest::Wasserstein);
            let exact = exact_wasserstein(&reference_rows, &current) / 2.0;
            let got = f.score.unwrap();
            assert!(
                (got - exact).abs() < 0.02 + 0.02 * exact,
                "shift {shift} scale {scale}: {got} vs exact {exact}"
            );
            assert_eq!(f.drifted, got >= 0.1);
        }
    }

    #[test]
    fn small_references_use_p_value_tests() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let reference = reference_of(
            &[("x", true)],
            &numbers(&normal_sample(&mut rng, 800, 0.0, 1.0)),
        );
        let same = window(
            &reference,
            "x",
            normal_sample(&mut rng, 800, 0.0, 1.0)
                .into_iter()
                .map(|x| json!(x)),
        );
        let shifted = window(
            &reference,
            "x",
            normal_sample(&mut rng, 800, 0.4, 1.0)
                .into_iter()
                .map(|x| json!(x)),
        );
        let rule = DriftRule::default();
        let a = &rule.check(&reference, &same).unwrap().features[0];
        let b = &rule.check(&reference, &shifted).unwrap().features[0];
        assert_eq!((a.test, b.test), (DriftTest::Ks, DriftTest::Ks));
        assert!(a.score.unwrap() > 0.05 && !a.drifted, "{a:?}");
        assert!(b.score.unwrap() < 1e-6 && b.drifted, "{b:?}");
    }

    #[test]
    fn categories_use_chi_square_or_z_when_small_and_jensen_shannon_when_large() {
        let cats = |n: usize, share_a: f64| -> Vec<Vec<Value>> {
            (0..n)
                .map(|i| {
                    vec![Value::Category(
                        if (i as f64) < share_a * n as f64 {
                            "a"
                        } else {
                            "b"
                        }
                        .into(),
                    )]
                })
                .collect()
        };
        // z-test: 500 of 1000 vs 600 of 1000 → z = −4.4947, p = 6.97e-6.
        let reference = reference_of(&[("c", false)], &cats(1000, 0.5));
        let current = window(
            &reference,
            "c",
            (0..1000).map(|i| json!(if i < 600 { "a" } else { "b" })),
        );
        let f = &DriftRule::default()
            .check(&reference, &current)
            .unwrap()
            .features[0];
        assert_eq!(f.test, DriftTest::ZTest);
        assert!((f.score.unwrap() - 6.97e-6).abs() < 0.05e-6, "{f:?}");
        // Chi-square with three categories: observed 30/30/40 vs expected 1/3 each.
        let three: Vec<Vec<Value>> = (0..300)
            .map(|i| vec![Value::Category(["a", "b", "c"][i % 3].into())])
            .collect();
        let reference = reference_of(&[("c", false)], &three);
        let current = window(
            &reference,
            "c",
            (0..100).map(|i| {
                json!(if i < 30 {
                    "a"
                } else if i < 60 {
                    "b"
                } else {
                    "c"
                })
            }),
        );
        let f = &DriftRule::default()
            .check(&reference, &current)
            .unwrap()
            .features[0];
        assert_eq!(f.test, DriftTest::ChiSquare);
        // statistic = (3.333² + 3.333² + 6.667²)/33.33 = 2.0, df 2 → p = e^{-1} = 0.3679
        assert!((f.score.unwrap() - (-1.0f64).exp()).abs() < 1e-3, "{f:?}");
        // Jensen–Shannon distance for a large reference: shares (0.5, 0.5) vs (0.9, 0.1).
        let reference = reference_of(&[("c", false)], &cats(4000, 0.5));
        let current = window(
            &reference,
            "c",
            (0..1000).map(|i| json!(if i < 900 { "a" } else { "b" })),
        );
        let f = &DriftRule::default()
            .check(&reference, &current)
            .unwrap()
            .features[0];
        assert_eq!(f.test, DriftTest::JensenShannon);
        let m = [0.7f64, 0.3];
        let kl = |p: [f64; 2]| p.iter().zip(&m).map(|(p, m)| p * (p / m).ln()).sum::<f64>();
        let expected = ((kl([0.5, 0.5]) + kl([0.9, 0.1])) / 2.0).sqrt();
        assert!(
            (f.score.unwrap() - expected).abs() < 1e-9 && f.drifted,
            "{f:?}"
        );
    }

    #[test]
    fn histograms_put_reference_deciles_beside_the_window() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let reference = reference_of(
            &[("x", true)],
            &numbers(&normal_sample(&mut rng, 4000, 0.0, 1.0)),
        );
        let shifted = window(
            &reference,
            "x",
            normal_sample(&mut rng, 4000, 1.0, 1.0)
                .into_iter()
                .map(|x| json!(x)),
        );
        let h = &reference.histograms(&shifted)[0];
        assert_eq!(h.labels.len(), 12, "{h:?}");
        assert!(h.labels[0].starts_with("< ") && h.labels[11].starts_with("> "));
        assert_eq!((h.reference[0], h.reference[11]), (0.0, 0.0));
        for bar in &h.reference[1..11] {
            assert!((bar - 0.1).abs() < 0.01, "{h:?}");
        }
        let total: f64 = h.current.iter().sum();
        assert!((total - 1.0).abs() < 1e-9);
        // Shifted up by one standard deviation: the top decile holds far more than a tenth.
        assert!(h.current[10] + h.current[11] > 0.3, "{h:?}");
    }

    #[test]
    fn psi_bands_and_data_quality_are_reported() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let reference = reference_of(
            &[("x", true)],
            &numbers(&normal_sample(&mut rng, 4000, 0.0, 1.0)),
        );
        let same = window(
            &reference,
            "x",
            normal_sample(&mut rng, 4000, 0.0, 1.0)
                .into_iter()
                .map(|x| json!(x)),
        );
        let f = &DriftRule::default()
            .check(&reference, &same)
            .unwrap()
            .features[0];
        assert!(
            f.psi.unwrap() < 0.02 && f.psi_band == Some(PsiBand::Stable),
            "{f:?}"
        );
        // Out of range, missing and unparseable values.
        let values = (0..90)
            .map(|i| json!(i as f64 / 100.0))
            .chain((0..5).map(|_| json!(100.0)))
            .chain([
                json!(null),
                json!("n/a"),
                json!("1.5"),
                json!(-50),
                json!(null),
            ]);
        let odd = window(&reference, "x", values);
        let f = &DriftRule::default()
            .check(&reference, &odd)
            .unwrap()
            .features[0];
        assert_eq!((f.current_rows, f.missing_share), (100, 0.03));
        assert!(
            (f.out_of_range_share.unwrap() - 6.0 / 97.0).abs() < 1e-12,
            "{f:?}"
        );
        assert_eq!(f.psi_band, Some(PsiBand::Alert));
    }

    #[test]
    fn unseen_values_are_bounded_and_counted() {
        let rows: Vec<Vec<Value>> = (0..2000)
            .map(|i| vec![Value::Category(format!("k{}", i % 4))])
            .collect();
        let reference = reference_of(&[("c", false)], &rows);
        let sketch = window(
            &reference,
            "c",
            (0..5000).map(|i| {
                json!(if i % 2 == 0 {
                    "k1".to_string()
                } else {
                    format!("new{i}")
                })
            }),
        );
        let FeatureSketch::Discrete { unseen, .. } = &sketch.features[0] else {
            panic!()
        };
        assert_eq!(unseen.len(), MAX_UNSEEN_VALUES + 1);
        assert_eq!(unseen.values().sum::<u64>(), 2500);
        let f = &DriftRule::default()
            .check(&reference, &sketch)
            .unwrap()
            .features[0];
        assert_eq!(f.unseen_share, Some(0.5));
        assert!(f.drifted);
    }

    #[test]
    fn few_valued_numbers_are_compared_as_values_and_constant_columns_work() {
        let rows = numbers(&(0..3000).map(|i| (i % 3) as f64).collect::<Vec<_>>());
        let reference = reference_of(&[("n", true)], &rows);
        let current = window(&reference, "n", (0..300).map(|i| json!((i % 3) as f64)));
        let f = &DriftRule::default()
            .check(&reference, &current)
            .unwrap()
            .features[0];
        assert_eq!((f.test, f.drifted), (DriftTest::JensenShannon, false));
        assert!(f.score.unwrap() < 1e-9);
        let constant = reference_of(&[("k", true)], &numbers(&[5.0; 50]));
        let current = window(&constant, "k", [json!(5), json!(5.0), json!(6)]);
        let f = &DriftRule::default()
            .check(&constant, &current)
            .unwrap()
            .features[0];
        assert_eq!(f.test, DriftTest::ZTest);
        assert!(f.drifted, "{f:?}");
    }

    #[test]
    fn the_data_set_drifts_by_the_share_of_drifted_features() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let rows: Vec<Vec<Value>> = (0..3000)
            .map(|_| (0..4).map(|_| Value::Number(rng.r#gen::<f64>())).collect())
            .collect();
        let names = ["a", "b", "c", "d"];
        let reference = reference_of(&names.map(|n| (n, true)), &rows);
        let mut sketch = reference.sketch();
        for _ in 0..2000 {
            let record = json!({"a": rng.r#gen::<f64>() + 0.5, "b": rng.r#gen::<f64>(), "c": rng.r#gen::<f64>(), "d": rng.r#gen::<f64>()});
            reference.add(&mut sketch, record.as_object().unwrap());
        }
        let one = DriftRule::default().check(&reference, &sketch).unwrap();
        assert_eq!(
            one.features
                .iter()
                .filter(|f| f.drifted)
                .map(|f| f.feature.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!((one.drifted_share, one.drifted), (0.25, false));
        let strict = DriftRule {
            drift_share: 0.25,
            ..DriftRule::default()
        };
        assert!(strict.check(&reference, &sketch).unwrap().drifted);
    }

    #[test]
    fn predictions_drift_against_the_training_predictions_apart_from_the_inputs() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let inputs = normal_sample(&mut rng, 3000, 0.0, 1.0);
        let trained = normal_sample(&mut rng, 3000, 2.0, 0.5);
        let prediction = crate::profile::profile_values("prediction", &trained);
        let profiles = crate::profile::profile(&dataset(&[("x", true)], &numbers(&inputs)));
        let reference = Reference::new(&profiles, Some(&prediction));
        assert_ne!(
            reference,
            Reference::from_profiles(&profiles),
            "the layout differs"
        );
        let served = |shift: f64, rng: &mut ChaCha8Rng| {
            let mut sketch = reference.sketch();
            for (x, p) in normal_sample(rng, 1000, 0.0, 1.0)
                .into_iter()
                .zip(normal_sample(rng, 1000, 2.0 + shift, 0.5))
            {
                reference.add(&mut sketch, json!({"x": x}).as_object().unwrap());
                reference.add_prediction(&mut sketch, p);
            }
            sketch
        };
        let (mut same, shifted) = (served(0.0, &mut rng), served(0.3, &mut rng));
        let rule = DriftRule::default();
        let a = rule.check(&reference, &same).unwrap();
        let b = rule.check(&reference, &shifted).unwrap();
        assert!(!a.prediction.as_ref().unwrap().drifted && !a.drifted);
        let p = b.prediction.as_ref().unwrap();
        assert!(p.drifted && (p.score.unwrap() - 0.6).abs() < 0.06, "{p:?}");
        assert_eq!(
            (b.drifted_features, b.drifted),
            (0, false),
            "inputs did not move"
        );
        same.merge(&shifted).unwrap();
        assert!(
            same.merge(&Reference::from_profiles(&profiles).sketch())
                .is_err()
        );
    }

    #[test]
    fn sketches_of_another_reference_are_refused() {
        let a = reference_of(
            &[("x", true)],
            &numbers(&(0..100).map(f64::from).collect::<Vec<_>>()),
        );
        let b = reference_of(
            &[("x", true)],
            &numbers(&(0..100).map(|i| f64::from(i) * 2.0).collect::<Vec<_>>()),
        );
        let mut sketch = a.sketch();
        assert!(sketch.merge(&b.sketch()).is_err());
        assert!(DriftRule::default().check(&b, &a.sketch()).is_err());
    }

    use proptest::prelude::*;

    proptest! {
        /// A window's sketch is the merge of its parts' sketches, whatever the split.
        #[test]
        fn merging_sketches_equals_sketching_the_union(
            xs in proptest::collection::vec(prop_oneof![
                (-50.0f64..150.0).prop_map(Some), Just(None)], 0..300),
            cats in proptest::collection::vec(0u8..12, 0..300),
            cut in 0usize..300,
        ) {
            let rows: Vec<Vec<Value>> = (0..400)
                .map(|i| vec![Value::Number(f64::from(i % 100)), Value::Category(format!("c{}", i % 6))])
                .collect();
            let reference = reference_of(&[("x", true), ("c", false)], &rows);
            let records: Vec<serde_json::Value> = xs.iter().zip(cats.iter().cycle())
                .map(|(x, c)| json!({"x": x, "c": format!("c{c}")}))
                .collect();
            let cut = cut.min(records.len());
            let sketch_of = |part: &[serde_json::Value]| {
                let mut s = reference.sketch();
                for r in part { reference.add(&mut s, r.as_object().unwrap()); }
                s
            };
            let whole = sketch_of(&records);
            let mut merged = sketch_of(&records[..cut]);
            merged.merge(&sketch_of(&records[cut..])).unwrap();
            prop_assert_eq!(merged.rows, whole.rows);
            for (m, w) in merged.features.iter().zip(&whole.features) {
                match (m, w) {
                    (FeatureSketch::Continuous { counts: a, below_distance: b1, above_distance: a1, missing: m1 },
                     FeatureSketch::Continuous { counts: b, below_distance: b2, above_distance: a2, missing: m2 }) => {
                        prop_assert_eq!(a, b);
                        prop_assert_eq!(m1, m2);
                        prop_assert!((b1 - b2).abs() < 1e-6 && (a1 - a2).abs() < 1e-6);
                    }
                    _ => prop_assert_eq!(m, w),
                }
            }
        }
    }
}
