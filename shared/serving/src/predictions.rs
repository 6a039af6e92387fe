//! `GET /v1/models/{name}/predictions` (a page of logged predictions) and
//! `GET /v1/models/{name}/predictions/export` (everything the same filter selects, as CSV or JSON
//! lines, streamed): the console's history page and its export, over [`crate::history`]. Admin
//! scope: the logs hold the callers' inputs.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::{ApiError, ErrorBody, QueryParams, count_param, query_params};
use crate::history::{self, Cursor, FieldFilter, Filter, HistoryError, LabelIndex, Walk};

/// Rows a page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 50;
/// Most rows a page may hold.
const MAX_LIMIT: usize = 1000;
/// Records a page request reads at most before it answers with what it found and a cursor.
const MAX_SCAN: u64 = 500_000;
/// The window when `from` is not given: this long before `until`.
const DEFAULT_WINDOW: Duration = Duration::hours(24);
/// Bytes of CSV or JSON lines gathered before a chunk of an export is sent.
const CHUNK: usize = 64 * 1024;
/// Columns of a CSV export before the input fields.
const META: [&str; 9] = [
    "at",
    "request_id",
    "record",
    "model",
    "version",
    "variant",
    "output",
    "latency_us",
    "actual",
];

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::StaleCursor(_) => Self::bad_request("invalid_query", e.to_string()),
            other => Self::unavailable("store_unavailable", "the prediction logs", other),
        }
    }
}

/// A page of logged predictions.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionPage {
    /// Logged predictions, newest first: `at`, `request_id`, `record`, `model`, `version`,
    /// `variant`, `input` (the record as sent), `output`, `latency_us`, and `actual` where
    /// feedback was sent.
    #[schema(value_type = Vec<Object>)]
    pub predictions: Vec<Map<String, Value>>,
    /// Pass as `cursor` for the next page; absent after the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Log records read for this page, selected or not.
    pub scanned: u64,
    /// The window searched.
    pub from: DateTime<Utc>,
    /// End of the window (exclusive).
    pub until: DateTime<Utc>,
}

/// The query parameters both routes take.
#[derive(Debug)]
struct HistoryQuery {
    filter: Filter,
    limit: usize,
    cursor: Option<Cursor>,
    format: Option<String>,
}

fn invalid(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("query parameter {name}: {message}"),
    )
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| invalid(name, format!("'{}' is not a number", trim(text))))
}

/// A finite bound of a field range.
fn bound(name: &str, text: &str) -> Result<f64, ApiError> {
    let x: f64 = number(name, text)?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(invalid(
            name,
            format!("'{}' is not a finite number", trim(text)),
        ))
    }
}

fn time(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.to_utc())
        .map_err(|e| {
            invalid(
                name,
                format!("'{}' is not an RFC 3339 time ({e})", trim(text)),
            )
        })
}

fn trim(text: &str) -> String {
    text.chars().take(60).collect()
}

