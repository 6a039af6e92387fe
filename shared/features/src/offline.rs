//! The offline store: feature rows as Parquet on the object store, partitioned by event date, one
//! content-hashed snapshot per ingest.
//!
//! Layout under `features/offline/{view}/`:
//! - `parts/{tag}/date=YYYY-MM-DD/part-NNNNN.parquet`: rows of one snapshot and day; `tag` is
//!   derived from the input's SHA-256 and the view version, so a retried ingest rewrites the same
//!   keys with the same bytes;
//! - `snapshots/NNNNNNNN.json`: the commit record of snapshot N (written last, create-only),
//!   listing its parts and their hashes. Readers only see parts of committed snapshots, so a
//!   crashed ingest leaves nothing visible, and its retry converges.
//!
//! The input is also recorded as a data-set manifest (`datasets/{view}/{sha256}/{file}.dvc`), the
//! same lineage record training writes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use mlops_domain::hashing::{ContentDigest, DvcManifest, sha256_hex};
use mlops_domain::store::{ObjectStore, PutCondition, StoreError};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::columns::{FeatureBuilder, Micros, arrow_type, date_of, parse_time, time_type};
use crate::registry::{Registered, ViewDefinition};

/// Rows per Parquet row group and per in-memory buffer of one day.
const ROW_GROUP: usize = 65_536;
/// Most day files open at once during one ingest; the least recently written is finished first.
const OPEN_DAYS: usize = 128;
/// Most rows buffered over all days before every buffer is written out as a row group.
const MAX_BUFFERED: usize = 1 << 20;

/// Offline-store failures.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file failed.
    #[error("{path}: {message}")]
    File {
        /// Path.
        path: String,
        /// What failed.
        message: String,
    },
    /// A row of the input breaks the view's definition.
    #[error("{file} line {line}, column '{column}': {why}")]
    Row {
        /// Input file.
        file: String,
        /// 1-based line (the header is line 1), or the row number for Parquet.
        line: u64,
        /// Column.
        column: String,
        /// What was expected.
        why: String,
    },
    /// The input lacks a column the view needs.
    #[error("{file}: no column '{column}' ({role} of feature view '{view}'); it has: {has}")]
    MissingColumn {
        /// Input file.
        file: String,
        /// Column.
        column: String,
        /// join key, event time or feature.
        role: &'static str,
        /// View.
        view: String,
        /// The file's columns.
        has: String,
    },
    /// A stored part or snapshot that does not decode.
    #[error("offline store object '{key}' is unreadable: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> OfflineError {
    OfflineError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// One part file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Event date (UTC) of every row.
    pub date: NaiveDate,
    /// Store key.
    pub key: String,
    /// Rows.
    pub rows: u64,
    /// SHA-256 of the file.
    pub sha256: String,
}

/// The commit record of one ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Feature view.
    pub view: String,
    /// 1, 2, …: later snapshots win ties on (entity, event time).
    pub seq: u32,
    /// The view version whose columns it holds.
    pub view_version: u32,
    /// The input as given.
    pub source: String,
    /// The input's digest (the snapshot's content hash).
    pub content: ContentDigest,
    /// Rows ingested.
    pub rows: u64,
    /// Earliest and latest event time (µs since the epoch).
    pub event_time_range: Option<(Micros, Micros)>,
    /// When it was committed.
    pub ingested_at: DateTime<Utc>,
    /// Who ingested it.
    pub ingested_by: String,
    /// Its files, by date.
    pub parts: Vec<Part>,
}

/// What an ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct Ingested {
    /// The committed snapshot.
    pub snapshot: Snapshot,
    /// False when the same content was already ingested for this view version.
    pub created: bool,
}

/// The snapshot that already holds this content for this view version, if any.
fn already_ingested(
    existing: &[Snapshot],
    content: &ContentDigest,
    view_version: u32,
) -> Option<Ingested> {
    existing
        .iter()
        .find(|s| s.content.sha256 == content.sha256 && s.view_version == view_version)
        .map(|s| Ingested {
            snapshot: s.clone(),
            created: false,
        })
}

