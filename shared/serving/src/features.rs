//! Requests by entity key: for a model trained from feature views, a record may send the views'
//! join keys (and any request-time fields) instead of their features; the missing features are
//! fetched from the online store, one batched read per view for the whole request. Values the
//! record sends itself are kept. An unknown entity, or values past the view's TTL, is a 400 that
//! names the key.

use mlops_domain::online::{OnlineStore, ServingView};
use serde_json::{Map, Value};

use crate::api::{ApiError, FieldProblem};

type Record = Map<String, Value>;

/// Fills the records' missing features of every view from `online`, as of `now` (µs); returns
/// how many (record, view) pairs were fetched.
pub async fn fill(
    online: &dyn OnlineStore,
    views: &[ServingView],
    records: &mut [Record],
    now: i64,
) -> Result<usize, ApiError> {
    let mut fetched = 0;
    let mut problems = Vec::new();
    // Per view, the records that lack some of its features, with their keys.
    let mut wanted: Vec<(&ServingView, Vec<(usize, String)>)> = Vec::new();
    for view in views {
        let need = (0..records.len())
            .filter(|&i| view.features.iter().any(|f| !records[i].contains_key(f)));
        let mut keyed = Vec::new();
        for i in need {
            match view.key_of(&records[i]) {
                Ok(key) => keyed.push((i, key)),
                Err(field) => problems.push(FieldProblem {
                    record: Some(i + 1),
                    field,
                    message: format!(
                        "is required: it is a key of feature view '{}' (send it, or all of the view's features: {})",
                        view.name,
                        view.features.join(", ")
                    ),
                }),
            }
        }
        if !keyed.is_empty() {
            wanted.push((view, keyed));
        }
    }
    // One batched read per view, all views at once.
    let reads = wanted.iter().map(|(view, keyed)| {
        let keys: Vec<String> = keyed.iter().map(|(_, k)| k.clone()).collect();
        async move { online.read(&view.name, &keys).await }
    });
    let results = futures_util::future::join_all(reads).await;
    for ((view, keyed), rows) in wanted.into_iter().zip(results) {
        let rows = rows.map_err(|e| {
            ApiError::unavailable("online_store_unavailable", "the online feature store", e)
        })?;
        for ((i, key), row) in keyed.into_iter().zip(rows) {
            let shown = key.replace('\u{1f}', "|");
            let field = view.join_keys.join("|");
            let Some(row) = row else {
                problems.push(FieldProblem {
                    record: Some(i + 1),
                    field,
                    message: format!("unknown entity '{shown}': feature view '{}' has no values for it in the online store", view.name),
                });
                continue;
            };
            let ttl = view
                .ttl_seconds
                .map(|s| i64::try_from(s).unwrap_or(i64::MAX / 1_000_000) * 1_000_000);
            if let Some(ttl) = ttl
                && now.saturating_sub(row.event_time) > ttl
            {
                problems.push(FieldProblem {
                    record: Some(i + 1),
                    field,
                    message: format!(
                        "entity '{shown}': the latest values of feature view '{}' are from {}, older than its TTL of {} s",
                        view.name,
                        chrono::DateTime::from_timestamp_micros(row.event_time).map_or(row.event_time.to_string(), |t| t.to_rfc3339()),
                        view.ttl_seconds.unwrap_or_default()
                    ),
                });
                continue;
            }
            for f in &view.features {
                if !records[i].contains_key(f) {
                    records[i].insert(f.clone(), row.values.get(f).cloned().unwrap_or(Value::Null));
                }
            }
            fetched += 1;
        }
    }
    if problems.is_empty() {
        Ok(fetched)
    } else {
        problems.sort_by_key(|p| p.record);
        let first = &problems[0];
        let records: std::collections::BTreeSet<_> = problems.iter().map(|p| p.record).collect();
        let message = format!(
            "{} record{} cannot be completed from the online store (first: record {}, '{}' {})",
            records.len(),
            if records.len() == 1 { "" } else { "s" },
            first.record.unwrap_or(1),
            first.field,
            first.message
        );
        let mut e = ApiError::bad_request("unknown_entity", message);
        problems.truncate(crate::routes::MAX_FIELD_PROBLEMS);
        e.fields = problems;
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use mlops_domain::online::{OnlineRow, StoreOnline};

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn view() -> ServingView {
        ServingView {
            name: "billing".into(),
            version: 2,
            join_keys: vec!["customerID".into()],
            features: vec!["tenure".into(), "MonthlyCharges".into()],
            ttl_seconds: Some(3_600),
        }
    }

    async fn online() -> (StoreOnline, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let o = StoreOnline::new(Arc::new(mlops_store::LocalStore::new(dir.path())));
        let row = |key: &str, t: i64| OnlineRow {
            key: key.into(),
            event_time: t,
            values: BTreeMap::from([
                ("tenure".into(), Value::from(12)),
                ("MonthlyCharges".into(), Value::from(70.5)),
            ]),
        };
        o.write(
            "billing",
            vec![
                row("A-1", NOW - 60_000_000),
                row("OLD", NOW - 7_200_000_000),
            ],
        )
        .await
        .unwrap();
        (o, dir)
    }

    fn records(v: Value) -> Vec<Record> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_object().unwrap().clone())
            .collect()
    }

    #[tokio::test]
    async fn keys_are_completed_and_sent_values_kept() {
        let (o, _d) = online().await;
        let mut rs = records(serde_json::json!([
            {"customerID": "A-1", "Contract": "Two year"},
            {"customerID": "A-1", "tenure": 3},
            {"tenure": 1, "MonthlyCharges": 20.0}
        ]));
        assert_eq!(fill(&o, &[view()], &mut rs, NOW).await.unwrap(), 2);
        assert_eq!(rs[0]["tenure"], 12);
        assert_eq!(rs[0]["MonthlyCharges"], 70.5);
        assert_eq!(rs[1]["tenure"], 3, "a value the record sends is kept");
        assert_eq!(rs[2].len(), 2, "a record with every feature needs no key");
    }

    #[tokio::test]
    async fn unknown_stale_and_keyless_records_are_400s_naming_the_key() {
        let (o, _d) = online().await;
        let mut rs = records(
            serde_json::json!([{"customerID": "NOPE"}, {"customerID": "OLD"}, {"Contract": "x"}]),
        );
        let e = fill(&o, &[view()], &mut rs, NOW).await.unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.code, "unknown_entity");
        assert!(
            e.message
                .contains("record 1, 'customerID' unknown entity 'NOPE'"),
            "{}",
            e.message
        );
        assert!(
            e.fields[1].message.contains("older than its TTL of 3600 s"),
            "{:?}",
            e.fields
        );
        assert_eq!(
            (e.fields[2].record, e.fields[2].field.as_str()),
            (Some(3), "customerID")
        );
        assert!(
            e.fields[2].message.contains("is required"),
            "{:?}",
            e.fields[2]
        );
    }
}
