//! Declarative data-set schemas (`data/*.schema.toml`).
//!
//! A schema names the task, the target, every column with its type and allowed values, derived
//! ratio features, and where the canonical copy of the data set lives.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a model trained on this data set predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A real-valued target.
    Regression,
    /// A two-class target; predictions are the probability of the positive class.
    BinaryClassification,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Regression => "regression",
            Task::BinaryClassification => "binary_classification",
        })
    }
}

/// The type of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// A floating-point number.
    Float,
    /// A whole number (stored as f64 after validation).
    Integer,
    /// One of a fixed set of strings.
    Categorical,
    /// Free text, such as an identifier; never a model input.
    Text,
}

/// The part a column plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ColumnRole {
    /// A model input.
    #[default]
    Feature,
    /// The label.
    Target,
    /// A row identifier: validated, kept for outputs, never a model input.
    Id,
}

/// One column of the CSV file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Header name in the CSV file.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Feature (default), target or id.
    #[serde(default)]
    pub role: ColumnRole,
    /// Whether empty cells are allowed (they become missing values).
    #[serde(default)]
    pub nullable: bool,
    /// Smallest allowed value (numeric columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed value (numeric columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Allowed values (categorical columns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl ColumnSpec {
    /// Whether the column holds numbers.
    pub fn is_numeric(&self) -> bool {
        matches!(self.column_type, ColumnType::Float | ColumnType::Integer)
    }
}

/// How the target column becomes a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Name of the target column.
    pub column: String,
    /// Regression: the label is `value * scale` (e.g. 1e-5 for units of 100,000 USD).
    #[serde(default = "one")]
    pub scale: f64,
    /// Classification: the string value that counts as the positive class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive: Option<String>,
    /// Human description of the label's unit or meaning.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
}

fn one() -> f64 {
    1.0
}

/// A derived feature `numerator / denominator` computed from two numeric columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedRatio {
    /// Name of the new feature.
    pub name: String,
    /// Numeric column divided.
    pub numerator: String,
    /// Numeric column divided by.
    pub denominator: String,
}

/// Two numeric columns (coordinates) rotated by each angle: trees split along axes, so
/// rotated copies let them follow diagonal structure (coastlines, valleys). Each angle θ adds
/// `{x}_{y}_rot{θ}_u = x·cos θ + y·sin θ` and `{x}_{y}_rot{θ}_v = −x·sin θ + y·cos θ`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedRotation {
    /// First coordinate column.
    pub x: String,
    /// Second coordinate column.
    pub y: String,
    /// Angles in degrees, each in (0, 90).
    pub degrees: Vec<f64>,
}

impl DerivedRotation {
    /// The two feature names an angle adds.
    pub fn names(&self, degrees: f64) -> [String; 2] {
        let (x, y) = (&self.x, &self.y);
        [
            format!("{x}_{y}_rot{degrees}_u"),
            format!("{x}_{y}_rot{degrees}_v"),
        ]
    }
}

/// Where the canonical copy of the data set lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// File name the data set is stored under (in `../shared/data/` or the cache).
    pub file: String,
    /// Canonical download URL.
    pub url: String,
    /// Expected SHA-256 of the file (hex).
    pub sha256: String,
    /// Citation or attribution.
    #[serde(default)]
    pub attribution: String,
}

/// A data-set schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Data-set name (used for file names and registry model names).
    pub name: String,
    /// Regression or classification.
    pub task: Task,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// The label.
    pub target: TargetSpec,
    /// Every column, in any order; the CSV header decides the order in the file.
    pub columns: Vec<ColumnSpec>,
    /// Ratio features derived from numeric columns.
    #[serde(default)]
    pub derived: Vec<DerivedRatio>,
    /// Rotated coordinate features derived from pairs of numeric columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<DerivedRotation>,
    /// Canonical copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
}

/// A schema file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("cannot read schema file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a schema.
    #[error("schema file {path} is not a valid schema: {message}")]
    Parse {
        /// File path.
        path: String,
        /// Parser message (names the key and line).
        message: String,
    },
    /// The schema contradicts itself.
    #[error("schema '{schema}': {message}")]
    Invalid {
        /// Schema name.
        schema: String,
        /// What is wrong.
        message: String,
    },
}

