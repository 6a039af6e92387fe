//! Prediction history: the logged predictions of a model that a [`Filter`] selects, newest
//! first, each with its feedback label where one was sent. Read a page at a time ([`page`],
//! resumed from a [`Cursor`]) or all at once ([`Walk`], for exports): both walk the same objects
//! in the same order and apply the same filter, so an export holds exactly the rows its pages
//! list.
//!
//! Order: log objects by the second they were written (then key), newest first; within an
//! object, the last line first. Objects are listed per day partition of the window (plus
//! [`predlog::WRITE_LAG`] after it), in both layouts, and read a few at a time ahead of use.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use mlops_domain::feedback;
use mlops_domain::predlog;
use mlops_domain::store::{ObjectStore, StoreError};
use serde_json::{Map, Value};
use tokio::task::{JoinHandle, JoinSet};

/// How far after a window feedback is looked for (labels arriving later are not joined).
pub const LABEL_HORIZON: Duration = Duration::days(7);
/// Log objects fetched ahead of the one being read.
const READ_AHEAD: usize = 8;

/// Which predictions to list.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Model.
    pub model: String,
    /// Served at or after.
    pub from: DateTime<Utc>,
    /// Served before.
    pub until: DateTime<Utc>,
    /// Only this version.
    pub version: Option<u64>,
    /// Only this variant (alias).
    pub variant: Option<String>,
    /// Only records whose input field lies in a range or equals a value.
    pub field: Option<FieldFilter>,
}

/// A condition on one input field.
#[derive(Debug, Clone)]
pub struct FieldFilter {
    /// Field name, as in the input schema.
    pub name: String,
    /// Numeric lower bound (inclusive).
    pub min: Option<f64>,
    /// Numeric upper bound (inclusive).
    pub max: Option<f64>,
    /// Exact value (a category, or a number written as text).
    pub equals: Option<String>,
}

impl FieldFilter {
    fn accepts(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else {
            return false;
        };
        if let Some(expected) = &self.equals {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if &text != expected {
                return false;
            }
        }
        if self.min.is_none() && self.max.is_none() {
            return true;
        }
        value.as_f64().is_some_and(|x| {
            self.min.is_none_or(|min| x >= min) && self.max.is_none_or(|max| x <= max)
        })
    }
}

impl Filter {
    /// Whether a logged record (a parsed log line) is selected.
    pub fn accepts(&self, row: &Map<String, Value>) -> bool {
        let at = row
            .get("at")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc());
        if !at.is_some_and(|t| t >= self.from && t < self.until) {
            return false;
        }
        if self
            .version
            .is_some_and(|v| row.get("version").and_then(Value::as_u64) != Some(v))
        {
            return false;
        }
        if let Some(variant) = &self.variant
            && row.get("variant").and_then(Value::as_str) != Some(variant.as_str())
        {
            return false;
        }
        match &self.field {
            Some(field) => field.accepts(
                row.get("input")
                    .and_then(Value::as_object)
                    .and_then(|input| input.get(&field.name)),
            ),
            None => true,
        }
    }
}

/// Where a page starts: a log object and how many of its lines (newest first) came before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Object key.
    pub key: String,
    /// Lines of it already listed or passed over.
    pub skip: usize,
}

impl Cursor {
    /// The cursor as the opaque text the API hands out.
    pub fn encode(&self) -> String {
        format!("{}~{}", self.key, self.skip)
    }

    /// Reads a cursor handed out for `model`'s history; anything else is refused.
    pub fn decode(model: &str, text: &str) -> Result<Self, String> {
        let bad = || format!("cursor '{}' was not handed out by this API", trim(text));
        let (key, skip) = text.rsplit_once('~').ok_or_else(bad)?;
        let skip = skip.parse().map_err(|_| bad())?;
        let ours = [
            format!("{}/model={model}/", predlog::PREFIX),
            format!("{}/{model}/", predlog::PREFIX),
        ];
        if !ours.iter().any(|p| key.starts_with(p.as_str())) || key.contains("..") {
            return Err(bad());
        }
        Ok(Self {
            key: key.to_string(),
            skip,
        })
    }
}

