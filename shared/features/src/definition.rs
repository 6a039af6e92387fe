//! Entity and feature-view definitions, as written in a TOML file.
//!
//! ```toml
//! [[entity]]
//! name = "customer"
//! join_keys = ["customerID"]
//! owner = "churn-team"
//! description = "A Telco customer"
//!
//! [[feature_view]]
//! name = "customer_billing"
//! entities = ["customer"]
//! event_time = "snapshot_time"
//! ttl = "45days"
//! owner = "churn-team"
//! description = "Monthly billing snapshot"
//! tags = { domain = "billing" }
//! source = "data/billing.csv"
//! features = [
//!   { name = "tenure", type = "int64", description = "Months as a customer" },
//!   { name = "MonthlyCharges", type = "float64" },
//! ]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The value type of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureType {
    /// 64-bit float.
    Float64,
    /// 64-bit signed integer.
    Int64,
    /// UTF-8 text.
    String,
    /// true/false.
    Bool,
}

impl FeatureType {
    /// The type's name as written in definitions.
    pub fn name(self) -> &'static str {
        match self {
            FeatureType::Float64 => "float64",
            FeatureType::Int64 => "int64",
            FeatureType::String => "string",
            FeatureType::Bool => "bool",
        }
    }
}

/// One feature of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Column name in the source and in training sets.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub dtype: FeatureType,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// An entity: what feature rows are about, identified by its join keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Name.
    pub name: String,
    /// Key columns (in this order) that identify one entity.
    pub join_keys: Vec<String>,
    /// Who answers for it.
    #[serde(default)]
    pub owner: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// How long a feature value stays valid after its event time; absent or zero means forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl Ttl {
    /// The TTL in microseconds (the unit of event times), `None` for "forever".
    pub fn micros(self) -> Option<i64> {
        (!self.0.is_zero()).then(|| i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX))
    }
}

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ttl_text(self.0))
    }
}

/// A TTL in the largest whole unit: `45days`, `12h`, `90m` or `3601s` (humantime syntax).
pub fn ttl_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86_400) => format!("{}days", s / 86_400),
        _ if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Ttl).map_err(|e| {
            serde::de::Error::custom(format!("ttl '{text}': {e} (e.g. \"30days\", \"12h\")"))
        })
    }
}

/// A feature view: features of one or more entities, read from a source with an event time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    /// Name.
    pub name: String,
    /// Entities (by name) whose join keys identify a row.
    pub entities: Vec<String>,
    /// The source column holding each row's event time.
    pub event_time: String,
    /// How long a value stays valid; `None` means forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Where ingest reads rows by default (a CSV or Parquet path or `s3://` URI).
    #[serde(default)]
    pub source: String,
    /// Who answers for it.
    #[serde(default)]
    pub owner: String,
    /// What it holds.
    #[serde(default)]
    pub description: String,
    /// Free-form labels.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Features, in column order.
    pub features: Vec<Feature>,
}

impl FeatureView {
    /// The feature named `name`.
    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }
}

/// A definitions file: entities and feature views.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    /// Entities.
    #[serde(default, rename = "entity")]
    pub entities: Vec<Entity>,
    /// Feature views.
    #[serde(default, rename = "feature_view")]
    pub feature_views: Vec<FeatureView>,
}

/// A definition that cannot be used, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file is not valid TOML for definitions.
    #[error("{file}: {message}")]
    Parse {
        /// File.
        file: String,
        /// Parser message (with line and column).
        message: String,
    },
    /// A field breaks a rule.
    #[error("{what}: {why}")]
    Invalid {
        /// e.g. `feature_view 'billing' feature 'tenure'`.
        what: String,
        /// The rule.
        why: String,
    },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> DefinitionError {
    DefinitionError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// Checks a name used in store keys and column lists: a letter or `_`, then letters, digits, `_`
/// or `-`, at most 128 characters.
pub fn check_name(what: &str, name: &str) -> Result<(), DefinitionError> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok_first && ok_rest && name.len() <= 128 {
        Ok(())
    } else {
        Err(invalid(
            format!("{what} '{name}'"),
            "names start with a letter or '_' and hold only letters, digits, '_' or '-' (at most 128)",
        ))
    }
}

