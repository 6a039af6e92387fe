//! The fitted feature pipeline: median imputation, derived ratios, one-hot encoding and optional
//! standardization. Fitted on training rows only, serialized (JSON) inside the model artifact and
//! replayed exactly at prediction time: training and serving call the same [`FeaturePipeline::transform_row`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Value};
use crate::schema::{ColumnSpec, Schema};

/// Serialization format of the pipeline.
pub const PIPELINE_FORMAT: u32 = 1;

/// How one raw input column becomes features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputEncoding {
    /// One numeric feature; a missing value is replaced by the training median.
    Numeric {
        /// Training median.
        median: f64,
    },
    /// One 0/1 feature per category seen in training; anything else is all zeros.
    OneHot {
        /// Categories seen in training, most frequent first.
        categories: Vec<String>,
    },
}

/// One raw input column of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedInput {
    /// Column name (the key of the raw record).
    pub name: String,
    /// Encoding.
    pub encoding: InputEncoding,
}

/// A fitted ratio feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedRatio {
    /// Feature name.
    pub name: String,
    /// Index of the numerator among the inputs.
    pub numerator: usize,
    /// Index of the denominator among the inputs.
    pub denominator: usize,
    /// Training median of the ratio, used when the denominator is zero.
    pub median: f64,
}

/// A fitted rotation of two numeric inputs by one angle: two output features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FittedRotation {
    /// Names of the two features (u, v).
    pub names: [String; 2],
    /// Index of the x input among the inputs.
    pub x: usize,
    /// Index of the y input among the inputs.
    pub y: usize,
    /// cos θ, computed once at fitting so that serving replays the same bits.
    pub cos: f64,
    /// sin θ.
    pub sin: f64,
}

/// Mean and standard deviation of one output feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Training mean.
    pub mean: f64,
    /// Training standard deviation (1 where it was 0).
    pub std: f64,
}

/// Options for fitting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Standardize every output feature (linear models, MLP).
    pub standardize: bool,
}

/// The fitted pipeline. Unknown fields are refused, so that a build that predates a feature
/// kind rejects a pipeline that uses it instead of silently computing fewer features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePipeline {
    /// [`PIPELINE_FORMAT`].
    pub format: u32,
    /// Raw inputs, in the order a raw row lists them.
    pub inputs: Vec<FittedInput>,
    /// Ratio features, appended after the input features.
    pub ratios: Vec<FittedRatio>,
    /// Rotated coordinates, appended after the ratios.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<FittedRotation>,
    /// Per-feature standardization, if fitted.
    pub scaling: Option<Vec<Scaling>>,
    /// Output feature names.
    pub feature_names: Vec<String>,
}

/// Counters of what the pipeline had to repair while transforming.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformStats {
    /// Missing numeric values imputed, per column.
    pub imputed: BTreeMap<String, u64>,
    /// Category values not seen in training (encoded as all zeros), per column.
    pub unseen_categories: BTreeMap<String, u64>,
    /// Ratios whose denominator was zero (imputed), per ratio.
    pub zero_denominators: BTreeMap<String, u64>,
}

impl TransformStats {
    /// Adds another set of counters.
    pub fn merge(&mut self, other: &TransformStats) {
        for (mine, theirs) in [
            (&mut self.imputed, &other.imputed),
            (&mut self.unseen_categories, &other.unseen_categories),
            (&mut self.zero_denominators, &other.zero_denominators),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }
}

/// A row that cannot be transformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    /// The row has the wrong number of values.
    #[error("expected {expected} input values ({names}), got {found}")]
    WrongWidth {
        /// Expected count.
        expected: usize,
        /// Input names.
        names: String,
        /// Count given.
        found: usize,
    },
    /// A value has the wrong type for its column.
    #[error("column '{column}': expected {expected}, got {found}")]
    WrongType {
        /// Column.
        column: String,
        /// Expected type.
        expected: &'static str,
        /// What was given.
        found: String,
    },
}

