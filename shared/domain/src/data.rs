//! Loading a CSV data set against its [`Schema`]: structural checks, value validation and a
//! readable report.
//!
//! Structural faults (unreadable file, empty file, missing or unexpected header, ragged rows,
//! non-UTF-8 bytes, a line longer than [`MAX_LINE_BYTES`]) stop loading with a [`DataError`] naming
//! the file and line. Value faults (wrong type, out of range, unknown category, missing where not
//! allowed) are collected, with line numbers, into the [`ValidationReport`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hashing::{ContentDigest, DigestingReader};
use crate::schema::{ColumnRole, ColumnSpec, ColumnType, Schema, Task};

/// Longest accepted CSV line; longer lines are rejected before they are buffered.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// How many problems a report keeps in full (all are counted).
pub const MAX_REPORTED_PROBLEMS: usize = 50;

/// One raw input value of a feature column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An empty cell / JSON null.
    Missing,
    /// A number (float or integer column).
    Number(f64),
    /// A string (categorical column).
    Category(String),
}

/// A loaded, validated data set: feature values per row, labels and ids.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Feature columns, in schema order; each row holds one value per column.
    pub feature_columns: Vec<ColumnSpec>,
    /// Feature values, one `Vec` per row.
    pub rows: Vec<Vec<Value>>,
    /// Labels (scaled regression target, or 1.0/0.0 for the positive/negative class); empty when
    /// the file has no target column and none was required.
    pub labels: Vec<f64>,
    /// Row ids from the id column; empty when the schema has none.
    pub ids: Vec<String>,
    /// Line number in the file of each row (header is line 1).
    pub lines: Vec<u64>,
    /// Content digest of the file as read.
    pub digest: ContentDigest,
    /// Where it was read from.
    pub source: String,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// A new data set with the rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        fn pick<T: Clone>(v: &[T], indices: &[usize]) -> Vec<T> {
            if v.is_empty() {
                Vec::new()
            } else {
                indices.iter().map(|&i| v[i].clone()).collect()
            }
        }
        Dataset {
            feature_columns: self.feature_columns.clone(),
            rows: indices.iter().map(|&i| self.rows[i].clone()).collect(),
            labels: pick(&self.labels, indices),
            ids: pick(&self.ids, indices),
            lines: indices.iter().map(|&i| self.lines[i]).collect(),
            digest: self.digest.clone(),
            source: self.source.clone(),
        }
    }
}

/// A fault that stops loading.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be opened or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// File.
        file: String,
        /// Cause.
        source: io::Error,
    },
    /// The file has no header line.
    #[error("{file}: the file is empty (expected a header line with the columns {expected})")]
    Empty {
        /// File.
        file: String,
        /// Expected header.
        expected: String,
    },
    /// A declared column is absent from the header.
    #[error(
        "{file}: line 1 (header): column '{column}' is missing (the schema '{schema}' requires it)"
    )]
    MissingColumn {
        /// File.
        file: String,
        /// Missing column.
        column: String,
        /// Schema name.
        schema: String,
    },
    /// The header names a column the schema does not declare, or names one twice.
    #[error("{file}: line 1 (header): column '{column}' {why}")]
    BadHeader {
        /// File.
        file: String,
        /// Offending column.
        column: String,
        /// What is wrong with it.
        why: String,
    },
    /// A row has a different number of fields than the header.
    #[error("{file}: line {line}: expected {expected} fields (as in the header), found {found}")]
    Ragged {
        /// File.
        file: String,
        /// Line number.
        line: u64,
        /// Header width.
        expected: u64,
        /// Row width.
        found: u64,
    },
    /// A field is not valid UTF-8.
    #[error("{file}: line {line}, column '{column}': the text is not valid UTF-8")]
    NotUtf8 {
        /// File.
        file: String,
        /// Line number.
        line: u64,
        /// Column name (or field index when unknown).
        column: String,
    },
    /// A line exceeds [`MAX_LINE_BYTES`].
    #[error("{file}: line {line} is longer than {limit} bytes; is this really a CSV file?")]
    LineTooLong {
        /// File.
        file: String,
        /// Line number.
        line: u64,
        /// Limit in bytes.
        limit: usize,
    },
    /// Any other CSV syntax error.
    #[error("{file}: line {line}: malformed CSV: {message}")]
    Csv {
        /// File.
        file: String,
        /// Line number.
        line: u64,
        /// Parser message.
        message: String,
    },
    /// The header is fine but there are no data rows.
    #[error("{file}: the file has a header but no data rows")]
    NoRows {
        /// File.
        file: String,
    },
    /// Values failed validation; the report lists them.
    #[error("{}", invalid_summary(.report))]
    Invalid {
        /// The full report.
        report: Box<ValidationReport>,
    },
}