impl HistoryQuery {
    fn parse(model: &str, query: QueryParams) -> Result<Self, ApiError> {
        let mut q = query_params(query)?;
        // Text parameters left empty count as not given; numbers must be numbers.
        let mut take = |name: &str| q.remove(name);
        let text = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let until = text(take("until")).map_or(Ok(Utc::now()), |t| time("until", &t))?;
        let from = text(take("from")).map_or(Ok(until - DEFAULT_WINDOW), |t| time("from", &t))?;
        if from >= until {
            return Err(invalid("from", "must be before until"));
        }
        let field = text(take("field")).map(|name| FieldFilter {
            name,
            min: None,
            max: None,
            equals: None,
        });
        let (min, max, equals) = (take("min"), take("max"), text(take("equals")));
        let field = match field {
            Some(mut f) => {
                f.min = min.map(|v| bound("min", &v)).transpose()?;
                f.max = max.map(|v| bound("max", &v)).transpose()?;
                f.equals = equals;
                Some(f)
            }
            None if min.is_some() || max.is_some() || equals.is_some() => {
                return Err(invalid(
                    "field",
                    "min, max and equals need the field they apply to",
                ));
            }
            None => None,
        };
        let limit = count_param(
            take("limit").as_deref(),
            "limit",
            1..=MAX_LIMIT,
            DEFAULT_LIMIT,
        )?;
        let parsed = Self {
            filter: Filter {
                model: model.to_string(),
                from,
                until,
                version: take("version")
                    .map(|v| {
                        number::<i64>("version", &v)?
                            .try_into()
                            .ok()
                            .filter(|v| *v >= 1)
                            .ok_or_else(|| invalid("version", "expected a whole number from 1"))
                    })
                    .transpose()?,
                variant: text(take("variant")),
                field,
            },
            limit,
            cursor: text(take("cursor"))
                .map(|c| Cursor::decode(model, &c).map_err(|e| invalid("cursor", e)))
                .transpose()?,
            format: text(take("format")),
        };
        if let Some(unknown) = q.keys().next() {
            return Err(invalid(
                unknown,
                "unknown (use from, until, version, variant, field, min, max, equals, limit, cursor, format)",
            ));
        }
        Ok(parsed)
    }
}

/// The input columns of a served model, in schema order (the CSV export's columns after
/// [`META`]); 404 for a model not served here.
fn input_columns(state: &AppState, model: &str) -> Result<Vec<String>, ApiError> {
    let routes = crate::routes::served_routes(state, model)?;
    let served = routes
        .by_alias
        .values()
        .next()
        .ok_or_else(|| ApiError::internal("split without a model"))?;
    Ok(served
        .manifest
        .schema
        .feature_columns()
        .map(|c| c.name.clone())
        .collect())
}

/// A page of the model's logged predictions, newest first, with feedback labels.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/predictions",
    tag = "admin",
    params(
        ("name" = String, Path, description = "Model name"),
        ("from" = Option<String>, Query, description = "Served at or after (RFC 3339; default 24 h before until)"),
        ("until" = Option<String>, Query, description = "Served before (RFC 3339; default now)"),
        ("version" = Option<i64>, Query, minimum = 1, description = "Only this version"),
        ("variant" = Option<String>, Query, description = "Only this variant (alias)"),
        ("field" = Option<String>, Query, description = "An input field that min, max or equals apply to"),
        ("min" = Option<f64>, Query, description = "The field is at least this"),
        ("max" = Option<f64>, Query, description = "The field is at most this"),
        ("equals" = Option<String>, Query, description = "The field equals this (a category)"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Rows per page, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")
    ),
    responses(
        (status = 200, description = "A page of predictions", body = PredictionPage),
        (status = 400, description = "Invalid query parameter", body = ErrorBody),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 503, description = "The logs cannot be read", body = ErrorBody)
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    input_columns(&state, &name)?;
    let q = HistoryQuery::parse(&name, query)?;
    if let Some(format) = &q.format {
        return Err(invalid(
            "format",
            format!("'{}' applies to /predictions/export only", trim(format)),
        ));
    }
    let store = state.models.registry().store();
    let labels = LabelIndex::read(store, &q.filter).await?;
    let page = history::page(
        store,
        &q.filter,
        &labels,
        q.cursor.as_ref(),
        q.limit,
        MAX_SCAN,
    )
    .await?;
    Ok(Json(PredictionPage {
        predictions: page.rows,
        next_cursor: page.next.map(|c| c.encode()),
        scanned: page.scanned,
        from: q.filter.from,
        until: q.filter.until,
    })
    .into_response())
}

/// Export formats.
#[derive(Clone, Copy)]
enum Format {
    Csv,
    JsonLines,
}

