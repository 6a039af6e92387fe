//! Paired significance test of two candidates scored on the same cross-validation folds.
//!
//! Fold scores are not independent (the training sets overlap), so the plain paired t-test is
//! over-confident. This is the corrected resampled t-test of Nadeau & Bengio (2003): the variance
//! of the fold differences is inflated by `1/k + n_test/n_train`, which for k-fold CV is
//! `1/k + 1/(k−1)`.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The result of comparing candidate A with candidate B fold by fold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// Folds compared.
    pub folds: usize,
    /// Mean of A − B over the folds.
    pub mean_difference: f64,
    /// Corrected t statistic (0 when every difference is 0).
    pub t: f64,
    /// Two-sided p-value under the null hypothesis of equal expected scores.
    pub p_value: f64,
}

/// Compares `a` and `b` (scores on the same k folds); `None` for fewer than 2 folds or lengths
/// that differ.
pub fn corrected_paired_t_test(a: &[f64], b: &[f64]) -> Option<PairedTest> {
    let k = a.len();
    if k < 2 || b.len() != k {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = d.iter().sum::<f64>() / k as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
    let kf = k as f64;
    let corrected = var * (1.0 / kf + 1.0 / (kf - 1.0));
    let (t, p_value) = if corrected > 0.0 {
        let t = mean / corrected.sqrt();
        let dist = StudentsT::new(0.0, 1.0, kf - 1.0).ok()?;
        (t, (2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0))
    } else if mean == 0.0 {
        (0.0, 1.0)
    } else {
        // Every fold differs by the same amount: no variance, the difference is certain.
        (f64::INFINITY.copysign(mean), 0.0)
    };
    Some(PairedTest {
        folds: k,
        mean_difference: mean,
        t,
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scores_are_not_significant() {
        let a = [0.45, 0.46, 0.44, 0.47, 0.45];
        let t = corrected_paired_t_test(&a, &a).unwrap();
        assert_eq!((t.t, t.p_value, t.mean_difference), (0.0, 1.0, 0.0));
    }

    #[test]
    fn matches_a_hand_computed_value() {
        // d = [0.01, 0.02, 0.03, 0.02, 0.02]: mean 0.02, var 5e-5,
        // corrected var = 5e-5 × (1/5 + 1/4) = 2.25e-5, t = 0.02 / 0.00474342 = 4.2164,
        // two-sided p with 4 df = 0.013517 (2 × scipy.stats.t.sf(4.21637, 4)).
        let a = [0.46, 0.47, 0.48, 0.47, 0.47];
        let b = [0.45, 0.45, 0.45, 0.45, 0.45];
        let t = corrected_paired_t_test(&a, &b).unwrap();
        assert!((t.mean_difference - 0.02).abs() < 1e-12);
        assert!((t.t - 4.2164).abs() < 1e-3, "t = {}", t.t);
        assert!((t.p_value - 0.013517).abs() < 1e-5, "p = {}", t.p_value);
    }

    #[test]
    fn a_constant_difference_is_certain() {
        let t = corrected_paired_t_test(&[1.0, 2.0], &[0.5, 1.5]).unwrap();
        assert_eq!(t.p_value, 0.0);
        assert!(t.t.is_infinite() && t.t > 0.0);
    }

    #[test]
    fn needs_two_paired_folds() {
        assert!(corrected_paired_t_test(&[1.0], &[0.5]).is_none());
        assert!(corrected_paired_t_test(&[1.0, 2.0], &[0.5]).is_none());
    }
}
