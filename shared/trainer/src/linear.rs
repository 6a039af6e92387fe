//! Ridge regression (closed form) and L2-regularized logistic regression (Newton / IRLS), on
//! standardized features. The model file is a small JSON document.

use mlops_domain::artifact::ModelKind;
use mlops_domain::features::FeatureMatrix;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::{Labelled, Model, TrainError};

/// The link between the linear score and the prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Prediction = score (ridge regression).
    Identity,
    /// Prediction = 1 / (1 + exp(−score)) (logistic regression).
    Logit,
}

/// A fitted linear model (also its file format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    /// Link function.
    pub link: Link,
    /// Intercept.
    pub intercept: f64,
    /// One coefficient per feature.
    pub coefficients: Vec<f64>,
    /// L2 penalty used.
    pub l2: f64,
}

impl LinearModel {
    /// Ridge regression: minimizes ‖y − b − Xw‖² + l2‖w‖² (intercept not penalized).
    pub fn fit_ridge(train: Labelled<'_>, l2: f64) -> Result<Self, TrainError> {
        let w = solve(gram(train.x, None, l2), gradient(train.x, train.y))?;
        Ok(Self::from_solution(Link::Identity, w, l2))
    }

    /// Logistic regression with an L2 penalty, by Newton's method (at most 100 steps).
    pub fn fit_logistic(train: Labelled<'_>, l2: f64) -> Result<Self, TrainError> {
        let p = train.x.cols;
        let mut w = DVector::<f64>::zeros(p + 1);
        for _ in 0..100 {
            let scores = scores(train.x, &w);
            let probs: Vec<f64> = scores.iter().map(|s| sigmoid(*s)).collect();
            let weights: Vec<f64> = probs.iter().map(|q| (q * (1.0 - q)).max(1e-10)).collect();
            // Newton step: (XᵀWX + λI') Δ = Xᵀ(y − p) − λw', W = diag(p(1 − p))
            let residual: Vec<f64> = train.y.iter().zip(&probs).map(|(y, q)| y - q).collect();
            let mut g = gradient(train.x, &residual);
            for j in 1..=p {
                g[j] -= l2 * w[j];
            }
            let step = solve(gram(train.x, Some(&weights), l2), g)?;
            w += &step;
            if step.amax() < 1e-9 {
                break;
            }
        }
        Ok(Self::from_solution(Link::Logit, w, l2))
    }

    fn from_solution(link: Link, w: DVector<f64>, l2: f64) -> Self {
        Self {
            link,
            intercept: w[0],
            coefficients: w.iter().skip(1).copied().collect(),
            l2,
        }
    }

    /// Parses the JSON model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrainError> {
        let m: Self = serde_json::from_slice(bytes).map_err(|e| TrainError::ModelFile {
            kind: ModelKind::Linear,
            message: e.to_string(),
        })?;
        if !m.intercept.is_finite() || m.coefficients.iter().any(|c| !c.is_finite()) {
            return Err(TrainError::ModelFile {
                kind: ModelKind::Linear,
                message: "non-finite coefficient".into(),
            });
        }
        Ok(m)
    }
}

fn sigmoid(s: f64) -> f64 {
    1.0 / (1.0 + (-s).exp())
}

