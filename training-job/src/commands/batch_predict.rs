//! `mlops batch-predict`: the batch-prediction job (the container AWS Batch runs for the batch
//! function's jobs, or a local command). It streams a CSV input from S3 (ranged GETs pinned to
//! the object's ETag) or disk, validates every row (bad rows go to an errors file with row, line
//! and reason; they do not stop the job), predicts with the pure-Rust engine, and writes the
//! output in parts of `--part-rows` rows, each followed by a checkpoint. Reading, predicting (on
//! all cores) and writing run at once, on threads of their own, a part's rows predicted as they
//! arrive. Memory is bounded by about three parts (one written, one predicted, up to one read
//! ahead) and a read chunk, whatever the input's size.
//!
//! Killed at any point and restarted, it resumes at the byte offset after the last committed part;
//! parts are deterministic, so the output is byte-identical to an uninterrupted run. Each run
//! takes the next *generation* of the checkpoint by compare-and-swap and commits only while it is
//! still the latest, so two runs of one job (an AWS Batch retry beside a slow attempt) never move
//! the checkpoint backwards: the older one stops, the newer one finishes.
//!
//! Output layout (under the output prefix): `part-NNNNN.csv` (`row,id[,copied columns],prediction`
//! and, for classifiers, `label,probability_CLASS…` — the class names and probabilities the API
//! reports), `errors-NNNNN.csv` (`row,line,field,message`) where a part had bad rows, and
//! `_checkpoint.json` ([`Checkpoint`]).
//!
//! With `--shards N` one job is spread over an AWS Batch array job whose children each write a
//! contiguous share of the parts, the output a single run writes ([`crate::commands::batch_shards`]):
//! `_shards.json` holds the plan and `_checkpoint-IIIII.json` each shard's checkpoint; the last
//! child to finish writes `_checkpoint.json`.
//!
//! A quoted field left open (an unterminated quote) cannot swallow the rest of the input: a
//! quoted field may span at most `--max-quoted-lines` lines, past which the job stops naming the
//! line where the field began; a shorter one makes its row rejected with that line.
//!
//! Exit status: 0 every row predicted; 3 finished with rejected rows (listed in `errors-*.csv`;
//! not with `--job`, where the checkpoint reports them); 4 more rows rejected than
//! `--max-rejected` allows (the output so far is kept and resumable); 1 any other error.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mlops_domain::data::{RowParser, Value};
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::{
    BatchJob, Checkpoint, JobQueue, PartStart, SHARD_PLAN, SHARD_PLAN_LOCK, ShardPlan,
    checkpoint_key, job_key, output_prefix, shard_checkpoint_name,
};
use mlops_domain::registry::CHAMPION;
use mlops_domain::schema::{Schema, Task};
use mlops_domain::store::{ETag, ObjectStore, ObjectVersion, PutCondition, StoreError};
use mlops_engine::{EngineError, Predictor};
use tokio::runtime::Handle;

use crate::commands::batch_shards::ArrayJob;
use crate::commands::registry::resolve_version;
use crate::config::{Settings, array_index};
use crate::exit::ExitWith;

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
    /// A part also ends once it holds this many MiB of input, so memory stays bounded whatever
    /// the rows' width (parts stay small enough for one PUT each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub part_mib: u64,
    /// MiB per ranged GET of an S3 input; two are held at once (one read, one fetched ahead).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub read_chunk_mib: u64,
    /// Input columns to copy into the output beside each prediction (e.g. a customer id).
    #[arg(long, value_delimiter = ',')]
    pub copy_columns: Vec<String>,
    /// Stop (exit status 4) once more rows than this are rejected: a count (`100`) or a share of
    /// the rows read (`0.5%`, checked at the end).
    #[arg(long, value_parser = MaxRejected::parse)]
    pub max_rejected: Option<MaxRejected>,
    /// Most lines one quoted field may span; past it the input is taken to have an unterminated
    /// quote and the job stops naming the line where the field began.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_quoted_lines: u64,
    /// Replace the output of an earlier job at the same place (its parts, errors files and
    /// checkpoints) instead of refusing or resuming it.
    #[arg(long)]
    pub overwrite: bool,
    /// Spread the job over an AWS Batch array job of this many containers (submitted to
    /// --queue with --job-definition), each writing a contiguous share of the parts; the output
    /// is the one a single container writes. Input, output and the registry store must be on S3.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000), conflicts_with = "job")]
    pub shards: Option<u32>,
    /// Run only this shard (0 to N-1) of --shards N, here, instead of submitting the array job.
    #[arg(long, requires = "shards")]
    pub shard_index: Option<u32>,
    /// Run as a child of the array job --shards submitted: the shard is AWS_BATCH_JOB_ARRAY_INDEX
    /// (what the submitted children run; rows rejected do not fail the child).
    #[arg(long, requires = "shards", conflicts_with_all = ["shard_index", "overwrite"])]
    pub array_child: bool,
    /// AWS Batch job queue that --shards submits to.
    #[arg(long, env = "MLOPS_BATCH_QUEUE")]
    pub queue: Option<String>,
    /// AWS Batch job definition of the batch-prediction image, for --shards.
    #[arg(long, env = "MLOPS_BATCH_JOB_DEFINITION")]
    pub job_definition: Option<String>,
}

/// What this invocation does with a job.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The whole job in this process.
    Single,
    /// One shard of a sharded job; `child`: as an array job's child (rejected rows do not fail
    /// it).
    Shard {
        shards: u32,
        index: u32,
        child: bool,
    },
    /// Submit the array job that runs the shards.
    Submit { shards: u32 },
}

impl Mode {
    /// The mode of these arguments; `job_shards`: the job record's shards, in `--job` mode.
    fn of(args: &BatchPredictArgs, job_shards: Option<u32>) -> Result<Self> {
        if args.job.is_some() {
            return Ok(match job_shards.filter(|n| *n > 1) {
                Some(shards) => Mode::Shard {
                    shards,
                    index: args
                        .shard_index
                        .map_or_else(|| array_index(None, shards, "shards", "--shard-index"), Ok)?,
                    child: true,
                },
                None => Mode::Single,
            });
        }
        Ok(match (args.shards, args.shard_index, args.array_child) {
            (None, _, _) => Mode::Single,
            (Some(shards), Some(index), _) => Mode::Shard {
                shards,
                index,
                child: false,
            },
            (Some(shards), None, true) => Mode::Shard {
                shards,
                index: array_index(None, shards, "shards", "--shard-index")?,
                child: true,
            },
            (Some(shards), None, false) => Mode::Submit { shards },
        })
    }
}

/// `--max-rejected`: a number of rows or a percentage of the rows read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxRejected {
    /// At most this many rows.
    Rows(u64),
    /// At most this share of the rows read, in percent.
    Percent(f64),
}

impl MaxRejected {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim().strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .map(Self::Percent)
                .ok_or_else(|| format!("'{text}' is not a percentage between 0% and 100%")),
            None => text.trim().parse::<u64>().map(Self::Rows).map_err(|_| {
                format!("'{text}' is not a row count (e.g. 100) or a percentage (e.g. 0.5%)")
            }),
        }
    }

    /// The option's text, for a child's command line.
    fn to_arg(self) -> String {
        match self {
            Self::Rows(n) => n.to_string(),
            Self::Percent(p) => format!("{p}%"),
        }
    }

    /// Whether `rejected` of `rows` is over the limit.
    fn exceeded(self, rejected: u64, rows: u64) -> bool {
        match self {
            Self::Rows(n) => rejected > n,
            Self::Percent(p) => rows > 0 && rejected as f64 * 100.0 / rows as f64 > p,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Rows(n) => format!("{n} rows"),
            Self::Percent(p) => format!("{p}% of the rows"),
        }
    }
}

/// Where the output goes: a store and a key prefix in it.
pub(crate) struct Output {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: String,
}

/// The checkpoint object's name inside the output prefix.
pub(crate) const CHECKPOINT: &str = "_checkpoint.json";

impl Output {
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// The input: a local file, or an S3 object read in ranges pinned to the version it had when
/// the job was started (or, without a job record, when this run started).
pub(crate) enum Input {
    File {
        path: PathBuf,
        size: u64,
        modified: String,
    },
    Object {
        store: Arc<dyn ObjectStore>,
        key: String,
        uri: String,
        version: ObjectVersion,
    },
}

impl Input {
    /// Opens the input; `pinned` is the version a job record names (an uploaded input, as it
    /// was when the job was started).
    async fn open(uri: &str, pinned: Option<ObjectVersion>, settings: &Settings) -> Result<Self> {
        let Some(rest) = uri.strip_prefix("s3://") else {
            return Self::file(uri);
        };
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("input '{uri}' is not s3://bucket/key"))?;
        let store =
            mlops_store::open_store(&format!("s3://{bucket}"), settings.s3_endpoint.clone())
                .await?;
        let current = store.head_version(key).await?;
        let version = match (pinned, current) {
            // A pinned version id reads the started bytes even if the object was replaced since.
            (Some(pinned), _) if pinned.version_id.is_some() => pinned,
            (Some(pinned), Some(now)) if now.etag != pinned.etag => bail!(
                "input {uri} was replaced after the job was started (tag {} then, {} now) and its bucket keeps no versions: submit a new job",
                pinned.etag,
                now.etag
            ),
            (_, Some(now)) => now,
            (_, None) => bail!("input {uri} does not exist"),
        };
        Ok(Self::Object {
            store,
            key: key.into(),
            uri: uri.into(),
            version,
        })
    }

