//! `mlops predict`: rows from CSV or JSON through a registered model, evaluated by the pure-Rust
//! inference engine (no native library). The output is the API's: one prediction per row with
//! its 1-based `row`, `id`, `prediction` and, for classifiers, `label` and `probabilities`;
//! every bad row is reported (row, line, field, message), as the API lists every bad field.
//!
//! Exit status: 0 every row predicted; 3 some rows skipped with `--skip-invalid`; 1 bad rows
//! without `--skip-invalid` (nothing is predicted) or any other error.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mlops_domain::artifact::Bundle;
use mlops_domain::data::{RowParser, Value, record_from_json};
use mlops_domain::registry::CHAMPION;
use mlops_domain::schema::Task;
use mlops_engine::Predictor;
use mlops_serving::api::{ExplanationOut, PredictionOut};

use crate::commands::batch_predict::predict_each;
use crate::commands::registry::resolve_version;
use crate::config::Settings;
use crate::exit::ExitWith;

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
    /// Predict the valid rows and skip the bad ones (listed on stderr or in --errors; exit
    /// status 3) instead of stopping before predicting anything.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Write the bad rows' problems to this CSV file (row,line,field,message).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Output format: json (one JSON object per line, the API's prediction shape), csv (batch
    /// prediction's columns) or table.
    #[arg(long, default_value = "json", value_parser = ["json", "csv", "table"])]
    pub format: String,
    /// Write the predictions to this file instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One input row that could be read: its number, id and values.
struct InputRow {
    row: usize,
    id: Option<String>,
    values: Vec<Value>,
}

/// One problem with one input row.
struct RowProblem {
    row: usize,
    /// File line (CSV), when known.
    line: Option<u64>,
    field: String,
    message: String,
}

