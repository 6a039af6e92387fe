//! Ground truth: what actually happened to a served prediction, sent later as feedback and
//! joined to the logged prediction by its request id and record number.
//!
//! Feedback objects sit beside the prediction logs in the same Hive layout, by the hour they
//! were received: `feedback/model=MODEL/date=YYYY-MM-DD/hour=HH/HHMMSS-ID.jsonl.gz` (what the
//! feedback route and `mlops feedback import` write). Bulk files may also be dropped into an hour
//! partition as CSV (`request_id,record,actual,observed_at`) or JSON lines, plain or gzip.
//!
//! Sending the same feedback again changes nothing: readers keep one label per (request id,
//! record), the latest observed.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::data::FieldError;
use crate::schema::{Schema, Task};

/// Prefix of every feedback object.
pub const PREFIX: &str = "feedback";
/// Longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// One label for one served record.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The request id of the prediction (its `request_id`, or the `x-request-id` header).
    pub request_id: String,
    /// 1-based number of the record in that request.
    pub record: u32,
    /// `actual` as sent (what is stored, so reading applies the same rules as receiving).
    pub sent: serde_json::Value,
    /// The true value as a training label (the target column's value times the schema's
    /// `target.scale`), or 1 / 0 for the positive / negative class.
    pub actual: f64,
    /// When the outcome was observed.
    pub observed_at: DateTime<Utc>,
}

/// A label as stored: `actual` as it was sent.
#[derive(Serialize)]
struct Stored<'a> {
    request_id: &'a str,
    record: u32,
    actual: &'a serde_json::Value,
    observed_at: DateTime<Utc>,
}

fn problem(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The label of a sent `actual`, as training labels are made: for regression the target
/// column's value as in the data, times the schema's `target.scale`; for classification a class
/// name of the target, `true`/`false`, or `1`/`0`.
pub fn actual_value(schema: &Schema, value: &serde_json::Value) -> Result<f64, String> {
    use serde_json::Value as J;
    match schema.task {
        Task::Regression => match value {
            J::Number(n) => n
                .as_f64()
                .map(|x| x * schema.target.scale)
                .filter(|x| x.is_finite())
                .ok_or_else(|| "must be a finite number".to_string()),
            other => Err(format!(
                "must be a number (the target '{}'), got {}",
                schema.target.column,
                json_kind(other)
            )),
        },
        Task::BinaryClassification => {
            let (positive, negative) = schema.class_names();
            let categories = &schema.target_column().categories;
            match value {
                J::Bool(b) => Ok(f64::from(u8::from(*b))),
                J::Number(n) if n.as_f64() == Some(1.0) => Ok(1.0),
                J::Number(n) if n.as_f64() == Some(0.0) => Ok(0.0),
                J::String(s) if *s == positive => Ok(1.0),
                J::String(s) if *s == negative || categories.contains(s) => Ok(0.0),
                other => Err(format!(
                    "must be a class of '{}' ('{positive}' or '{negative}'), true/false or 1/0, got {}",
                    schema.target.column,
                    truncated(other)
                )),
            }
        }
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "a list",
        J::Object(_) => "an object",
    }
}

fn truncated(v: &serde_json::Value) -> String {
    v.to_string().chars().take(60).collect()
}

/// Whether a request id is one serving could have issued or accepted (printable, no spaces or
/// slashes, at most [`MAX_REQUEST_ID`] characters).
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
}