    fn file(path: &str) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read the input {path}"))?;
        if !meta.is_file() {
            bail!("the input {path} is not a file");
        }
        Ok(Self::File {
            path: path.into(),
            size: meta.len(),
            modified: format!("{:?}", meta.modified().ok()),
        })
    }

    /// What identifies this version of the input (for the checkpoint's fingerprint).
    fn identity(&self) -> String {
        match self {
            Self::File {
                path,
                size,
                modified,
            } => format!("{} {size} {modified}", path.display()),
            Self::Object { uri, version, .. } => format!("{uri} {} {}", version.etag, version.size),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Self::File { size, .. } => *size,
            Self::Object { version, .. } => version.size,
        }
    }

    /// A reader from byte `offset` (which starts line `line`) to the end, guarded against
    /// quoted fields that span more than `max_quoted_lines` lines (call from a blocking thread).
    /// An object's reader starts on `first_range` (its bytes from the start, already fetched)
    /// when `offset` is within it.
    fn reader(
        &self,
        offset: u64,
        line: u64,
        max_quoted_lines: u64,
        chunk: u64,
        handle: &Handle,
        first_range: Option<Vec<u8>>,
    ) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(QuoteGuard::new(
            self.raw_reader(offset, chunk, handle, first_range)?,
            line,
            max_quoted_lines,
        )))
    }

    /// The object's first `len` bytes (all of it when shorter), in one ranged GET.
    fn first_range(&self, len: u64, handle: &Handle) -> Result<Option<Vec<u8>>> {
        let Self::Object {
            store,
            key,
            version,
            ..
        } = self
        else {
            return Ok(None);
        };
        let end = len.min(version.size);
        let bytes = handle
            .block_on(store.get_range_version(key, 0, end, version))
            .map_err(|e| changed_input(key, e))?;
        Ok(Some(bytes))
    }

    fn raw_reader(
        &self,
        offset: u64,
        chunk: u64,
        handle: &Handle,
        first_range: Option<Vec<u8>>,
    ) -> Result<Box<dyn Read + Send>> {
        Ok(match self {
            Self::File { path, .. } => {
                let mut f = std::fs::File::open(path)
                    .with_context(|| format!("cannot read the input {}", path.display()))?;
                f.seek(SeekFrom::Start(offset))?;
                Box::new(BufReader::with_capacity(1 << 20, f))
            }
            Self::Object {
                store,
                key,
                version,
                ..
            } => {
                let mut reader = RangeReader {
                    store: Arc::clone(store),
                    key: key.clone(),
                    version: version.clone(),
                    next: offset,
                    end: version.size,
                    chunk_size: chunk,
                    chunk: Vec::new(),
                    at: 0,
                    ahead: None,
                    handle: handle.clone(),
                };
                if let Some(bytes) = first_range.filter(|b| offset < b.len() as u64) {
                    (reader.next, reader.at, reader.chunk) =
                        (bytes.len() as u64, offset as usize, bytes);
                    reader.fetch_ahead();
                }
                Box::new(reader)
            }
        })
    }
}

/// A ranged GET's error as the reader reports it: a changed object is named as such.
fn changed_input(key: &str, e: StoreError) -> std::io::Error {
    match e {
        StoreError::PreconditionFailed { .. } => {
            std::io::Error::other(format!("the input {key} changed while the job read it"))
        }
        e => std::io::Error::other(e),
    }
}

/// Reads an object in ranged GETs of `chunk_size` bytes, each pinned to one version (an object
/// replaced mid-job is still read by its version id, or fails the job, never mixing two inputs).
/// The next range is fetched while the current one is parsed.
struct RangeReader {
    store: Arc<dyn ObjectStore>,
    key: String,
    version: ObjectVersion,
    next: u64,
    end: u64,
    chunk_size: u64,
    chunk: Vec<u8>,
    at: usize,
    ahead: Option<tokio::task::JoinHandle<Result<Vec<u8>, StoreError>>>,
    handle: Handle,
}

impl RangeReader {
    /// Starts fetching the range after the last one asked for, if any is left.
    fn fetch_ahead(&mut self) {
        if self.next >= self.end {
            return;
        }
        let to = (self.next + self.chunk_size).min(self.end);
        let (store, key, version, from) = (
            Arc::clone(&self.store),
            self.key.clone(),
            self.version.clone(),
            self.next,
        );
        self.ahead = Some(
            self.handle
                .spawn(async move { store.get_range_version(&key, from, to, &version).await }),
        );
        self.next = to;
    }
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.ahead.is_none() {
                self.fetch_ahead();
            }
            let Some(fetch) = self.ahead.take() else {
                return Ok(0);
            };
            let fetched = self.handle.block_on(fetch).map_err(std::io::Error::other)?;
            self.chunk = fetched.map_err(|e| changed_input(&self.key, e))?;
            self.at = 0;
            self.fetch_ahead();
            if self.chunk.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Where the CSV scanner is within a record (RFC 4180, as the `csv` crate reads it).
#[derive(Debug, Clone, Copy, PartialEq)]
enum CsvState {
    FieldStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

/// Passes a CSV stream through, tracking quoting as the CSV reader will: a quoted field still
/// open after `max_lines` newlines is an unterminated quote, reported (as an I/O error, after
/// the bytes before it) with the line where the field began, instead of being read as one
/// enormous row.
struct QuoteGuard<R> {
    inner: R,
    state: CsvState,
    line: u64,
    opened_at: u64,
    lines_open: u64,
    max_lines: u64,
    pending: Option<String>,
}

impl<R: Read> QuoteGuard<R> {
    fn new(inner: R, first_line: u64, max_lines: u64) -> Self {
        Self {
            inner,
            state: CsvState::FieldStart,
            line: first_line,
            opened_at: first_line,
            lines_open: 0,
            max_lines,
            pending: None,
        }
    }

    /// Scans `bytes`; returns how many may be passed on (all, or those before a violation).
    /// Stretches that cannot change more than the line count and the state their last byte
    /// leaves are skipped with `memchr`; the rest goes byte by byte through [`Self::step`].
    fn scan(&mut self, bytes: &[u8]) -> usize {
        use CsvState::*;
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self.state {
                // Outside quotes only a quote does more.
                FieldStart | Unquoted => {
                    let skip = memchr::memchr(b'"', rest).unwrap_or(rest.len());
                    if skip > 0 {
                        self.line += memchr::memchr_iter(b'\n', &rest[..skip]).count() as u64;
                        self.state = match rest[skip - 1] {
                            b'\n' | b',' => FieldStart,
                            _ => Unquoted,
                        };
                        i += skip;
                        continue;
                    }
                }
                // Inside quotes only a quote or a newline does.
                Quoted => {
                    let skip = memchr::memchr2(b'"', b'\n', rest).unwrap_or(rest.len());
                    if skip > 0 {
                        i += skip;
                        continue;
                    }
                }
                QuoteInQuoted => {}
            }
            if !self.step(bytes[i]) {
                return i;
            }
            i += 1;
        }
        bytes.len()
    }

    /// Takes one byte; false when it is a newline that leaves a quoted field open too long
    /// (the message is then pending).
    fn step(&mut self, b: u8) -> bool {
        use CsvState::*;
        self.state = match (self.state, b) {
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, b'\n') => {
                self.line += 1;
                self.lines_open += 1;
                if self.lines_open > self.max_lines {
                    self.pending = Some(format!(
                        "line {}: a quoted field opened on this line is still open {} lines later \
                         (an unterminated quote?); fix the quote, or raise --max-quoted-lines if \
                         fields really span that many lines",
                        self.opened_at, self.max_lines
                    ));
                    return false;
                }
                Quoted
            }
            (Quoted, _) => Quoted,
            (QuoteInQuoted, b'"') => Quoted,
            (FieldStart, b'"') => {
                self.opened_at = self.line;
                self.lines_open = 0;
                Quoted
            }
            (_, b'\n') => {
                self.line += 1;
                FieldStart
            }
            (_, b',') => FieldStart,
            _ => Unquoted,
        };
        true
    }
}

impl<R: Read> Read for QuoteGuard<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(message) = &self.pending {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                message.clone(),
            ));
        }
        let n = self.inner.read(out)?;
        let passed = self.scan(&out[..n]);
        if passed == 0 && n > 0 {
            return self.read(out);
        }
        Ok(passed)
    }
}

/// One run of a job: everything it needs, owned, so it can run on a blocking thread.
pub(crate) struct JobRun {
    pub predictor: Predictor,
    pub schema: Schema,
    pub input: Input,
    pub input_name: String,
    pub output: Output,
    pub part_rows: u64,
    pub part_bytes: u64,
    /// Rows the reader hands on at a time ([`CHUNK_ROWS`]; the output does not depend on it).
    pub chunk_rows: u64,
    pub read_chunk: u64,
    pub fingerprint: String,
    /// Input columns copied into the output.
    pub copy_columns: Vec<String>,
    pub max_quoted_lines: u64,
    pub max_rejected: Option<MaxRejected>,
    /// The share of the output this run writes, when the job is sharded.
    pub shard: Option<ShardSlice>,
}

/// One shard's share of a sharded job: its parts, from where it starts to where the next
/// shard starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardSlice {
    pub index: u32,
    pub start: PartStart,
    pub end: PartStart,
}

/// Reads the records of one part, handing each to `each` with the line it ended on (relative to
/// where `reader` started; 0 for a record that could not be read); returns how many it read.
/// This is the one rule that cuts the input into parts: a run and a shard plan both cut with it,
/// so a shard's parts are those a single run writes.
fn read_part<R: Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::StringRecord,
    (part_rows, part_bytes): (u64, u64),
    name: &str,
    mut each: impl FnMut(Result<&csv::StringRecord, csv::Error>, u64) -> Result<()>,
) -> Result<u64> {
    let part_start = reader.position().byte();
    let mut rows = 0;
    while rows < part_rows && reader.position().byte() - part_start < part_bytes {
        match reader.read_record(record) {
            Ok(true) => {
                rows += 1;
                let end_line = reader.position().line();
                each(Ok(record), end_line)?;
            }
            Ok(false) => break,
            Err(e) if e.is_io_error() => {
                return Err(anyhow::Error::new(e).context(format!("cannot read {name}")));
            }
            Err(e) => {
                rows += 1;
                each(Err(e), 0)?;
            }
        }
    }
    Ok(rows)
}