/// The offline store of all views on one object store.
#[derive(Clone)]
pub struct OfflineStore {
    store: Arc<dyn ObjectStore>,
}

fn view_prefix(view: &str) -> String {
    format!("features/offline/{view}")
}

/// The Arrow schema of a view's part files.
pub fn part_schema(def: &ViewDefinition) -> SchemaRef {
    let mut fields: Vec<Field> = def
        .join_keys
        .iter()
        .map(|k| Field::new(k, DataType::Utf8, false))
        .collect();
    fields.push(Field::new(&def.view.event_time, time_type(), false));
    for f in &def.view.features {
        fields.push(Field::new(&f.name, arrow_type(f.dtype), true));
    }
    Arc::new(Schema::new(fields))
}

impl OfflineStore {
    /// The offline store on `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Committed snapshots of a view, oldest first.
    pub async fn snapshots(&self, view: &str) -> Result<Vec<Snapshot>, OfflineError> {
        let prefix = format!("{}/snapshots/", view_prefix(view));
        let mut out = Vec::new();
        for key in self.store.list(&prefix).await? {
            let Some(object) = self.store.get(&key).await? else {
                continue;
            };
            let s: Snapshot =
                serde_json::from_slice(&object.bytes).map_err(|e| OfflineError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            out.push(s);
        }
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// Ingests a local CSV or Parquet file (by extension) into a new snapshot of `view`;
    /// `source` is how the input is named in lineage (its `s3://` URI when it was downloaded).
    pub async fn ingest(
        &self,
        view: &Registered<ViewDefinition>,
        path: &Path,
        source: &str,
        by: &str,
    ) -> Result<Ingested, OfflineError> {
        let name = &view.definition.view.name;
        let content = ContentDigest::of_file(path).map_err(|e| file_error(path, e))?;
        let existing = self.snapshots(name).await?;
        if let Some(done) = already_ingested(&existing, &content, view.version) {
            return Ok(done);
        }
        let tag = &sha256_hex(format!("{}:{}", content.sha256, view.sha256).as_bytes())[..16];
        let scratch =
            tempfile::tempdir().map_err(|e| file_error(Path::new("temporary directory"), e))?;
        let mut writer = DayWriters::new(&view.definition, scratch.path());
        let file = path.display().to_string();
        if is_parquet(path) {
            read_parquet_input(path, &view.definition, &mut writer)?;
        } else {
            read_csv_input(path, &file, &view.definition, &mut writer)?;
        }
        let (rows, range, files) = writer.finish()?;
        let mut parts = Vec::new();
        for (date, n, local, count) in files {
            let bytes = std::fs::read(&local).map_err(|e| file_error(&local, e))?;
            let key = format!(
                "{}/parts/{tag}/date={date}/part-{n:05}.parquet",
                view_prefix(name)
            );
            let sha256 = sha256_hex(&bytes);
            self.store.put(&key, bytes, PutCondition::None).await?;
            parts.push(Part {
                date,
                key,
                rows: count,
                sha256,
            });
        }
        parts.sort_by(|a, b| (a.date, &a.key).cmp(&(b.date, &b.key)));
        let file_name = path
            .file_name()
            .map_or("data".into(), |n| n.to_string_lossy().into_owned());
        DvcManifest::record(self.store.as_ref(), name, &file_name, &content).await?;
        self.commit(view, source, content, rows, range, parts, by, existing)
            .await
    }

    /// Writes the snapshot record under the next free number; a retry after a lost
    /// acknowledgement finds its own record and returns it.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        view: &Registered<ViewDefinition>,
        source: &str,
        content: ContentDigest,
        rows: u64,
        event_time_range: Option<(Micros, Micros)>,
        parts: Vec<Part>,
        by: &str,
        mut existing: Vec<Snapshot>,
    ) -> Result<Ingested, OfflineError> {
        let name = &view.definition.view.name;
        loop {
            if let Some(done) = already_ingested(&existing, &content, view.version) {
                return Ok(done);
            }
            let seq = existing.last().map_or(1, |s| s.seq + 1);
            let snapshot = Snapshot {
                view: name.clone(),
                seq,
                view_version: view.version,
                source: source.into(),
                content: content.clone(),
                rows,
                event_time_range,
                ingested_at: Utc::now(),
                ingested_by: by.into(),
                parts: parts.clone(),
            };
            let key = format!("{}/snapshots/{seq:08}.json", view_prefix(name));
            let bytes = serde_json::to_vec_pretty(&snapshot).expect("snapshots serialize");
            match self.store.put(&key, bytes, PutCondition::IfAbsent).await {
                Ok(_) => {
                    return Ok(Ingested {
                        snapshot,
                        created: true,
                    });
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    existing = self.snapshots(name).await?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads `parts` (one day of a view) on a runtime task: [`OfflineStore::read_part`] of each.
    pub fn read_parts_in_background(
        &self,
        def: &ViewDefinition,
        features: &[String],
        parts: Vec<Part>,
    ) -> tokio::task::JoinHandle<Result<Vec<PartRows>, OfflineError>> {
        let (offline, def, features) = (self.clone(), def.clone(), features.to_vec());
        tokio::spawn(async move {
            let mut decoded = Vec::with_capacity(parts.len());
            for part in &parts {
                decoded.push(offline.read_part(part, &def, &features).await?);
            }
            Ok(decoded)
        })
    }

    /// Reads one part's join keys, event times and the named features (in that order).
    pub async fn read_part(
        &self,
        part: &Part,
        def: &ViewDefinition,
        features: &[String],
    ) -> Result<PartRows, OfflineError> {
        let object = self
            .store
            .get(&part.key)
            .await?
            .ok_or_else(|| OfflineError::Corrupt {
                key: part.key.clone(),
                message: "listed by a committed snapshot but absent".into(),
            })?;
        if sha256_hex(&object.bytes) != part.sha256 {
            return Err(OfflineError::Corrupt {
                key: part.key.clone(),
                message: "content differs from the snapshot's SHA-256".into(),
            });
        }
        decode_part(bytes::Bytes::from(object.bytes), &part.key, def, features)
    }
}

/// Decoded rows of one part: key columns, event times, and feature columns.
pub struct PartRows {
    /// One array per join key.
    pub keys: Vec<StringArray>,
    /// Event times.
    pub times: Vec<Micros>,
    /// One array per requested feature.
    pub features: Vec<ArrayRef>,
}

fn decode_part(
    bytes: bytes::Bytes,
    key: &str,
    def: &ViewDefinition,
    features: &[String],
) -> Result<PartRows, OfflineError> {
    let corrupt = |e: &dyn std::fmt::Display| OfflineError::Corrupt {
        key: key.into(),
        message: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| corrupt(&e))?;
    let schema = builder.schema().clone();
    let mut wanted: Vec<&str> = def.join_keys.iter().map(String::as_str).collect();
    wanted.push(&def.view.event_time);
    wanted.extend(features.iter().map(String::as_str));
    let mut indices = Vec::new();
    for w in &wanted {
        indices.push(schema.index_of(w).map_err(|_| {
            corrupt(&format!(
                "no column '{w}' (ingested under an older view version?)"
            ))
        })?);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(ROW_GROUP)
        .build()
        .map_err(|e| corrupt(&e))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|e| corrupt(&e))?);
    }
    let column = |name: &str| -> Result<ArrayRef, OfflineError> {
        let arrays: Vec<ArrayRef> = batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .cloned()
                    .ok_or_else(|| corrupt(&format!("no column '{name}'")))
            })
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        if refs.is_empty() {
            return Ok(arrow_array::new_empty_array(
                schema
                    .field_with_name(name)
                    .map_err(|e| corrupt(&e))?
                    .data_type(),
            ));
        }
        arrow_select::concat::concat(&refs).map_err(|e| corrupt(&e))
    };
    let mut keys = Vec::new();
    for k in &def.join_keys {
        let a = column(k)?;
        keys.push(
            a.as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| corrupt(&format!("join key '{k}' is not text")))?
                .clone(),
        );
    }
    let t = column(&def.view.event_time)?;
    let times = t
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| corrupt(&"event time is not a µs timestamp"))?
        .values()
        .to_vec();
    let mut out = Vec::new();
    for f in features {
        let a = column(f)?;
        let expected = arrow_type(
            def.view
                .feature(f)
                .expect("requested features are in the view")
                .dtype,
        );
        if a.data_type() != &expected {
            return Err(corrupt(&format!(
                "feature '{f}' is {} where the view says {expected}",
                a.data_type()
            )));
        }
        out.push(a);
    }
    Ok(PartRows {
        keys,
        times,
        features: out,
    })
}

fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Per-day buffers and Parquet writers of one ingest.
struct DayWriters<'a> {
    def: &'a ViewDefinition,
    schema: SchemaRef,
    dir: PathBuf,
    buffers: BTreeMap<NaiveDate, DayBuffer>,
    open: Vec<(NaiveDate, u32, PathBuf, ArrowWriter<File>, u64, u64)>,
    next_part: BTreeMap<NaiveDate, u32>,
    done: Vec<(NaiveDate, u32, PathBuf, u64)>,
    rows: u64,
    buffered: usize,
    range: Option<(Micros, Micros)>,
    clock: u64,
}

struct DayBuffer {
    keys: Vec<StringBuilder>,
    times: Vec<Micros>,
    features: Vec<FeatureBuilder>,
}

impl<'a> DayWriters<'a> {
    fn new(def: &'a ViewDefinition, dir: &Path) -> Self {
        Self {
            def,
            schema: part_schema(def),
            dir: dir.to_path_buf(),
            buffers: BTreeMap::new(),
            open: Vec::new(),
            next_part: BTreeMap::new(),
            done: Vec::new(),
            rows: 0,
            buffered: 0,
            range: None,
            clock: 0,
        }
    }

    /// The buffer of `time`'s day, flushing it first when full.
    fn day(&mut self, time: Micros) -> Result<&mut DayBuffer, OfflineError> {
        let date = date_of(time);
        self.rows += 1;
        self.range = Some(
            self.range
                .map_or((time, time), |(lo, hi)| (lo.min(time), hi.max(time))),
        );
        if self
            .buffers
            .get(&date)
            .is_some_and(|b| b.times.len() >= ROW_GROUP)
        {
            self.flush(date)?;
        }
        if self.buffered >= MAX_BUFFERED {
            let dates: Vec<NaiveDate> = self.buffers.keys().copied().collect();
            for d in dates {
                self.flush(d)?;
            }
        }
        self.buffered += 1;
        let def = self.def;
        Ok(self.buffers.entry(date).or_insert_with(|| DayBuffer {
            keys: def.join_keys.iter().map(|_| StringBuilder::new()).collect(),
            times: Vec::new(),
            features: def
                .view
                .features
                .iter()
                .map(|f| FeatureBuilder::new(f.dtype))
                .collect(),
        }))
    }