/// Validates one sent item `{request_id, record?, actual, observed_at?}`; `observed_at`
/// defaults to `now` and may not be more than five minutes after it.
pub fn from_json(
    schema: &Schema,
    item: &serde_json::Map<String, serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<Feedback, Vec<FieldError>> {
    let mut errors = Vec::new();
    for key in item.keys() {
        if !matches!(
            key.as_str(),
            "request_id" | "record" | "actual" | "observed_at"
        ) {
            errors.push(problem(
                key,
                "unknown field (expected request_id, record, actual, observed_at)",
            ));
        }
    }
    let request_id = match item.get("request_id") {
        Some(serde_json::Value::String(s)) if valid_request_id(s) => s.clone(),
        Some(serde_json::Value::String(_)) => {
            errors.push(problem(
                "request_id",
                format!(
                    "must be 1–{MAX_REQUEST_ID} printable characters without spaces or slashes"
                ),
            ));
            String::new()
        }
        Some(other) => {
            errors.push(problem(
                "request_id",
                format!("must be a string, got {}", json_kind(other)),
            ));
            String::new()
        }
        None => {
            errors.push(problem(
                "request_id",
                "is required (the request_id of the prediction)",
            ));
            String::new()
        }
    };
    let record = match item.get("record") {
        None => 1,
        Some(v) => match v.as_u64().filter(|n| (1..=u64::from(u32::MAX)).contains(n)) {
            Some(n) => n as u32,
            None => {
                errors.push(problem(
                    "record",
                    format!(
                        "must be a whole number ≥ 1 (the record's place in the request), got {}",
                        truncated(v)
                    ),
                ));
                1
            }
        },
    };
    let sent = item.get("actual").cloned().unwrap_or_default();
    let actual = match item.get("actual") {
        Some(v) => actual_value(schema, v).unwrap_or_else(|message| {
            errors.push(problem("actual", message));
            f64::NAN
        }),
        None => {
            errors.push(problem("actual", "is required (the true outcome)"));
            f64::NAN
        }
    };
    let observed_at = match item.get("observed_at") {
        None => now,
        Some(serde_json::Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.to_utc() <= now + chrono::Duration::minutes(5) => t.to_utc(),
            Ok(_) => {
                errors.push(problem("observed_at", "is in the future"));
                now
            }
            Err(e) => {
                errors.push(problem(
                    "observed_at",
                    format!("must be an RFC 3339 time such as 2026-12-01T07:00:00Z: {e}"),
                ));
                now
            }
        },
        Some(other) => {
            errors.push(problem(
                "observed_at",
                format!("must be an RFC 3339 string, got {}", json_kind(other)),
            ));
            now
        }
    };
    if errors.is_empty() {
        Ok(Feedback {
            request_id,
            record,
            sent,
            actual,
            observed_at,
        })
    } else {
        Err(errors)
    }
}

/// The JSON lines of validated feedback, as stored (read back with [`read_object`]).
pub fn to_lines(items: &[Feedback]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 96);
    for f in items {
        let stored = Stored {
            request_id: &f.request_id,
            record: f.record,
            actual: &f.sent,
            observed_at: f.observed_at,
        };
        serde_json::to_writer(&mut out, &stored).expect("feedback serializes");
        out.push(b'\n');
    }
    out
}

/// Reads a feedback object (JSON lines as written, or a dropped CSV / JSON-lines file, plain or
/// gzip): the labels and how many rows were unreadable. `received` stands in for a missing
/// `observed_at` in dropped files.
pub fn read_object(
    schema: &Schema,
    key: &str,
    body: Vec<u8>,
    received: DateTime<Utc>,
) -> std::io::Result<(Vec<Feedback>, u64)> {
    let (mut labels, mut unreadable) = (Vec::new(), 0);
    for item in items(key, body)? {
        match item.map(|i| from_json(schema, &i, received)) {
            Some(Ok(f)) => labels.push(f),
            _ => unreadable += 1,
        }
    }
    Ok((labels, unreadable))
}

/// A feedback file's rows (CSV with a header, or JSON lines; `.gz` decompressed) as JSON
/// objects, `None` for a row that is not one.
pub fn items(
    name: &str,
    body: Vec<u8>,
) -> std::io::Result<Vec<Option<serde_json::Map<String, serde_json::Value>>>> {
    let bytes = crate::predlog::decode(name, body)?;
    let mut out = Vec::new();
    if name.trim_end_matches(".gz").ends_with(".csv") {
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let headers = reader.headers()?.clone();
        for row in reader.records() {
            out.push(row.ok().map(|row| csv_item(&headers, &row)));
        }
    } else {
        for line in bytes.split(|&b| b == b'\n') {
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(serde_json::from_slice(line).ok());
            }
        }
    }
    Ok(out)
}

/// A CSV row as the JSON item it stands for (`record` and numeric `actual` as numbers, empty
/// cells left out).
fn csv_item(
    headers: &csv::StringRecord,
    row: &csv::StringRecord,
) -> serde_json::Map<String, serde_json::Value> {
    let mut item = serde_json::Map::new();
    for (name, cell) in headers.iter().zip(row) {
        let cell = cell.trim();
        if cell.is_empty() {
            continue;
        }
        let value = match name {
            "record" | "actual" => serde_json::from_str::<serde_json::Number>(cell)
                .map_or_else(|_| cell.into(), serde_json::Value::Number),
            _ => cell.into(),
        };
        item.insert(name.trim().to_string(), value);
    }
    item
}

/// Labels by (request id, record): one each, the latest observed (ties: the larger value), so
/// duplicates and re-sent feedback count once and the result does not depend on read order.
/// Each remembers when it was first received, so a label counts only within the label delay.
#[derive(Debug, Default)]
pub struct Labels(HashMap<(String, u32), Label>);

