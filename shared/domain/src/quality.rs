//! Live model quality from served predictions and their feedback labels, and estimated quality
//! without labels (confidence-based performance estimation, as NannyML's CBPE).
//!
//! Like the drift sketches, a [`QualitySketch`] is mergeable sums and fixed bins, so a month is
//! a merge of its hours: regression keeps the moments of the error; classification keeps
//! per-class histograms of the predicted probability (labelled rows) and a histogram of every
//! prediction (for the estimate). Metrics carry 95 % confidence intervals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schema::Task;

/// Probability bins of the classification histograms (0.5 is a bin edge).
pub const BINS: usize = 1000;
/// Two-sided 95 % normal quantile.
const Z: f64 = 1.959_963_984_540_054;
/// Probabilities are clipped to `[EPS, 1 - EPS]` for the log loss.
const EPS: f64 = 1e-15;

/// A monotone map from the model's probability to the observed rate of the positive class,
/// fitted at training on the test split (isotonic regression, pool-adjacent-violators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Upper end of each block's probabilities, ascending.
    pub upper: Vec<f64>,
    /// The observed positive rate of each block, non-decreasing.
    pub rate: Vec<f64>,
}

impl Calibration {
    /// Fits the map to probabilities and 0/1 labels; `None` without both classes.
    pub fn fit(probabilities: &[f64], labels: &[f64]) -> Option<Self> {
        let mut pairs: Vec<(f64, f64)> = probabilities
            .iter()
            .zip(labels)
            .filter(|(p, _)| p.is_finite())
            .map(|(&p, &y)| (p, y))
            .collect();
        let positives = pairs.iter().filter(|(_, y)| *y > 0.5).count();
        if positives == 0 || positives == pairs.len() {
            return None;
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks of (sum of labels, rows, largest probability), merged while they decrease.
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        for (p, y) in pairs {
            match blocks.last_mut() {
                Some(last) if last.2 == p => {
                    last.0 += y;
                    last.1 += 1.0;
                }
                _ => blocks.push((y, 1.0, p)),
            }
            while blocks.len() > 1 {
                let (b, a) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
                if a.0 / a.1 < b.0 / b.1 {
                    break;
                }
                blocks.pop();
                *blocks.last_mut().expect("two blocks") = (a.0 + b.0, a.1 + b.1, b.2);
            }
        }
        Some(Self {
            upper: blocks.iter().map(|b| b.2).collect(),
            rate: blocks.iter().map(|b| b.0 / b.1).collect(),
        })
    }

    /// The calibrated probability of `p`.
    pub fn apply(&self, p: f64) -> f64 {
        let i = self.upper.partition_point(|&u| u < p);
        self.rate[i.min(self.rate.len() - 1)]
    }
}

/// Sums of one stretch of labelled regression predictions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressionSums {
    /// Labelled rows.
    pub n: u64,
    /// Σ |e|, Σ e², Σ e⁴ of the error e = prediction − actual.
    pub abs: f64,
    /// Σ e².
    pub sq: f64,
    /// Σ e⁴.
    pub sq2: f64,
    /// Σ y and Σ y² of the actual values.
    pub y: f64,
    /// Σ y².
    pub y2: f64,
}

/// One stretch of classification predictions: labelled rows by class, and every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassSketch {
    /// Labelled negatives per probability bin.
    pub negatives: Vec<u64>,
    /// Labelled positives per probability bin.
    pub positives: Vec<u64>,
    /// Σ log loss and Σ (log loss)² of the labelled rows.
    pub log_loss: f64,
    /// Σ (log loss)².
    pub log_loss2: f64,
    /// Every prediction per probability bin (labelled or not).
    pub all: Vec<u64>,
    /// Σ probability per bin of `all` (so the estimate uses each bin's mean, not its centre).
    pub all_p: Vec<f64>,
}

/// The mergeable quality sketch of one version and variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum QualitySketch {
    /// Regression.
    Regression(RegressionSums),
    /// Binary classification.
    BinaryClassification(ClassSketch),
}