fn invalid_summary(report: &ValidationReport) -> String {
    let mut s = format!(
        "{}: {} invalid value(s) in {} rows",
        report.file, report.problem_count, report.rows
    );
    for p in report.problems.iter().take(5) {
        s.push_str(&format!(
            "\n  line {}, column '{}': {}",
            p.line, p.column, p.message
        ));
    }
    if report.problem_count > 5 {
        s.push_str(&format!("\n  … and {} more", report.problem_count - 5));
    }
    s
}

/// One invalid value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Line in the file (header is line 1).
    pub line: u64,
    /// Column name.
    pub column: String,
    /// What is wrong.
    pub message: String,
}

/// What was seen in one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    /// Column name.
    pub name: String,
    /// Declared type.
    pub column_type: ColumnType,
    /// Declared role.
    pub role: ColumnRole,
    /// Empty cells.
    pub missing: u64,
    /// Smallest valid number seen (numeric columns).
    pub min: Option<f64>,
    /// Largest valid number seen (numeric columns).
    pub max: Option<f64>,
    /// Count per category value (categorical columns), most frequent first.
    pub categories: Vec<(String, u64)>,
    /// Distinct values (text columns).
    pub distinct: Option<u64>,
}

/// The result of validating a file against a schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// File validated.
    pub file: String,
    /// Schema name.
    pub schema: String,
    /// Data rows read.
    pub rows: u64,
    /// Per-column summary, in schema order.
    pub columns: Vec<ColumnSummary>,
    /// The first [`MAX_REPORTED_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
    /// All problems, counted.
    pub problem_count: u64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

impl ValidationReport {
    /// Whether every value passed.
    pub fn is_valid(&self) -> bool {
        self.problem_count == 0
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Validation report for {} (schema '{}')",
            self.file, self.schema
        )?;
        writeln!(f, "  rows: {}   sha256: {}", self.rows, self.sha256)?;
        writeln!(
            f,
            "  {:<26} {:<12} {:<8} {:>8}  values",
            "column", "type", "role", "missing"
        )?;
        for c in &self.columns {
            let values = match (c.column_type, c.min, c.max) {
                (ColumnType::Categorical, _, _) => c
                    .categories
                    .iter()
                    .map(|(k, n)| format!("{k}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                (ColumnType::Text, _, _) => {
                    format!("{} distinct", c.distinct.unwrap_or(0))
                }
                (_, Some(lo), Some(hi)) => format!("min {lo} .. max {hi}"),
                _ => "no values".to_string(),
            };
            writeln!(
                f,
                "  {:<26} {:<12} {:<8} {:>8}  {}",
                c.name,
                format!("{:?}", c.column_type).to_lowercase(),
                format!("{:?}", c.role).to_lowercase(),
                c.missing,
                values
            )?;
        }
        if self.is_valid() {
            write!(f, "  OK: no problems")
        } else {
            writeln!(f, "  {} problem(s):", self.problem_count)?;
            for p in &self.problems {
                writeln!(
                    f,
                    "    line {}, column '{}': {}",
                    p.line, p.column, p.message
                )?;
            }
            if self.problem_count as usize > self.problems.len() {
                write!(
                    f,
                    "    … and {} more",
                    self.problem_count as usize - self.problems.len()
                )?;
            }
            Ok(())
        }
    }
}

/// Whether the target column must be present (training) or may be absent (prediction input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPolicy {
    /// The target column must be present and valid.
    Required,
    /// The target column may be absent; when present it is validated.
    Optional,
}

