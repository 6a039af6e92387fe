//! Point-in-time correct retrieval: each entity row gets, per feature view, the latest feature
//! row of its entity at or before the row's time and within the view's TTL — never a later one.
//!
//! The join is a sort-merge over time: entity rows are ordered by time, the view's day partitions
//! are read oldest first (only the days that can hold a value within the TTL), and each day's rows
//! are applied in event-time order to a table holding the latest values of just the entities the
//! frame asks about. Memory is the entity frame, that table, and one day of feature rows — never
//! the feature history. Ties on (entity, event time) go to the later snapshot, then the later row.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

use crate::columns::{Column, Micros, Scalar, Values, arrow_type, date_of, parse_time};
use crate::keys::KeyIndex;
use crate::offline::{OfflineError, OfflineStore, Part, PartRows};
use crate::registry::{Registered, ViewDefinition};

/// Separates the parts of a composite entity key.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The values joined for one view: one table per feature, one slot per entity row.
pub struct Joined {
    /// Feature names, in view order.
    pub features: Vec<String>,
    /// Values per feature.
    pub values: Vec<Values>,
    /// Entity rows that found a value within the TTL.
    pub matched: usize,
    /// Feature rows read (after partition pruning).
    pub rows_read: u64,
}

/// Joins `view`'s features onto entity rows given as composite keys (join-key values joined by
/// [`KEY_SEPARATOR`]) and times.
pub async fn as_of_join(
    offline: &OfflineStore,
    view: &Registered<ViewDefinition>,
    keys: &[Box<str>],
    times: &[Micros],
) -> Result<Joined, OfflineError> {
    let def = &view.definition;
    let features: Vec<String> = def.view.features.iter().map(|f| f.name.clone()).collect();
    let width = features.len();
    let n = times.len();
    let mut index = KeyIndex::default();
    let slots: Vec<u32> = keys.iter().map(|k| index.insert(k)).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| times[i as usize]);
    let ttl = def.view.ttl.and_then(|t| t.micros());

    // The latest values of each entity, row-major: one entity's features share a cache line.
    let mut latest_time = vec![Micros::MIN; index.len()];
    let mut latest = vec![Scalar::Null; index.len() * width];
    let mut out: Vec<Values> = def
        .view
        .features
        .iter()
        .map(|f| Values::nulls(f.dtype, n))
        .collect();
    let mut matched = 0;
    let mut answer = |i: usize, latest_time: &[Micros], latest: &[Scalar]| {
        let s = slots[i] as usize;
        let t = latest_time[s];
        let fresh = t != Micros::MIN && ttl.is_none_or(|ttl| times[i].saturating_sub(t) <= ttl);
        matched += usize::from(fresh);
        for (f, o) in out.iter_mut().enumerate() {
            o.set(i, fresh.then(|| &latest[s * width + f]));
        }
    };

    let days = days_to_read(offline, &def.view.name, times, ttl).await?;
    let index = Arc::new(index);
    let prepare = |parts: Vec<Part>| {
        let (offline, def, features, index) = (
            offline.clone(),
            def.clone(),
            features.clone(),
            Arc::clone(&index),
        );
        tokio::spawn(async move { prepare_day(&offline, &def, &features, &parts, &index).await })
    };
    // The next day is read, decoded and keyed on another thread while this one is merged.
    let mut days = days.into_values();
    let mut next = days.next().map(prepare);
    let mut cursor = 0;
    let mut rows_read = 0;
    while let Some(pending) = next.take() {
        let day = pending.await.expect("reading a day does not panic")?;
        next = days.next().map(prepare);
        let columns: Vec<Vec<Column>> = day
            .parts
            .iter()
            .map(|d| d.features.iter().map(Column::of).collect())
            .collect();
        rows_read += day.parts.iter().map(|d| d.times.len() as u64).sum::<u64>();
        for &(t, p, r) in &day.rows {
            while cursor < n && times[order[cursor] as usize] < t {
                answer(order[cursor] as usize, &latest_time, &latest);
                cursor += 1;
            }
            let (p, r) = (p as usize, r as usize);
            let s = day.slots[p][r] as usize;
            latest_time[s] = t;
            for (f, c) in columns[p].iter().enumerate() {
                latest[s * width + f] = c.get(r);
            }
        }
    }
    while cursor < n {
        answer(order[cursor] as usize, &latest_time, &latest);
        cursor += 1;
    }
    Ok(Joined {
        features,
        values: out,
        matched,
        rows_read,
    })
}