fn trim(text: &str) -> String {
    text.chars().take(80).collect()
}

/// One page of history.
#[derive(Debug)]
pub struct Page {
    /// Rows, newest first.
    pub rows: Vec<Map<String, Value>>,
    /// Where the next page starts; `None` after the last row.
    pub next: Option<Cursor>,
    /// Log records read for this page (selected or not).
    pub scanned: u64,
}

/// Failures reading history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A log object that is not gzip or plain JSON lines.
    #[error("log object {key}: {message}")]
    Unreadable {
        /// Key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A cursor whose object is no longer in the window (it was deleted, or the filter changed).
    #[error(
        "the cursor points at {0}, which is not in this filter's window: start again without a cursor"
    )]
    StaleCursor(String),
}

/// The labels sent for predictions of a window: (request id, record) → `actual` as sent, the
/// latest observed.
#[derive(Debug, Default)]
pub struct LabelIndex(HashMap<(String, u64), (DateTime<Utc>, Value)>);

impl LabelIndex {
    /// Reads the feedback objects received from the start of the window to
    /// [`LABEL_HORIZON`] after its end (or now, when sooner).
    pub async fn read(store: &Arc<dyn ObjectStore>, filter: &Filter) -> Result<Self, HistoryError> {
        let last = (filter.until + LABEL_HORIZON).min(Utc::now());
        let prefixes = days(filter.from, last)
            .map(|d| format!("{}/model={}/date={d}/", feedback::PREFIX, filter.model))
            .collect();
        let mut keys = list_all(store, prefixes).await?;
        keys.sort();
        let mut index = Self::default();
        let mut reads = ReadAhead::new(store, keys);
        while let Some(read) = reads.next().await {
            let (key, body) = read?;
            let received = predlog::written_at(&key)
                .or_else(|| predlog::partition_hour(&key))
                .unwrap_or(filter.from);
            // The body is decoded already: name it without `.gz`.
            let items = feedback::items(key.trim_end_matches(".gz"), body).map_err(|e| {
                HistoryError::Unreadable {
                    key: key.clone(),
                    message: e.to_string(),
                }
            })?;
            for item in items.into_iter().flatten() {
                index.insert(&item, received);
            }
        }
        Ok(index)
    }

    fn insert(&mut self, item: &Map<String, Value>, received: DateTime<Utc>) {
        let (Some(id), Some(record), Some(actual)) = (
            item.get("request_id").and_then(Value::as_str),
            item.get("record").and_then(Value::as_u64),
            item.get("actual"),
        ) else {
            return;
        };
        let observed = item
            .get("observed_at")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(received, |t| t.to_utc());
        let slot = self
            .0
            .entry((id.to_string(), record))
            .or_insert((observed, actual.clone()));
        if observed >= slot.0 {
            *slot = (observed, actual.clone());
        }
    }

    /// Adds `actual` to a row that has a label.
    fn label(&self, row: &mut Map<String, Value>) {
        let key = (
            row.get("request_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            row.get("record").and_then(Value::as_u64).unwrap_or(1),
        );
        if let Some((_, actual)) = self.0.get(&key) {
            row.insert("actual".into(), actual.clone());
        }
    }

    /// Labels held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no label was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn days(from: DateTime<Utc>, last: DateTime<Utc>) -> impl Iterator<Item = NaiveDate> {
    let end = last.date_naive();
    from.date_naive().iter_days().take_while(move |d| *d <= end)
}

/// Lists prefixes concurrently; the keys of all of them.
async fn list_all(
    store: &Arc<dyn ObjectStore>,
    prefixes: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    let mut tasks = JoinSet::new();
    for prefix in prefixes {
        let store = Arc::clone(store);
        tasks.spawn(async move { store.list(&prefix).await });
    }
    let mut keys = Vec::new();
    while let Some(listed) = tasks.join_next().await {
        keys.extend(listed.map_err(|e| task_failed("list", e))??);
    }
    Ok(keys)
}

fn task_failed(operation: &'static str, e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend {
        operation,
        key: String::new(),
        message: format!("task failed: {e}"),
    }
}