/// Validates and loads a CSV file. Fails with [`DataError::Invalid`] if any value is invalid.
pub fn load_csv(
    path: &Path,
    schema: &Schema,
    target: TargetPolicy,
) -> Result<(Dataset, ValidationReport), DataError> {
    let file = path.display().to_string();
    let handle = std::fs::File::open(path).map_err(|source| DataError::Io {
        file: file.clone(),
        source,
    })?;
    let (dataset, report) = read_csv(handle, &file, schema, target)?;
    if !report.is_valid() {
        return Err(DataError::Invalid {
            report: Box::new(report),
        });
    }
    Ok((dataset, report))
}

/// Validates a CSV file and returns the report (structural faults are still errors).
pub fn validate_csv(path: &Path, schema: &Schema) -> Result<ValidationReport, DataError> {
    let file = path.display().to_string();
    let handle = std::fs::File::open(path).map_err(|source| DataError::Io {
        file: file.clone(),
        source,
    })?;
    read_csv(handle, &file, schema, TargetPolicy::Required).map(|(_, r)| r)
}

/// Where each schema column sits in the file.
struct Layout<'a> {
    /// (field index, spec) for every schema column present in the file.
    columns: Vec<(usize, &'a ColumnSpec)>,
    feature_fields: Vec<usize>,
    target_field: Option<usize>,
    id_field: Option<usize>,
}

fn layout<'a>(
    header: &csv::StringRecord,
    file: &str,
    schema: &'a Schema,
    target: TargetPolicy,
) -> Result<Layout<'a>, DataError> {
    let mut index = BTreeMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if index.insert(name.to_string(), i).is_some() {
            return Err(DataError::BadHeader {
                file: file.into(),
                column: name.into(),
                why: "appears twice".into(),
            });
        }
        if schema.column(name).is_none() {
            return Err(DataError::BadHeader {
                file: file.into(),
                column: name.into(),
                why: format!("is not declared in the schema '{}'", schema.name),
            });
        }
    }
    let mut columns = Vec::new();
    for spec in &schema.columns {
        match index.get(&spec.name) {
            Some(&i) => columns.push((i, spec)),
            None if spec.role == ColumnRole::Target && target == TargetPolicy::Optional => {}
            None => {
                return Err(DataError::MissingColumn {
                    file: file.into(),
                    column: spec.name.clone(),
                    schema: schema.name.clone(),
                });
            }
        }
    }
    let field_of = |role| {
        columns
            .iter()
            .find(|(_, c)| c.role == role)
            .map(|(i, _)| *i)
    };
    Ok(Layout {
        feature_fields: columns
            .iter()
            .filter(|(_, c)| c.role == ColumnRole::Feature)
            .map(|(i, _)| *i)
            .collect(),
        target_field: field_of(ColumnRole::Target),
        id_field: field_of(ColumnRole::Id),
        columns,
    })
}

/// Running per-column statistics.
#[derive(Default)]
struct ColumnStats {
    missing: u64,
    min: Option<f64>,
    max: Option<f64>,
    categories: BTreeMap<String, u64>,
}

impl ColumnStats {
    fn number(&mut self, x: f64) {
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }
}