    fn flush(&mut self, date: NaiveDate) -> Result<(), OfflineError> {
        let Some(mut buffer) = self.buffers.remove(&date) else {
            return Ok(());
        };
        self.buffered -= buffer.times.len();
        let mut columns: Vec<ArrayRef> = buffer
            .keys
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(std::mem::take(&mut buffer.times)).with_timezone("UTC"),
        ));
        columns.extend(buffer.features.iter_mut().map(FeatureBuilder::finish));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .expect("buffers follow the part schema");
        self.clock += 1;
        let clock = self.clock;
        if !self.open.iter().any(|o| o.0 == date) {
            if self.open.len() >= OPEN_DAYS {
                let oldest = (0..self.open.len())
                    .min_by_key(|&i| self.open[i].5)
                    .expect("open writers");
                self.close(oldest)?;
            }
            let n = self.next_part.entry(date).or_insert(0);
            let path = self.dir.join(format!("{date}-{n}.parquet"));
            let file = File::create(&path).map_err(|e| file_error(&path, e))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(ROW_GROUP))
                .build();
            let w = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
                .map_err(|e| file_error(&path, e))?;
            self.open.push((date, *n, path, w, 0, clock));
            *n += 1;
        }
        let o = self
            .open
            .iter_mut()
            .find(|o| o.0 == date)
            .expect("just opened");
        o.3.write(&batch).map_err(|e| file_error(&o.2, e))?;
        // Each buffer becomes one row group on disk now, not one held by the writer until close.
        o.3.flush().map_err(|e| file_error(&o.2, e))?;
        o.4 += batch.num_rows() as u64;
        o.5 = clock;
        Ok(())
    }

    fn close(&mut self, i: usize) -> Result<(), OfflineError> {
        let (date, n, path, w, rows, _) = self.open.swap_remove(i);
        w.close().map_err(|e| file_error(&path, e))?;
        self.done.push((date, n, path, rows));
        Ok(())
    }

    /// Flushes and closes everything: (rows, event-time range, files).
    #[allow(clippy::type_complexity)]
    fn finish(
        mut self,
    ) -> Result<
        (
            u64,
            Option<(Micros, Micros)>,
            Vec<(NaiveDate, u32, PathBuf, u64)>,
        ),
        OfflineError,
    > {
        let dates: Vec<NaiveDate> = self.buffers.keys().copied().collect();
        for d in dates {
            self.flush(d)?;
        }
        while !self.open.is_empty() {
            self.close(0)?;
        }
        Ok((self.rows, self.range, self.done))
    }
}