/// One day of a view, ready to merge: its parts, each row's entity slot, and the rows of known
/// entities in merge order (time, then snapshot, then row).
struct Day {
    parts: Vec<PartRows>,
    slots: Vec<Vec<u32>>,
    rows: Vec<(Micros, u32, u32)>,
}

async fn prepare_day(
    offline: &OfflineStore,
    def: &ViewDefinition,
    features: &[String],
    parts: &[Part],
    index: &KeyIndex,
) -> Result<Day, OfflineError> {
    let decoded = offline
        .read_parts_in_background(def, features, parts.to_vec())
        .await
        .expect("reading a day does not panic")?;
    let slots: Vec<Vec<u32>> = decoded
        .iter()
        .map(|d| slots_of(d, |k| index.get(k)))
        .collect();
    let mut rows: Vec<(Micros, u32, u32)> = Vec::new();
    for (p, d) in decoded.iter().enumerate() {
        let known = d
            .times
            .iter()
            .enumerate()
            .filter(|&(r, _)| slots[p][r] != NO_SLOT);
        rows.extend(known.map(|(r, &t)| (t, p as u32, r as u32)));
    }
    // Stable: ties keep snapshot order, then row order.
    rows.sort_by_key(|&(t, _, _)| t);
    Ok(Day {
        parts: decoded,
        slots,
        rows,
    })
}

/// No entity slot.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// The slot of each row's entity key (its join keys joined by [`KEY_SEPARATOR`]), or
/// [`NO_SLOT`].
pub(crate) fn slots_of(part: &PartRows, mut lookup: impl FnMut(&str) -> Option<u32>) -> Vec<u32> {
    match part.keys.as_slice() {
        [one] => (0..part.times.len())
            .map(|r| lookup(one.value(r)).unwrap_or(NO_SLOT))
            .collect(),
        many => {
            let mut composite = String::new();
            (0..part.times.len())
                .map(|r| {
                    composite.clear();
                    for (j, k) in many.iter().enumerate() {
                        if j > 0 {
                            composite.push(KEY_SEPARATOR);
                        }
                        composite.push_str(k.value(r));
                    }
                    lookup(&composite).unwrap_or(NO_SLOT)
                })
                .collect()
        }
    }
}

/// Parts of committed snapshots by day, limited to the days that can hold a value for `times`
/// (from the earliest time less the TTL to the latest time); each day's parts in snapshot order.
async fn days_to_read(
    offline: &OfflineStore,
    view: &str,
    times: &[Micros],
    ttl: Option<Micros>,
) -> Result<BTreeMap<NaiveDate, Vec<Part>>, OfflineError> {
    let mut days: BTreeMap<NaiveDate, Vec<Part>> = BTreeMap::new();
    let (Some(&lo), Some(&hi)) = (times.iter().min(), times.iter().max()) else {
        return Ok(days);
    };
    let first = ttl.map_or(NaiveDate::MIN, |ttl| date_of(lo.saturating_sub(ttl)));
    let last = date_of(hi);
    for snapshot in offline.snapshots(view).await? {
        for part in snapshot.parts {
            if (first..=last).contains(&part.date) {
                days.entry(part.date).or_default().push(part);
            }
        }
    }
    Ok(days)
}