/// Reads and validates CSV from any reader; `file` names it in errors.
pub fn read_csv<R: Read>(
    reader: R,
    file: &str,
    schema: &Schema,
    target: TargetPolicy,
) -> Result<(Dataset, ValidationReport), DataError> {
    let mut digesting = DigestingReader::new(LineLimitReader::new(reader, MAX_LINE_BYTES));
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(false)
        .from_reader(&mut digesting);
    let mut record = csv::ByteRecord::new();
    let expected_header = || {
        schema
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let header = match csv.read_byte_record(&mut record) {
        Ok(true) => to_string_record(&record, file, 1, None)?,
        Ok(false) => {
            return Err(DataError::Empty {
                file: file.into(),
                expected: expected_header(),
            });
        }
        Err(e) => return Err(csv_error(e, file)),
    };
    if header.len() == 1 && header.get(0).is_some_and(|h| h.trim().is_empty()) {
        return Err(DataError::Empty {
            file: file.into(),
            expected: expected_header(),
        });
    }
    let layout = layout(&header, file, schema, target)?;
    let mut stats: Vec<ColumnStats> = layout
        .columns
        .iter()
        .map(|_| ColumnStats::default())
        .collect();
    let mut problems = Vec::new();
    let mut problem_count = 0u64;
    let mut data = Dataset {
        feature_columns: schema.feature_columns().cloned().collect(),
        rows: Vec::new(),
        labels: Vec::new(),
        ids: Vec::new(),
        lines: Vec::new(),
        digest: ContentDigest::default(),
        source: file.into(),
    };
    let mut ids_seen = std::collections::HashSet::new();

    loop {
        match csv.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(e, file)),
        }
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|f| f.is_empty()) && header.len() > 1 {
            continue; // a blank line
        }
        let fields = to_string_record(&record, file, line, Some(&header))?;
        let mut row_problem = |column: &str, message: String| {
            problem_count += 1;
            if problems.len() < MAX_REPORTED_PROBLEMS {
                problems.push(Problem {
                    line,
                    column: column.to_string(),
                    message,
                });
            }
        };
        let mut parsed = Vec::with_capacity(layout.columns.len());
        for ((field, spec), st) in layout.columns.iter().zip(stats.iter_mut()) {
            let raw = fields.get(*field).unwrap_or("").trim();
            let value = parse_cell(raw, spec, st, &mut row_problem);
            parsed.push((*field, value));
        }
        // `None`: the cell was invalid (already reported).
        let value_at = |f: usize| {
            parsed
                .iter()
                .find(|(i, _)| *i == f)
                .and_then(|(_, v)| v.clone())
        };
        let features: Vec<Value> = layout
            .feature_fields
            .iter()
            .map(|&f| value_at(f).unwrap_or(Value::Missing))
            .collect();
        if let Some(tf) = layout.target_field {
            let label = match (value_at(tf), schema.task) {
                (Some(Value::Number(y)), Task::Regression) => Some(y * schema.target.scale),
                (Some(Value::Category(c)), Task::BinaryClassification) => {
                    Some(if Some(&c) == schema.target.positive.as_ref() {
                        1.0
                    } else {
                        0.0
                    })
                }
                (Some(Value::Number(y)), Task::BinaryClassification) => {
                    let positive = schema.target.positive.as_deref().unwrap_or("1");
                    Some(if positive.parse::<f64>().ok() == Some(y) {
                        1.0
                    } else {
                        0.0
                    })
                }
                (Some(Value::Missing), _) => {
                    row_problem(&schema.target.column, "the target is missing".into());
                    None
                }
                _ => None, // already reported by parse_cell
            };
            data.labels.push(label.unwrap_or(f64::NAN));
        }
        if let Some(idf) = layout.id_field {
            let id = fields.get(idf).unwrap_or("").trim().to_string();
            if !ids_seen.insert(id.clone()) {
                row_problem(&header[idf], format!("duplicate id '{}'", truncate(&id)));
            }
            data.ids.push(id);
        }
        data.rows.push(features);
        data.lines.push(line);
    }
    drop(csv);
    if data.rows.is_empty() {
        return Err(DataError::NoRows { file: file.into() });
    }
    data.digest = digesting.finish();
    let columns = layout
        .columns
        .iter()
        .zip(stats)
        .map(|((_, spec), st)| {
            let mut categories: Vec<(String, u64)> = st.categories.into_iter().collect();
            let distinct =
                (spec.column_type == ColumnType::Text).then_some(categories.len() as u64);
            if spec.column_type == ColumnType::Text {
                categories.clear();
            }
            categories.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            ColumnSummary {
                name: spec.name.clone(),
                column_type: spec.column_type,
                role: spec.role,
                missing: st.missing,
                min: st.min,
                max: st.max,
                categories,
                distinct,
            }
        })
        .collect();
    let report = ValidationReport {
        file: file.into(),
        schema: schema.name.clone(),
        rows: data.rows.len() as u64,
        columns,
        problems,
        problem_count,
        sha256: data.digest.sha256.clone(),
    };
    Ok((data, report))
}

