//! Typed feature columns: parsing text into Arrow builders, and per-slot value tables for joins.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_schema::{DataType, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::definition::FeatureType;

/// Event times are microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// The Arrow type of event-time columns.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of a feature.
pub fn arrow_type(t: FeatureType) -> DataType {
    match t {
        FeatureType::Float64 => DataType::Float64,
        FeatureType::Int64 => DataType::Int64,
        FeatureType::String => DataType::Utf8,
        FeatureType::Bool => DataType::Boolean,
    }
}

/// Parses an event time: RFC 3339 (`2024-05-01T12:00:00Z`, any offset), a UTC date-time
/// (`2024-05-01 12:00:00[.ffffff]`, `T` or space) or a date (midnight UTC).
pub fn parse_time(text: &str) -> Option<Micros> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, format) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().map(|d| {
        d.and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros()
    })
}

/// Formats an event time as RFC 3339 with microseconds.
pub fn format_time(t: Micros) -> String {
    DateTime::<Utc>::from_timestamp_micros(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| t.to_string())
}

/// The UTC date of an event time.
pub fn date_of(t: Micros) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(t)
        .map(|d| d.date_naive())
        .unwrap_or(NaiveDate::MIN)
}

/// Appends parsed text to a typed builder; an empty cell is null.
pub enum FeatureBuilder {
    /// float64
    F64(Float64Builder),
    /// int64
    I64(Int64Builder),
    /// string
    Str(StringBuilder),
    /// bool
    Bool(BooleanBuilder),
}

impl FeatureBuilder {
    /// An empty builder for `t`.
    pub fn new(t: FeatureType) -> Self {
        match t {
            FeatureType::Float64 => Self::F64(Float64Builder::new()),
            FeatureType::Int64 => Self::I64(Int64Builder::new()),
            FeatureType::String => Self::Str(StringBuilder::new()),
            FeatureType::Bool => Self::Bool(BooleanBuilder::new()),
        }
    }