fn bin(p: f64) -> usize {
    ((p.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1)
}

impl QualitySketch {
    /// An empty sketch for a task.
    pub fn new(task: Task) -> Self {
        match task {
            Task::Regression => Self::Regression(RegressionSums::default()),
            Task::BinaryClassification => Self::BinaryClassification(ClassSketch {
                negatives: vec![0; BINS],
                positives: vec![0; BINS],
                log_loss: 0.0,
                log_loss2: 0.0,
                all: vec![0; BINS],
                all_p: vec![0.0; BINS],
            }),
        }
    }

    /// Adds a served prediction (a regression value or the positive class's probability) and
    /// its label when there is one.
    pub fn add(&mut self, prediction: f64, actual: Option<f64>) {
        if !prediction.is_finite() {
            return;
        }
        match self {
            Self::Regression(s) => {
                if let Some(y) = actual {
                    let e = prediction - y;
                    s.n += 1;
                    s.abs += e.abs();
                    s.sq += e * e;
                    s.sq2 += e * e * e * e;
                    s.y += y;
                    s.y2 += y * y;
                }
            }
            Self::BinaryClassification(s) => {
                let b = bin(prediction);
                s.all[b] += 1;
                s.all_p[b] += prediction;
                if let Some(y) = actual {
                    let p = prediction.clamp(EPS, 1.0 - EPS);
                    let loss = if y > 0.5 { -p.ln() } else { -(1.0 - p).ln() };
                    s.log_loss += loss;
                    s.log_loss2 += loss * loss;
                    if y > 0.5 {
                        s.positives[b] += 1;
                    } else {
                        s.negatives[b] += 1;
                    }
                }
            }
        }
    }

    /// Adds another stretch of the same task.
    pub fn merge(&mut self, other: &Self) -> Result<(), String> {
        match (self, other) {
            (Self::Regression(a), Self::Regression(b)) => {
                a.n += b.n;
                a.abs += b.abs;
                a.sq += b.sq;
                a.sq2 += b.sq2;
                a.y += b.y;
                a.y2 += b.y2;
            }
            (Self::BinaryClassification(a), Self::BinaryClassification(b)) => {
                let add = |x: &mut [u64], y: &[u64]| x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
                add(&mut a.negatives, &b.negatives);
                add(&mut a.positives, &b.positives);
                add(&mut a.all, &b.all);
                a.all_p.iter_mut().zip(&b.all_p).for_each(|(x, y)| *x += y);
                a.log_loss += b.log_loss;
                a.log_loss2 += b.log_loss2;
            }
            _ => return Err("quality sketches of different tasks".into()),
        }
        Ok(())
    }

    /// Labelled rows.
    pub fn labelled(&self) -> u64 {
        match self {
            Self::Regression(s) => s.n,
            Self::BinaryClassification(s) => s.negatives.iter().chain(&s.positives).sum(),
        }
    }

    /// Mean and variance of the per-row loss the A/B test compares (squared error, log loss).
    pub fn loss_moments(&self) -> Option<(u64, f64, f64)> {
        let (n, sum, sum2) = match self {
            Self::Regression(s) => (s.n, s.sq, s.sq2),
            Self::BinaryClassification(s) => (self.labelled(), s.log_loss, s.log_loss2),
        };
        (n > 1).then(|| {
            let mean = sum / n as f64;
            let var = (sum2 / n as f64 - mean * mean).max(0.0) * n as f64 / (n - 1) as f64;
            (n, mean, var)
        })
    }

    /// The realized metrics of the labelled rows and, for classification, the estimated ones of
    /// every row.
    pub fn report(&self, calibration: Option<&Calibration>) -> LiveQuality {
        let mut metrics = BTreeMap::new();
        let mut estimated = BTreeMap::new();
        let rows;
        match self {
            Self::Regression(s) => {
                rows = s.n;
                if s.n > 1 {
                    let n = s.n as f64;
                    let mae = mean_ci(s.abs, s.sq, n);
                    let mse = mean_ci(s.sq, s.sq2, n);
                    let rmse = mse.map(|x| x.max(0.0).sqrt());
                    metrics.insert("mae".into(), mae);
                    metrics.insert("rmse".into(), rmse);
                    let sst = s.y2 - s.y * s.y / n;
                    if sst > 0.0 {
                        // R² = 1 − MSE / Var(y), with Var(y) taken as known.
                        let r2 = mse.map(|m| 1.0 - m * n / sst);
                        metrics.insert(
                            "r2".into(),
                            Estimate {
                                value: r2.value,
                                low: r2.high,
                                high: r2.low,
                            },
                        );
                    }
                }
            }
            Self::BinaryClassification(s) => {
                rows = s.all.iter().sum();
                let labelled = self.labelled();
                if labelled > 1 {
                    let n = labelled as f64;
                    metrics.insert("log_loss".into(), mean_ci(s.log_loss, s.log_loss2, n));
                    let correct: u64 = s.positives[BINS / 2..].iter().sum::<u64>()
                        + s.negatives[..BINS / 2].iter().sum::<u64>();
                    metrics.insert("accuracy".into(), wilson(correct as f64, n));
                    let pos: Vec<f64> = s.positives.iter().map(|&c| c as f64).collect();
                    let neg: Vec<f64> = s.negatives.iter().map(|&c| c as f64).collect();
                    if let Some(auc) = binned_auc(&pos, &neg) {
                        let p: f64 = pos.iter().sum();
                        metrics.insert("roc_auc".into(), hanley_mcneil(auc, p, n - p));
                    }
                }
                if rows > 0 {
                    let (pos, neg) = expected_classes(s, calibration);
                    if let Some(auc) = binned_auc(&pos, &neg) {
                        estimated.insert("roc_auc".into(), auc);
                    }
                    let correct: f64 =
                        pos[BINS / 2..].iter().sum::<f64>() + neg[..BINS / 2].iter().sum::<f64>();
                    estimated.insert("accuracy".into(), correct / rows as f64);
                }
            }
        }
        LiveQuality {
            rows,
            labelled: self.labelled(),
            metrics,
            estimated,
        }
    }
}

/// Expected positives and negatives per bin: each bin's mean probability, calibrated.
fn expected_classes(s: &ClassSketch, calibration: Option<&Calibration>) -> (Vec<f64>, Vec<f64>) {
    let mut pos = vec![0.0; BINS];
    let mut neg = vec![0.0; BINS];
    for b in 0..BINS {
        if s.all[b] == 0 {
            continue;
        }
        let n = s.all[b] as f64;
        let mean = s.all_p[b] / n;
        let p = calibration.map_or(mean, |c| c.apply(mean));
        pos[b] = n * p;
        neg[b] = n * (1.0 - p);
    }
    (pos, neg)
}

/// ROC AUC from (possibly fractional) class counts per ascending score bin; ties within a bin
/// count one half.
fn binned_auc(pos: &[f64], neg: &[f64]) -> Option<f64> {
    let (p, n): (f64, f64) = (pos.iter().sum(), neg.iter().sum());
    if p <= 0.0 || n <= 0.0 {
        return None;
    }
    let mut below = 0.0; // negatives in lower bins
    let mut wins = 0.0;
    for (&pb, &nb) in pos.iter().zip(neg) {
        wins += pb * (below + 0.5 * nb);
        below += nb;
    }
    Some(wins / (p * n))
}

/// A value with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Point estimate.
    pub value: f64,
    /// Lower end.
    pub low: f64,
    /// Upper end.
    pub high: f64,
}