/// Runs the job.
pub async fn run(args: BatchPredictArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    let (model, version, input, pinned, output, job_shards) = match &args.job {
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
            (
                job.model,
                job.version,
                job.input_uri,
                job.input_version,
                output,
                job.shards,
            )
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
                None,
                Output {
                    store,
                    prefix: String::new(),
                },
                None,
            )
        }
    };
    let mode = Mode::of(&args, job_shards)?;
    if let Mode::Submit { .. } = mode {
        submittable(&args, settings)?;
    }
    if args.overwrite {
        if matches!(mode, Mode::Shard { .. }) {
            bail!(
                "--overwrite with one shard would remove the other shards' output: clear the output once, before the shards start (--overwrite with --shards and no --shard-index)"
            );
        }
        output.clear().await?;
    }
    let started = Instant::now();
    let record = registry.version(&model, version).await?.bundle_ref();
    // Loaded as serving loads it: the manifest and the engine image, not the model file.
    let (manifest, predictor, _) =
        mlops_serving::models::load_predictor(&registry, &record, &model, version).await?;
    let source = Input::open(&input, pinned, settings).await?;
    let fingerprint = sha256_hex(
        format!(
            "{model}\n{version}\n{}\n{}\n{}\n{}\n{}",
            manifest.digest(),
            source.identity(),
            args.part_rows,
            args.part_mib,
            args.copy_columns.join(",")
        )
        .as_bytes(),
    );
    if let Mode::Submit { shards } = mode {
        let what = (model.as_str(), version, input.as_str());
        return submit_shards(&args, settings, what, (&output, &fingerprint), shards).await;
    }
    let job = JobRun {
        predictor,
        schema: manifest.schema,
        input: source,
        input_name: input.clone(),
        output,
        part_rows: args.part_rows,
        part_bytes: args.part_mib << 20,
        chunk_rows: CHUNK_ROWS,
        read_chunk: args.read_chunk_mib << 20,
        fingerprint,
        copy_columns: args.copy_columns.clone(),
        max_quoted_lines: args.max_quoted_lines,
        max_rejected: args.max_rejected,
        shard: None,
    };
    let handle = Handle::current();
    let Mode::Shard {
        shards,
        index,
        child,
    } = mode
    else {
        // The whole job here (a submission returned above).
        let summary = tokio::task::spawn_blocking(move || job.run(&handle))
            .await
            .context("the batch-prediction thread panicked")??;
        let done = report(&summary, None, started);
        return finish(&done, args.max_rejected, args.job.is_some());
    };
    let outcome = tokio::task::spawn_blocking(move || {
        use crate::commands::batch_shards::{PLAN_LEASE, run_shard};
        run_shard(job, (shards, index), PLAN_LEASE, &handle)
    })
    .await
    .context("the batch-prediction thread panicked")??;
    let shard = report(&outcome.shard, Some((index, shards)), started);
    match &outcome.job {
        // --max-rejected applies to the whole job (a shard over a row count stopped earlier).
        Some(whole) => {
            eprintln!(
                "job complete: {} rows, {} rejected, {} parts (every shard done)",
                whole.rows_done,
                whole.rows_rejected,
                whole.parts.len()
            );
            finish(whole, args.max_rejected, child)
        }
        None => {
            eprintln!("other shards are still running: the last to finish writes {CHECKPOINT}");
            finish(&shard, None, child)
        }
    }
}

/// Prints how a run (or a shard's run, `shard` = (index, count)) ended; returns its checkpoint.
fn report(summary: &Summary, shard: Option<(u32, u32)>, started: Instant) -> Checkpoint {
    let seconds = started.elapsed().as_secs_f64();
    let what = shard.map_or_else(String::new, |(i, n)| format!("shard {i} of {n}: "));
    match summary {
        Summary::AlreadyComplete(c) => {
            eprintln!(
                "{what}already complete: {} rows, {} rejected, {} parts",
                c.rows_done,
                c.rows_rejected,
                c.parts.len()
            );
            c.clone()
        }
        Summary::Done {
            checkpoint: c,
            rows_this_run,
            location,
        } => {
            eprintln!(
                "{what}done: {} rows ({} rejected) in {seconds:.2} s ({:.0} rows/s this run) → {location}",
                c.rows_done,
                c.rows_rejected,
                *rows_this_run as f64 / seconds
            );
            c.clone()
        }
    }
}

/// The exit status of a finished run: 4 past `limit` (--max-rejected), 3 with rejected rows (not
/// for a job of the batch function or an array job's child, whose checkpoint reports them).
fn finish(done: &Checkpoint, limit: Option<MaxRejected>, job_mode: bool) -> Result<()> {
    if let Some(limit) = limit
        && limit.exceeded(done.rows_rejected, done.rows_done)
    {
        return Err(ExitWith {
            code: 4,
            message: format!(
                "error: {} of {} rows rejected, more than --max-rejected {} (see the errors-*.csv files)",
                done.rows_rejected,
                done.rows_done,
                limit.describe()
            ),
        }
        .into());
    }
    if done.rows_rejected > 0 && !job_mode {
        return Err(ExitWith {
            code: 3,
            message: format!(
                "finished with {} rejected rows of {} (reasons in the errors-*.csv files): exit status 3",
                done.rows_rejected, done.rows_done
            ),
        }
        .into());
    }
    Ok(())
}

/// What an array job's submission needs, checked before anything is read: the queue and job
/// definition, and the input, output and registry on S3 (where the containers can reach them).
fn submittable<'a>(args: &'a BatchPredictArgs, settings: &Settings) -> Result<(&'a str, &'a str)> {
    let (Some(queue), Some(definition)) = (&args.queue, &args.job_definition) else {
        bail!(
            "--shards submits an AWS Batch array job: give --queue and --job-definition (or set MLOPS_BATCH_QUEUE and MLOPS_BATCH_JOB_DEFINITION), or run one shard here with --shard-index"
        );
    };
    let store = settings.store_uri();
    for (what, uri) in [
        ("--input", args.input.as_deref().unwrap_or_default()),
        ("--output", args.output.as_deref().unwrap_or_default()),
        ("the registry store (--store)", store.as_str()),
    ] {
        if !uri.starts_with("s3://") {
            bail!(
                "--shards: {what} {uri} is not on S3, and the array job's containers cannot read this machine's files (put it on S3, or run without --shards)"
            );
        }
    }
    Ok((queue, definition))
}

