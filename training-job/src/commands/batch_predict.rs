//! `mlops batch-predict`: the batch-prediction job (the container AWS Batch runs for the batch
//! function's jobs, or a local command). It reads a CSV input from S3 or disk, validates every
//! row (bad rows go to an errors file with row number and reason; they do not stop the job),
//! predicts with the pure-Rust engine, and writes the output in parts of `--part-rows` rows, each
//! followed by a checkpoint. Killed at any point and restarted, it resumes after the last
//! committed part; parts are deterministic, so the output is byte-identical to an uninterrupted
//! run.
//!
//! Output layout (under the output prefix): `part-NNNNN.csv` (`row,id,prediction[,label]`),
//! `errors-NNNNN.csv` (`row,line,field,message`) where a part had bad rows, and
//! `_checkpoint.json` ([`Checkpoint`]: rows done and total, parts, rejected rows, complete).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mlops_domain::data::{RowParser, Value};
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::{BatchJob, Checkpoint, checkpoint_key, job_key, output_prefix};
use mlops_domain::registry::CHAMPION;
use mlops_domain::schema::Task;
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_engine::{EngineError, Predictor};

use crate::commands::registry::resolve_version;
use crate::config::Settings;

/// Arguments of `mlops batch-predict`.
#[derive(Debug, clap::Args)]
pub struct BatchPredictArgs {
    /// A job record in the registry store (`s3://…/batch-jobs/ID/job.json`, what the batch
    /// function submits): model, version, input and output come from it.
    #[arg(long, conflicts_with_all = ["model", "input", "output"])]
    pub job: Option<String>,
    /// Model name.
    #[arg(long, required_unless_present = "job")]
    pub model: Option<String>,
    /// Version number or alias.
    #[arg(long, default_value = CHAMPION)]
    pub version: String,
    /// Input CSV: a file or s3://bucket/key.
    #[arg(long, required_unless_present = "job")]
    pub input: Option<String>,
    /// Output: a directory or s3://bucket/prefix.
    #[arg(long, required_unless_present = "job")]
    pub output: Option<String>,
    /// Rows per output part (and per checkpoint).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub part_rows: u64,
}

/// Where the output goes: a store and a key prefix in it.
struct Output {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

/// The checkpoint object's name inside the output prefix.
const CHECKPOINT: &str = "_checkpoint.json";

impl Output {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Writes (or overwrites) `name` under the output prefix.
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.key(name), bytes, PutCondition::None)
            .await?;
        Ok(())
    }
}

async fn read_input(uri: &str, settings: &Settings) -> Result<Vec<u8>> {
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("input '{uri}' is not s3://bucket/key"))?;
        let store =
            mlops_store::open_store(&format!("s3://{bucket}"), settings.s3_endpoint.clone())
                .await?;
        let object = store
            .get(key)
            .await?
            .with_context(|| format!("input {uri} does not exist"))?;
        Ok(object.bytes)
    } else {
        std::fs::read(uri).with_context(|| format!("cannot read the input {uri}"))
    }
}

