//! Request and response bodies of the API, and its error type.

use std::collections::BTreeMap;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

tokio::task_local! {
    /// The id of the request being handled (set by the request-id middleware).
    pub static REQUEST_ID: String;
}

/// The current request id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// One record: raw feature values keyed by column name, as in the model's input schema
/// (`GET /v1/models/{name}`). Numbers for numeric columns, strings for categorical ones, `null`
/// or absent for missing values where the column allows them. Unknown fields are rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(value_type = Object, example = json!({
    "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
    "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY"
}))]
pub struct Record(pub serde_json::Map<String, serde_json::Value>);

/// A predict request: one record, or a list of records (at most the configured limit,
/// 1,000 by default).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictRequest {
    /// One record.
    One(Record),
    /// Several records.
    Many(Vec<Record>),
}

/// One feature's contribution to the margin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Contribution {
    /// Model feature (after the pipeline).
    pub feature: String,
    /// Contribution in margin units (log-odds for classifiers).
    pub contribution: f64,
}

/// Why a prediction is what it is: bias + Σ contributions = margin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExplanationOut {
    /// Raw score before the link function.
    pub margin: f64,
    /// Expected margin over the training data.
    pub bias: f64,
    /// Per-feature contributions (TreeSHAP for trees, exact for linear models).
    pub contributions: Vec<Contribution>,
}

impl ExplanationOut {
    /// The engine's explanation in the API's shape.
    pub fn from_engine(e: mlops_engine::Explanation) -> Self {
        Self {
            margin: e.margin,
            bias: e.bias,
            contributions: e
                .contributions
                .into_iter()
                .map(|(feature, contribution)| Contribution {
                    feature,
                    contribution,
                })
                .collect(),
        }
    }
}

/// A classifier's answer for one record: the class at threshold 0.5 and each class's
/// probability by class name (in name order). The API, `mlops predict` and batch prediction all
/// report classes this way.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassOutcome {
    /// The predicted class name.
    pub label: String,
    /// Probability of each class.
    pub probabilities: BTreeMap<String, f64>,
}

impl ClassOutcome {
    /// The CSV column of each class's probability, in the order [`ClassOutcome::probabilities`]
    /// lists them: `probability_CLASS`.
    pub fn probability_columns(classes: &(String, String)) -> Vec<String> {
        Self::of(0.5, classes)
            .probabilities
            .into_keys()
            .map(|class| format!("probability_{class}"))
            .collect()
    }

    /// From the positive class's probability and the (positive, negative) class names.
    pub fn of(positive_probability: f64, (positive, negative): &(String, String)) -> Self {
        let p = positive_probability;
        Self {
            label: if p >= 0.5 { positive } else { negative }.clone(),
            probabilities: BTreeMap::from([(positive.clone(), p), (negative.clone(), 1.0 - p)]),
        }
    }
}

/// One prediction: the same shape from the API, `mlops predict` and (flattened to CSV columns)
/// batch prediction.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PredictionOut {
    /// 1-based number of the record in the request (or of the data row in a file).
    pub row: usize,
    /// The record's id (the schema's id column), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Predicted value (regression, in the target's units) or probability of the positive class.
    pub prediction: f64,
    /// Class probabilities by class name (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<BTreeMap<String, f64>>,
    /// Predicted class at threshold 0.5 (classification only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Explanation, with `?explain=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplanationOut>,
}

impl PredictionOut {
    /// A prediction for record `row` (1-based); `classes` are the (positive, negative) class
    /// names of a classifier.
    pub fn new(
        row: usize,
        id: Option<String>,
        prediction: f64,
        classes: Option<&(String, String)>,
        explanation: Option<ExplanationOut>,
    ) -> Self {
        let outcome = classes.map(|c| ClassOutcome::of(prediction, c));
        Self {
            row,
            id,
            prediction,
            label: outcome.as_ref().map(|o| o.label.clone()),
            probabilities: outcome.map(|o| o.probabilities),
            explanation,
        }
    }
}