    /// Appends one cell; `Err` says what was expected.
    pub fn push_text(&mut self, text: &str) -> Result<(), &'static str> {
        let t = text.trim();
        if t.is_empty() {
            self.push_null();
            return Ok(());
        }
        match self {
            Self::F64(b) => match t.parse::<f64>() {
                Ok(x) if x.is_finite() => b.append_value(x),
                _ => return Err("a finite number"),
            },
            Self::I64(b) => b.append_value(t.parse().map_err(|_| "a whole number")?),
            Self::Str(b) => b.append_value(text),
            Self::Bool(b) => b.append_value(match t.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err("true or false"),
            }),
        }
        Ok(())
    }

    /// Appends row `row` of an array of this builder's type.
    pub fn push_array(&mut self, a: &dyn Array, row: usize) {
        if a.is_null(row) {
            self.push_null();
            return;
        }
        match self {
            Self::F64(b) => b.append_value(
                a.as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("float64")
                    .value(row),
            ),
            Self::I64(b) => b.append_value(
                a.as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64")
                    .value(row),
            ),
            Self::Str(b) => b.append_value(
                a.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("string")
                    .value(row),
            ),
            Self::Bool(b) => b.append_value(
                a.as_any()
                    .downcast_ref::<BooleanArray>()
                    .expect("bool")
                    .value(row),
            ),
        }
    }

    fn push_null(&mut self) {
        match self {
            Self::F64(b) => b.append_null(),
            Self::I64(b) => b.append_null(),
            Self::Str(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
        }
    }

    /// The array built so far; the builder starts empty again.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::F64(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// One value per slot (an entity, or an output row), nullable, of one feature type.
#[derive(Debug, Clone)]
pub enum Values {
    /// float64
    F64(Vec<Option<f64>>),
    /// int64
    I64(Vec<Option<i64>>),
    /// string
    Str(Vec<Option<Box<str>>>),
    /// bool
    Bool(Vec<Option<bool>>),
}

impl Values {
    /// `n` nulls of type `t`.
    pub fn nulls(t: FeatureType, n: usize) -> Self {
        match t {
            FeatureType::Float64 => Self::F64(vec![None; n]),
            FeatureType::Int64 => Self::I64(vec![None; n]),
            FeatureType::String => Self::Str(vec![None; n]),
            FeatureType::Bool => Self::Bool(vec![None; n]),
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        match self {
            Self::F64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::Str(v) => v.len(),
            Self::Bool(v) => v.len(),
        }
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots `range` as an Arrow array.
    pub fn to_array(&self, range: std::ops::Range<usize>) -> ArrayRef {
        match self {
            Self::F64(v) => Arc::new(Float64Array::from(v[range].to_vec())),
            Self::I64(v) => Arc::new(Int64Array::from(v[range].to_vec())),
            Self::Str(v) => Arc::new(
                v[range]
                    .iter()
                    .map(|s| s.as_deref())
                    .collect::<StringArray>(),
            ),
            Self::Bool(v) => Arc::new(BooleanArray::from(v[range].to_vec())),
        }
    }

    /// Slot `i` as CSV text (empty for null).
    pub fn text(&self, i: usize) -> String {
        match self {
            Self::F64(v) => v[i].map(|x| x.to_string()).unwrap_or_default(),
            Self::I64(v) => v[i].map(|x| x.to_string()).unwrap_or_default(),
            Self::Str(v) => v[i].as_deref().unwrap_or("").to_string(),
            Self::Bool(v) => v[i].map(|x| x.to_string()).unwrap_or_default(),
        }
    }

    /// Slot `i` as JSON (null for null).
    pub fn json(&self, i: usize) -> serde_json::Value {
        match self {
            Self::F64(v) => v[i].map_or(serde_json::Value::Null, serde_json::Value::from),
            Self::I64(v) => v[i].map_or(serde_json::Value::Null, serde_json::Value::from),
            Self::Str(v) => v[i]
                .as_deref()
                .map_or(serde_json::Value::Null, serde_json::Value::from),
            Self::Bool(v) => v[i].map_or(serde_json::Value::Null, serde_json::Value::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let noon = parse_time("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(parse_time("2024-05-01 12:00:00").unwrap(), noon);
        assert_eq!(parse_time("2024-05-01T14:00:00+02:00").unwrap(), noon);
        assert_eq!(parse_time("2024-05-01T12:00:00.000001").unwrap(), noon + 1);
        assert_eq!(parse_time("2024-05-01").unwrap(), noon - 12 * 3_600_000_000);
        assert_eq!(parse_time(&format_time(noon + 7)).unwrap(), noon + 7);
        assert!(parse_time("May 1st").is_none());
        assert_eq!(date_of(noon).to_string(), "2024-05-01");
    }

    #[test]
    fn cells_parse_by_type_and_empty_is_null() {
        let mut b = FeatureBuilder::new(FeatureType::Int64);
        b.push_text("3").unwrap();
        b.push_text("").unwrap();
        assert_eq!(b.push_text("3.5"), Err("a whole number"));
        let a = b.finish();
        assert_eq!(a.len(), 2);
        assert!(a.is_null(1));
        let mut f = FeatureBuilder::new(FeatureType::Float64);
        assert_eq!(f.push_text("NaN"), Err("a finite number"));
    }
}

/// One feature value, for row-major tables of the latest values per entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Scalar {
    /// Missing.
    #[default]
    Null,
    /// float64
    F64(f64),
    /// int64
    I64(i64),
    /// bool
    Bool(bool),
    /// string
    Str(Box<str>),
}

impl Scalar {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Scalar::Null => serde_json::Value::Null,
            Scalar::F64(x) => serde_json::Value::from(*x),
            Scalar::I64(x) => serde_json::Value::from(*x),
            Scalar::Bool(x) => serde_json::Value::from(*x),
            Scalar::Str(s) => serde_json::Value::from(s.as_ref()),
        }
    }
}

/// An Arrow feature column, downcast once.
pub enum Column<'a> {
    /// float64
    F64(&'a Float64Array),
    /// int64
    I64(&'a Int64Array),
    /// string
    Str(&'a StringArray),
    /// bool
    Bool(&'a BooleanArray),
}

impl<'a> Column<'a> {
    /// The typed view of `a` (a feature column the offline store decoded and type-checked).
    pub fn of(a: &'a ArrayRef) -> Self {
        let any = a.as_any();
        match a.data_type() {
            DataType::Float64 => Self::F64(any.downcast_ref().expect("float64")),
            DataType::Int64 => Self::I64(any.downcast_ref().expect("int64")),
            DataType::Boolean => Self::Bool(any.downcast_ref().expect("bool")),
            _ => Self::Str(
                any.downcast_ref()
                    .expect("feature columns are float64, int64, bool or text"),
            ),
        }
    }

    /// Row `row`.
    pub fn get(&self, row: usize) -> Scalar {
        let valid = |a: &dyn Array| a.is_valid(row);
        match self {
            Self::F64(a) if valid(*a) => Scalar::F64(a.value(row)),
            Self::I64(a) if valid(*a) => Scalar::I64(a.value(row)),
            Self::Bool(a) if valid(*a) => Scalar::Bool(a.value(row)),
            Self::Str(a) if valid(*a) => Scalar::Str(a.value(row).into()),
            _ => Scalar::Null,
        }
    }
}

impl Values {
    /// Sets slot `dst` to `value` (of this table's type) or to null.
    pub fn set(&mut self, dst: usize, value: Option<&Scalar>) {
        match (self, value) {
            (Self::F64(v), Some(Scalar::F64(x))) => v[dst] = Some(*x),
            (Self::I64(v), Some(Scalar::I64(x))) => v[dst] = Some(*x),
            (Self::Bool(v), Some(Scalar::Bool(x))) => v[dst] = Some(*x),
            (Self::Str(v), Some(Scalar::Str(x))) => v[dst] = Some(x.clone()),
            (Self::F64(v), _) => v[dst] = None,
            (Self::I64(v), _) => v[dst] = None,
            (Self::Bool(v), _) => v[dst] = None,
            (Self::Str(v), _) => v[dst] = None,
        }
    }
}