/// Parses one trimmed cell against its column, recording statistics and problems; `None` when
/// the value is invalid (the problem is recorded).
fn parse_cell(
    raw: &str,
    spec: &ColumnSpec,
    st: &mut ColumnStats,
    problem: &mut impl FnMut(&str, String),
) -> Option<Value> {
    if raw.is_empty() {
        st.missing += 1;
        if !spec.nullable && spec.role != ColumnRole::Target {
            problem(
                &spec.name,
                "value is missing and the column is not nullable".into(),
            );
        }
        return Some(Value::Missing);
    }
    Some(match spec.column_type {
        ColumnType::Float | ColumnType::Integer => match check_number(raw, spec) {
            Ok(x) => {
                st.number(x);
                Value::Number(x)
            }
            Err(message) => {
                problem(&spec.name, message);
                return None;
            }
        },
        ColumnType::Categorical => {
            *st.categories.entry(raw.to_string()).or_default() += 1;
            if !spec.categories.is_empty() && !spec.categories.iter().any(|c| c == raw) {
                problem(
                    &spec.name,
                    format!(
                        "unknown category '{}' (allowed: {})",
                        truncate(raw),
                        spec.categories.join(", ")
                    ),
                );
                return None;
            }
            Value::Category(raw.to_string())
        }
        ColumnType::Text => {
            if st.categories.len() < 1_000_000 {
                *st.categories.entry(raw.to_string()).or_default() += 1;
            }
            Value::Category(raw.to_string())
        }
    })
}

/// Parses a number for a numeric column and checks type and range; the error names the problem.
pub fn check_number(raw: &str, spec: &ColumnSpec) -> Result<f64, String> {
    let kind = if spec.column_type == ColumnType::Integer {
        "an integer"
    } else {
        "a number"
    };
    let x: f64 = raw
        .parse()
        .map_err(|_| format!("expected {kind}, found '{}'", truncate(raw)))?;
    check_number_value(x, spec)
}

/// Checks a parsed number against a numeric column's type and range.
pub fn check_number_value(x: f64, spec: &ColumnSpec) -> Result<f64, String> {
    if !x.is_finite() {
        return Err(format!("expected a finite number, found {x}"));
    }
    if spec.column_type == ColumnType::Integer && x.fract() != 0.0 {
        return Err(format!("expected an integer, found {x}"));
    }
    if let Some(lo) = spec.min
        && x < lo
    {
        return Err(format!("{x} is below the minimum {lo}"));
    }
    if let Some(hi) = spec.max
        && x > hi
    {
        return Err(format!("{x} is above the maximum {hi}"));
    }
    Ok(x)
}

fn truncate(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

fn to_string_record(
    record: &csv::ByteRecord,
    file: &str,
    line: u64,
    header: Option<&csv::StringRecord>,
) -> Result<csv::StringRecord, DataError> {
    csv::StringRecord::from_byte_record(record.clone()).map_err(|e| {
        let field = e.utf8_error().field();
        DataError::NotUtf8 {
            file: file.into(),
            line,
            column: header
                .and_then(|h| h.get(field))
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{}", field + 1)),
        }
    })
}

fn csv_error(e: csv::Error, file: &str) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => DataError::Ragged {
            file: file.into(),
            line: pos.map_or(line, |p| p.line()),
            expected: expected_len,
            found: len,
        },
        csv::ErrorKind::Io(io) => {
            match io.get_ref().and_then(|r| r.downcast_ref::<LineTooLong>()) {
                Some(too_long) => DataError::LineTooLong {
                    file: file.into(),
                    line: too_long.line,
                    limit: too_long.limit,
                },
                None => DataError::Io {
                    file: file.into(),
                    source: io,
                },
            }
        }
        csv::ErrorKind::Utf8 { pos, err } => DataError::NotUtf8 {
            file: file.into(),
            line: pos.map_or(line, |p| p.line()),
            column: format!("#{}", err.field() + 1),
        },
        other => DataError::Csv {
            file: file.into(),
            line,
            message: format!("{other:?}"),
        },
    }
}

/// The error a [`LineLimitReader`] raises.
#[derive(Debug)]
struct LineTooLong {
    line: u64,
    limit: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} is longer than {} bytes", self.line, self.limit)
    }
}

impl std::error::Error for LineTooLong {}

/// Fails the read as soon as one line exceeds a byte limit, so a single huge line is never
/// buffered whole.
struct LineLimitReader<R> {
    inner: R,
    limit: usize,
    current: usize,
    line: u64,
}

impl<R: Read> LineLimitReader<R> {
    fn new(inner: R, limit: usize) -> Self {
        Self {
            inner,
            limit,
            current: 0,
            line: 1,
        }
    }
}