impl Schema {
    /// Reads and checks a TOML schema file.
    pub fn from_file(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks a TOML schema; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let schema: Schema = toml::from_str(text).map_err(|e| SchemaError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        schema.check()?;
        Ok(schema)
    }

    /// Checks internal consistency: unique names, a target column of the right type, ratios over
    /// numeric feature columns, sane ranges.
    pub fn check(&self) -> Result<(), SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            schema: self.name.clone(),
            message,
        };
        let mut seen = HashSet::new();
        for c in &self.columns {
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(format!("column '{}' is declared twice", c.name)));
            }
            if let (Some(lo), Some(hi)) = (c.min, c.max)
                && lo > hi
            {
                return Err(invalid(format!(
                    "column '{}': min {lo} is greater than max {hi}",
                    c.name
                )));
            }
            if c.column_type == ColumnType::Categorical
                && c.role == ColumnRole::Feature
                && c.categories.is_empty()
            {
                return Err(invalid(format!(
                    "categorical column '{}' lists no categories",
                    c.name
                )));
            }
            if c.column_type == ColumnType::Text && c.role == ColumnRole::Feature {
                return Err(invalid(format!(
                    "text column '{}' cannot be a feature; give it role = \"id\"",
                    c.name
                )));
            }
        }
        let target = self.column(&self.target.column).ok_or_else(|| {
            invalid(format!(
                "target column '{}' is not declared",
                self.target.column
            ))
        })?;
        if target.role != ColumnRole::Target {
            return Err(invalid(format!(
                "target column '{}' must have role = \"target\"",
                target.name
            )));
        }
        if self
            .columns
            .iter()
            .filter(|c| c.role == ColumnRole::Target)
            .count()
            != 1
        {
            return Err(invalid(
                "exactly one column must have role = \"target\"".into(),
            ));
        }
        match self.task {
            Task::Regression if !target.is_numeric() => {
                return Err(invalid(format!(
                    "regression target '{}' must be numeric",
                    target.name
                )));
            }
            Task::BinaryClassification if self.target.positive.is_none() => {
                return Err(invalid(
                    "a binary_classification target needs `positive` (the positive class value)"
                        .into(),
                ));
            }
            _ => {}
        }
        if !(self.target.scale.is_finite() && self.target.scale != 0.0) {
            return Err(invalid(
                "target.scale must be a finite, non-zero number".into(),
            ));
        }
        for r in &self.derived {
            if seen.contains(r.name.as_str()) {
                return Err(invalid(format!(
                    "derived feature '{}' has the name of a column",
                    r.name
                )));
            }
            for part in [&r.numerator, &r.denominator] {
                match self.column(part) {
                    Some(c) if c.is_numeric() && c.role == ColumnRole::Feature => {}
                    _ => {
                        return Err(invalid(format!(
                            "derived feature '{}' uses '{part}', which is not a numeric feature column",
                            r.name
                        )));
                    }
                }
            }
        }
        let mut derived_names: HashSet<String> =
            self.derived.iter().map(|r| r.name.clone()).collect();
        for r in &self.rotations {
            for part in [&r.x, &r.y] {
                match self.column(part) {
                    Some(c) if c.is_numeric() && c.role == ColumnRole::Feature => {}
                    _ => {
                        return Err(invalid(format!(
                            "rotation of '{}' and '{}' uses '{part}', which is not a numeric feature column",
                            r.x, r.y
                        )));
                    }
                }
            }
            if r.x == r.y {
                return Err(invalid(format!("rotation of '{}' with itself", r.x)));
            }
            if r.degrees.is_empty() {
                return Err(invalid(format!(
                    "rotation of '{}' and '{}' lists no degrees",
                    r.x, r.y
                )));
            }
            for &d in &r.degrees {
                if !(d.is_finite() && d > 0.0 && d < 90.0) {
                    return Err(invalid(format!(
                        "rotation of '{}' and '{}': {d} degrees is not between 0 and 90",
                        r.x, r.y
                    )));
                }
                for name in r.names(d) {
                    if seen.contains(name.as_str()) || !derived_names.insert(name.clone()) {
                        return Err(invalid(format!(
                            "derived feature '{name}' is declared twice or names a column"
                        )));
                    }
                }
            }
        }
        if self.feature_columns().next().is_none() {
            return Err(invalid("no feature columns".into()));
        }
        Ok(())
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Model-input columns, in declaration order.
    pub fn feature_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns
            .iter()
            .filter(|c| c.role == ColumnRole::Feature)
    }

    /// The id column, if any.
    pub fn id_column(&self) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.role == ColumnRole::Id)
    }

    /// The target column (checked to exist).
    pub fn target_column(&self) -> &ColumnSpec {
        self.column(&self.target.column)
            .expect("schema checked: target column exists")
    }

    /// The (positive, negative) class names of a binary classification target, as every output
    /// (API, CLI, batch prediction) reports them: `positive`, and the other declared category
    /// (or `not POSITIVE` when the schema does not list exactly one other).
    pub fn class_names(&self) -> (String, String) {
        let positive = self
            .target
            .positive
            .clone()
            .unwrap_or_else(|| "positive".into());
        let others: Vec<&String> = self
            .target_column()
            .categories
            .iter()
            .filter(|c| **c != positive)
            .collect();
        let negative = match others.as_slice() {
            [one] => (*one).clone(),
            _ => format!("not {positive}"),
        };
        (positive, negative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
name = "mini"
task = "regression"
[target]
column = "y"
[[columns]]
name = "x"
type = "float"
[[columns]]
name = "y"
type = "float"
role = "target"
"#;

    #[test]
    fn rotations_are_checked() {
        let two = MINI.replace(
            "[[columns]]\nname = \"y\"",
            "[[columns]]\nname = \"z\"\ntype = \"float\"\n[[columns]]\nname = \"y\"",
        );
        let with = |rot: &str| format!("{two}[[rotations]]\n{rot}\n");
        Schema::from_toml(&with("x = \"x\"\ny = \"z\"\ndegrees = [45.0]"), "s.toml").unwrap();
        for (rot, expected) in [
            ("x = \"x\"\ny = \"nope\"\ndegrees = [45.0]", "'nope'"),
            ("x = \"x\"\ny = \"y\"\ndegrees = [45.0]", "'y'"),
            ("x = \"x\"\ny = \"x\"\ndegrees = [45.0]", "with itself"),
            ("x = \"x\"\ny = \"z\"\ndegrees = []", "no degrees"),
            ("x = \"x\"\ny = \"z\"\ndegrees = [90.0]", "90 degrees"),
            (
                "x = \"x\"\ny = \"z\"\ndegrees = [30.0, 30.0]",
                "declared twice",
            ),
        ] {
            let e = Schema::from_toml(&with(rot), "s.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains("mini") && e.contains(expected), "{rot}: {e}");
        }
    }

    #[test]
    fn parses_a_minimal_schema() {
        let s = Schema::from_toml(MINI, "mini.toml").unwrap();
        assert_eq!(s.feature_columns().count(), 1);
        assert_eq!(s.target.scale, 1.0);
    }

    #[test]
    fn rejects_unknown_keys_naming_them() {
        let bad = MINI.replace(
            "type = \"float\"\nrole",
            "type = \"float\"\ncolour = 1\nrole",
        );
        let err = Schema::from_toml(&bad, "mini.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mini.toml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn rejects_ratio_over_missing_column() {
        let bad = format!(
            "{MINI}\n[[derived]]\nname = \"r\"\nnumerator = \"x\"\ndenominator = \"nope\"\n"
        );
        let err = Schema::from_toml(&bad, "mini.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'nope'"), "{err}");
    }

    #[test]
    fn classification_needs_positive_class() {
        let bad = MINI.replace("task = \"regression\"", "task = \"binary_classification\"");
        let err = Schema::from_toml(&bad, "mini.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("positive"), "{err}");
    }

    #[test]
    fn shipped_schemas_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        for name in ["california_housing", "telco_churn"] {
            let s = Schema::from_file(&dir.join(format!("{name}.schema.toml"))).unwrap();
            assert_eq!(s.name, name);
        }
    }
}