impl Estimate {
    fn map(self, f: impl Fn(f64) -> f64) -> Self {
        Self {
            value: f(self.value),
            low: f(self.low),
            high: f(self.high),
        }
    }

    /// Whether the interval holds `x`.
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// Mean of a per-row quantity from its sum and sum of squares, normal interval.
fn mean_ci(sum: f64, sum2: f64, n: f64) -> Estimate {
    let mean = sum / n;
    let var = ((sum2 / n - mean * mean) * n / (n - 1.0)).max(0.0);
    let half = Z * (var / n).sqrt();
    Estimate {
        value: mean,
        low: mean - half,
        high: mean + half,
    }
}

/// A proportion with its Wilson score interval.
fn wilson(successes: f64, n: f64) -> Estimate {
    let p = successes / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Estimate {
        value: p,
        low: centre - half,
        high: centre + half,
    }
}

/// AUC with the Hanley–McNeil (1982) standard error.
fn hanley_mcneil(auc: f64, positives: f64, negatives: f64) -> Estimate {
    let q1 = auc / (2.0 - auc);
    let q2 = 2.0 * auc * auc / (1.0 + auc);
    let var = (auc * (1.0 - auc)
        + (positives - 1.0) * (q1 - auc * auc)
        + (negatives - 1.0) * (q2 - auc * auc))
        / (positives * negatives);
    let half = Z * var.max(0.0).sqrt();
    Estimate {
        value: auc,
        low: (auc - half).max(0.0),
        high: (auc + half).min(1.0),
    }
}

/// Live quality of one version and variant over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveQuality {
    /// Predictions in the window (classification), or labelled ones (regression).
    pub rows: u64,
    /// Predictions with a label.
    pub labelled: u64,
    /// Realized metrics on the labelled rows, with 95 % intervals: `rmse`, `mae`, `r2`, or
    /// `roc_auc`, `log_loss`, `accuracy`.
    pub metrics: BTreeMap<String, Estimate>,
    /// Metrics estimated without labels from the calibrated probabilities of every row
    /// (classification): `roc_auc`, `accuracy`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub estimated: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use rand::{Rng, SeedableRng};