/// What a retrieval to a file did.
#[derive(Debug, Clone, Serialize)]
pub struct RetrievalReport {
    /// Entity rows.
    pub rows: usize,
    /// Per view: (reference, version, rows that found a value, feature rows read).
    pub views: Vec<(String, u32, usize, u64)>,
    /// Output columns.
    pub columns: Vec<String>,
}

/// An entity frame's times and composite keys, read from a CSV file with a header (its other
/// columns are streamed again when the output is written, never held).
pub struct EntityFrame {
    /// Column names.
    pub header: Vec<String>,
    /// Row times.
    pub times: Vec<Micros>,
    /// Per requested key set, each row's composite key.
    pub keys: Vec<Vec<Box<str>>>,
}

fn missing(
    file: &str,
    column: &str,
    role: &'static str,
    view: &str,
    header: &[String],
) -> OfflineError {
    OfflineError::MissingColumn {
        file: file.into(),
        column: column.into(),
        role,
        view: view.into(),
        has: header.join(", "),
    }
}

impl EntityFrame {
    /// Reads `path`, parsing `time_column` and joining each of `key_sets` (view name, join keys).
    pub fn read_csv(
        path: &Path,
        time_column: &str,
        key_sets: &[(&str, &[String])],
    ) -> Result<Self, OfflineError> {
        let file = path.display().to_string();
        let io = |e: csv::Error| OfflineError::File {
            path: file.clone(),
            message: e.to_string(),
        };
        let mut reader = csv::Reader::from_path(path).map_err(io)?;
        let header: Vec<String> = reader
            .headers()
            .map_err(io)?
            .iter()
            .map(String::from)
            .collect();
        let find = |c: &str, role, view: &str| {
            header
                .iter()
                .position(|h| h == c)
                .ok_or_else(|| missing(&file, c, role, view, &header))
        };
        let t = find(time_column, "event time", "(entity frame)")?;
        let key_idx: Vec<Vec<usize>> = key_sets
            .iter()
            .map(|(view, keys)| {
                keys.iter()
                    .map(|k| find(k, "join key", view))
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?;
        let mut times = Vec::new();
        let mut keys: Vec<Vec<Box<str>>> = vec![Vec::new(); key_sets.len()];
        let mut record = csv::StringRecord::new();
        let mut line = 1;
        let mut composite = String::new();
        while reader.read_record(&mut record).map_err(io)? {
            line += 1;
            times.push(parse_time(&record[t]).ok_or_else(|| OfflineError::Row {
                file: file.clone(),
                line,
                column: time_column.into(),
                why: format!(
                    "'{}' is not a time (RFC 3339, 'YYYY-MM-DD HH:MM:SS' UTC, or a date)",
                    &record[t]
                ),
            })?);
            for (out, idx) in keys.iter_mut().zip(&key_idx) {
                composite.clear();
                for (j, &i) in idx.iter().enumerate() {
                    if j > 0 {
                        composite.push(KEY_SEPARATOR);
                    }
                    composite.push_str(&record[i]);
                }
                out.push(composite.as_str().into());
            }
        }
        Ok(Self {
            header,
            times,
            keys,
        })
    }
}

/// Retrieves `views` for the entity frame at `entities` into `out` (Parquet if it ends in
/// `.parquet`, else CSV): the frame's columns, then each view's features.
pub async fn historical_features(
    offline: &OfflineStore,
    entities: &Path,
    time_column: &str,
    views: &[Registered<ViewDefinition>],
    out: &Path,
) -> Result<RetrievalReport, OfflineError> {
    let key_sets: Vec<(&str, &[String])> = views
        .iter()
        .map(|v| {
            (
                v.definition.view.name.as_str(),
                v.definition.join_keys.as_slice(),
            )
        })
        .collect();
    let frame = EntityFrame::read_csv(entities, time_column, &key_sets)?;
    let file = entities.display().to_string();
    let mut columns = frame.header.clone();
    let mut joined = Vec::new();
    let mut report = RetrievalReport {
        rows: frame.times.len(),
        views: Vec::new(),
        columns: Vec::new(),
    };
    for (view, keys) in views.iter().zip(&frame.keys) {
        let def = &view.definition;
        for f in &def.view.features {
            if columns.contains(&f.name) {
                return Err(OfflineError::Row {
                    file: file.clone(),
                    line: 1,
                    column: f.name.clone(),
                    why: format!(
                        "feature '{}' of view '{}' has the name of an entity-frame column or of another view's feature",
                        f.name, def.view.name
                    ),
                });
            }
            columns.push(f.name.clone());
        }
        let j = as_of_join(offline, view, keys, &frame.times).await?;
        report
            .views
            .push((def.view.name.clone(), view.version, j.matched, j.rows_read));
        joined.push((view, j));
    }
    drop(frame.keys);
    let values: Vec<&Values> = joined.iter().flat_map(|(_, j)| j.values.iter()).collect();
    let types: Vec<DataType> = joined
        .iter()
        .flat_map(|(v, _)| {
            v.definition
                .view
                .features
                .iter()
                .map(|f| arrow_type(f.dtype))
        })
        .collect();
    write_output(entities, &frame.header, &columns, &values, &types, out)?;
    report.columns = columns;
    Ok(report)
}

/// Streams the entity frame again, appending the joined values, to CSV or Parquet.
fn write_output(
    entities: &Path,
    header: &[String],
    columns: &[String],
    values: &[&Values],
    types: &[DataType],
    out: &Path,
) -> Result<(), OfflineError> {
    const CHUNK: usize = 65_536;
    let io = |e: &dyn std::fmt::Display| OfflineError::File {
        path: out.display().to_string(),
        message: e.to_string(),
    };
    let input = |e: csv::Error| OfflineError::File {
        path: entities.display().to_string(),
        message: e.to_string(),
    };
    let mut reader = csv::Reader::from_path(entities).map_err(input)?;
    let mut records = reader.records();
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        let mut fields: Vec<Field> = header
            .iter()
            .map(|h| Field::new(h, DataType::Utf8, true))
            .collect();
        fields.extend(
            columns[header.len()..]
                .iter()
                .zip(types)
                .map(|(c, t)| Field::new(c, t.clone(), true)),
        );
        let schema = Arc::new(Schema::new(fields));
        let file = std::fs::File::create(out).map_err(|e| io(&e))?;
        let mut w = ArrowWriter::try_new(file, schema.clone(), None).map_err(|e| io(&e))?;
        let mut start = 0;
        loop {
            let chunk: Vec<csv::StringRecord> = records
                .by_ref()
                .take(CHUNK)
                .collect::<Result<_, _>>()
                .map_err(input)?;
            if chunk.is_empty() {
                break;
            }
            let end = start + chunk.len();
            let mut arrays: Vec<ArrayRef> = (0..header.len())
                .map(|c| {
                    Arc::new(chunk.iter().map(|r| r.get(c)).collect::<StringArray>()) as ArrayRef
                })
                .collect();
            arrays.extend(values.iter().map(|v| v.to_array(start..end)));
            w.write(&RecordBatch::try_new(schema.clone(), arrays).map_err(|e| io(&e))?)
                .map_err(|e| io(&e))?;
            start = end;
        }
        w.close().map_err(|e| io(&e))?;
    } else {
        let mut w = csv::Writer::from_path(out).map_err(|e| io(&e))?;
        w.write_record(columns).map_err(|e| io(&e))?;
        let mut row: Vec<String> = Vec::with_capacity(columns.len());
        for (i, r) in records.enumerate() {
            let r = r.map_err(input)?;
            row.clear();
            row.extend(r.iter().map(String::from));
            row.extend(values.iter().map(|v| v.text(i)));
            w.write_record(&row).map_err(|e| io(&e))?;
        }
        w.flush().map_err(|e| io(&e))?;
    }
    Ok(())
}