fn check_text(what: &str, field: &str, text: &str) -> Result<(), DefinitionError> {
    if text.trim().is_empty() {
        Err(invalid(
            what,
            format!("'{field}' is required (complete metadata)"),
        ))
    } else {
        Ok(())
    }
}

impl Entity {
    /// Checks names and metadata.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        check_name("entity", &self.name)?;
        let what = format!("entity '{}'", self.name);
        check_text(&what, "owner", &self.owner)?;
        check_text(&what, "description", &self.description)?;
        if self.join_keys.is_empty() {
            return Err(invalid(what, "needs at least one join key"));
        }
        let mut seen = BTreeSet::new();
        for key in &self.join_keys {
            check_name(&format!("{what} join key"), key)?;
            if !seen.insert(key) {
                return Err(invalid(what, format!("join key '{key}' is listed twice")));
            }
        }
        Ok(())
    }
}

impl FeatureView {
    /// Checks names, metadata and column clashes; `join_keys` are the resolved keys of its
    /// entities.
    pub fn validate(&self, join_keys: &[String]) -> Result<(), DefinitionError> {
        check_name("feature_view", &self.name)?;
        let what = format!("feature_view '{}'", self.name);
        check_text(&what, "owner", &self.owner)?;
        check_text(&what, "description", &self.description)?;
        if self.entities.is_empty() {
            return Err(invalid(&what, "names no entity ('entities')"));
        }
        if self.features.is_empty() {
            return Err(invalid(&what, "has no features"));
        }
        check_name(&format!("{what} event_time"), &self.event_time)?;
        let mut columns: BTreeSet<&str> = join_keys.iter().map(String::as_str).collect();
        if !columns.insert(&self.event_time) {
            return Err(invalid(
                &what,
                format!("event_time '{}' is also a join key", self.event_time),
            ));
        }
        for f in &self.features {
            check_name(&format!("{what} feature"), &f.name)?;
            if !columns.insert(&f.name) {
                return Err(invalid(
                    format!("{what} feature '{}'", f.name),
                    "clashes with a join key, the event time or another feature",
                ));
            }
        }
        Ok(())
    }
}

impl Definitions {
    /// Parses and checks a definitions file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, DefinitionError> {
        let defs: Definitions = toml::from_str(text).map_err(|e| DefinitionError::Parse {
            file: file.into(),
            message: e.to_string(),
        })?;
        defs.validate(&BTreeMap::new())?;
        Ok(defs)
    }

    /// Checks every definition; views may name entities defined here or in `registered` (name →
    /// join keys).
    pub fn validate(
        &self,
        registered: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), DefinitionError> {
        let mut keys = registered.clone();
        let mut names = BTreeSet::new();
        for e in &self.entities {
            e.validate()?;
            if !names.insert(("entity", &e.name)) {
                return Err(invalid(format!("entity '{}'", e.name), "is defined twice"));
            }
            keys.insert(e.name.clone(), e.join_keys.clone());
        }
        for v in &self.feature_views {
            if !names.insert(("feature_view", &v.name)) {
                return Err(invalid(
                    format!("feature_view '{}'", v.name),
                    "is defined twice",
                ));
            }
            v.validate(&join_keys_of(v, &keys)?)?;
        }
        Ok(())
    }
}