impl<R: Read> Read for LineLimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.line += 1;
                self.current = 0;
            } else {
                self.current += 1;
                if self.current > self.limit {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        LineTooLong {
                            line: self.line,
                            limit: self.limit,
                        },
                    ));
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_toml(
            r#"
name = "t"
task = "binary_classification"
[target]
column = "y"
positive = "Yes"
[[columns]]
name = "id"
type = "text"
role = "id"
[[columns]]
name = "x"
type = "float"
min = 0.0
max = 10.0
nullable = true
[[columns]]
name = "n"
type = "integer"
[[columns]]
name = "c"
type = "categorical"
categories = ["a", "b"]
[[columns]]
name = "y"
type = "categorical"
role = "target"
categories = ["Yes", "No"]
"#,
            "t.toml",
        )
        .unwrap()
    }

    fn read(text: &[u8]) -> Result<(Dataset, ValidationReport), DataError> {
        read_csv(text, "f.csv", &schema(), TargetPolicy::Required)
    }

    #[test]
    fn loads_valid_rows_with_labels_and_missing_values() {
        let (d, r) = read(b"id,x,n,c,y\nr1,1.5,2,a,Yes\nr2, ,3,b,No\n").unwrap();
        assert!(r.is_valid(), "{r}");
        assert_eq!(d.labels, vec![1.0, 0.0]);
        assert_eq!(d.rows[1][0], Value::Missing);
        assert_eq!(d.ids, vec!["r1", "r2"]);
        assert_eq!(d.lines, vec![2, 3]);
        assert_eq!(r.columns[1].missing, 1);
        assert_eq!(r.sha256.len(), 64);
    }

    #[test]
    fn value_problems_name_line_and_column() {
        let (_, r) = read(b"id,x,n,c,y\nr1,abc,2.5,z,Yes\nr2,11,3,a,Maybe\nr2,1,1,a,No\n").unwrap();
        let msgs: Vec<String> = r
            .problems
            .iter()
            .map(|p| format!("{}:{}:{}", p.line, p.column, p.message))
            .collect();
        assert_eq!(r.problem_count, 6, "{msgs:#?}");
        assert!(msgs[0].starts_with("2:x:expected a number, found 'abc'"));
        assert!(msgs[1].starts_with("2:n:expected an integer"));
        assert!(msgs[2].starts_with("2:c:unknown category 'z'"));
        assert!(msgs[3].starts_with("3:x:11 is above the maximum 10"));
        assert!(msgs[4].starts_with("3:y:unknown category 'Maybe'"));
        assert!(msgs[5].starts_with("4:id:duplicate id 'r2'"));
        assert!(r.to_string().contains("line 3, column 'x'"));
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        let (_, r) = read(b"id,x,n,c,y\nr1,NaN,1,a,Yes\nr2,inf,1,a,Yes\n").unwrap();
        assert_eq!(r.problem_count, 2);
        assert!(r.problems[0].message.contains("finite"));
    }

    #[test]
    fn structural_errors_are_clear() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "f.csv: the file is empty"),
            (b"id,x,n,c\nr1,1,1,a\n", "column 'y' is missing"),
            (b"id,x,n,c,y,extra\n", "column 'extra' is not declared"),
            (b"id,x,x,n,c,y\n", "column 'x' appears twice"),
            (
                b"id,x,n,c,y\nr1,1,1,a\n",
                "line 2: expected 5 fields (as in the header), found 4",
            ),
            (
                b"id,x,n,c,y\nr1,1,1,\xff\xfe,Yes\n",
                "line 2, column 'c': the text is not valid UTF-8",
            ),
            (b"id,x,n,c,y\n", "header but no data rows"),
        ];
        for (input, want) in cases {
            let err = read(input).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
            assert!(err.starts_with("f.csv"), "{err}");
        }
    }

    #[test]
    fn a_single_huge_line_is_rejected_without_buffering_it() {
        let mut big = b"id,x,n,c,y\nr1,".to_vec();
        big.extend(std::iter::repeat_n(b'1', 3 * MAX_LINE_BYTES));
        let err = read(&big).unwrap_err().to_string();
        assert!(err.contains("line 2 is longer than 1048576 bytes"), "{err}");
    }

    #[test]
    fn optional_target_may_be_absent() {
        let (d, r) = read_csv(
            &b"id,x,n,c\nr1,1,1,a\n"[..],
            "f.csv",
            &schema(),
            TargetPolicy::Optional,
        )
        .unwrap();
        assert!(r.is_valid());
        assert!(d.labels.is_empty());
    }
}