/// A body being read: decoded bytes, or why not.
type Read = JoinHandle<Result<Vec<u8>, HistoryError>>;

/// Object bodies in key order, each fetched up to [`READ_AHEAD`] objects before it is needed;
/// reads still pending when it is dropped are cancelled.
struct ReadAhead {
    store: Arc<dyn ObjectStore>,
    keys: std::vec::IntoIter<String>,
    pending: VecDeque<(String, Read)>,
}

impl ReadAhead {
    fn new(store: &Arc<dyn ObjectStore>, keys: Vec<String>) -> Self {
        Self {
            store: Arc::clone(store),
            keys: keys.into_iter(),
            pending: VecDeque::new(),
        }
    }

    /// The next object's key and decoded body (a missing object reads as empty: it was deleted
    /// after the listing).
    async fn next(&mut self) -> Option<Result<(String, Vec<u8>), HistoryError>> {
        while self.pending.len() < READ_AHEAD {
            let Some(key) = self.keys.next() else { break };
            let (store, k) = (Arc::clone(&self.store), key.clone());
            let read = tokio::spawn(async move {
                let body = store.get(&k).await?.map(|o| o.bytes).unwrap_or_default();
                predlog::decode(&k, body).map_err(|e| HistoryError::Unreadable {
                    key: k.clone(),
                    message: e.to_string(),
                })
            });
            self.pending.push_back((key, read));
        }
        let (key, read) = self.pending.pop_front()?;
        Some(match read.await {
            Ok(body) => body.map(|b| (key, b)),
            Err(e) => Err(task_failed("get", e).into()),
        })
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for (_, read) in &self.pending {
            read.abort();
        }
    }
}

/// The log objects that can hold records of the filter's window, newest first: by the second
/// they were written, then key.
pub async fn objects(
    store: &Arc<dyn ObjectStore>,
    filter: &Filter,
) -> Result<Vec<String>, HistoryError> {
    let listed =
        predlog::objects_for_window(store.as_ref(), &filter.model, filter.from, filter.until)
            .await?;
    let mut keyed: Vec<(DateTime<Utc>, String)> = listed
        .into_iter()
        .filter_map(|key| Some((predlog::written_at(&key)?, key)))
        .collect();
    keyed.sort_unstable_by(|a, b| b.cmp(a));
    Ok(keyed.into_iter().map(|(_, key)| key).collect())
}

/// The lines of an object body, newest (last) first; blank lines left out.
fn lines_newest_first(body: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    lines.reverse();
    lines
}

/// Parses a line and applies the filter; the labelled row when selected.
fn select(line: &[u8], filter: &Filter, labels: &LabelIndex) -> Option<Map<String, Value>> {
    let mut row: Map<String, Value> = serde_json::from_slice(line).ok()?;
    if !filter.accepts(&row) {
        return None;
    }
    labels.label(&mut row);
    Some(row)
}

/// Up to `limit` rows from `cursor` (or the newest), reading at most about `max_scan` records:
/// a filter that selects little returns a short page with a cursor rather than reading a whole
/// large window in one request.
pub async fn page(
    store: &Arc<dyn ObjectStore>,
    filter: &Filter,
    labels: &LabelIndex,
    cursor: Option<&Cursor>,
    limit: usize,
    max_scan: u64,
) -> Result<Page, HistoryError> {
    let mut keys = objects(store, filter).await?;
    let mut skip = 0;
    if let Some(c) = cursor {
        let at = keys
            .iter()
            .position(|k| *k == c.key)
            .ok_or_else(|| HistoryError::StaleCursor(c.key.clone()))?;
        keys.drain(..at);
        skip = c.skip;
    }
    let mut page = Page {
        rows: Vec::with_capacity(limit.min(1024)),
        next: None,
        scanned: 0,
    };
    let mut reads = ReadAhead::new(store, keys);
    while let Some(read) = reads.next().await {
        let (key, body) = read?;
        for (i, line) in lines_newest_first(&body).into_iter().enumerate().skip(skip) {
            if page.rows.len() >= limit || page.scanned >= max_scan {
                page.next = Some(Cursor { key, skip: i });
                return Ok(page);
            }
            page.scanned += 1;
            page.rows.extend(select(line, filter, labels));
        }
        skip = 0;
    }
    Ok(page)
}

