//! Linear and logistic models in the project's JSON format (`link`, `intercept`, `coefficients`).

use serde::Deserialize;

use crate::EngineError;

/// Link of a linear model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Prediction = score.
    Identity,
    /// Prediction = sigmoid(score).
    Logit,
}

/// A linear model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Linear {
    /// Link.
    pub link: Link,
    /// Intercept.
    pub intercept: f64,
    /// One coefficient per feature.
    pub coefficients: Vec<f64>,
}

impl Linear {
    /// Parses and checks the JSON model file.
    pub fn load(bytes: &[u8]) -> Result<Self, EngineError> {
        let m: Linear = serde_json::from_slice(bytes).map_err(|e| EngineError::Parse {
            format: "linear JSON",
            message: e.to_string(),
        })?;
        if !m.intercept.is_finite() || m.coefficients.iter().any(|c| !c.is_finite()) {
            return Err(EngineError::InvalidModel("non-finite coefficient".into()));
        }
        Ok(m)
    }

    /// The linear score.
    pub fn margin(&self, row: &[f64]) -> f64 {
        self.intercept
            + row
                .iter()
                .zip(&self.coefficients)
                .map(|(x, c)| x * c)
                .sum::<f64>()
    }

    /// The prediction for a margin.
    pub fn transform(&self, margin: f64) -> f64 {
        match self.link {
            Link::Identity => margin,
            Link::Logit => 1.0 / (1.0 + (-margin).exp()),
        }
    }

    /// Exact contributions in margin space (features are centred by the pipeline's
    /// standardization): coefficient × value, then the intercept as bias.
    pub fn contributions(&self, row: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = row
            .iter()
            .zip(&self.coefficients)
            .map(|(x, c)| x * c)
            .collect();
        out.push(self.intercept);
        out
    }
}