/// Validates CSV records one at a time, for jobs that keep going past bad rows (batch
/// prediction): a good record gives its feature values (schema order) and id, a bad one every
/// problem with it. Structural faults of the header are errors up front.
pub struct RowParser<'a> {
    layout: Layout<'a>,
    schema: &'a Schema,
    fields: usize,
}

/// A parsed CSV record.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    /// Feature values in schema order.
    pub values: Vec<Value>,
    /// The id column's value, when the schema has one.
    pub id: Option<String>,
}

impl<'a> RowParser<'a> {
    /// Checks a header against the schema (unknown, duplicate or missing columns are errors; the
    /// target column may be absent).
    pub fn new(
        header: &csv::StringRecord,
        file: &str,
        schema: &'a Schema,
    ) -> Result<Self, DataError> {
        Ok(Self {
            layout: layout(header, file, schema, TargetPolicy::Optional)?,
            schema,
            fields: header.len(),
        })
    }

    /// Parses one record (cells are trimmed); the target column, if present, is not checked.
    pub fn parse(&self, record: &csv::StringRecord) -> Result<ParsedRow, Vec<FieldError>> {
        let mut errors = Vec::new();
        if record.len() != self.fields {
            errors.push(FieldError {
                field: "(row)".into(),
                message: format!(
                    "has {} fields, the header has {}",
                    record.len(),
                    self.fields
                ),
            });
            return Err(errors);
        }
        let mut stats = ColumnStats::default();
        let mut values = Vec::with_capacity(self.layout.feature_fields.len());
        for (i, spec) in &self.layout.columns {
            if spec.role != ColumnRole::Feature {
                continue;
            }
            let raw = record.get(*i).unwrap_or("").trim();
            let mut problem = |column: &str, message: String| {
                errors.push(FieldError {
                    field: column.into(),
                    message,
                })
            };
            if let Some(v) = parse_cell(raw, spec, &mut stats, &mut problem) {
                values.push(v);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let id = self
            .layout
            .id_field
            .and_then(|i| record.get(i))
            .map(|s| s.trim().to_string());
        debug_assert_eq!(values.len(), self.schema.feature_columns().count());
        Ok(ParsedRow { values, id })
    }
}

/// A problem with one field of a JSON record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Field name.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field '{}': {}", self.field, self.message)
    }
}