/// `--shards N` without a shard: submits the array job whose children run the shards.
async fn submit_shards(
    args: &BatchPredictArgs,
    settings: &Settings,
    (model, version, input): (&str, u64, &str),
    (job_output, fingerprint): (&Output, &str),
    shards: u32,
) -> Result<()> {
    let (queue, definition) = submittable(args, settings)?;
    let output = args.output.clone().unwrap_or_default();
    // The children get the store and endpoint, not this machine's --home.
    let mut command = vec!["mlops".to_string()];
    let global = settings.global_args();
    let mut global = global.iter();
    while let Some(flag) = global.next() {
        let value = global.next().cloned().unwrap_or_default();
        if flag != "--home" {
            command.extend([flag.clone(), value]);
        }
    }
    let numbers = [
        ("--version", version.to_string()),
        ("--shards", shards.to_string()),
        ("--part-rows", args.part_rows.to_string()),
        ("--part-mib", args.part_mib.to_string()),
        ("--read-chunk-mib", args.read_chunk_mib.to_string()),
        ("--max-quoted-lines", args.max_quoted_lines.to_string()),
    ];
    command.extend(
        [
            ("batch-predict", String::new()),
            ("--model", model.to_owned()),
            ("--input", input.to_owned()),
            ("--output", output.clone()),
        ]
        .into_iter()
        .chain(numbers)
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .filter(|a| !a.is_empty()),
    );
    command.push("--array-child".into());
    if !args.copy_columns.is_empty() {
        command.extend(["--copy-columns".into(), args.copy_columns.join(",")]);
    }
    if let Some(limit) = args.max_rejected {
        command.extend(["--max-rejected".into(), limit.to_arg()]);
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .or(settings.s3_endpoint.clone());
    let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
    let queue: Arc<dyn JobQueue> = Arc::new(mlops_aws::BatchQueue::new(&config, queue, definition));
    let described = queue.describe();
    let (id, submitted) = crate::commands::batch_shards::submit(ArrayJob {
        queue,
        command,
        output_uri: &output,
        fingerprint,
        shards,
    })
    .await?;
    println!(
        "{} {model} v{version} over {shards} shards: queue job {id} on {described}; progress in {}",
        if submitted {
            "submitted"
        } else {
            "already in the queue:"
        },
        job_output.store.uri(&job_output.key(CHECKPOINT))
    );
    Ok(())
}

impl Output {
    /// Removes an earlier job's output here: the checkpoint first (so a crash midway leaves no
    /// checkpoint claiming parts that are gone), then a sharded job's plan and shard checkpoints,
    /// then its parts and errors files.
    async fn clear(&self) -> Result<()> {
        self.store.delete(&self.key(CHECKPOINT)).await?;
        self.store.delete(&self.key(SHARD_PLAN)).await?;
        self.store.delete(&self.key(SHARD_PLAN_LOCK)).await?;
        let mut removed = 0;
        for key in self.store.list(&self.prefix).await? {
            let name = key.strip_prefix(&self.prefix).unwrap_or(&key);
            let shard_checkpoint = name.starts_with("_checkpoint-") && name.ends_with(".json");
            let ours = shard_checkpoint
                || (name.starts_with("part-") || name.starts_with("errors-"))
                    && name.ends_with(".csv")
                    && !name.contains('/');
            if ours {
                self.store.delete(&key).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            eprintln!(
                "--overwrite: removed {removed} files of an earlier job from {}",
                self.store.uri(&self.prefix)
            );
        }
        Ok(())
    }
}

/// The error for a checkpoint or plan at `location` that another job wrote.
pub(crate) fn another_job(location: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{location} belongs to another job (different model, input or part size): use another output"
    )
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Summary {
    AlreadyComplete(Checkpoint),
    Done {
        checkpoint: Checkpoint,
        rows_this_run: u64,
        location: String,
    },
}

impl JobRun {
    /// This run's checkpoint: the job's, or its shard's.
    fn checkpoint_name(&self) -> String {
        self.shard
            .map_or_else(|| CHECKPOINT.to_owned(), |s| shard_checkpoint_name(s.index))
    }

    /// The input's header, and where its first part starts. With `rows_too`, an object's first
    /// ranged GET is a whole read chunk, returned too: it holds the first rows, which
    /// [`Self::records`] then need not fetch again.
    fn header(
        &self,
        handle: &Handle,
        rows_too: bool,
    ) -> Result<(csv::StringRecord, PartStart, Option<Vec<u8>>)> {
        if rows_too && let Some(bytes) = self.input.first_range(self.read_chunk, handle)? {
            let (header, first) =
                self.read_header(QuoteGuard::new(&bytes[..], 1, self.max_quoted_lines))?;
            // Unless the range is the whole input, the header must end inside it.
            if first.offset < bytes.len() as u64 || bytes.len() as u64 == self.input.size() {
                return Ok((header, first, Some(bytes)));
            }
        }
        let reader = self.input.reader(
            0,
            1,
            self.max_quoted_lines,
            self.read_chunk.min(64 << 10),
            handle,
            None,
        )?;
        let (header, first) = self.read_header(reader)?;
        Ok((header, first, None))
    }

    fn read_header(&self, input: impl Read) -> Result<(csv::StringRecord, PartStart)> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
        let header = reader
            .headers()
            .with_context(|| format!("{}: cannot read the header", self.input_name))?
            .clone();
        let first = PartStart {
            part: 0,
            rows_before: 0,
            offset: reader.position().byte(),
            lines: reader.position().line() - 1,
        };
        Ok((header, first))
    }

    /// A CSV reader of the records from byte `offset`, which follows input line `lines`.
    fn records(
        &self,
        offset: u64,
        lines: u64,
        handle: &Handle,
        first_range: Option<Vec<u8>>,
    ) -> Result<csv::Reader<Box<dyn Read + Send>>> {
        Ok(csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(false)
            .from_reader(self.input.reader(
                offset,
                lines + 1,
                self.max_quoted_lines,
                self.read_chunk,
                handle,
                first_range,
            )?))
    }

    /// Reads the whole input, cutting it into parts as a run does, and deals the parts out to
    /// `shards` shards.
    /// `on_part` is called after each part (the planner renews its lease there).
    pub(crate) fn plan(
        &self,
        handle: &Handle,
        shards: u32,
        on_part: &mut dyn FnMut(),
    ) -> Result<ShardPlan> {
        let (_, first, first_range) = self.header(handle, true)?;
        let mut reader = self.records(first.offset, first.lines, handle, first_range)?;
        let mut record = csv::StringRecord::new();
        let mut parts = Vec::new();
        let mut at = first;
        loop {
            let rows = read_part(
                &mut reader,
                &mut record,
                (self.part_rows, self.part_bytes),
                &self.input_name,
                |_, _| Ok(()),
            )?;
            if rows == 0 {
                break;
            }
            parts.push(at);
            on_part();
            let position = reader.position();
            at = PartStart {
                part: at.part + 1,
                rows_before: at.rows_before + rows,
                offset: first.offset + position.byte(),
                lines: first.lines + position.line() - 1,
            };
        }
        Ok(ShardPlan::new(
            self.fingerprint.clone(),
            &parts,
            at,
            self.input.size(),
            shards,
        ))
    }

    fn put(
        &self,
        handle: &Handle,
        name: &str,
        bytes: Vec<u8>,
        condition: PutCondition,
    ) -> Result<ETag, StoreError> {
        handle.block_on(
            self.output
                .store
                .put(&self.output.key(name), bytes, condition),
        )
    }

    /// Takes the next generation of the checkpoint (creating it on the first run): from then on
    /// only this run can commit.
    fn acquire(&self, handle: &Handle) -> Result<Result<(Checkpoint, ETag), Checkpoint>> {
        let key = self.output.key(&self.checkpoint_name());
        let location = self.output.store.uri(&key);
        for _ in 0..100 {
            let (mut checkpoint, condition) = match handle.block_on(self.output.store.get(&key))? {
                Some(obj) => {
                    let c: Checkpoint = serde_json::from_slice(&obj.bytes)
                        .with_context(|| format!("{location} is not a valid checkpoint"))?;
                    if c.fingerprint != self.fingerprint {
                        return Err(another_job(&location));
                    }
                    (c, PutCondition::IfMatch(obj.etag))
                }
                None => (
                    Checkpoint {
                        fingerprint: self.fingerprint.clone(),
                        input_bytes: Some(self.input.size()),
                        ..Checkpoint::default()
                    },
                    PutCondition::IfAbsent,
                ),
            };
            if checkpoint.complete {
                return Ok(Err(checkpoint));
            }
            checkpoint.generation += 1;
            match self.put(
                handle,
                &self.checkpoint_name(),
                serde_json::to_vec_pretty(&checkpoint)?,
                condition,
            ) {
                Ok(etag) => return Ok(Ok((checkpoint, etag))),
                Err(StoreError::PreconditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("{location}: gave up taking over the checkpoint after 100 conflicting updates")
    }

    /// Commits the checkpoint if this run is still the latest.
    fn commit(&self, handle: &Handle, checkpoint: &Checkpoint, etag: ETag) -> Result<ETag> {
        let name = self.checkpoint_name();
        match self.put(
            handle,
            &name,
            serde_json::to_vec_pretty(checkpoint)?,
            PutCondition::IfMatch(etag),
        ) {
            Ok(etag) => Ok(etag),
            Err(StoreError::PreconditionFailed { .. }) => bail!(
                "superseded: a newer run of this job took over {} (this run was generation {}); it stops here and the newer run finishes",
                self.output.store.uri(&self.output.key(&name)),
                checkpoint.generation
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and validates parts from `reader`, the first one `next`, and sends them to `chunks`
    /// in order, `chunk_rows` rows at a time: until the input (or this shard's share of it)
    /// ends, a read fails (the error is sent), or the receiver is gone.
    fn read_chunks<'p>(
        &self,
        mut reader: csv::Reader<Box<dyn Read + Send>>,
        parser: &'p RowParser<'p>,
        copied: &'p [(usize, String)],
        mut next: NextPart,
        chunks: SyncSender<Result<ReadChunk<'p>>>,
    ) {
        let mut record = csv::StringRecord::new();
        let cut = (self.part_rows, self.part_bytes);
        loop {
            if self.shard.is_some_and(|s| next.index >= s.end.part) {
                return;
            }
            // Rows are validated as they are read: a chunk holds parsed values, not records.
            let mut chunk = Chunk::new(parser, next.first_row, next.base_lines, copied);
            let read = read_part(
                &mut reader,
                &mut record,
                cut,
                &self.input_name,
                |r, line| {
                    chunk.add(r, next.base_lines + line)?;
                    if chunk.rows_read == self.chunk_rows {
                        let after = chunk.first_row + self.chunk_rows;
                        let full = std::mem::replace(
                            &mut chunk,
                            Chunk::new(parser, after, next.base_lines, copied),
                        );
                        let sent = ReadChunk {
                            part: next.index,
                            rows: full,
                            end: None,
                        };
                        chunks.send(Ok(sent)).map_err(|_| ReceiverGone)?;
                    }
                    Ok(())
                },
            );
            let last = match read {
                Ok(0) => return,
                Ok(rows) => {
                    let last = ReadChunk {
                        part: next.index,
                        rows: chunk,
                        end: Some(PartEnd {
                            rows,
                            position: reader.position().clone(),
                        }),
                    };
                    next.index += 1;
                    next.first_row += rows;
                    Ok(last)
                }
                Err(e) if e.is::<ReceiverGone>() => return,
                Err(e) => Err(e),
            };
            let failed = last.is_err();
            if chunks.send(last).is_err() || failed {
                return;
            }
        }
    }

    /// Predicts and renders the chunks as they arrive and sends each whole part, with where it
    /// ends, to `parts` in order: until the chunks end, one is an error (returned), or the
    /// receiver is gone.
    fn predict_chunks(
        &self,
        chunks: Receiver<Result<ReadChunk<'_>>>,
        copied: &[(usize, String)],
        labels: Option<&(String, String)>,
        parts: SyncSender<(Part, PartEnd)>,
    ) -> Result<()> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16);
        let header = output_header(copied, labels);
        let mut filling: Option<Part> = None;
        for chunk in chunks {
            let ReadChunk {
                part: index,
                rows,
                end,
            } = chunk?;
            let mut part = filling
                .take()
                .unwrap_or_else(|| Part::new(index, rows.first_row, &header));
            debug_assert_eq!(part.index, index, "a part's chunks arrive together");
            part.add(rows, &self.predictor, labels, threads)?;
            match end {
                Some(end) => {
                    if parts.send((part, end)).is_err() {
                        return Ok(());
                    }
                }
                None => filling = Some(part),
            }
        }
        Ok(())
    }

    /// Writes each part, its errors file and the checkpoint after it, one part after the other:
    /// until the parts end (returns the checkpoint and its ETag) or a write fails, the checkpoint
    /// was taken over, or more rows were rejected than `--max-rejected` allows (returned).
    fn write_parts(
        &self,
        handle: &Handle,
        parts: Receiver<(Part, PartEnd)>,
        (mut checkpoint, mut etag): (Checkpoint, ETag),
        rows_before: u64,
    ) -> Result<(Checkpoint, ETag)> {
        let (base_offset, base_lines) = (checkpoint.input_offset, checkpoint.input_lines);
        for (part, PartEnd { rows, position }) in parts {
            let index = part.index;
            let part_name = format!("part-{index:05}.csv");
            self.put(handle, &part_name, part.body, PutCondition::None)?;
            if part.rejected > 0 {
                let mut errors = part.parse_errors;
                errors.extend_from_slice(&part.feature_errors);
                let name = format!("errors-{index:05}.csv");
                self.put(handle, &name, errors, PutCondition::None)?;
            }
            checkpoint.parts.push(part_name);
            checkpoint.rows_done += rows;
            checkpoint.rows_rejected += part.rejected;
            checkpoint.input_offset = base_offset + position.byte();
            checkpoint.input_lines = base_lines + position.line() - 1;
            etag = self.commit(handle, &checkpoint, etag)?;
            eprintln!(
                "part {index}: rows {}–{} committed ({} rejected)",
                part.first_row + 1,
                part.first_row + rows,
                part.rejected
            );
            if let Some(limit @ MaxRejected::Rows(_)) = self.max_rejected
                && limit.exceeded(checkpoint.rows_rejected, checkpoint.rows_done)
            {
                return Err(ExitWith {
                    code: 4,
                    message: format!(
                        "error: stopped after row {}: {} rows rejected, more than --max-rejected {} \
                         (the output so far is kept; rerun to resume)",
                        rows_before + checkpoint.rows_done,
                        checkpoint.rows_rejected,
                        limit.describe()
                    ),
                }
                .into());
            }
        }
        Ok((checkpoint, etag))
    }

    /// Runs the job on a blocking thread (`handle` runs the store calls).
    pub(crate) fn run(&self, handle: &Handle) -> Result<Summary> {
        let (mut checkpoint, etag) = match self.acquire(handle)? {
            Ok(acquired) => acquired,
            Err(done) => return Ok(Summary::AlreadyComplete(done)),
        };
        let resumed_at = checkpoint.rows_done;
        let name = &self.input_name;
        // A fresh run reads its header and first rows in one GET.
        let fresh = checkpoint.input_offset == 0
            && self.shard.is_none_or(|s| s.start.offset < self.read_chunk);
        let (header, first, first_range) = self.header(handle, fresh)?;
        let start = self.shard.map_or(first, |s| s.start);
        if resumed_at > 0 {
            eprintln!(
                "resuming after row {} (byte {}, {} parts committed)",
                start.rows_before + resumed_at,
                checkpoint.input_offset,
                checkpoint.parts.len()
            );
        }
        if checkpoint.input_offset == 0 {
            checkpoint.input_offset = start.offset;
            checkpoint.input_lines = start.lines;
        }
        let parser = RowParser::new(&header, name, &self.schema)?;
        let copied = copied_columns(&header, &self.copy_columns, name)?;
        let labels =
            (self.schema.task == Task::BinaryClassification).then(|| self.schema.class_names());
        let reader = self.records(
            checkpoint.input_offset,
            checkpoint.input_lines,
            handle,
            first_range,
        )?;
        let next = NextPart {
            index: start.part + checkpoint.parts.len() as u64,
            first_row: start.rows_before + checkpoint.rows_done,
            base_lines: checkpoint.input_lines,
        };
        // Three stages on their own threads: reading and validating (up to a part ahead),
        // predicting chunk by chunk on all cores, and writing. Parts are still written and
        // committed one by one, in order.
        let read_ahead = self.part_rows.div_ceil(self.chunk_rows).clamp(1, 64) as usize;
        let (mut checkpoint, etag) = std::thread::scope(|scope| -> Result<_> {
            let (chunks_in, chunks) = std::sync::mpsc::sync_channel(read_ahead);
            let (parts_in, parts) = std::sync::mpsc::sync_channel(1);
            scope.spawn(|| self.read_chunks(reader, &parser, &copied, next, chunks_in));
            let writer = scope
                .spawn(|| self.write_parts(handle, parts, (checkpoint, etag), start.rows_before));
            let predicted = self.predict_chunks(chunks, &copied, labels.as_ref(), parts_in);
            // A failed write stops the prediction (its parts have nowhere to go): its error
            // comes first.
            let written = writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            predicted?;
            Ok(written)
        })?;
        if let Some(shard) = self.shard
            && (checkpoint.input_offset, checkpoint.input_lines)
                != (shard.end.offset, shard.end.lines)
        {
            bail!(
                "shard {}: its parts end at byte {} (line {}), not where the plan has the next shard start (byte {}, line {}): the input is not what the plan was made from",
                shard.index,
                checkpoint.input_offset,
                checkpoint.input_lines,
                shard.end.offset,
                shard.end.lines
            );
        }
        checkpoint.rows_total = Some(checkpoint.rows_done);
        checkpoint.complete = true;
        self.commit(handle, &checkpoint, etag)?;
        Ok(Summary::Done {
            rows_this_run: checkpoint.rows_done - resumed_at,
            location: self.output.store.uri(&self.output.prefix),
            checkpoint,
        })
    }
}

/// Where the next part starts: its index, the row before its first, and the input line before
/// the reader's first.
#[derive(Debug, Clone, Copy)]
struct NextPart {
    index: u64,
    first_row: u64,
    base_lines: u64,
}

/// Rows the reader hands on at a time: a part is predicted as it is read, not once it is whole.
const CHUNK_ROWS: u64 = 16_384;
/// Rows a prediction thread takes at a time (threads take the next piece as they finish one).
const PIECE_ROWS: usize = 512;

/// Some of a part's rows read and validated; its last chunk says where the part ends.
struct ReadChunk<'p> {
    part: u64,
    rows: Chunk<'p>,
    end: Option<PartEnd>,
}

/// A part's row count and the reader's position after it.
struct PartEnd {
    rows: u64,
    position: csv::Position,
}

/// The reader stops: whoever takes its chunks is gone.
#[derive(Debug)]
struct ReceiverGone;

impl std::fmt::Display for ReceiverGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the batch-prediction reader stopped: nothing takes its rows")
    }
}

impl std::error::Error for ReceiverGone {}

/// One part's output, filled chunk by chunk.
struct Part {
    index: u64,
    first_row: u64,
    /// The output header, then a line per predicted row.
    body: Vec<u8>,
    /// The errors file's header, then the rows the schema refused, in order.
    parse_errors: Vec<u8>,
    /// The rows the pipeline refused, in order (after the others in the errors file).
    feature_errors: Vec<u8>,
    rejected: u64,
}

impl Part {
    fn new(index: u64, first_row: u64, header: &str) -> Self {
        Part {
            index,
            first_row,
            body: header.as_bytes().to_vec(),
            parse_errors: b"row,line,field,message\n".to_vec(),
            feature_errors: Vec::new(),
            rejected: 0,
        }
    }

    /// Predicts a chunk's valid rows on `threads` cores and adds them and its bad rows.
    fn add(
        &mut self,
        chunk: Chunk<'_>,
        predictor: &Predictor,
        labels: Option<&(String, String)>,
        threads: usize,
    ) -> Result<()> {
        let rendered = render_parallel(predictor, &chunk.rows, &chunk.keep, labels, threads)?;
        self.body.extend_from_slice(&rendered.body);
        self.feature_errors.extend_from_slice(&rendered.errors);
        self.parse_errors.extend_from_slice(
            &chunk
                .errors
                .into_inner()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        self.rejected += chunk.rejected + rendered.rejected;
        Ok(())
    }
}

/// Some of a part's rows being read: validated as they arrive (rows the schema refuses go to
/// its errors), then predicted in one pass.
struct Chunk<'p> {
    parser: &'p RowParser<'p>,
    /// Input column indices copied into the output, with their names.
    copied: &'p [(usize, String)],
    /// The row before the chunk's first.
    first_row: u64,
    /// The input line just before the part's reader started.
    base_lines: u64,
    rows_read: u64,
    rows: Vec<Vec<Value>>,
    /// Row number, id and copied values of each valid row.
    keep: Vec<(u64, Option<String>, Vec<String>)>,
    /// Records of the errors file (no header).
    errors: csv::Writer<Vec<u8>>,
    rejected: u64,
}

impl<'p> Chunk<'p> {
    fn new(
        parser: &'p RowParser<'p>,
        first_row: u64,
        base_lines: u64,
        copied: &'p [(usize, String)],
    ) -> Self {
        Self {
            parser,
            copied,
            first_row,
            base_lines,
            rows_read: 0,
            rows: Vec::new(),
            keep: Vec::new(),
            errors: csv::Writer::from_writer(Vec::new()),
            rejected: 0,
        }
    }

    fn line_of(&self, p: Option<&csv::Position>) -> String {
        p.map_or(0, |p| self.base_lines + p.line()).to_string()
    }

    /// Validates one record (or records why it could not be read); `end_line` is the input
    /// line the record ended on.
    fn add(&mut self, record: Result<&csv::StringRecord, csv::Error>, end_line: u64) -> Result<()> {
        self.rows_read += 1;
        let row_number = (self.first_row + self.rows_read).to_string();
        match record {
            Ok(r) => match self.parser.parse(r) {
                Ok(parsed) => {
                    self.rows.push(parsed.values);
                    let copied = self
                        .copied
                        .iter()
                        .map(|(i, _)| r.get(*i).unwrap_or("").to_string())
                        .collect();
                    self.keep
                        .push((self.first_row + self.rows_read, parsed.id, copied));
                }
                Err(problems) => {
                    self.rejected += 1;
                    let line = self.line_of(r.position());
                    // A bad row over several lines is most often an unterminated quote.
                    let hint = line
                        .parse::<u64>()
                        .ok()
                        .filter(|&start| end_line > start)
                        .map(|start| {
                            format!(
                                " (this row runs from line {start} to line {end_line}: a quoted field opened on line {start} may be unterminated)"
                            )
                        })
                        .unwrap_or_default();
                    for p in problems {
                        let message = format!("{}{hint}", p.message);
                        self.errors
                            .write_record([&row_number, &line, &p.field, &message])?;
                    }
                }
            },
            Err(e) => {
                self.rejected += 1;
                let line = self.line_of(e.position());
                self.errors
                    .write_record([&row_number, &line, "(row)", &e.to_string()])?;
            }
        }
        Ok(())
    }
}

/// Rows predicted and rendered: their output lines, and the errors file's records of the rows
/// the pipeline refused.
#[derive(Default)]
struct Rendered {
    body: Vec<u8>,
    errors: Vec<u8>,
    rejected: u64,
}

/// Predicts `rows` (with `keep`, their row numbers, ids and copied values) and renders them.
fn render(
    predictor: &Predictor,
    rows: &[Vec<Value>],
    keep: &[(u64, Option<String>, Vec<String>)],
    labels: Option<&(String, String)>,
) -> Result<Rendered> {
    use std::io::Write;
    let predictions = predict_each(predictor, rows)?;
    let mut body = Vec::with_capacity(rows.len() * 32);
    let mut errors = csv::Writer::from_writer(Vec::new());
    let mut rejected = 0;
    for ((number, id, copied), p) in keep.iter().zip(&predictions) {
        let p = match p {
            Ok(p) => *p,
            Err(message) => {
                rejected += 1;
                errors.write_record([&number.to_string(), "", "(features)", message])?;
                continue;
            }
        };
        write!(body, "{number},{}", csv_field(id.as_deref().unwrap_or("")))?;
        for value in copied {
            write!(body, ",{}", csv_field(value))?;
        }
        match labels {
            Some(classes) => {
                let outcome = mlops_serving::api::ClassOutcome::of(p, classes);
                write!(body, ",{p},{}", csv_field(&outcome.label))?;
                for probability in outcome.probabilities.values() {
                    write!(body, ",{probability}")?;
                }
                writeln!(body)?;
            }
            None => writeln!(body, ",{p}")?,
        }
    }
    let errors = errors.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Rendered {
        body,
        errors,
        rejected,
    })
}

