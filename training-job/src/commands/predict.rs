//! `mlops predict`: rows from CSV or JSON through a registered model, evaluated by the pure-Rust
//! inference engine (no native library).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mlops_domain::artifact::Bundle;
use mlops_domain::data::{TargetPolicy, Value, read_csv, record_from_json};
use mlops_domain::registry::CHAMPION;
use mlops_domain::schema::Task;
use mlops_engine::Predictor;

use crate::commands::registry::resolve_version;
use crate::config::Settings;

/// Arguments of `mlops predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model name.
    pub model: String,
    /// Version number or alias.
    #[arg(long, default_value = CHAMPION)]
    pub version: String,
    /// Input rows: a CSV file with the model's input columns (target and id optional).
    #[arg(long, conflicts_with = "json")]
    pub csv: Option<PathBuf>,
    /// Input rows: a JSON file (`-` for standard input) holding one object or a list of objects.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Add per-feature contributions (TreeSHAP for trees, exact for linear models) to each row.
    #[arg(long)]
    pub explain: bool,
}

/// One prediction.
#[derive(Debug, serde::Serialize)]
pub struct Prediction {
    /// Row id (from the id column) or 1-based row number.
    pub row: String,
    /// Value (regression) or positive-class probability (classification).
    pub prediction: f64,
    /// Class at threshold 0.5 (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<bool>,
    /// Contributions in margin space, with the bias, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<mlops_engine::Explanation>,
}

/// Parses rows from CSV or JSON against the bundle's schema.
fn read_rows(bundle: &Bundle, args: &PredictArgs) -> Result<(Vec<Vec<Value>>, Vec<String>)> {
    let schema = &bundle.manifest.schema;
    if let Some(path) = &args.csv {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let (data, report) = read_csv(
            file,
            &path.display().to_string(),
            schema,
            TargetPolicy::Optional,
        )?;
        if !report.is_valid() {
            bail!("{report}");
        }
        let ids = if data.ids.is_empty() {
            data.lines.iter().map(|l| format!("line {l}")).collect()
        } else {
            data.ids
        };
        return Ok((data.rows, ids));
    }
    let (text, origin) = match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read standard input")?;
            (s, "standard input".to_string())
        }
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            p.display().to_string(),
        ),
        None => bail!("give the rows with --csv FILE or --json FILE"),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{origin}: invalid JSON"))?;
    let records = match value {
        serde_json::Value::Array(items) => items,
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => bail!("{origin}: expected an object or a list of objects"),
    };
    let mut rows = Vec::with_capacity(records.len());
    let mut ids = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let obj = record
            .as_object()
            .with_context(|| format!("{origin}: record {} is not an object", i + 1))?;
        match record_from_json(schema, obj) {
            Ok(values) => rows.push(values),
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                bail!("{origin}: record {}: {}", i + 1, list.join("; "));
            }
        }
        let id = schema
            .id_column()
            .and_then(|c| obj.get(&c.name))
            .and_then(|v| v.as_str())
            .map_or_else(|| (i + 1).to_string(), str::to_string);
        ids.push(id);
    }
    Ok((rows, ids))
}

/// Predicts raw rows with a bundle through the pure-Rust engine.
pub fn predict_rows(bundle: &Bundle, rows: &[Vec<Value>]) -> Result<Vec<f64>> {
    let predictor = Predictor::from_bundle(bundle)?;
    Ok(predictor.predict(rows)?.0)
}

/// Runs `mlops predict`, printing JSON lines.
pub async fn run(args: PredictArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    let version = resolve_version(&registry, &args.model, &args.version).await?;
    let record = registry.version(&args.model, version).await?;
    let bundle = registry.load_bundle(&record).await?;
    let (rows, ids) = read_rows(&bundle, &args)?;
    let predictor = Predictor::from_bundle(&bundle)?;
    let (predictions, _) = predictor.predict(&rows)?;
    for ((id, p), row) in ids.into_iter().zip(predictions).zip(&rows) {
        let explanation = if args.explain {
            Some(predictor.explain(row)?)
        } else {
            None
        };
        let out = Prediction {
            row: id,
            prediction: p,
            label: (bundle.manifest.task == Task::BinaryClassification).then_some(p >= 0.5),
            explanation,
        };
        println!("{}", serde_json::to_string(&out)?);
    }
    eprintln!(
        "model {} version {} ({})",
        args.model, version, bundle.manifest.model_kind
    );
    Ok(())
}