/// Validates one JSON record (an object keyed by raw column name) against the schema's feature
/// columns and returns its values in feature-column order. The id and target columns may be
/// present and are ignored; any other unknown field is an error. All problems are returned.
pub fn record_from_json(
    schema: &Schema,
    record: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Value>, Vec<FieldError>> {
    use serde_json::Value as J;
    let mut errors = Vec::new();
    let mut values = Vec::new();
    for spec in schema.feature_columns() {
        let err = |message: String| FieldError {
            field: spec.name.clone(),
            message,
        };
        let value = match record.get(&spec.name) {
            None | Some(J::Null) if spec.nullable => Value::Missing,
            None => {
                errors.push(err("is required".into()));
                continue;
            }
            Some(J::Null) => {
                errors.push(err("must not be null".into()));
                continue;
            }
            Some(v) => match (spec.is_numeric(), v) {
                (true, J::Number(n)) => match n.as_f64().map(|x| check_number_value(x, spec)) {
                    Some(Ok(x)) => Value::Number(x),
                    Some(Err(m)) => {
                        errors.push(err(m));
                        continue;
                    }
                    None => {
                        errors.push(err(format!("{n} is not representable as a number")));
                        continue;
                    }
                },
                (true, other) => {
                    errors.push(err(format!("expected a number, got {}", json_kind(other))));
                    continue;
                }
                (false, J::String(s)) => {
                    if !spec.categories.is_empty() && !spec.categories.iter().any(|c| c == s) {
                        errors.push(err(format!(
                            "unknown category '{}' (allowed: {})",
                            truncate(s),
                            spec.categories.join(", ")
                        )));
                        continue;
                    }
                    Value::Category(s.clone())
                }
                (false, other) => {
                    errors.push(err(format!("expected a string, got {}", json_kind(other))));
                    continue;
                }
            },
        };
        values.push(value);
    }
    for key in record.keys() {
        match schema.column(key) {
            Some(_) => {}
            None => errors.push(FieldError {
                field: truncate(key),
                message: "is not an input of this model".into(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod json_tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_toml(
            "name = \"j\"\ntask = \"regression\"\n[target]\ncolumn = \"y\"\n[[columns]]\nname = \"x\"\ntype = \"float\"\nmax = 5.0\n[[columns]]\nname = \"k\"\ntype = \"categorical\"\ncategories = [\"a\"]\nnullable = true\n[[columns]]\nname = \"y\"\ntype = \"float\"\nrole = \"target\"\n",
            "j.toml",
        )
        .unwrap()
    }

    fn parse(v: serde_json::Value) -> Result<Vec<Value>, Vec<FieldError>> {
        record_from_json(&schema(), v.as_object().unwrap())
    }

    #[test]
    fn accepts_valid_records() {
        assert_eq!(
            parse(serde_json::json!({"x": 1.5, "k": "a", "y": 3})).unwrap(),
            vec![Value::Number(1.5), Value::Category("a".into())]
        );
        assert_eq!(
            parse(serde_json::json!({"x": 1})).unwrap()[1],
            Value::Missing
        );
    }

    #[test]
    fn reports_every_bad_field() {
        let errs = parse(serde_json::json!({"x": "1", "k": 3, "zz": 1})).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "field 'x': expected a number, got a string",
                "field 'k': expected a string, got a number",
                "field 'zz': is not an input of this model"
            ]
        );
        let errs = parse(serde_json::json!({"x": 7, "k": "b"})).unwrap_err();
        assert!(
            errs[0].message.contains("above the maximum")
                && errs[1].message.contains("unknown category")
        );
        assert_eq!(
            parse(serde_json::json!({})).unwrap_err()[0].to_string(),
            "field 'x': is required"
        );
    }
}

#[cfg(test)]
mod row_parser_tests {
    use super::*;

    #[test]
    fn parses_good_rows_and_lists_every_problem_of_bad_ones() {
        let schema = Schema::from_toml(
            "name = \"r\"\ntask = \"regression\"\n[target]\ncolumn = \"y\"\n[[columns]]\nname = \"id\"\ntype = \"text\"\nrole = \"id\"\n[[columns]]\nname = \"x\"\ntype = \"float\"\nmax = 5.0\n[[columns]]\nname = \"k\"\ntype = \"categorical\"\ncategories = [\"a\"]\nnullable = true\n[[columns]]\nname = \"y\"\ntype = \"float\"\nrole = \"target\"\n",
            "r.toml",
        )
        .unwrap();
        let header = csv::StringRecord::from(vec!["k", "x", "id"]);
        let parser = RowParser::new(&header, "in.csv", &schema).unwrap();
        let row = parser
            .parse(&csv::StringRecord::from(vec!["a", " 2.5 ", "r1"]))
            .unwrap();
        assert_eq!(
            row.values,
            vec![Value::Number(2.5), Value::Category("a".into())]
        );
        assert_eq!(row.id.as_deref(), Some("r1"));
        let missing = parser
            .parse(&csv::StringRecord::from(vec!["", "1", "r2"]))
            .unwrap();
        assert_eq!(missing.values[1], Value::Missing);
        let errors = parser
            .parse(&csv::StringRecord::from(vec!["b", "9", "r3"]))
            .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.field == "x" && e.message.contains("maximum"))
        );
        assert!(errors.iter().any(|e| e.field == "k"));
        let ragged = parser
            .parse(&csv::StringRecord::from(vec!["a"]))
            .unwrap_err();
        assert!(ragged[0].message.contains("1 fields"));
        let unknown = csv::StringRecord::from(vec!["x", "zzz"]);
        assert!(RowParser::new(&unknown, "in.csv", &schema).is_err());
        let no_x = csv::StringRecord::from(vec!["k"]);
        assert!(RowParser::new(&no_x, "in.csv", &schema).is_err());
    }
}
