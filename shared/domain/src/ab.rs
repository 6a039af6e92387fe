//! A/B verdicts that stay valid when read every hour: the mixture sequential probability ratio
//! test (mSPRT; Robbins 1970, Johari et al. 2017, "Always valid inference") on the difference of
//! the mean per-row loss of two variants (squared error, or log loss), with a normal mixing
//! distribution N(0, τ²) over the difference.
//!
//! With θ̂ the observed difference and V its variance (σ²_a/n_a + σ²_b/n_b), the mixture
//! likelihood ratio against "no difference" is
//! Λ = √(V / (V + τ²)) · exp(τ² θ̂² / (2 V (V + τ²))).
//! Under no difference, the chance that Λ ever reaches 1/α, however often it is looked at, is at
//! most α; so a verdict is reached the first time it does, and a fixed-horizon p-value read
//! repeatedly (which would be wrong far more often) is never used.

use serde::{Deserialize, Serialize};

/// A challenger variant against the champion over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbVerdict {
    /// The champion variant.
    pub champion: String,
    /// The challenger variant.
    pub challenger: String,
    /// The per-row loss compared (`squared_error`, `log_loss`).
    pub loss: String,
    /// Labelled rows of the champion and the challenger.
    pub rows: (u64, u64),
    /// Mean loss of the champion and the challenger.
    pub mean_loss: (f64, f64),
    /// The verdict.
    pub verdict: Verdict,
}

/// The latest A/B verdicts of a model, as the monitor last computed them; written beside the
/// model's registry records ([`status_key`]) so serving shows them in model information.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbStatus {
    /// Window start (the test's start).
    pub from: chrono::DateTime<chrono::Utc>,
    /// Window end.
    pub until: chrono::DateTime<chrono::Utc>,
    /// Per challenger.
    pub verdicts: Vec<AbVerdict>,
}

/// Where a model's [`AbStatus`] is kept.
pub fn status_key(model: &str) -> String {
    format!("models/{model}/ab.json")
}

/// One variant's labelled rows: count, mean and variance of its per-row loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Labelled rows.
    pub rows: u64,
    /// Mean loss (lower is better).
    pub mean: f64,
    /// Sample variance of the loss.
    pub variance: f64,
}

/// The test's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// Chance of a verdict when the variants are equal.
    pub alpha: f64,
    /// τ, the mixing spread, as a multiple of the loss's standard deviation: the size of
    /// difference the test is most sensitive to.
    pub effect: f64,
    /// Rows each variant needs before any verdict (the normal approximation needs some).
    pub min_rows: u64,
}

impl Default for SequentialTest {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            effect: 0.1,
            min_rows: 100,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The challenger is better: promote it.
    Promote,
    /// The champion is better: keep it.
    Keep,
    /// No verdict yet.
    NeedMoreData,
}

/// The verdict of one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The decision.
    pub decision: Decision,
    /// Challenger's mean loss minus the champion's (negative: the challenger is better).
    pub difference: f64,
    /// Its standard error.
    pub standard_error: f64,
    /// The mixture likelihood ratio Λ (a verdict at 1/α).
    pub likelihood_ratio: f64,
    /// The always-valid p-value of this look, min(1, 1/Λ).
    pub p_value: f64,
    /// With no verdict: about how many more labelled rows each variant needs if the observed
    /// difference holds (`None` when none is observed, or it would need over a billion).
    pub rows_still_needed: Option<u64>,
}

impl SequentialTest {
    /// The verdict on the rows so far.
    pub fn verdict(&self, champion: Arm, challenger: Arm) -> Verdict {
        let difference = challenger.mean - champion.mean;
        let v = variance_of_difference(champion, challenger);
        let tau2 = self.tau2(champion, challenger);
        let ratio = likelihood_ratio(difference, v, tau2);
        let enough = champion.rows >= self.min_rows && challenger.rows >= self.min_rows;
        let decision = if enough && ratio >= 1.0 / self.alpha {
            if difference < 0.0 {
                Decision::Promote
            } else {
                Decision::Keep
            }
        } else {
            Decision::NeedMoreData
        };
        let rows_still_needed = (decision == Decision::NeedMoreData)
            .then(|| self.rows_needed(champion, challenger, difference))
            .flatten();
        Verdict {
            decision,
            difference,
            standard_error: v.sqrt(),
            likelihood_ratio: ratio,
            p_value: (1.0 / ratio).min(1.0),
            rows_still_needed,
        }
    }

    fn tau2(&self, a: Arm, b: Arm) -> f64 {
        let sd = ((a.variance + b.variance) / 2.0).sqrt();
        (self.effect * sd).powi(2).max(f64::MIN_POSITIVE)
    }

    /// More rows per variant until Λ reaches 1/α, if the difference and variances hold.
    fn rows_needed(&self, a: Arm, b: Arm, difference: f64) -> Option<u64> {
        const LIMIT: u64 = 1_000_000_000;
        let tau2 = self.tau2(a, b);
        let now = a.rows.max(b.rows);
        let crosses = |n: u64| {
            let v = a.variance / n as f64 + b.variance / n as f64;
            n >= self.min_rows && likelihood_ratio(difference, v, tau2) >= 1.0 / self.alpha
        };
        if difference == 0.0 || !difference.is_finite() || !crosses(LIMIT) {
            return None;
        }
        let (mut low, mut high) = (now, now.max(1));
        while !crosses(high) {
            low = high;
            high = (high * 2).min(LIMIT);
        }
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if crosses(mid) { high = mid } else { low = mid }
        }
        Some(high.saturating_sub(now))
    }
}