/// Runs the job.
pub async fn run(args: BatchPredictArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    let (model, version, input, output) = match &args.job {
        Some(uri) => {
            let id = uri
                .strip_suffix("/job.json")
                .and_then(|p| p.rsplit('/').next())
                .with_context(|| format!("--job {uri}: expected …/batch-jobs/ID/job.json"))?;
            let store = registry.store();
            if store.uri(&job_key(id)) != *uri {
                bail!(
                    "--job {uri} is not in the configured registry store {} (set MLOPS_STORE)",
                    store.describe()
                );
            }
            let object = store
                .get(&job_key(id))
                .await?
                .with_context(|| format!("job record {uri} does not exist"))?;
            let job: BatchJob = serde_json::from_slice(&object.bytes)
                .with_context(|| format!("job record {uri} is not valid"))?;
            let output = Output {
                store: Arc::clone(store),
                prefix: output_prefix(id),
            };
            debug_assert_eq!(output.key(CHECKPOINT), checkpoint_key(id));
            (job.model, job.version, job.input_uri, output)
        }
        None => {
            let model = args.model.clone().unwrap_or_default();
            let version = resolve_version(&registry, &model, &args.version).await?;
            let out = args.output.clone().unwrap_or_default();
            let store = mlops_store::open_store(&out, settings.s3_endpoint.clone())
                .await
                .with_context(|| format!("cannot open the output {out}"))?;
            (
                model,
                version,
                args.input.clone().unwrap_or_default(),
                Output {
                    store,
                    prefix: String::new(),
                },
            )
        }
    };
    let started = Instant::now();
    let record = registry.version(&model, version).await?;
    let bundle = registry.load_bundle(&record).await?;
    let predictor = Predictor::from_bundle(&bundle)?;
    let schema = &bundle.manifest.schema;
    let bytes = read_input(&input, settings).await?;
    let fingerprint = sha256_hex(
        format!(
            "{model}\n{version}\n{}\n{input}\n{}\n{}",
            bundle.digest(),
            sha256_hex(&bytes),
            args.part_rows
        )
        .as_bytes(),
    );

    let checkpoint_key = output.key(CHECKPOINT);
    let mut checkpoint = match output.store.get(&checkpoint_key).await? {
        Some(obj) => {
            let c: Checkpoint = serde_json::from_slice(&obj.bytes).with_context(|| {
                format!(
                    "{} is not a valid checkpoint",
                    output.store.uri(&checkpoint_key)
                )
            })?;
            if c.fingerprint != fingerprint {
                bail!(
                    "{} belongs to another job (different model, input or part size): use another output",
                    output.store.uri(&checkpoint_key)
                );
            }
            c
        }
        None => Checkpoint {
            fingerprint: fingerprint.clone(),
            ..Checkpoint::default()
        },
    };
    if checkpoint.complete {
        eprintln!(
            "already complete: {} rows, {} rejected, {} parts in {}",
            checkpoint.rows_done,
            checkpoint.rows_rejected,
            checkpoint.parts.len(),
            output.store.uri(&output.prefix)
        );
        return Ok(());
    }
    // Progress total until the end: data lines (a quoted newline would make it an estimate).
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64
        + u64::from(bytes.last().is_some_and(|&b| b != b'\n'));
    checkpoint.rows_total = Some(lines.saturating_sub(1));
    let resumed_at = checkpoint.rows_done;
    if resumed_at > 0 {
        eprintln!(
            "resuming after row {resumed_at} ({} parts committed)",
            checkpoint.parts.len()
        );
    }

    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..]);
    let header = reader
        .headers()
        .with_context(|| format!("{input}: cannot read the header"))?
        .clone();
    let parser = RowParser::new(&header, &input, schema)?;
    let classification = bundle.manifest.task == Task::BinaryClassification;
    let mut records = reader.into_records();
    let mut row = 0u64;
    // Skip what committed parts hold.
    while row < resumed_at {
        match records.next() {
            Some(_) => row += 1,
            None => break,
        }
    }
    let mut part = Vec::with_capacity(args.part_rows as usize);
    loop {
        part.clear();
        let first_row = row;
        while (part.len() as u64) < args.part_rows {
            match records.next() {
                Some(r) => {
                    row += 1;
                    part.push(r);
                }
                None => break,
            }
        }
        if part.is_empty() {
            break;
        }
        let index = checkpoint.parts.len();
        let (body, errors, rejected) =
            predict_part(&predictor, &parser, &part, first_row, classification)?;
        let name = format!("part-{index:05}.csv");
        output.put(&name, body).await?;
        if let Some(errors) = errors {
            output
                .put(&format!("errors-{index:05}.csv"), errors)
                .await?;
        }
        checkpoint.parts.push(name);
        checkpoint.rows_done = row;
        checkpoint.rows_rejected += rejected;
        output
            .put(CHECKPOINT, serde_json::to_vec_pretty(&checkpoint)?)
            .await?;
        eprintln!(
            "part {index}: rows {}–{row} committed ({rejected} rejected)",
            first_row + 1
        );
    }
    checkpoint.rows_total = Some(row);
    checkpoint.complete = true;
    output
        .put(CHECKPOINT, serde_json::to_vec_pretty(&checkpoint)?)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "done: {row} rows ({} rejected) with {model} v{version} in {seconds:.2} s ({:.0} rows/s this run) → {}",
        checkpoint.rows_rejected,
        (row - resumed_at) as f64 / seconds,
        output.store.uri(&output.prefix)
    );
    Ok(())
}