/// [`render`] on `threads` cores, [`PIECE_ROWS`] rows at a time; the result is the same as one
/// call.
fn render_parallel(
    predictor: &Predictor,
    rows: &[Vec<Value>],
    keep: &[(u64, Option<String>, Vec<String>)],
    labels: Option<&(String, String)>,
    threads: usize,
) -> Result<Rendered> {
    let pieces = rows.len().div_ceil(PIECE_ROWS);
    if threads == 1 || pieces < 2 {
        return render(predictor, rows, keep, labels);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let piece = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if piece >= pieces {
                return done;
            }
            let at = piece * PIECE_ROWS..((piece + 1) * PIECE_ROWS).min(rows.len());
            let rendered = render(predictor, &rows[at.clone()], &keep[at], labels);
            done.push((piece, rendered));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads.min(pieces))
            .map(|_| scope.spawn(work))
            .collect();
        let mut done = work();
        for helper in helpers {
            done.extend(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        done
    });
    done.sort_unstable_by_key(|(piece, _)| *piece);
    let mut out = Rendered::default();
    for (_, rendered) in done {
        let rendered = rendered?;
        out.body.extend_from_slice(&rendered.body);
        out.errors.extend_from_slice(&rendered.errors);
        out.rejected += rendered.rejected;
    }
    Ok(out)
}