/// Predictions and what served them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PredictResponse {
    /// Model name.
    pub model: String,
    /// Version that served.
    pub version: u64,
    /// Variant (alias) that served.
    pub variant: String,
    /// Request id (also in the `x-request-id` header).
    pub request_id: String,
    /// `regression` or `binary_classification`.
    pub task: String,
    /// One prediction per record, in order.
    pub predictions: Vec<PredictionOut>,
    /// Per column, categories in the schema's list that the model never saw in training
    /// (encoded as all zeros); a category outside the list is a field error instead.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unseen_categories: BTreeMap<String, u64>,
}

/// A problem with one field of one record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldProblem {
    /// 1-based number of the record in the request (1 for a single record), as `row` in
    /// predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
    /// Field name.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Details of an error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code, e.g. `invalid_fields`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// Field problems (for `invalid_fields`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

/// Every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
    /// Request id.
    pub request_id: String,
}

/// An error answered as JSON [`ErrorBody`].
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Code.
    pub code: &'static str,
    /// Message.
    pub message: String,
    /// Field problems.
    pub fields: Vec<FieldProblem>,
}

impl ApiError {
    /// An error without field problems.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// 400 with a message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 for a store that failed: the store's own message (bucket, key, backend error) is
    /// logged, never sent.
    pub fn unavailable(code: &'static str, what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, code, "store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!(
                "{what} cannot be read or written right now; retry later (details in the server log for this request id)"
            ),
        )
    }

    /// 500 (the message is logged, not sent).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log for this request id",
        )
    }
}

/// Query parameters by name, as the console's routes read them; a malformed query string is a
/// JSON 400 like every other error.
pub type QueryParams = Result<
    axum::extract::Query<BTreeMap<String, String>>,
    axum::extract::rejection::QueryRejection,
>;

/// The parameters of a query string, or a 400 naming it.
pub fn query_params(query: QueryParams) -> Result<BTreeMap<String, String>, ApiError> {
    query.map(|q| q.0).map_err(|e| {
        ApiError::bad_request("invalid_query", format!("query string: {}", e.body_text()))
    })
}

/// A whole-number query parameter within `range` (`default` when it is not given), or a 400
/// naming it.
pub fn count_param(
    value: Option<&str>,
    name: &str,
    range: std::ops::RangeInclusive<usize>,
    default: usize,
) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "query parameter {name}: '{}' is not a whole number from {} to {}",
                    text.chars().take(40).collect::<String>(),
                    range.start(),
                    range.end()
                ),
            )
        })
}

impl From<mlops_domain::registry::RegistryError> for ApiError {
    /// Registry failures as API errors: bad names and splits 400, missing things 404, an
    /// unapproved card 409, everything else (the store) 503.
    fn from(e: mlops_domain::registry::RegistryError) -> Self {
        use mlops_domain::registry::RegistryError as R;
        match e {
            R::InvalidName { .. } | R::InvalidTraffic(_) => {
                Self::bad_request("invalid_request", e.to_string())
            }
            R::NotFound(_) => Self::not_found(e.to_string()),
            R::CardNotApproved { .. }
            | R::TrafficNotApproved { .. }
            | R::CardIncomplete { .. }
            | R::NothingToRollBack { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            other => Self::unavailable("registry_unavailable", "the model registry", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code.into(),
                message: self.message,
                fields: self.fields,
            },
            request_id: current_request_id(),
        };
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&body).unwrap_or_default(),
        )
            .into_response()
    }
}

/// Deserializes a whole number written as an integer or as a float without a fraction (`3.0`),
/// as JSON Schema's `integer` allows.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let x = f64::deserialize(deserializer)?;
    if !(x.is_finite() && x.fract() == 0.0 && x >= 0.0 && x <= u64::MAX as f64) {
        return Err(D::Error::custom(format!(
            "expected a whole number, got {x}"
        )));
    }
    T::try_from(x as u64).map_err(|_| D::Error::custom(format!("{x} is out of range")))
}

/// [`whole_number`] for optional fields.
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(Deserialize)]
    struct Wrap<T: TryFrom<u64>>(#[serde(deserialize_with = "whole_number")] T);
    Ok(Option::<Wrap<T>>::deserialize(deserializer)?.map(|w| w.0))
}