/// Validates and predicts one part; returns the part CSV, the errors CSV (if any row was bad)
/// and the number of rejected rows.
fn predict_part(
    predictor: &Predictor,
    parser: &RowParser<'_>,
    records: &[Result<csv::StringRecord, csv::Error>],
    first_row: u64,
    classification: bool,
) -> Result<(Vec<u8>, Option<Vec<u8>>, u64)> {
    let mut rows: Vec<Vec<Value>> = Vec::with_capacity(records.len());
    let mut keep: Vec<(u64, Option<String>)> = Vec::with_capacity(records.len());
    let mut errors = csv::Writer::from_writer(Vec::new());
    errors.write_record(["row", "line", "field", "message"])?;
    let mut rejected = 0u64;
    for (i, record) in records.iter().enumerate() {
        let row_number = first_row + i as u64 + 1;
        match record {
            Ok(r) => match parser.parse(r) {
                Ok(parsed) => {
                    rows.push(parsed.values);
                    keep.push((row_number, parsed.id));
                }
                Err(problems) => {
                    rejected += 1;
                    let line = r.position().map_or(0, |p| p.line()).to_string();
                    for p in problems {
                        errors.write_record([
                            &row_number.to_string(),
                            &line,
                            &p.field,
                            &p.message,
                        ])?;
                    }
                }
            },
            Err(e) => {
                rejected += 1;
                let line = e.position().map_or(0, |p| p.line()).to_string();
                errors.write_record([&row_number.to_string(), &line, "(row)", &e.to_string()])?;
            }
        }
    }
    // Rows the pipeline refuses (after validation) are rejected one at a time.
    let predictions = loop {
        match predict_parallel(predictor, &rows) {
            Ok(p) => break p,
            Err(EngineError::Feature { row, source }) if row < rows.len() => {
                rejected += 1;
                let (number, _) = keep.remove(row);
                rows.remove(row);
                errors.write_record([
                    &number.to_string(),
                    "",
                    "(features)",
                    &source.to_string(),
                ])?;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::with_capacity(keep.len() * 32);
    out.extend_from_slice(if classification {
        b"row,id,prediction,label\n".as_slice()
    } else {
        b"row,id,prediction\n".as_slice()
    });
    for ((number, id), p) in keep.iter().zip(&predictions) {
        use std::io::Write;
        let id = id.as_deref().unwrap_or("");
        let id = if id.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", id.replace('"', "\"\""))
        } else {
            id.to_string()
        };
        if classification {
            writeln!(out, "{number},{id},{p},{}", u8::from(*p >= 0.5))?;
        } else {
            writeln!(out, "{number},{id},{p}")?;
        }
    }
    let errors = errors.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((out, (rejected > 0).then_some(errors), rejected))
}

/// Predicts on the available cores (halves of the rows on two threads, and so on); the result
/// is the same as one call.
fn predict_parallel(predictor: &Predictor, rows: &[Vec<Value>]) -> Result<Vec<f64>, EngineError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16);
    if threads == 1 || rows.len() < 2_000 {
        return Ok(predictor.predict(rows)?.0);
    }
    let chunk = rows.len().div_ceil(threads);
    let results: Vec<Result<Vec<f64>, EngineError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|c| scope.spawn(move || predictor.predict(c).map(|(p, _)| p)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("prediction threads do not panic"))
            .collect()
    });
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(p) => out.extend(p),
            Err(EngineError::Feature { row, source }) => {
                return Err(EngineError::Feature {
                    row: row + i * chunk,
                    source,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