/// A dense row-major feature matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMatrix {
    /// Values, row-major.
    pub values: Vec<f64>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl FeatureMatrix {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// Values as f32 (XGBoost's input type).
    pub fn to_f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

impl FeaturePipeline {
    /// Fits the pipeline on training rows of `data` (all rows are training rows).
    pub fn fit(schema: &Schema, data: &Dataset, options: PipelineOptions) -> Self {
        let columns: Vec<&ColumnSpec> = schema.feature_columns().collect();
        let mut inputs = Vec::with_capacity(columns.len());
        let mut feature_names = Vec::new();
        for (j, col) in columns.iter().enumerate() {
            let encoding = if col.is_numeric() {
                let observed: Vec<f64> = data
                    .rows
                    .iter()
                    .filter_map(|r| match r[j] {
                        Value::Number(x) if x.is_finite() => Some(x),
                        _ => None,
                    })
                    .collect();
                feature_names.push(col.name.clone());
                InputEncoding::Numeric {
                    median: median(observed),
                }
            } else {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for r in &data.rows {
                    if let Value::Category(c) = &r[j] {
                        *counts.entry(c.as_str()).or_default() += 1;
                    }
                }
                let mut cats: Vec<(&str, usize)> = counts.into_iter().collect();
                cats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                let categories: Vec<String> =
                    cats.into_iter().map(|(c, _)| c.to_string()).collect();
                feature_names.extend(categories.iter().map(|c| format!("{}={c}", col.name)));
                InputEncoding::OneHot { categories }
            };
            inputs.push(FittedInput {
                name: col.name.clone(),
                encoding,
            });
        }
        let index_of = |name: &str| {
            columns
                .iter()
                .position(|c| c.name == name)
                .expect("schema checked")
        };
        let mut pipeline = FeaturePipeline {
            format: PIPELINE_FORMAT,
            inputs,
            ratios: Vec::new(),
            rotations: Vec::new(),
            scaling: None,
            feature_names,
        };
        // Ratios are fitted on imputed inputs, exactly as they will be computed later.
        for r in &schema.derived {
            let (num, den) = (index_of(&r.numerator), index_of(&r.denominator));
            let values: Vec<f64> = data
                .rows
                .iter()
                .filter_map(|row| {
                    let a = pipeline.numeric_input(num, &row[num]).ok()?;
                    let b = pipeline.numeric_input(den, &row[den]).ok()?;
                    let q = a / b;
                    q.is_finite().then_some(q)
                })
                .collect();
            pipeline.ratios.push(FittedRatio {
                name: r.name.clone(),
                numerator: num,
                denominator: den,
                median: median(values),
            });
            pipeline.feature_names.push(r.name.clone());
        }
        for r in &schema.rotations {
            for &degrees in &r.degrees {
                let theta = degrees.to_radians();
                let names = r.names(degrees);
                pipeline.feature_names.extend(names.iter().cloned());
                pipeline.rotations.push(FittedRotation {
                    names,
                    x: index_of(&r.x),
                    y: index_of(&r.y),
                    cos: theta.cos(),
                    sin: theta.sin(),
                });
            }
        }
        if options.standardize {
            let unscaled = pipeline.transform(data).0;
            let n = unscaled.rows.max(1) as f64;
            let scaling = (0..unscaled.cols)
                .map(|c| {
                    let col = (0..unscaled.rows).map(|r| unscaled.values[r * unscaled.cols + c]);
                    let mean = col.clone().sum::<f64>() / n;
                    let var = col.map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                    let std = var.sqrt();
                    // Guard against overflow on extreme inputs: the JSON form must stay finite.
                    Scaling {
                        mean: if mean.is_finite() { mean } else { 0.0 },
                        std: if std.is_finite() && std > 1e-12 {
                            std
                        } else {
                            1.0
                        },
                    }
                })
                .collect();
            pipeline.scaling = Some(scaling);
        }
        pipeline
    }

    /// Number of output features.
    pub fn width(&self) -> usize {
        self.feature_names.len()
    }

    /// Checks what a loaded pipeline refers to, so that a tampered or mis-built manifest is an
    /// error at load and never an out-of-range index at prediction time: ratio and rotation
    /// inputs exist and are numeric, and the outputs (names, scaling) match what the steps make.
    pub fn check(&self) -> Result<(), String> {
        let numeric = |what: &str, j: usize| match self.inputs.get(j) {
            Some(FittedInput {
                encoding: InputEncoding::Numeric { .. },
                ..
            }) => Ok(()),
            Some(i) => Err(format!(
                "{what} refers to input {j} ('{}'), which is not numeric",
                i.name
            )),
            None => Err(format!(
                "{what} refers to input {j}, but the pipeline has {} inputs",
                self.inputs.len()
            )),
        };
        for r in &self.ratios {
            numeric(&format!("ratio '{}'", r.name), r.numerator)?;
            numeric(&format!("ratio '{}'", r.name), r.denominator)?;
        }
        for r in &self.rotations {
            numeric(&format!("rotation '{}'", r.names[0]), r.x)?;
            numeric(&format!("rotation '{}'", r.names[0]), r.y)?;
        }
        let made: usize = self
            .inputs
            .iter()
            .map(|i| match &i.encoding {
                InputEncoding::Numeric { .. } => 1,
                InputEncoding::OneHot { categories } => categories.len(),
            })
            .sum::<usize>()
            + self.ratios.len()
            + 2 * self.rotations.len();
        if made != self.feature_names.len() {
            return Err(format!(
                "the steps make {made} features but {} feature names are listed",
                self.feature_names.len()
            ));
        }
        if let Some(scaling) = &self.scaling
            && scaling.len() != made
        {
            return Err(format!(
                "{} scaling entries for {made} features",
                scaling.len()
            ));
        }
        Ok(())
    }

    /// Names of the raw inputs a row must list, in order.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|i| i.name.as_str()).collect()
    }

    fn numeric_input(&self, j: usize, v: &Value) -> Result<f64, FeatureError> {
        let InputEncoding::Numeric { median } = self.inputs[j].encoding else {
            unreachable!("ratios only reference numeric inputs")
        };
        match v {
            Value::Number(x) if x.is_finite() => Ok(*x),
            Value::Number(_) | Value::Missing => Ok(median),
            Value::Category(s) => Err(FeatureError::WrongType {
                column: self.inputs[j].name.clone(),
                expected: "a number",
                found: format!("the string {s:?}"),
            }),
        }
    }

    /// Transforms one raw row (values in [`Self::input_names`] order), appending the features to
    /// `out` and counting repairs in `stats`. This is the one code path for training and serving.
    pub fn transform_row(
        &self,
        row: &[Value],
        out: &mut Vec<f64>,
        stats: &mut TransformStats,
    ) -> Result<(), FeatureError> {
        if row.len() != self.inputs.len() {
            return Err(FeatureError::WrongWidth {
                expected: self.inputs.len(),
                names: self.input_names().join(", "),
                found: row.len(),
            });
        }
        let start = out.len();
        for (j, (input, v)) in self.inputs.iter().zip(row).enumerate() {
            match &input.encoding {
                InputEncoding::Numeric { .. } => {
                    if !matches!(v, Value::Number(x) if x.is_finite())
                        && !matches!(v, Value::Category(_))
                    {
                        *stats.imputed.entry(input.name.clone()).or_default() += 1;
                    }
                    out.push(self.numeric_input(j, v)?);
                }
                InputEncoding::OneHot { categories } => {
                    let hit = match v {
                        Value::Category(c) => categories.iter().position(|k| k == c),
                        Value::Missing => None,
                        Value::Number(x) => {
                            return Err(FeatureError::WrongType {
                                column: input.name.clone(),
                                expected: "a category string",
                                found: format!("the number {x}"),
                            });
                        }
                    };
                    if hit.is_none() && matches!(v, Value::Category(_)) {
                        *stats
                            .unseen_categories
                            .entry(input.name.clone())
                            .or_default() += 1;
                    }
                    out.extend(
                        (0..categories.len()).map(|k| if Some(k) == hit { 1.0 } else { 0.0 }),
                    );
                }
            }
        }
        for r in &self.ratios {
            let a = self.numeric_input(r.numerator, &row[r.numerator])?;
            let b = self.numeric_input(r.denominator, &row[r.denominator])?;
            let q = a / b;
            out.push(if q.is_finite() {
                q
            } else {
                *stats.zero_denominators.entry(r.name.clone()).or_default() += 1;
                r.median
            });
        }
        for r in &self.rotations {
            let x = self.numeric_input(r.x, &row[r.x])?;
            let y = self.numeric_input(r.y, &row[r.y])?;
            out.push(x * r.cos + y * r.sin);
            out.push(y * r.cos - x * r.sin);
        }
        if let Some(scaling) = &self.scaling {
            for (x, s) in out[start..].iter_mut().zip(scaling) {
                *x = (*x - s.mean) / s.std;
            }
        }
        Ok(())
    }

    /// Transforms every row of a data set (validated rows cannot fail).
    pub fn transform(&self, data: &Dataset) -> (FeatureMatrix, TransformStats) {
        self.transform_rows(&data.rows)
            .expect("validated data set rows match the schema the pipeline was fitted on")
    }

    /// Transforms raw rows; the error names the row index (0-based) and the column.
    pub fn transform_rows(
        &self,
        rows: &[Vec<Value>],
    ) -> Result<(FeatureMatrix, TransformStats), (usize, FeatureError)> {
        let mut values = Vec::with_capacity(rows.len() * self.width());
        let mut stats = TransformStats::default();
        for (i, row) in rows.iter().enumerate() {
            self.transform_row(row, &mut values, &mut stats)
                .map_err(|e| (i, e))?;
        }
        Ok((
            FeatureMatrix {
                values,
                rows: rows.len(),
                cols: self.width(),
            },
            stats,
        ))
    }

    /// JSON text of the pipeline (f64 values round-trip exactly).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("pipeline serializes")
    }

    /// Parses a pipeline from JSON.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{TargetPolicy, read_csv};
    use proptest::prelude::*;

    fn schema() -> Schema {
        Schema::from_toml(
            r#"
name = "h"
task = "regression"
[target]
column = "y"
[[columns]]
name = "rooms"
type = "float"
nullable = true
[[columns]]
name = "households"
type = "float"
[[columns]]
name = "kind"
type = "categorical"
categories = ["a", "b", "c"]
nullable = true
[[columns]]
name = "y"
type = "float"
role = "target"
[[derived]]
name = "rooms_per_household"
numerator = "rooms"
denominator = "households"
"#,
            "h.toml",
        )
        .unwrap()
    }

    fn data() -> Dataset {
        read_csv(
            &b"rooms,households,kind,y\n10,2,a,1\n,4,b,2\n30,3,a,3\n8,0,a,4\n"[..],
            "d.csv",
            &schema(),
            TargetPolicy::Required,
        )
        .unwrap()
        .0
    }

    #[test]
    fn fits_medians_categories_and_ratios() {
        let p = FeaturePipeline::fit(&schema(), &data(), PipelineOptions::default());
        assert_eq!(
            p.feature_names,
            vec![
                "rooms",
                "households",
                "kind=a",
                "kind=b",
                "rooms_per_household"
            ]
        );
        assert_eq!(
            p.inputs[0].encoding,
            InputEncoding::Numeric { median: 10.0 }
        );
        // ratios on imputed rows: 5, 2.5, 10 (8/0 is skipped) -> median 5
        assert_eq!(p.ratios[0].median, 5.0);
    }

    #[test]
    fn rotations_append_two_features_per_angle_from_imputed_inputs() {
        let (schema_fn, data_fn) = (schema, data);
        let text = r#"
name = "geo"
task = "regression"
[target]
column = "y"
[[columns]]
name = "lon"
type = "float"
[[columns]]
name = "lat"
type = "float"
nullable = true
[[columns]]
name = "y"
type = "float"
role = "target"
[[rotations]]
x = "lon"
y = "lat"
degrees = [30.0, 45.0]
"#;
        let schema = Schema::from_toml(text, "geo.toml").unwrap();
        let data = read_csv(
            &b"lon,lat,y
-122,38,1
-118,,2
-120,34,3
"[..],
            "g.csv",
            &schema,
            TargetPolicy::Required,
        )
        .unwrap()
        .0;
        let p = FeaturePipeline::fit(&schema, &data, PipelineOptions::default());
        assert_eq!(
            p.feature_names,
            vec![
                "lon",
                "lat",
                "lon_lat_rot30_u",
                "lon_lat_rot30_v",
                "lon_lat_rot45_u",
                "lon_lat_rot45_v"
            ]
        );
        let (x, _) = p.transform(&data);
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        assert_eq!(x.values[2], -122.0 * c + 38.0 * s);
        assert_eq!(x.values[3], 38.0 * c + 122.0 * s);
        // The missing latitude is imputed (median 36) before rotating.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((x.values[6 + 4] - (-118.0 * h + 36.0 * h)).abs() < 1e-12);
        // Saved and loaded, it replays the same bits; a pipeline with a field this build does
        // not know is refused rather than computing fewer features.
        let json = serde_json::to_string(&p).unwrap();
        let back: FeaturePipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back.transform(&data).0.values, x.values);
        let newer = json.replacen("{", "{\"spline_features\":[],", 1);
        assert!(serde_json::from_str::<FeaturePipeline>(&newer).is_err());
        // Pipelines without rotations serialize as before (no `rotations` key).
        let plain = FeaturePipeline::fit(&schema_fn(), &data_fn(), PipelineOptions::default());
        assert!(!serde_json::to_string(&plain).unwrap().contains("rotations"));
    }

    #[test]
    fn unseen_category_is_all_zeros_and_counted() {
        let p = FeaturePipeline::fit(&schema(), &data(), PipelineOptions::default());
        let mut out = Vec::new();
        let mut stats = TransformStats::default();
        let row = vec![
            Value::Missing,
            Value::Number(0.0),
            Value::Category("c".into()),
        ];
        p.transform_row(&row, &mut out, &mut stats).unwrap();
        assert_eq!(out, vec![10.0, 0.0, 0.0, 0.0, 5.0]);
        assert_eq!(stats.unseen_categories["kind"], 1);
        assert_eq!(stats.imputed["rooms"], 1);
        assert_eq!(stats.zero_denominators["rooms_per_household"], 1);
    }

    #[test]
    fn wrong_types_and_widths_name_the_problem() {
        let p = FeaturePipeline::fit(&schema(), &data(), PipelineOptions::default());
        let mut out = Vec::new();
        let mut st = TransformStats::default();
        let e = p
            .transform_row(
                &[
                    Value::Category("x".into()),
                    Value::Number(1.0),
                    Value::Missing,
                ],
                &mut out,
                &mut st,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "column 'rooms': expected a number, got the string \"x\""
        );
        let e = p
            .transform_row(&[Value::Missing], &mut out, &mut st)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("expected 3 input values (rooms, households, kind), got 1")
        );
    }

    #[test]
    fn standardized_training_features_have_zero_mean() {
        let d = data();
        let p = FeaturePipeline::fit(&schema(), &d, PipelineOptions { standardize: true });
        let (m, _) = p.transform(&d);
        for c in 0..m.cols {
            let mean: f64 =
                (0..m.rows).map(|r| m.values[r * m.cols + c]).sum::<f64>() / m.rows as f64;
            assert!(mean.abs() < 1e-12);
        }
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Missing),
            any::<f64>().prop_map(Value::Number),
            (-1e9f64..1e9).prop_map(Value::Number),
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("zz")]
                .prop_map(|s| Value::Category(s.into())),
        ]
    }

    fn typed_row() -> impl Strategy<Value = Vec<Value>> {
        (value_strategy(), value_strategy(), value_strategy()).prop_map(|(a, b, c)| {
            let num = |v: Value| match v {
                Value::Category(_) => Value::Missing,
                v => v,
            };
            let cat = |v: Value| match v {
                Value::Number(_) => Value::Category("b".into()),
                v => v,
            };
            vec![num(a), num(b), cat(c)]
        })
    }

    proptest! {
        #[test]
        fn round_trip_replays_bit_identical_features(
            rows in proptest::collection::vec(typed_row(), 1..40),
            standardize in any::<bool>(),
        ) {
            let p = FeaturePipeline::fit(&schema(), &data(), PipelineOptions { standardize });
            let restored = FeaturePipeline::from_json(&p.to_json()).unwrap();
            prop_assert_eq!(&restored, &p);
            let (a, sa) = p.transform_rows(&rows).unwrap();
            let (b, sb) = restored.transform_rows(&rows).unwrap();
            let bits = |m: &FeatureMatrix| m.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&a), bits(&b));
            prop_assert_eq!(sa, sb);
        }

        #[test]
        fn fitted_on_random_data_round_trips(
            rows in proptest::collection::vec(typed_row(), 2..30),
        ) {
            let mut d = data();
            d.labels = vec![0.0; rows.len()];
            d.lines = vec![0; rows.len()];
            d.rows = rows.clone();
            let p = FeaturePipeline::fit(&schema(), &d, PipelineOptions { standardize: true });
            let restored = FeaturePipeline::from_json(&p.to_json()).unwrap();
            let (a, _) = p.transform_rows(&rows).unwrap();
            let (b, _) = restored.transform_rows(&rows).unwrap();
            let bits = |m: &FeatureMatrix| m.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&a), bits(&b));
        }
    }
}