fn column_index(
    headers: &csv::StringRecord,
    file: &str,
    column: &str,
    role: &'static str,
    view: &str,
) -> Result<usize, OfflineError> {
    headers
        .iter()
        .position(|h| h == column)
        .ok_or_else(|| OfflineError::MissingColumn {
            file: file.into(),
            column: column.into(),
            role,
            view: view.into(),
            has: headers.iter().collect::<Vec<_>>().join(", "),
        })
}

fn read_csv_input(
    path: &Path,
    file: &str,
    def: &ViewDefinition,
    out: &mut DayWriters,
) -> Result<(), OfflineError> {
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|e| file_error(path, e))?;
    let headers = reader.headers().map_err(|e| file_error(path, e))?.clone();
    let view = &def.view.name;
    let keys: Vec<usize> = def
        .join_keys
        .iter()
        .map(|k| column_index(&headers, file, k, "join key", view))
        .collect::<Result<_, _>>()?;
    let time = column_index(&headers, file, &def.view.event_time, "event time", view)?;
    let features: Vec<usize> = def
        .view
        .features
        .iter()
        .map(|f| column_index(&headers, file, &f.name, "feature", view))
        .collect::<Result<_, _>>()?;
    let mut record = csv::StringRecord::new();
    let mut line = 1;
    while reader
        .read_record(&mut record)
        .map_err(|e| file_error(path, e))?
    {
        line += 1;
        let row_error = |column: &str, why: String| OfflineError::Row {
            file: file.into(),
            line,
            column: column.into(),
            why,
        };
        let t = parse_time(&record[time]).ok_or_else(|| {
            row_error(
                &def.view.event_time,
                format!(
                    "'{}' is not a time (RFC 3339, 'YYYY-MM-DD HH:MM:SS' UTC, or a date)",
                    &record[time]
                ),
            )
        })?;
        let day = out.day(t)?;
        for (b, (&i, k)) in day.keys.iter_mut().zip(keys.iter().zip(&def.join_keys)) {
            if record[i].is_empty() {
                return Err(row_error(k, "a join key cannot be empty".into()));
            }
            b.append_value(&record[i]);
        }
        day.times.push(t);
        for (b, (&i, f)) in day
            .features
            .iter_mut()
            .zip(features.iter().zip(&def.view.features))
        {
            b.push_text(&record[i]).map_err(|want| {
                row_error(
                    &f.name,
                    format!("expected {want} ({}), got '{}'", f.dtype.name(), &record[i]),
                )
            })?;
        }
    }
    Ok(())
}