/// The output header: `row,id`, the copied columns, `prediction`, and for classifiers `label`
/// and one `probability_CLASS` column per class (in the order the API lists them).
fn output_header(copied: &[(usize, String)], labels: Option<&(String, String)>) -> String {
    let mut columns = vec!["row".to_string(), "id".to_string()];
    columns.extend(copied.iter().map(|(_, name)| csv_field(name).into_owned()));
    columns.push("prediction".into());
    if let Some(classes) = labels {
        columns.push("label".into());
        for column in mlops_serving::api::ClassOutcome::probability_columns(classes) {
            columns.push(csv_field(&column).into_owned());
        }
    }
    columns.join(",") + "\n"
}

/// Finds the `--copy-columns` in the input header.
fn copied_columns(
    header: &csv::StringRecord,
    wanted: &[String],
    input: &str,
) -> Result<Vec<(usize, String)>> {
    wanted
        .iter()
        .map(|name| {
            header
                .iter()
                .position(|h| h == name)
                .map(|i| (i, name.clone()))
                .with_context(|| {
                    let columns: Vec<&str> = header.iter().collect();
                    format!(
                        "--copy-columns: {input} has no column '{name}' (its columns: {})",
                        columns.join(", ")
                    )
                })
        })
        .collect()
}

fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Predicts rows in one pass: on a row the pipeline refuses, the rows before it are predicted,
/// that row gets its reason, and prediction goes on after it (k bad rows cost k + 1 calls over
/// disjoint ranges, not k passes over the part).
pub(crate) fn predict_each(
    predictor: &Predictor,
    rows: &[Vec<Value>],
) -> Result<Vec<Result<f64, String>>, EngineError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut start = 0;
    while start < rows.len() {
        match predictor.predict(&rows[start..]) {
            Ok((p, _)) => {
                out.extend(p.into_iter().map(Ok));
                break;
            }
            Err(EngineError::Feature { row, source }) if start + row < rows.len() => {
                let bad = start + row;
                if bad > start {
                    out.extend(predictor.predict(&rows[start..bad])?.0.into_iter().map(Ok));
                }
                out.push(Err(source.to_string()));
                start = bad + 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use async_trait::async_trait;
    use mlops_domain::faults::{CrashScenario, FaultPlan, explore};
    use mlops_domain::testing::sample_bundle;
    use mlops_store::LocalStore;

    use super::*;

    /// An input file (a bad row among good ones) and an output store in a temporary directory.
    struct World {
        dir: tempfile::TempDir,
        store: Arc<dyn ObjectStore>,
    }

    fn world(rows: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("x\n");
        for i in 0..rows {
            csv += &if i == 2 {
                "not-a-number\n".into()
            } else {
                format!("{i}.5\n")
            };
        }
        std::fs::write(dir.path().join("input.csv"), csv).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
        World { dir, store }
    }

    fn job(w: &World, store: Arc<dyn ObjectStore>, prefix: &str, part_rows: u64) -> JobRun {
        let bundle = sample_bundle();
        let path = w.dir.path().join("input.csv");
        JobRun {
            predictor: Predictor::from_bundle(&bundle).unwrap(),
            schema: bundle.manifest.schema.clone(),
            input: Input::file(path.to_str().unwrap()).unwrap(),
            input_name: "input.csv".into(),
            output: Output {
                store,
                prefix: prefix.into(),
            },
            part_rows,
            part_bytes: 1 << 30,
            // Parts of several chunks, whatever `part_rows`.
            chunk_rows: 3,
            read_chunk: 1 << 20,
            fingerprint: "fingerprint".into(),
            copy_columns: Vec::new(),
            max_quoted_lines: 100,
            max_rejected: None,
            shard: None,
        }
    }

    async fn run_job(job: JobRun) -> Result<Summary> {
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || job.run(&handle))
            .await
            .unwrap()
    }

    /// The output files under a prefix (checkpoint aside), by name.
    async fn files(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for key in store.list(prefix).await.unwrap() {
            let name = key.strip_prefix(prefix).unwrap().to_owned();
            if name != CHECKPOINT {
                out.insert(name, store.get(&key).await.unwrap().unwrap().bytes);
            }
        }
        out
    }

    async fn checkpoint(store: &Arc<dyn ObjectStore>, prefix: &str) -> Checkpoint {
        let bytes = store
            .get(&format!("{prefix}{CHECKPOINT}"))
            .await
            .unwrap()
            .unwrap()
            .bytes;
        serde_json::from_slice(&bytes).unwrap()
    }

    /// Output equal to an uninterrupted run's, byte for byte, and a complete checkpoint.
    async fn same_as_one_run(w: &World, rows: u64, part_rows: u64) -> Result<(), String> {
        run_job(job(w, Arc::clone(&w.store), "reference/", part_rows))
            .await
            .map_err(|e| e.to_string())?;
        let want = files(&w.store, "reference/").await;
        let got = files(&w.store, "out/").await;
        if got != want {
            return Err(format!(
                "output {:?} differs from one run's {:?}",
                got.keys(),
                want.keys()
            ));
        }
        let c = checkpoint(&w.store, "out/").await;
        (c.complete && c.rows_done == rows && c.rows_rejected == 1)
            .then_some(())
            .ok_or(format!("checkpoint {c:?}"))
    }

    /// A job of 5 rows in parts of 2: three parts (one with an errors file) and the final commit.
    struct PartCommits;

    #[async_trait]
    impl CrashScenario for PartCommits {
        type World = World;
        async fn world(&self) -> World {
            world(5)
        }
        async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
            run_job(job(w, plan.store(Arc::clone(&w.store)), "out/", 2))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        async fn check(&self, w: &World) -> Result<(), String> {
            same_as_one_run(w, 5, 2).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn part_commits_converge_at_every_crash_point() {
        match explore(&PartCommits).await {
            Ok(report) => println!("batch-predict part commits: {report}"),
            Err(e) => panic!("batch-predict part commits: {e}"),
        }
    }

    /// The pipelined write sequence: an object input read in small ranges (the first one also
    /// holding the header), parts of two chunks, and an errors file in the first part.
    struct ChunkedObjectCommits;

    #[async_trait]
    impl CrashScenario for ChunkedObjectCommits {
        type World = World;
        async fn world(&self) -> World {
            let w = world(9);
            let bytes = std::fs::read(w.dir.path().join("input.csv")).unwrap();
            w.store
                .put("in/input.csv", bytes, PutCondition::None)
                .await
                .unwrap();
            w
        }
        async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
            let store = plan.store(Arc::clone(&w.store));
            let version = w.store.head_version("in/input.csv").await.unwrap().unwrap();
            let mut job = job(w, Arc::clone(&store), "out/", 4);
            assert!(job.chunk_rows < job.part_rows, "parts of several chunks");
            job.read_chunk = 16;
            job.input = Input::Object {
                store,
                key: "in/input.csv".into(),
                uri: "in/input.csv".into(),
                version,
            };
            run_job(job).await.map(drop).map_err(|e| e.to_string())
        }
        async fn check(&self, w: &World) -> Result<(), String> {
            same_as_one_run(w, 9, 4).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_parts_from_an_object_converge_at_every_crash_point() {
        match explore(&ChunkedObjectCommits).await {
            Ok(report) => println!("batch-predict chunked parts: {report}"),
            Err(e) => panic!("batch-predict chunked parts: {e}"),
        }
    }

    /// Runs shard `index` of `shards` of `job`.
    async fn run_shard(job: JobRun, shards: u32, index: u32) -> Result<Option<Checkpoint>> {
        run_shard_leased(job, (shards, index), std::time::Duration::ZERO).await
    }

    /// [`run_shard`] with the planner's lease `lease` long.
    async fn run_shard_leased(
        job: JobRun,
        (shards, index): (u32, u32),
        lease: std::time::Duration,
    ) -> Result<Option<Checkpoint>> {
        let handle = Handle::current();
        tokio::task::spawn_blocking(move || {
            crate::commands::batch_shards::run_shard(job, (shards, index), lease, &handle)
        })
        .await
        .unwrap()
        .map(|outcome| outcome.job)
    }

    /// The parts and errors files under a prefix, by name.
    async fn data_files(store: &Arc<dyn ObjectStore>, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = files(store, prefix).await;
        out.retain(|name, _| !name.starts_with('_'));
        out
    }

    /// An input whose rows span lines (a quoted note in the target column, which is copied, with
    /// newlines and commas), with bad rows.
    fn quoted_world(rows: usize) -> World {
        let mut csv = String::from("x,y\n");
        for i in 0..rows {
            let x = if i % 97 == 5 {
                "bad".into()
            } else {
                format!("{i}.25")
            };
            let note = if i % 3 == 0 {
                format!("\"line one, {i}\nline \"\"two\"\"\"")
            } else {
                format!("n{i}")
            };
            csv += &format!("{x},{note}\n");
        }
        world_of(&csv)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_output_equals_one_run_for_any_shard_count() {
        let w = quoted_world(1_000);
        let copying = |prefix: &str| {
            let mut j = job(&w, Arc::clone(&w.store), prefix, 37);
            j.copy_columns = vec!["y".into()];
            j.part_bytes = 500; // some parts end at 37 rows, others at 500 bytes
            j
        };
        run_job(copying("reference/")).await.unwrap();
        let want = data_files(&w.store, "reference/").await;
        let one = checkpoint(&w.store, "reference/").await;
        let parts = want.keys().filter(|k| k.starts_with("part-")).count();
        assert!(
            parts > 1_000 / 37 + 1,
            "{parts} parts: the byte bound cuts some"
        );
        assert!(want.keys().any(|k| k.starts_with("errors-")));
        for shards in [1u32, 2, 3, 8, 100] {
            let prefix = format!("sharded-{shards}/");
            // Children start in any order: here the last first.
            let mut whole = None;
            for index in (0..shards).rev() {
                let done = run_shard(copying(&prefix), shards, index).await.unwrap();
                assert_eq!(done.is_some(), index == 0, "shard {index} of {shards}");
                whole = done;
            }
            let got = data_files(&w.store, &prefix).await;
            let differing: Vec<&String> = want
                .keys()
                .filter(|k| got.get(*k) != want.get(*k))
                .collect();
            assert!(
                got.len() == want.len() && differing.is_empty(),
                "{shards} shards: {differing:?} differ"
            );
            let whole = whole.unwrap();
            assert_eq!(whole, checkpoint(&w.store, &prefix).await);
            assert_eq!(
                (
                    whole.rows_done,
                    whole.rows_rejected,
                    &whole.parts,
                    whole.input_offset
                ),
                (
                    one.rows_done,
                    one.rows_rejected,
                    &one.parts,
                    one.input_offset
                ),
                "{shards} shards"
            );
            assert_eq!(whole.input_lines, one.input_lines);
            // A child retried after the job is complete finds it so.
            assert!(
                run_shard(copying(&prefix), shards, 1 % shards)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_planner_is_waited_for_and_a_retried_one_takes_its_lease_back() {
        use std::time::{Duration, Instant};
        let w = world(50);
        let long = crate::commands::batch_shards::PLAN_LEASE;
        // Shard 1 holds the planner's lease: shard 0 waits until it lapses, then plans.
        let lock = "a/".to_string() + SHARD_PLAN_LOCK;
        crate::lease::take(w.store.as_ref(), &lock, "shard 1 of 2", long, None)
            .await
            .unwrap()
            .unwrap();
        let lease = Duration::from_millis(600);
        let started = Instant::now();
        run_shard_leased(job(&w, Arc::clone(&w.store), "a/", 5), (2, 0), lease)
            .await
            .unwrap();
        assert!(started.elapsed() >= lease, "{:?}", started.elapsed());
        // Shard 0 died planning: its retry takes its own lease back without waiting for it.
        let lock = "b/".to_string() + SHARD_PLAN_LOCK;
        crate::lease::take(w.store.as_ref(), &lock, "shard 0 of 2", long, None)
            .await
            .unwrap()
            .unwrap();
        let started = Instant::now();
        run_shard_leased(job(&w, Arc::clone(&w.store), "b/", 5), (2, 0), long)
            .await
            .unwrap();
        assert!(started.elapsed() < long / 2, "{:?}", started.elapsed());
        assert!(
            w.store.get(&lock).await.unwrap().is_none(),
            "the lease is freed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_refuses_another_shard_count_or_a_single_runs_output() {
        let w = world(50);
        run_shard(job(&w, Arc::clone(&w.store), "out/", 5), 2, 0)
            .await
            .unwrap();
        let e = run_shard(job(&w, Arc::clone(&w.store), "out/", 5), 3, 0)
            .await
            .unwrap_err();
        assert!(
            error_text(&e).contains("started with --shards 2, not 3"),
            "{e:#}"
        );
        let e = run_shard(job(&w, Arc::clone(&w.store), "out/", 5), 2, 2)
            .await
            .unwrap_err();
        assert!(
            error_text(&e).contains("shard index 2 is out of range"),
            "{e:#}"
        );
        // A single run killed partway leaves its checkpoint: shards do not mix with it.
        let mut partial = job(&w, Arc::clone(&w.store), "single/", 5);
        partial.max_rejected = Some(MaxRejected::Rows(0));
        assert!(run_job(partial).await.is_err());
        let e = run_shard(job(&w, Arc::clone(&w.store), "single/", 5), 2, 0)
            .await
            .unwrap_err();
        assert!(
            error_text(&e).contains("without --shards wrote part"),
            "{e:#}"
        );
    }

    /// A job of 5 rows in parts of 2 over 2 shards, the second shard run first: the plan, each
    /// shard's parts and checkpoints, and the job's checkpoint written by the last shard.
    struct ShardCommits;

    #[async_trait]
    impl CrashScenario for ShardCommits {
        type World = World;
        async fn world(&self) -> World {
            world(5)
        }
        async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
            for index in [1, 0] {
                run_shard(
                    job(w, plan.store(Arc::clone(&w.store)), "out/", 2),
                    2,
                    index,
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        async fn check(&self, w: &World) -> Result<(), String> {
            run_job(job(w, Arc::clone(&w.store), "reference/", 2))
                .await
                .map_err(|e| e.to_string())?;
            if data_files(&w.store, "out/").await != data_files(&w.store, "reference/").await {
                return Err("the shards' output differs from one run's".into());
            }
            let (got, want) = (
                checkpoint(&w.store, "out/").await,
                checkpoint(&w.store, "reference/").await,
            );
            (got.complete && got.rows_done == want.rows_done && got.parts == want.parts)
                .then_some(())
                .ok_or(format!("checkpoint {got:?}"))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sharded_commits_converge_at_every_crash_point() {
        match explore(&ShardCommits).await {
            Ok(report) => println!("sharded batch-predict: {report}"),
            Err(e) => panic!("sharded batch-predict: {e}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_runs_of_one_job_end_with_one_runs_output() {
        let w = world(3_000);
        let a = run_job(job(&w, Arc::clone(&w.store), "out/", 7));
        let b = run_job(job(&w, Arc::clone(&w.store), "out/", 7));
        let (a, b) = tokio::join!(a, b);
        // The older run may be told it was superseded; one of them finishes.
        for r in [&a, &b] {
            if let Err(e) = r {
                assert!(e.to_string().contains("superseded"), "{e}");
            }
        }
        assert!(a.is_ok() || b.is_ok());
        same_as_one_run(&w, 3_000, 7).await.unwrap();
        assert!(checkpoint(&w.store, "out/").await.generation >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_end_at_their_byte_bound_too() {
        let w = world(100);
        let mut bounded = job(&w, Arc::clone(&w.store), "out/", 1_000);
        bounded.part_bytes = 60; // about ten 5-byte rows
        run_job(bounded).await.unwrap();
        let c = checkpoint(&w.store, "out/").await;
        assert!(c.complete && c.rows_done == 100);
        assert!(c.parts.len() >= 8, "{} parts", c.parts.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_run_cannot_move_the_checkpoint_back() {
        let w = world(10);
        let old = job(&w, Arc::clone(&w.store), "out/", 3);
        let handle = Handle::current();
        let (stale, etag) = tokio::task::spawn_blocking(move || {
            let acquired = old.acquire(&handle).unwrap().unwrap();
            (old, acquired)
        })
        .await
        .map(|(old, (c, e))| ((old, c), e))
        .unwrap();
        // A newer run takes over and finishes.
        run_job(job(&w, Arc::clone(&w.store), "out/", 3))
            .await
            .unwrap();
        let (old, mut c) = stale;
        c.rows_done = 3;
        let handle = Handle::current();
        let e = tokio::task::spawn_blocking(move || old.commit(&handle, &c, etag))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("superseded"), "{e}");
        assert!(checkpoint(&w.store, "out/").await.complete);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_input_read_in_small_ranges_gives_the_file_output() {
        let w = world(40);
        run_job(job(&w, Arc::clone(&w.store), "out/", 6))
            .await
            .unwrap();
        let bytes = std::fs::read(w.dir.path().join("input.csv")).unwrap();
        w.store
            .put("in/input.csv", bytes, PutCondition::None)
            .await
            .unwrap();
        let version = w.store.head_version("in/input.csv").await.unwrap().unwrap();
        // Ranges shorter than the header, holding it and some rows, and holding the whole input.
        for chunk in [1, 5, 64, 1 << 20] {
            let prefix = format!("ranges-{chunk}/");
            let mut ranged = job(&w, Arc::clone(&w.store), &prefix, 6);
            ranged.read_chunk = chunk;
            ranged.input = Input::Object {
                store: Arc::clone(&w.store),
                key: "in/input.csv".into(),
                uri: "in/input.csv".into(),
                version: version.clone(),
            };
            run_job(ranged).await.unwrap();
            assert_eq!(
                files(&w.store, &prefix).await,
                files(&w.store, "out/").await
            );
        }
        // A replaced input fails the job instead of mixing two inputs.
        let mut stale = job(&w, Arc::clone(&w.store), "stale/", 6);
        stale.input = Input::Object {
            store: Arc::clone(&w.store),
            key: "in/input.csv".into(),
            uri: "in/input.csv".into(),
            version: ObjectVersion {
                etag: "not-the-current-tag".into(),
                ..version
            },
        };
        let e = run_job(stale).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("changed while the job read it"),
            "{e:#}"
        );
    }

    /// A world whose input is `csv`.
    fn world_of(csv: &str) -> World {
        let w = world(0);
        std::fs::write(w.dir.path().join("input.csv"), csv).unwrap();
        w
    }

    fn error_text(e: &anyhow::Error) -> String {
        format!("{e:#}")
    }

    #[test]
    fn the_quote_guard_passes_csv_and_stops_an_unterminated_quote() {
        let read = |text: &str, max: u64| {
            let mut out = String::new();
            QuoteGuard::new(text.as_bytes(), 1, max)
                .read_to_string(&mut out)
                .map(|_| out)
                .map_err(|e| e.to_string())
        };
        // Quoted commas, newlines within the limit, escaped quotes, and a stray quote inside an
        // unquoted field all pass unchanged.
        let fine = "a,b\n\"x,y\",\"two\nlines\"\n\"say \"\"hi\"\"\",5'11\"\n";
        assert_eq!(read(fine, 1).unwrap(), fine);
        let open = format!("a,b\n1,2\n3,\"open\n{}", "4,5\n".repeat(10));
        let e = read(&open, 5).unwrap_err();
        assert!(
            e.starts_with("line 3: a quoted field opened on this line"),
            "{e}"
        );
        assert!(read(&open, 50).is_ok());
    }

    #[test]
    fn the_quote_guard_skipping_agrees_with_its_byte_by_byte_rule() {
        // Random CSV-like bytes in random reads: the same bytes passed, the same line count and
        // state, the same violation as taking every byte through `step`.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let len = next(200) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| b"ab,\"\n\r 1"[next(8) as usize]).collect();
            let max = next(4);
            let mut fast = QuoteGuard::new(&[][..], 1, max);
            let mut slow = QuoteGuard::new(&[][..], 1, max);
            let mut at = 0;
            while at < len {
                let end = (at + 1 + next(40) as usize).min(len);
                let passed = fast.scan(&bytes[at..end]);
                let want = (at..end)
                    .find(|&i| !slow.step(bytes[i]))
                    .map_or(end - at, |i| i - at);
                assert_eq!(passed, want, "{:?}", String::from_utf8_lossy(&bytes));
                assert_eq!(
                    (fast.state, fast.line, fast.opened_at, fast.lines_open),
                    (slow.state, slow.line, slow.opened_at, slow.lines_open),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
                assert_eq!(fast.pending, slow.pending);
                if passed < end - at {
                    break;
                }
                at = end;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unterminated_quote_stops_the_job_naming_its_line() {
        let w = world_of(&format!("x\n1.5\n\"2.5\n{}", "3\n".repeat(300)));
        let e = run_job(job(&w, Arc::clone(&w.store), "out/", 50))
            .await
            .unwrap_err();
        assert!(
            error_text(&e).contains("line 3: a quoted field opened"),
            "{e:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_unterminated_quote_rejects_one_row_naming_its_first_line() {
        let w = world_of("x\n1.5\n\"2.5\n4\n5\n");
        run_job(job(&w, Arc::clone(&w.store), "out/", 50))
            .await
            .unwrap();
        let c = checkpoint(&w.store, "out/").await;
        assert_eq!((c.rows_done, c.rows_rejected), (2, 1));
        let errors = files(&w.store, "out/").await["errors-00000.csv"].clone();
        let errors = String::from_utf8(errors).unwrap();
        assert!(errors.contains("2,3,"), "{errors}");
        assert!(errors.contains("runs from line 3 to line 6"), "{errors}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chosen_input_columns_are_copied_beside_the_prediction() {
        let w = world_of("x,y\n1.5,\"a, b\"\n2.5,c\n");
        let mut copying = job(&w, Arc::clone(&w.store), "out/", 50);
        copying.copy_columns = vec!["y".into()];
        run_job(copying).await.unwrap();
        let part = files(&w.store, "out/").await["part-00000.csv"].clone();
        let part = String::from_utf8(part).unwrap();
        assert!(
            part.starts_with("row,id,y,prediction\n1,,\"a, b\",1.5\n2,,c,2.5\n"),
            "{part}"
        );
        let mut missing = job(&w, Arc::clone(&w.store), "other/", 50);
        missing.copy_columns = vec!["customer".into()];
        let e = run_job(missing).await.unwrap_err();
        assert!(
            error_text(&e).contains("no column 'customer' (its columns: x, y)"),
            "{e:#}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_rejected_rows_than_allowed_stop_with_status_4() {
        let w = world(10);
        let mut strict = job(&w, Arc::clone(&w.store), "out/", 2);
        strict.max_rejected = Some(MaxRejected::Rows(0));
        let e = run_job(strict).await.unwrap_err();
        let status = e.downcast_ref::<ExitWith>().expect("an exit status");
        assert_eq!(status.code, 4, "{status}");
        assert!(status.message.contains("stopped after row 4"), "{status}");
        assert_eq!(MaxRejected::parse("0.5%"), Ok(MaxRejected::Percent(0.5)));
        assert!(MaxRejected::Percent(5.0).exceeded(6, 100));
        assert!(!MaxRejected::Percent(5.0).exceeded(5, 100));
        assert!(
            MaxRejected::parse("lots")
                .unwrap_err()
                .contains("not a row count")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overwrite_removes_an_earlier_jobs_output_only() {
        let w = world(10);
        run_job(job(&w, Arc::clone(&w.store), "out/", 3))
            .await
            .unwrap();
        w.store
            .put("out/notes.txt", b"mine".to_vec(), PutCondition::None)
            .await
            .unwrap();
        let mut other = job(&w, Arc::clone(&w.store), "out/", 3);
        other.fingerprint = "another job".into();
        let e = run_job(other).await.unwrap_err();
        assert!(error_text(&e).contains("belongs to another job"), "{e:#}");
        let output = Output {
            store: Arc::clone(&w.store),
            prefix: "out/".into(),
        };
        output.clear().await.unwrap();
        assert_eq!(w.store.list("out/").await.unwrap(), vec!["out/notes.txt"]);
        let mut other = job(&w, Arc::clone(&w.store), "out/", 3);
        other.fingerprint = "another job".into();
        run_job(other).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_of_any_size_give_the_output_of_whole_parts() {
        let w = world(203);
        let whole = JobRun {
            chunk_rows: u64::MAX,
            ..job(&w, Arc::clone(&w.store), "whole/", 50)
        };
        run_job(whole).await.unwrap();
        let want = files(&w.store, "whole/").await;
        assert!(want.contains_key("errors-00000.csv"), "{:?}", want.keys());
        for chunk_rows in [1, 2, 7, 49, 50, 51] {
            let prefix = format!("chunks-{chunk_rows}/");
            let chunked = JobRun {
                chunk_rows,
                ..job(&w, Arc::clone(&w.store), &prefix, 50)
            };
            run_job(chunked).await.unwrap();
            assert_eq!(
                files(&w.store, &prefix).await,
                want,
                "chunks of {chunk_rows} rows"
            );
        }
    }

    #[test]
    fn rendering_on_several_threads_equals_one_pass() {
        let bundle = sample_bundle();
        let predictor = Predictor::from_bundle(&bundle).unwrap();
        let n = 3 * PIECE_ROWS + 17;
        // Refused rows here and there, and at both ends of a piece.
        let bad = |i: usize| i % 97 == 5 || i == PIECE_ROWS - 1 || i == PIECE_ROWS;
        let rows: Vec<Vec<Value>> = (0..n)
            .map(|i| {
                vec![if bad(i) {
                    Value::Category("x".into())
                } else {
                    Value::Number(i as f64 / 3.0)
                }]
            })
            .collect();
        let keep: Vec<_> = (0..n)
            .map(|i| (i as u64 + 1, Some(format!("id,{i}")), vec![format!("c{i}")]))
            .collect();
        let labels = ("no".to_string(), "yes".to_string());
        for labels in [None, Some(&labels)] {
            let one = render(&predictor, &rows, &keep, labels).unwrap();
            assert_eq!(one.rejected, (0..n).filter(|&i| bad(i)).count() as u64);
            for threads in [1, 2, 3, 5] {
                let parallel = render_parallel(&predictor, &rows, &keep, labels, threads).unwrap();
                assert_eq!(parallel.body, one.body, "{threads} threads");
                assert_eq!(parallel.errors, one.errors, "{threads} threads");
                assert_eq!(parallel.rejected, one.rejected, "{threads} threads");
            }
        }
    }

    #[test]
    fn bad_rows_cost_one_pass() {
        // Rows the pipeline refuses are skipped in place: every good row is predicted once and
        // the bad ones keep their position.
        let bundle = sample_bundle();
        let predictor = Predictor::from_bundle(&bundle).unwrap();
        let rows: Vec<Vec<Value>> = (0..50)
            .map(|i| {
                vec![if i % 7 == 3 {
                    Value::Category("x".into())
                } else {
                    Value::Number(i as f64)
                }]
            })
            .collect();
        let out = predict_each(&predictor, &rows).unwrap();
        assert_eq!(out.len(), 50);
        for (i, p) in out.iter().enumerate() {
            assert_eq!(p.is_err(), i % 7 == 3, "row {i}: {p:?}");
        }
    }
}