/// Every selected row, in page order, one log object at a time (for exports).
pub struct Walk {
    reads: ReadAhead,
    filter: Filter,
    labels: Arc<LabelIndex>,
}

impl Walk {
    /// Lists the filter's objects.
    pub async fn start(
        store: &Arc<dyn ObjectStore>,
        filter: Filter,
        labels: Arc<LabelIndex>,
    ) -> Result<Self, HistoryError> {
        let keys = objects(store, &filter).await?;
        Ok(Self {
            reads: ReadAhead::new(store, keys),
            filter,
            labels,
        })
    }

    /// The selected rows of the next object (often none); `None` after the last object.
    pub async fn next_rows(&mut self) -> Option<Result<Vec<Map<String, Value>>, HistoryError>> {
        let (_, body) = match self.reads.next().await? {
            Ok(read) => read,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(lines_newest_first(&body)
            .into_iter()
            .filter_map(|line| select(line, &self.filter, &self.labels))
            .collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlops_domain::store::PutCondition;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn line(t: &str, id: &str, version: u64, variant: &str, x: f64) -> String {
        json!({"at": t, "request_id": id, "record": 1, "model": "m", "version": version,
               "variant": variant, "input": {"x": x, "c": "<b>"}, "output": x * 2.0, "latency_us": 5})
        .to_string()
    }

    /// Logs 5 objects of 4 records (one every 10 minutes from 10:00), and one label.
    async fn world() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(mlops_store::local::LocalStore::new(dir.path()));
        let start = at("2026-12-01T10:00:00Z");
        for object in 0..5 {
            let mut body = String::new();
            for r in 0..4 {
                let n = object * 4 + r;
                let t = start + Duration::minutes(10 * n as i64);
                let variant = if n % 2 == 0 { "champion" } else { "challenger" };
                body += &line(
                    &t.to_rfc3339(),
                    &format!("req-{n}"),
                    1 + (n % 2) as u64,
                    variant,
                    n as f64,
                );
                body.push('\n');
            }
            let written = start + Duration::minutes(10 * (object * 4 + 3) as i64 + 1);
            let key = predlog::object_key("m", written, &format!("o{object}"));
            store
                .put(&key, predlog::encode(body.as_bytes()), PutCondition::None)
                .await
                .unwrap();
        }
        let label = json!({"request_id": "req-6", "record": 1, "actual": 7.5}).to_string();
        let key = predlog::object_key_under(feedback::PREFIX, "m", at("2026-12-01T13:00:00Z"), "f");
        store
            .put(&key, predlog::encode(label.as_bytes()), PutCondition::None)
            .await
            .unwrap();
        (dir, store)
    }

    fn filter() -> Filter {
        Filter {
            model: "m".into(),
            from: at("2026-12-01T00:00:00Z"),
            until: at("2026-12-02T00:00:00Z"),
            version: None,
            variant: None,
            field: None,
        }
    }

    fn ids(rows: &[Map<String, Value>]) -> Vec<String> {
        rows.iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn pages_walk_newest_first_and_join_labels_and_export_the_same_rows() {
        let (_dir, store) = world().await;
        let f = filter();
        let labels = LabelIndex::read(&store, &f).await.unwrap();
        assert_eq!(labels.len(), 1);
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = page(&store, &f, &labels, cursor.as_ref(), 3, u64::MAX)
                .await
                .unwrap();
            paged.extend(page.rows);
            // The cursor survives the API's text form.
            cursor = page.next.map(|c| Cursor::decode("m", &c.encode()).unwrap());
            if cursor.is_none() {
                break;
            }
        }
        let expected: Vec<String> = (0..20).rev().map(|n| format!("req-{n}")).collect();
        assert_eq!(ids(&paged), expected);
        assert_eq!(paged.iter().filter(|r| r.contains_key("actual")).count(), 1);
        assert_eq!(paged[13]["actual"], json!(7.5));
        let mut exported = Vec::new();
        let mut walk = Walk::start(&store, f, Arc::new(labels)).await.unwrap();
        while let Some(rows) = walk.next_rows().await {
            exported.extend(rows.unwrap());
        }
        assert_eq!(exported, paged);
    }

    #[tokio::test]
    async fn filters_select_by_version_variant_time_and_field() {
        let (_dir, store) = world().await;
        let labels = LabelIndex::default();
        let run = |f: Filter| {
            let store = Arc::clone(&store);
            let labels = &labels;
            async move {
                ids(&page(&store, &f, labels, None, 100, u64::MAX)
                    .await
                    .unwrap()
                    .rows)
            }
        };
        let f = Filter {
            version: Some(2),
            ..filter()
        };
        assert_eq!(run(f).await.len(), 10);
        let f = Filter {
            variant: Some("champion".into()),
            ..filter()
        };
        assert!(
            run(f)
                .await
                .iter()
                .all(|id| id[4..].parse::<u32>().unwrap() % 2 == 0)
        );
        let f = Filter {
            from: at("2026-12-01T10:30:00Z"),
            until: at("2026-12-01T11:00:00Z"),
            ..filter()
        };
        assert_eq!(run(f).await, ["req-5", "req-4", "req-3"]);
        let range = FieldFilter {
            name: "x".into(),
            min: Some(2.0),
            max: Some(4.0),
            equals: None,
        };
        let f = Filter {
            field: Some(range),
            ..filter()
        };
        assert_eq!(run(f).await, ["req-4", "req-3", "req-2"]);
        let category = FieldFilter {
            name: "c".into(),
            min: None,
            max: None,
            equals: Some("<b>".into()),
        };
        let f = Filter {
            field: Some(category),
            ..filter()
        };
        assert_eq!(run(f).await.len(), 20);
        let missing = FieldFilter {
            name: "nope".into(),
            min: None,
            max: None,
            equals: None,
        };
        let f = Filter {
            field: Some(missing),
            ..filter()
        };
        assert!(run(f).await.is_empty());
    }

    #[tokio::test]
    async fn a_page_stops_at_its_scan_budget_with_a_cursor() {
        let (_dir, store) = world().await;
        let f = Filter {
            version: Some(99),
            ..filter()
        };
        let page = page(&store, &f, &LabelIndex::default(), None, 10, 6)
            .await
            .unwrap();
        assert!(page.rows.is_empty());
        assert_eq!(page.scanned, 6);
        assert_eq!(page.next.as_ref().unwrap().skip, 2);
    }

    #[test]
    fn cursors_of_other_models_or_paths_are_refused() {
        let ok = Cursor {
            key: "prediction-logs/model=m/date=2026-12-01/hour=10/x.jsonl.gz".into(),
            skip: 3,
        };
        assert_eq!(Cursor::decode("m", &ok.encode()).unwrap(), ok);
        for bad in [
            "prediction-logs/model=other/date=2026-12-01/hour=10/x.jsonl.gz~1",
            "api-keys.json~0",
            "prediction-logs/model=m/../../api-keys.json~0",
            "prediction-logs/model=m/x~minus",
            "no-separator",
        ] {
            assert!(Cursor::decode("m", bad).is_err(), "{bad}");
        }
    }
}