#[derive(Debug)]
struct Label {
    observed_at: DateTime<Utc>,
    actual: f64,
    received: DateTime<Utc>,
}

impl Labels {
    /// Adds a label received at `received`.
    pub fn insert(&mut self, f: Feedback, received: DateTime<Utc>) {
        let new = Label {
            observed_at: f.observed_at,
            actual: f.actual,
            received,
        };
        let rank = |l: &Label| (l.observed_at, l.actual.to_bits());
        match self.0.entry((f.request_id, f.record)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(new);
            }
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let old = e.get_mut();
                if rank(&new) > rank(old) {
                    *old = new;
                } else if rank(&new) == rank(old) {
                    old.received = old.received.min(received);
                }
            }
        }
    }

    /// The label of a record, if it was received by `deadline`.
    pub fn get(&self, request_id: &str, record: u32, deadline: DateTime<Utc>) -> Option<f64> {
        self.0
            .get(&(request_id.to_string(), record))
            .filter(|l| l.received <= deadline)
            .map(|l| l.actual)
    }

    /// Labelled records.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(name: &str) -> Schema {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        Schema::from_file(&dir.join(format!("{name}.schema.toml"))).unwrap()
    }

    fn item(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn items_are_validated_field_by_field() {
        let now = Utc::now();
        let housing = schema("california_housing");
        let f = from_json(
            &housing,
            &item(json!({"request_id": "r1", "actual": 250000})),
            now,
        )
        .unwrap();
        assert_eq!((f.record, f.actual, f.observed_at), (1, 2.5, now));
        let errors = from_json(
            &housing,
            &item(json!({"request_id": "a b", "record": 0, "actual": "x", "observed_at": "soon", "extra": 1})),
            now,
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["extra", "request_id", "record", "actual", "observed_at"]
        );
        let future = (now + chrono::Duration::hours(1)).to_rfc3339();
        let errors = from_json(
            &housing,
            &item(json!({"request_id": "r", "actual": 1, "observed_at": future})),
            now,
        )
        .unwrap_err();
        assert_eq!(errors[0].message, "is in the future");

        let churn = schema("telco_churn");
        let (positive, negative) = churn.class_names();
        for (sent, want) in [
            (json!(positive), 1.0),
            (json!(negative), 0.0),
            (json!(true), 1.0),
            (json!(0), 0.0),
        ] {
            let f = from_json(
                &churn,
                &item(json!({"request_id": "r", "actual": sent})),
                now,
            );
            assert_eq!(f.unwrap().actual, want);
        }
        let errors = from_json(
            &churn,
            &item(json!({"request_id": "r", "actual": 0.5})),
            now,
        )
        .unwrap_err();
        assert!(
            errors[0].message.contains(&positive),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn objects_of_every_kind_read_and_duplicates_count_once() {
        let churn = schema("telco_churn");
        let now = Utc::now();
        let (positive, _) = churn.class_names();
        let csv = format!(
            "request_id,record,actual,observed_at\nr1,1,{positive},2026-12-01T00:00:00Z\nr1,2,0,\n,1,1,\n"
        );
        let (labels, bad) = read_object(
            &churn,
            "feedback/model=m/date=2026-12-01/hour=00/drop.csv",
            csv.into_bytes(),
            now,
        )
        .unwrap();
        assert_eq!((labels.len(), bad), (2, 1));
        assert_eq!(labels[1].observed_at, now);
        let body = crate::predlog::encode(&to_lines(&labels));
        let (again, bad) = read_object(&churn, "feedback/x.jsonl.gz", body, now).unwrap();
        assert_eq!((again, bad), (labels.clone(), 0));

        let mut joined = Labels::default();
        let hour = chrono::Duration::hours(1);
        for f in labels.iter().cloned() {
            joined.insert(f, now + hour);
        }
        for f in labels.iter().cloned() {
            joined.insert(f, now);
        }
        let mut later = labels[0].clone();
        later.actual = 0.0;
        later.observed_at = now;
        joined.insert(later, now + hour);
        assert_eq!(joined.len(), 2);
        assert_eq!(joined.get("r1", 1, now + hour), Some(0.0));
        assert_eq!(
            joined.get("r1", 1, now),
            None,
            "received after the deadline"
        );
        assert_eq!(joined.get("r1", 2, now), Some(0.0), "first received counts");
        assert_eq!(joined.get("r2", 1, now), None);
    }
}