/// The join keys of a view's entities, in entity order.
pub fn join_keys_of(
    view: &FeatureView,
    entities: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, DefinitionError> {
    let mut out = Vec::new();
    for name in &view.entities {
        let keys = entities.get(name).ok_or_else(|| {
            invalid(
                format!("feature_view '{}'", view.name),
                format!("entity '{name}' is neither in this file nor registered"),
            )
        })?;
        for k in keys {
            if out.contains(k) {
                return Err(invalid(
                    format!("feature_view '{}'", view.name),
                    format!("join key '{k}' comes from two entities"),
                ));
            }
            out.push(k.clone());
        }
    }
    Ok(out)
}

/// A reference to a feature view, `NAME` (latest version) or `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRef {
    /// View name.
    pub name: String,
    /// A pinned version, or `None` for the latest.
    pub version: Option<u32>,
}

impl std::str::FromStr for ViewRef {
    type Err = DefinitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = match s.split_once('@') {
            None => (s, None),
            Some((name, v)) => {
                let version = v.parse::<u32>().ok().filter(|v| *v >= 1).ok_or_else(|| {
                    invalid(
                        format!("feature view reference '{s}'"),
                        "the version after '@' is a whole number from 1",
                    )
                })?;
                (name, Some(version))
            }
        };
        check_name("feature_view", name)?;
        Ok(ViewRef {
            name: name.into(),
            version,
        })
    }
}

impl std::fmt::Display for ViewRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[[entity]]
name = "customer"
join_keys = ["customerID"]
owner = "churn-team"
description = "A Telco customer"

[[feature_view]]
name = "customer_billing"
entities = ["customer"]
event_time = "snapshot_time"
ttl = "45days"
owner = "churn-team"
description = "Monthly billing snapshot"
tags = { domain = "billing" }
source = "data/billing.csv"
features = [
  { name = "tenure", type = "int64", description = "Months as a customer" },
  { name = "MonthlyCharges", type = "float64" },
]
"#;

    #[test]
    fn parses_the_documented_example() {
        let defs = Definitions::parse("features.toml", EXAMPLE).unwrap();
        assert_eq!(defs.entities[0].join_keys, ["customerID"]);
        let v = &defs.feature_views[0];
        assert_eq!(v.ttl.unwrap().0, Duration::from_secs(45 * 86_400));
        assert_eq!(serde_json::to_value(v.ttl.unwrap()).unwrap(), "45days");
        assert_eq!(ttl_text(Duration::from_secs(5_400)), "90m");
        assert_eq!(v.features[1].dtype, FeatureType::Float64);
        assert_eq!(v.tags["domain"], "billing");
    }

    #[test]
    fn errors_name_the_definition_and_field() {
        let no_owner = EXAMPLE.replace(
            "owner = \"churn-team\"\ndescription = \"Monthly",
            "description = \"Monthly",
        );
        let e = Definitions::parse("f.toml", &no_owner)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feature_view 'customer_billing'") && e.contains("'owner'"),
            "{e}"
        );

        let clash = EXAMPLE.replace("name = \"MonthlyCharges\"", "name = \"customerID\"");
        let e = Definitions::parse("f.toml", &clash)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("feature 'customerID'") && e.contains("clashes"),
            "{e}"
        );

        let unknown = EXAMPLE.replace("entities = [\"customer\"]", "entities = [\"account\"]");
        let e = Definitions::parse("f.toml", &unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("entity 'account'"), "{e}");

        let bad_ttl = EXAMPLE.replace("45days", "forty");
        let e = Definitions::parse("f.toml", &bad_ttl)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:") && e.contains("ttl 'forty'"), "{e}");

        let bad_type = EXAMPLE.replace("\"int64\"", "\"decimal\"");
        let e = Definitions::parse("f.toml", &bad_type)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decimal"), "{e}");
    }

    #[test]
    fn view_refs_parse_with_and_without_a_version() {
        assert_eq!(
            "billing@3".parse::<ViewRef>().unwrap(),
            ViewRef {
                name: "billing".into(),
                version: Some(3)
            }
        );
        assert_eq!("billing".parse::<ViewRef>().unwrap().version, None);
        for bad in ["billing@0", "billing@x", "../x", "a@"] {
            assert!(bad.parse::<ViewRef>().is_err(), "{bad}");
        }
    }
}
