//! `mlops feedback import`: a file of labels (CSV `request_id,record,actual,observed_at` or JSON
//! lines; `.gz` too) validated row by row and stored in the feedback layout the monitor reads,
//! the same as labels sent to `POST /v1/models/{name}/feedback`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mlops_domain::feedback::{self, Feedback};
use mlops_domain::predlog;
use mlops_domain::store::PutCondition;

use crate::commands::registry::ensure_model;
use crate::config::Settings;

/// Labels per stored object.
const LABELS_PER_OBJECT: usize = 100_000;
/// Most row problems printed.
const MAX_PROBLEMS: usize = 20;

/// `mlops feedback`.
#[derive(Args, Debug)]
pub struct FeedbackArgs {
    #[command(subcommand)]
    command: FeedbackCommand,
}

#[derive(Subcommand, Debug)]
enum FeedbackCommand {
    /// Validate a file of labels and store it for the monitor (nothing is stored if a row is
    /// invalid).
    Import {
        /// Model the labels are for.
        #[arg(long)]
        model: String,
        /// CSV with a header (request_id, record, actual, observed_at) or JSON lines; .gz too.
        file: PathBuf,
    },
}

/// Runs the command.
pub async fn run(args: FeedbackArgs, settings: &Settings) -> Result<()> {
    match args.command {
        FeedbackCommand::Import { model, file } => import(settings, &model, &file).await,
    }
}

async fn import(settings: &Settings, model: &str, file: &std::path::Path) -> Result<()> {
    let registry = settings.registry().await?;
    ensure_model(&registry, model).await?;
    let schema = mlops_monitor::latest_schema(&registry, model).await?;
    let name = file.display().to_string();
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {name}"))?;
    let now = chrono::Utc::now();
    let rows = feedback::items(&name, bytes).with_context(|| format!("{name} is not readable"))?;
    let (labels, problems) = validate(&schema, rows, now);
    if !problems.is_empty() {
        let shown: Vec<&str> = problems
            .iter()
            .take(MAX_PROBLEMS)
            .map(String::as_str)
            .collect();
        bail!(
            "{name}: {} invalid row{}, nothing stored:\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            shown.join("\n  ")
        );
    }
    if labels.is_empty() {
        bail!("{name} holds no labels");
    }
    for chunk in labels.chunks(LABELS_PER_OBJECT) {
        let lines = feedback::to_lines(chunk);
        let id = &mlops_domain::hashing::sha256_hex(&lines)[..32];
        let key = predlog::object_key_under(feedback::PREFIX, model, now, id);
        let body = predlog::encode(&lines);
        registry
            .store()
            .put(&key, body, PutCondition::None)
            .await
            .with_context(|| format!("cannot write {}", registry.store().uri(&key)))?;
    }
    println!("{} labels for {model} stored from {name}", labels.len());
    Ok(())
}

/// The labels, or each invalid row (1-based data row, as an editor shows it after the header).
fn validate(
    schema: &mlops_domain::schema::Schema,
    rows: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<Feedback>, Vec<String>) {
    let (mut labels, mut problems) = (Vec::with_capacity(rows.len()), Vec::new());
    for (i, row) in rows.into_iter().enumerate() {
        match row.map(|r| feedback::from_json(schema, &r, now)) {
            Some(Ok(label)) => labels.push(label),
            Some(Err(errors)) => problems.extend(
                errors
                    .into_iter()
                    .map(|e| format!("row {}: '{}' {}", i + 1, e.field, e.message)),
            ),
            None => problems.push(format!("row {}: not a record", i + 1)),
        }
    }
    (labels, problems)
}