    #[test]
    fn realized_metrics_match_the_exact_ones_and_merge() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let y: Vec<f64> = (0..4000).map(|_| rng.gen_range(0.0..5.0)).collect();
        let p: Vec<f64> = y.iter().map(|v| v + rng.gen_range(-0.5..0.7)).collect();
        let mut whole = QualitySketch::new(Task::Regression);
        let (mut a, mut b) = (whole.clone(), whole.clone());
        for (i, (&y, &p)) in y.iter().zip(&p).enumerate() {
            whole.add(p, Some(y));
            if i % 3 == 0 { &mut a } else { &mut b }.add(p, Some(y));
        }
        a.merge(&b).unwrap();
        let (q, merged) = (whole.report(None), a.report(None));
        for (name, exact) in [
            ("rmse", metrics::rmse(&y, &p)),
            ("mae", metrics::mae(&y, &p)),
            ("r2", metrics::r2(&y, &p)),
        ] {
            let e = q.metrics[name];
            assert!((e.value - exact).abs() < 1e-9, "{name}: {e:?} vs {exact}");
            assert!(e.low < e.value && e.value < e.high, "{name}: {e:?}");
            assert!((merged.metrics[name].value - exact).abs() < 1e-9);
        }

        let mut sketch = QualitySketch::new(Task::BinaryClassification);
        let labels: Vec<f64> = (0..4000).map(|_| f64::from(rng.gen_bool(0.3))).collect();
        let probs: Vec<f64> = labels
            .iter()
            .map(|&l| (0.3 + 0.3 * l + rng.gen_range(-0.3..0.3)).clamp(0.0, 1.0))
            .collect();
        for (&l, &p) in labels.iter().zip(&probs) {
            sketch.add(p, Some(l));
        }
        sketch.add(0.9, None);
        let q = sketch.report(None);
        assert_eq!((q.rows, q.labelled), (4001, 4000));
        for (name, exact, tolerance) in [
            ("roc_auc", metrics::roc_auc(&labels, &probs), 2e-3),
            ("log_loss", metrics::log_loss(&labels, &probs), 1e-9),
            ("accuracy", metrics::accuracy(&labels, &probs), 1e-9),
        ] {
            let e = q.metrics[name];
            assert!(
                (e.value - exact).abs() < tolerance,
                "{name}: {e:?} vs {exact}"
            );
            assert!(e.contains(exact) && e.high - e.low < 0.1, "{name}: {e:?}");
        }
        assert!(QualitySketch::new(Task::Regression).merge(&sketch).is_err());
    }

    #[test]
    fn estimated_quality_from_calibrated_probabilities_matches_realized() {
        // Scores whose true positive rate is s²: calibration learns the square.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let draw = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| -> (Vec<f64>, Vec<f64>) {
            (0..n)
                .map(|_| {
                    let s: f64 = rng.gen_range(0.0..1.0);
                    (s, f64::from(rng.gen_bool(s * s)))
                })
                .unzip()
        };
        let (scores, labels) = draw(&mut rng, 20_000);
        let calibration = Calibration::fit(&scores, &labels).unwrap();
        assert!(calibration.rate.windows(2).all(|w| w[0] <= w[1]));
        assert!((calibration.apply(0.5) - 0.25).abs() < 0.05);
        let (scores, labels) = draw(&mut rng, 20_000);
        let mut sketch = QualitySketch::new(Task::BinaryClassification);
        for (&s, &l) in scores.iter().zip(&labels) {
            sketch.add(s, Some(l));
        }
        let q = sketch.report(Some(&calibration));
        let realized = q.metrics["roc_auc"].value;
        assert!((q.estimated["roc_auc"] - realized).abs() < 0.01, "{q:?}");
        assert!(
            (q.estimated["accuracy"] - q.metrics["accuracy"].value).abs() < 0.01,
            "{q:?}"
        );
        // Uncalibrated, the estimate is off: the calibration is what makes it right.
        let raw = sketch.report(None);
        assert!(
            (raw.estimated["roc_auc"] - realized).abs() > 0.03,
            "{raw:?}"
        );
        assert!(Calibration::fit(&[0.1, 0.2], &[1.0, 1.0]).is_none());
    }
}