/// Everything the filter selects, in page order, as CSV (`format=csv`, the default: the
/// metadata columns, then one column per input field) or JSON lines (`format=jsonl`, the rows
/// of the page route); streamed.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/predictions/export",
    tag = "admin",
    params(
        ("name" = String, Path, description = "Model name"),
        ("format" = Option<String>, Query, pattern = "^(csv|jsonl|json)?$", description = "csv (default) or jsonl"),
        ("from" = Option<String>, Query, description = "As for /predictions"),
        ("until" = Option<String>, Query, description = "As for /predictions"),
        ("version" = Option<i64>, Query, minimum = 1, description = "As for /predictions"),
        ("variant" = Option<String>, Query, description = "As for /predictions"),
        ("field" = Option<String>, Query, description = "As for /predictions"),
        ("min" = Option<f64>, Query, description = "As for /predictions"),
        ("max" = Option<f64>, Query, description = "As for /predictions"),
        ("equals" = Option<String>, Query, description = "As for /predictions")
    ),
    responses(
        (status = 200, description = "The selected predictions", content(
            (String = "text/csv"),
            (String = "application/x-ndjson")
        )),
        (status = 400, description = "Invalid query parameter", body = ErrorBody),
        (status = 404, description = "Model not served", body = ErrorBody),
        (status = 413, description = "Over what one response can carry (on Lambda, 6 MB)", body = ErrorBody),
        (status = 503, description = "The logs cannot be read", body = ErrorBody)
    )
)]
pub async fn export(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let columns = input_columns(&state, &name)?;
    let q = HistoryQuery::parse(&name, query)?;
    if q.cursor.is_some() {
        return Err(invalid(
            "cursor",
            "an export holds every page: leave it out",
        ));
    }
    let format = match q.format.as_deref().unwrap_or("csv") {
        "csv" => Format::Csv,
        "jsonl" | "json" => Format::JsonLines,
        other => {
            return Err(invalid(
                "format",
                format!("'{}': use csv or jsonl", trim(other)),
            ));
        }
    };
    let store = state.models.registry().store();
    let labels = Arc::new(LabelIndex::read(store, &q.filter).await?);
    let mut walk = Walk::start(store, q.filter, labels).await?;
    let encoder = Encoder { format, columns };
    let body = match state.config.export_max_bytes {
        Some(max) => Body::from(bounded(&mut walk, &encoder, max).await?),
        None => {
            let (sender, receiver) = tokio::sync::mpsc::channel(4);
            tokio::spawn(stream_rows(walk, encoder, sender));
            Body::from_stream(futures_util::stream::unfold(receiver, |mut r| async {
                r.recv().await.map(|chunk| (chunk, r))
            }))
        }
    };
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::JsonLines => ("application/x-ndjson", "jsonl"),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{name}-predictions.{extension}\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Writes rows in an export's format.
struct Encoder {
    format: Format,
    columns: Vec<String>,
}

impl Encoder {
    fn header(&self, out: &mut Vec<u8>) {
        if let Format::Csv = self.format {
            out.extend(csv_line(csv_header(&self.columns)));
        }
    }

    fn rows(&self, rows: &[Map<String, Value>], out: &mut Vec<u8>) {
        for row in rows {
            match self.format {
                Format::Csv => out.extend(csv_line(csv_row(row, &self.columns))),
                Format::JsonLines => {
                    serde_json::to_writer(&mut *out, row).expect("JSON to memory");
                    out.push(b'\n');
                }
            }
        }
    }
}

/// The whole export in memory, refused with 413 past `max` bytes (a buffered response).
async fn bounded(walk: &mut Walk, encoder: &Encoder, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    encoder.header(&mut out);
    while let Some(batch) = walk.next_rows().await {
        encoder.rows(&batch?, &mut out);
        if out.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "export_too_large",
                format!(
                    "the export is over the {max} bytes one response can carry here: narrow the filter (a shorter window, a version, a field range), or query the prediction_logs table in Athena"
                ),
            ));
        }
    }
    Ok(out)
}