fn scores(x: &FeatureMatrix, w: &DVector<f64>) -> Vec<f64> {
    (0..x.rows)
        .map(|i| {
            w[0] + x
                .row(i)
                .iter()
                .zip(w.iter().skip(1))
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .collect()
}

/// Xᵀr with an intercept column.
fn gradient(x: &FeatureMatrix, r: &[f64]) -> DVector<f64> {
    let mut g = DVector::<f64>::zeros(x.cols + 1);
    for (i, ri) in r.iter().enumerate() {
        g[0] += ri;
        for (j, v) in x.row(i).iter().enumerate() {
            g[j + 1] += v * ri;
        }
    }
    g
}

/// XᵀWX + λI' with an intercept column (W = identity when `weights` is `None`); λ does not
/// touch the intercept.
fn gram(x: &FeatureMatrix, weights: Option<&[f64]>, l2: f64) -> DMatrix<f64> {
    let p = x.cols + 1;
    let mut a = DMatrix::<f64>::zeros(p, p);
    let mut row = vec![0.0; p];
    for i in 0..x.rows {
        row[0] = 1.0;
        row[1..].copy_from_slice(x.row(i));
        let w = weights.map_or(1.0, |w| w[i]);
        for j in 0..p {
            let rj = row[j] * w;
            for k in j..p {
                a[(j, k)] += rj * row[k];
            }
        }
    }
    for j in 0..p {
        for k in 0..j {
            a[(j, k)] = a[(k, j)];
        }
    }
    for j in 1..p {
        a[(j, j)] += l2;
    }
    a
}

fn solve(a: DMatrix<f64>, b: DVector<f64>) -> Result<DVector<f64>, TrainError> {
    // A tiny ridge on the diagonal keeps one-hot collinearity (every block sums to one) solvable.
    let p = a.nrows();
    let a = a + DMatrix::<f64>::identity(p, p) * 1e-9;
    a.cholesky()
        .map(|c| c.solve(&b))
        .ok_or_else(|| TrainError::Linear("the normal equations are not positive definite".into()))
}

impl Model for LinearModel {
    fn kind(&self) -> ModelKind {
        match self.link {
            Link::Identity => ModelKind::Linear,
            Link::Logit => ModelKind::Logistic,
        }
    }

    fn predict(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        if x.cols != self.coefficients.len() {
            return Err(TrainError::Shape {
                expected: self.coefficients.len(),
                found: x.cols,
            });
        }
        Ok((0..x.rows)
            .map(|i| {
                let s = self.intercept
                    + x.row(i)
                        .iter()
                        .zip(&self.coefficients)
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                match self.link {
                    Link::Identity => s,
                    Link::Logit => sigmoid(s),
                }
            })
            .collect())
    }

    fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        Ok(serde_json::to_vec_pretty(self).expect("linear model serializes"))
    }

    fn feature_importance(&self) -> Result<Vec<f64>, TrainError> {
        Ok(self.coefficients.iter().map(|c| c.abs()).collect())
    }

    fn contributions(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
        let mut out = Vec::with_capacity(x.rows * (x.cols + 1));
        for i in 0..x.rows {
            out.extend(x.row(i).iter().zip(&self.coefficients).map(|(a, b)| a * b));
            out.push(self.intercept);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[[f64; 2]]) -> FeatureMatrix {
        FeatureMatrix {
            values: rows.iter().flatten().copied().collect(),
            rows: rows.len(),
            cols: 2,
        }
    }

    #[test]
    fn ridge_recovers_a_plane() {
        let x = matrix(&[[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [2.0, 3.0], [3.0, 1.0]]);
        let y: Vec<f64> = (0..5)
            .map(|i| 1.0 + 2.0 * x.row(i)[0] - 3.0 * x.row(i)[1])
            .collect();
        let m = LinearModel::fit_ridge(Labelled { x: &x, y: &y }, 0.0).unwrap();
        assert!((m.intercept - 1.0).abs() < 1e-6 && (m.coefficients[0] - 2.0).abs() < 1e-6);
        let back = LinearModel::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(back.predict(&x).unwrap(), m.predict(&x).unwrap());
    }

    #[test]
    fn logistic_separates_classes() {
        let x = matrix(&[
            [-2.0, 0.0],
            [-1.0, 0.5],
            [-0.5, 0.1],
            [0.5, 0.0],
            [1.0, 0.3],
            [2.0, 0.2],
            [0.2, 0.9],
            [-0.2, 0.4],
        ]);
        let y = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let m = LinearModel::fit_logistic(Labelled { x: &x, y: &y }, 1.0).unwrap();
        let p = m.predict(&x).unwrap();
        assert!(p[0] < 0.5 && p[5] > 0.5, "{p:?}");
        assert_eq!(m.kind(), ModelKind::Logistic);
    }
}
