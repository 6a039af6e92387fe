//! `GET /v1/models/{name}/monitoring`: the monitor's reports for the console's monitoring page —
//! the latest whole (per-feature drift with reference and current histograms, live quality,
//! alerts) and a summary of each earlier window (records, labels, drift, quality, alerts) for
//! charts over time. Read from where `mlops monitor` writes them
//! (`monitoring/MODEL/reports/FROM-UNTIL.json`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody, QueryParams, count_param, query_params};

/// Windows summarized unless `reports` says otherwise.
const DEFAULT_REPORTS: usize = 48;
/// Most windows summarized.
const MAX_REPORTS: usize = 500;

/// The monitor's view of a model.
#[derive(Debug, Serialize, ToSchema)]
pub struct Monitoring {
    /// The newest report as written (null before the first monitor run).
    #[schema(value_type = Option<Object>)]
    pub latest: Option<Value>,
    /// Earlier windows, oldest first: `from`, `until`, `records`, `labelled`, `alerts` (their
    /// rules and summaries), and per version `drifted`, `drifted_share`, `drifted_features` and
    /// live `quality`.
    #[schema(value_type = Vec<Object>)]
    pub series: Vec<Value>,
}

/// The monitor's latest report and a summary of recent windows.
#[utoipa::path(get, path = "/v1/models/{name}/monitoring", tag = "admin",
    params(
        ("name" = String, Path, description = "Model name"),
        ("reports" = Option<usize>, Query, minimum = 1, maximum = 500, description = "Windows to summarize, newest (default 48, at most 500)")
    ),
    responses(
        (status = 200, description = "Reports", body = Monitoring),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 503, description = "The store cannot be read", body = ErrorBody)
    ))]
pub async fn monitoring(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: QueryParams,
) -> Result<Json<Monitoring>, ApiError> {
    crate::routes::served_routes(&state, &name)?;
    let query = query_params(query)?;
    let count = count_param(
        query.get("reports").map(String::as_str),
        "reports",
        1..=MAX_REPORTS,
        DEFAULT_REPORTS,
    )?;
    let store = Arc::clone(state.models.registry().store());
    let unavailable = |e| ApiError::unavailable("store_unavailable", "the monitoring reports", e);
    let mut keys: Vec<String> = store
        .list(&format!("monitoring/{name}/reports/"))
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    // Names start with the window's start: sorted, the newest is last.
    keys.sort();
    let keys = keys.split_off(keys.len().saturating_sub(count));
    let mut reads = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        let store = Arc::clone(&store);
        reads.spawn(async move { (i, key.clone(), store.get(&key).await) });
    }
    let mut reports = Vec::new();
    while let Some(read) = reads.join_next().await {
        let (i, key, got) = read.map_err(ApiError::internal)?;
        // A report deleted since the listing is left out; one that does not parse is logged.
        if let Some(obj) = got.map_err(unavailable)? {
            match serde_json::from_slice::<Value>(&obj.bytes) {
                Ok(report) => reports.push((i, report)),
                Err(e) => tracing::warn!(%key, error = %e, "monitoring report skipped"),
            }
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    let series = reports.iter().map(|(_, r)| summary(r)).collect();
    Ok(Json(Monitoring {
        latest: reports.pop().map(|(_, r)| r),
        series,
    }))
}

/// A report without its histograms and per-feature detail.
fn summary(report: &Value) -> Value {
    let pick = |from: &Value, keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| from.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    };
    let mut out = pick(report, &["from", "until", "records", "labelled"]);
    let alerts: Vec<Value> = report
        .get("alerts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|a| Value::Object(pick(a, &["rule", "version", "summary"])))
        .collect();
    out.insert("alerts".into(), alerts.into());
    let versions: Vec<Value> = report
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| {
            let mut s = pick(v, &["version", "quality"]);
            if let Some(drift) = v.get("drift") {
                s.extend(pick(
                    drift,
                    &["rows", "drifted", "drifted_share", "drifted_features"],
                ));
            }
            Value::Object(s)
        })
        .collect();
    out.insert("versions".into(), versions.into());
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_keeps_the_scores_and_drops_histograms_and_features() {
        let report = json!({"model": "m", "from": "a", "until": "b", "records": 10, "labelled": 2,
            "alerts": [{"id": "x", "rule": "data_drift", "version": 1, "summary": "s", "features": [1, 2]}],
            "versions": [{"version": 1, "histograms": [1, 2, 3], "quality": {"champion": {"rows": 10}},
                "drift": {"rows": 10, "drifted": true, "drifted_share": 0.5, "drifted_features": 1, "features": [1]}}]});
        assert_eq!(
            summary(&report),
            json!({"from": "a", "until": "b", "records": 10, "labelled": 2,
                "alerts": [{"rule": "data_drift", "version": 1, "summary": "s"}],
                "versions": [{"version": 1, "quality": {"champion": {"rows": 10}}, "rows": 10,
                    "drifted": true, "drifted_share": 0.5, "drifted_features": 1}]})
        );
    }
}