/// Writes the walk's rows into the response body in chunks; stops when the client goes away.
async fn stream_rows(
    mut walk: Walk,
    encoder: Encoder,
    sender: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let started = Instant::now();
    let mut buffer = Vec::with_capacity(CHUNK * 2);
    encoder.header(&mut buffer);
    let mut rows = 0u64;
    while let Some(batch) = walk.next_rows().await {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, rows, "prediction export stopped");
                let _ = sender.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        };
        encoder.rows(&batch, &mut buffer);
        rows += batch.len() as u64;
        if buffer.len() >= CHUNK {
            let chunk = Bytes::from(std::mem::replace(
                &mut buffer,
                Vec::with_capacity(CHUNK * 2),
            ));
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
    if !buffer.is_empty() {
        let _ = sender.send(Ok(Bytes::from(buffer))).await;
    }
    tracing::info!(
        rows,
        seconds = started.elapsed().as_secs_f64(),
        "prediction export"
    );
}

/// The CSV header: [`META`], then the input fields (one named like a metadata column is written
/// `input.NAME`).
fn csv_header(columns: &[String]) -> Vec<String> {
    META.iter()
        .map(|m| m.to_string())
        .chain(columns.iter().map(|c| {
            if META.contains(&c.as_str()) {
                format!("input.{c}")
            } else {
                c.clone()
            }
        }))
        .collect()
}

fn csv_row(row: &Map<String, Value>, columns: &[String]) -> Vec<String> {
    let input = row.get("input").and_then(Value::as_object);
    META.iter()
        .map(|m| cell(row.get(*m)))
        .chain(columns.iter().map(|c| cell(input.and_then(|i| i.get(c)))))
        .collect()
}

/// A JSON value as a CSV cell: text as is, numbers and booleans as JSON writes them, missing or
/// null empty.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn csv_line(cells: Vec<String>) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(&cells).expect("CSV to memory");
    writer.into_inner().expect("CSV to memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_rows_quote_text_and_keep_numbers_as_json_writes_them() {
        let columns = vec!["x".to_string(), "c".to_string(), "version".to_string()];
        let header = String::from_utf8(csv_line(csv_header(&columns))).unwrap();
        assert_eq!(
            header,
            "at,request_id,record,model,version,variant,output,latency_us,actual,x,c,input.version\n"
        );
        let row = json!({"at": "2026-12-01T10:00:00Z", "request_id": "r", "record": 1, "model": "m",
            "version": 2, "variant": "champion", "output": 0.1, "latency_us": 7,
            "input": {"x": 1.5, "c": "a,\"b\"", "version": null}});
        let line =
            String::from_utf8(csv_line(csv_row(row.as_object().unwrap(), &columns))).unwrap();
        assert_eq!(
            line,
            "2026-12-01T10:00:00Z,r,1,m,2,champion,0.1,7,,1.5,\"a,\"\"b\"\"\",\n"
        );
    }

    #[test]
    fn queries_name_the_parameter_they_reject() {
        let parse = |pairs: &[(&str, &str)]| {
            let q: std::collections::BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            HistoryQuery::parse("m", Ok(axum::extract::Query(q))).map_err(|e| e.message)
        };
        assert!(parse(&[]).is_ok());
        for (pairs, named) in [
            (vec![("from", "yesterday")], "from"),
            (
                vec![
                    ("from", "2026-12-02T00:00:00Z"),
                    ("until", "2026-12-01T00:00:00Z"),
                ],
                "from",
            ),
            (vec![("min", "3")], "field"),
            (vec![("field", "x"), ("max", "lots")], "max"),
            (vec![("field", "x"), ("min", "NaN")], "min"),
            (vec![("limit", "0")], "limit"),
            (vec![("version", "two")], "version"),
            (vec![("cursor", "api-keys.json~0")], "cursor"),
            (vec![("colour", "red")], "colour"),
        ] {
            let message = parse(&pairs).unwrap_err();
            assert!(
                message.contains(&format!("query parameter {named}")),
                "{message}"
            );
        }
    }
}