/// Reads every row, keeping the valid ones and listing the problems of the others.
fn read_rows(bundle: &Bundle, args: &PredictArgs) -> Result<(Vec<InputRow>, Vec<RowProblem>)> {
    let schema = &bundle.manifest.schema;
    let (mut rows, mut problems) = (Vec::new(), Vec::new());
    if let Some(path) = &args.csv {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {name}"))?;
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
        let header = reader
            .headers()
            .with_context(|| format!("{name}: cannot read the header"))?
            .clone();
        let parser = RowParser::new(&header, &name, schema)?;
        for (i, record) in reader.records().enumerate() {
            let row = i + 1;
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    let line = e.position().map(|p| p.line());
                    problems.push(RowProblem {
                        row,
                        line,
                        field: "(row)".into(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let line = record.position().map(|p| p.line());
            match parser.parse(&record) {
                Ok(parsed) => rows.push(InputRow {
                    row,
                    id: parsed.id,
                    values: parsed.values,
                }),
                Err(errors) => problems.extend(errors.into_iter().map(|e| RowProblem {
                    row,
                    line,
                    field: e.field,
                    message: e.message,
                })),
            }
        }
        return Ok((rows, problems));
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
    let id_column = schema.id_column().map(|c| c.name.clone());
    for (i, record) in records.iter().enumerate() {
        let row = i + 1;
        let Some(obj) = record.as_object() else {
            problems.push(RowProblem {
                row,
                line: None,
                field: "(record)".into(),
                message: "not a JSON object".into(),
            });
            continue;
        };
        match record_from_json(schema, obj) {
            Ok(values) => rows.push(InputRow {
                row,
                id: id_column
                    .as_ref()
                    .and_then(|c| obj.get(c))
                    .and_then(|v| v.as_str().map(str::to_string)),
                values,
            }),
            Err(errors) => problems.extend(errors.into_iter().map(|e| RowProblem {
                row,
                line: None,
                field: e.field,
                message: e.message,
            })),
        }
    }
    Ok((rows, problems))
}

/// Predicts raw rows with a bundle through the pure-Rust engine.
#[cfg(feature = "train")]
pub fn predict_rows(bundle: &Bundle, rows: &[Vec<Value>]) -> Result<Vec<f64>> {
    let predictor = Predictor::from_bundle(bundle)?;
    Ok(predictor.predict(rows)?.0)
}

/// Writes the problems as CSV (`row,line,field,message`, batch prediction's errors file).
fn write_problems(problems: &[RowProblem], out: impl Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["row", "line", "field", "message"])?;
    for p in problems {
        let line = p.line.map_or(String::new(), |l| l.to_string());
        w.write_record([&p.row.to_string(), &line, &p.field, &p.message])?;
    }
    w.flush()?;
    Ok(())
}

/// Lists problems for a person: at most 20 lines, then a count.
fn describe_problems(problems: &[RowProblem]) -> String {
    let mut rows: Vec<usize> = problems.iter().map(|p| p.row).collect();
    rows.dedup();
    let mut out = format!(
        "{} invalid row{} ({} problem{}):",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(20) {
        let line = p.line.map_or(String::new(), |l| format!(" (line {l})"));
        out += &format!("\n  row {}{line}: '{}' {}", p.row, p.field, p.message);
    }
    if problems.len() > 20 {
        out += &format!("\n  … and {} more", problems.len() - 20);
    }
    out
}

/// Renders predictions in the chosen format.
fn render(
    predictions: &[PredictionOut],
    format: &str,
    classes: Option<&(String, String)>,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        "json" => {
            for p in predictions {
                serde_json::to_writer(&mut *out, p)?;
                writeln!(out)?;
            }
        }
        "csv" => {
            let mut w = csv::Writer::from_writer(out);
            let mut header = vec!["row".to_string(), "id".into(), "prediction".into()];
            if let Some(c) = classes {
                header.push("label".into());
                header.extend(mlops_serving::api::ClassOutcome::probability_columns(c));
            }
            w.write_record(&header)?;
            for p in predictions {
                let mut fields = vec![
                    p.row.to_string(),
                    p.id.clone().unwrap_or_default(),
                    p.prediction.to_string(),
                ];
                if let (Some(label), Some(probabilities)) = (&p.label, &p.probabilities) {
                    fields.push(label.clone());
                    fields.extend(probabilities.values().map(f64::to_string));
                }
                w.write_record(&fields)?;
            }
            w.flush()?;
        }
        _ => {
            let rows: Vec<Vec<String>> = predictions
                .iter()
                .map(|p| {
                    let mut cells = vec![
                        p.row.to_string(),
                        p.id.clone().unwrap_or_default(),
                        format!("{:.6}", p.prediction),
                    ];
                    if let Some(label) = &p.label {
                        cells.push(label.clone());
                    }
                    cells
                })
                .collect();
            let mut header = vec!["ROW", "ID", "PREDICTION"];
            if classes.is_some() {
                header.push("LABEL");
            }
            let text = crate::commands::registry::table(&header, &rows);
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// Runs `mlops predict`.
pub async fn run(args: PredictArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    let version = resolve_version(&registry, &args.model, &args.version).await?;
    let record = registry.version(&args.model, version).await?;
    let bundle = registry.load_bundle(&record).await?;
    let (rows, mut problems) = read_rows(&bundle, &args)?;
    if !problems.is_empty() && !args.skip_invalid {
        if let Some(path) = &args.errors {
            write_problems(&problems, std::fs::File::create(path)?)?;
        }
        bail!(
            "{}\nnothing was predicted; fix the rows, or pass --skip-invalid to predict the others",
            describe_problems(&problems)
        );
    }
    let predictor = Predictor::from_bundle(&bundle)?;
    let classes = (bundle.manifest.task == Task::BinaryClassification)
        .then(|| bundle.manifest.schema.class_names());
    let (numbered, values): (Vec<_>, Vec<_>) =
        rows.into_iter().map(|r| ((r.row, r.id), r.values)).unzip();
    // One pass, as batch prediction does: a row the pipeline refuses is reported, not fatal.
    let scored = predict_each(&predictor, &values)?;
    let mut predictions = Vec::with_capacity(values.len());
    for (((row, id), values), p) in numbered.into_iter().zip(&values).zip(scored) {
        let p = match p {
            Ok(p) => p,
            Err(message) => {
                problems.push(RowProblem {
                    row,
                    line: None,
                    field: "(features)".into(),
                    message,
                });
                continue;
            }
        };
        let explanation = if args.explain {
            Some(ExplanationOut::from_engine(predictor.explain(values)?))
        } else {
            None
        };
        predictions.push(PredictionOut::new(
            row,
            id,
            p,
            classes.as_ref(),
            explanation,
        ));
    }
    match &args.output {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            );
            render(&predictions, &args.format, classes.as_ref(), &mut file)?;
            file.flush()?;
        }
        None => {
            let stdout = std::io::stdout();
            render(
                &predictions,
                &args.format,
                classes.as_ref(),
                &mut stdout.lock(),
            )?;
        }
    }
    eprintln!(
        "model {} version {} ({}): {} rows predicted",
        args.model,
        version,
        bundle.manifest.model_kind,
        predictions.len()
    );
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort_by_key(|p| p.row);
    match &args.errors {
        Some(path) => write_problems(&problems, std::fs::File::create(path)?)?,
        None => eprintln!("{}", describe_problems(&problems)),
    }
    Err(ExitWith {
        code: 3,
        message: format!(
            "skipped {} invalid rows{}: exit status 3",
            {
                let mut rows: Vec<usize> = problems.iter().map(|p| p.row).collect();
                rows.dedup();
                rows.len()
            },
            args.errors
                .as_ref()
                .map_or(String::new(), |p| format!(" (listed in {})", p.display()))
        ),
    }
    .into())
}