fn variance_of_difference(a: Arm, b: Arm) -> f64 {
    let per = |arm: Arm| arm.variance / (arm.rows.max(1) as f64);
    (per(a) + per(b)).max(f64::MIN_POSITIVE)
}

/// Λ for an observed difference with variance `v` under the N(0, τ²) mixture.
fn likelihood_ratio(difference: f64, v: f64, tau2: f64) -> f64 {
    let log = 0.5 * (v / (v + tau2)).ln() + tau2 * difference * difference / (2.0 * v * (v + tau2));
    log.min(700.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Running sums of one arm's loss.
    #[derive(Default, Clone, Copy)]
    struct Sums(u64, f64, f64);

    impl Sums {
        fn add(&mut self, x: f64) {
            self.0 += 1;
            self.1 += x;
            self.2 += x * x;
        }
        fn arm(self) -> Arm {
            let n = self.0 as f64;
            let mean = self.1 / n;
            Arm {
                rows: self.0,
                mean,
                variance: (self.2 / n - mean * mean) * n / (n - 1.0),
            }
        }
    }

    /// Squared errors of a regression model whose errors are N(0, sd²).
    fn losses(rng: &mut rand_chacha::ChaCha8Rng, sd: f64, n: usize) -> Vec<f64> {
        // Box–Muller.
        (0..n)
            .map(|_| {
                let (u, v): (f64, f64) =
                    (rng.gen_range(f64::EPSILON..1.0), rng.gen_range(0.0..1.0));
                let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
                (sd * z).powi(2)
            })
            .collect()
    }

    /// Looks after every hour of `per_hour` rows per arm, up to `hours`; the first verdict.
    fn run(
        seed: u64,
        champion_sd: f64,
        challenger_sd: f64,
        per_hour: usize,
        hours: usize,
    ) -> (Decision, u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let test = SequentialTest::default();
        let (mut a, mut b) = (Sums::default(), Sums::default());
        for _ in 0..hours {
            losses(&mut rng, champion_sd, per_hour)
                .into_iter()
                .for_each(|x| a.add(x));
            losses(&mut rng, challenger_sd, per_hour)
                .into_iter()
                .for_each(|x| b.add(x));
            let verdict = test.verdict(a.arm(), b.arm());
            if verdict.decision != Decision::NeedMoreData {
                return (verdict.decision, a.0 + b.0);
            }
        }
        (Decision::NeedMoreData, a.0 + b.0)
    }

    #[test]
    fn a_better_challenger_is_promoted_and_equal_ones_rarely() {
        // Challenger's error sd 5 % lower, so its mean squared error is 9.75 % lower; 500
        // labelled rows per variant an hour, looked at every hour.
        let mut rows: Vec<u64> = (0..20)
            .map(|seed| {
                let (decision, rows) = run(seed, 1.0, 0.95, 500, 200);
                assert_eq!(decision, Decision::Promote, "seed {seed} after {rows} rows");
                rows
            })
            .collect();
        rows.sort_unstable();
        let (decision, _) = run(99, 0.95, 1.0, 500, 200);
        assert_eq!(decision, Decision::Keep);
        // A/A: 200 tests of 200 rows per variant an hour, looked at every hour for 48 hours.
        let false_verdicts = (0..200)
            .filter(|&seed| run(1000 + seed, 1.0, 1.0, 200, 48).0 != Decision::NeedMoreData)
            .count();
        eprintln!(
            "A/B, 9.75 % lower MSE: promoted in 20 of 20, rows needed (both variants) min {} median {} max {}; A/A: {false_verdicts} verdicts in 200 tests looked at 48 times",
            rows[0], rows[10], rows[19]
        );
        assert!(
            false_verdicts <= 10,
            "{false_verdicts} of 200 A/A tests reached a verdict"
        );
    }

    #[test]
    fn no_verdict_before_the_minimum_and_rows_needed_shrink_as_evidence_grows() {
        let test = SequentialTest::default();
        let arm = |rows, mean| Arm {
            rows,
            mean,
            variance: 1.0,
        };
        let v = test.verdict(arm(90, 1.0), arm(90, 0.0));
        assert_eq!(v.decision, Decision::NeedMoreData);
        assert!(v.likelihood_ratio > 20.0, "{v:?}");
        assert_eq!(v.rows_still_needed, Some(10));
        let early = test.verdict(arm(200, 1.0), arm(200, 0.95));
        let later = test.verdict(arm(2000, 1.0), arm(2000, 0.95));
        let (e, l) = (
            early.rows_still_needed.unwrap(),
            later.rows_still_needed.unwrap(),
        );
        assert!(e > l && l > 0, "{e} then {l}");
        assert_eq!(
            test.verdict(arm(500, 1.0), arm(500, 1.0)).rows_still_needed,
            None
        );
        assert!(early.p_value <= 1.0 && early.p_value > 0.05);
    }
}