fn read_parquet_input(
    path: &Path,
    def: &ViewDefinition,
    out: &mut DayWriters,
) -> Result<(), OfflineError> {
    let file_name = path.display().to_string();
    let input = File::open(path).map_err(|e| file_error(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(input).map_err(|e| file_error(path, e))?;
    let header = csv::StringRecord::from(
        builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
    );
    let view = &def.view.name;
    let keys: Vec<usize> = def
        .join_keys
        .iter()
        .map(|k| column_index(&header, &file_name, k, "join key", view))
        .collect::<Result<_, _>>()?;
    let time = column_index(
        &header,
        &file_name,
        &def.view.event_time,
        "event time",
        view,
    )?;
    let features: Vec<usize> = def
        .view
        .features
        .iter()
        .map(|f| column_index(&header, &file_name, &f.name, "feature", view))
        .collect::<Result<_, _>>()?;
    let reader = builder
        .with_batch_size(ROW_GROUP)
        .build()
        .map_err(|e| file_error(path, e))?;
    let mut row = 0u64;
    let cast = |a: &ArrayRef, to: &DataType, column: &str, row: u64| {
        arrow_cast::cast(a, to).map_err(|e| OfflineError::Row {
            file: file_name.clone(),
            line: row + 1,
            column: column.into(),
            why: e.to_string(),
        })
    };
    for batch in reader {
        let batch = batch.map_err(|e| file_error(path, e))?;
        let key_columns: Vec<StringArray> = keys
            .iter()
            .zip(&def.join_keys)
            .map(|(&i, k)| {
                Ok(cast(batch.column(i), &DataType::Utf8, k, row)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to text")
                    .clone())
            })
            .collect::<Result<_, OfflineError>>()?;
        let raw_time = batch.column(time);
        let times: TimestampMicrosecondArray =
            if matches!(raw_time.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
                let text = cast(raw_time, &DataType::Utf8, &def.view.event_time, row)?;
                let text = text.as_any().downcast_ref::<StringArray>().expect("text");
                text.iter().map(|s| s.and_then(parse_time)).collect()
            } else {
                cast(
                    raw_time,
                    &DataType::Timestamp(TimeUnit::Microsecond, None),
                    &def.view.event_time,
                    row,
                )?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .expect("cast to µs")
                .clone()
            };
        let feature_columns: Vec<ArrayRef> = features
            .iter()
            .zip(&def.view.features)
            .map(|(&i, f)| cast(batch.column(i), &arrow_type(f.dtype), &f.name, row))
            .collect::<Result<_, _>>()?;
        for r in 0..batch.num_rows() {
            row += 1;
            let row_error = |column: &str, why: &str| OfflineError::Row {
                file: file_name.clone(),
                line: row,
                column: column.into(),
                why: why.into(),
            };
            if times.is_null(r) {
                return Err(row_error(
                    &def.view.event_time,
                    "missing or unreadable event time",
                ));
            }
            let day = out.day(times.value(r))?;
            for ((b, a), k) in day.keys.iter_mut().zip(&key_columns).zip(&def.join_keys) {
                if a.is_null(r) || a.value(r).is_empty() {
                    return Err(row_error(k, "a join key cannot be empty"));
                }
                b.append_value(a.value(r));
            }
            day.times.push(times.value(r));
            for (b, a) in day.features.iter_mut().zip(&feature_columns) {
                b.push_array(a.as_ref(), r);
            }
        }
    }
    Ok(())
}
