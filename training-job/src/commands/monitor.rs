//! `mlops monitor`: drift of the served inputs and outputs over a window of prediction logs, per
//! version, against the training reference each version's artifact carries, and the alerts it
//! raises.
//!
//! The logs are read one object at a time into mergeable sketches ([`mlops_domain::drift`]), so
//! memory grows with the number of features, not with the rows in the window; whole past hours
//! are kept as sketches and merged by later runs. The report is printed (a table, or JSON with
//! `--json`) and written to the store under `monitoring/MODEL/reports/`; alerts go to a webhook
//! once per window and rule ([`mlops_domain::alerts`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use clap::Args;
use mlops_domain::alerts::{Alert, Delivery, QualityLimits, alerts, deliver};
use mlops_domain::drift::{DatasetDrift, DriftRule, Reference, WindowSketch};
use mlops_domain::predlog;
use mlops_domain::registry::Registry;
use mlops_domain::store::{ObjectStore, PutCondition};
use serde::{Deserialize, Serialize};

use crate::alerts::WebhookSink;
use crate::commands::registry::ensure_model;
use crate::config::Settings;
use crate::exit::ExitWith;

/// Longest a logged record waits before its object is written (the writer flushes far sooner;
/// this bounds which objects written after the window can still hold its records).
const WRITE_LAG: Duration = Duration::hours(1);
/// Exit status when `--fail-on-drift` is given and the data set drifted.
const EXIT_DRIFT: u8 = 5;

/// `mlops monitor`.
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Model whose logged predictions to check.
    #[arg(long)]
    pub model: String,
    /// Length of the window, in hours, ending at --until.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=24 * 366), conflicts_with = "since")]
    pub hours: u32,
    /// Start of the window (RFC 3339, e.g. 2026-12-01T00:00:00Z), instead of --hours.
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339); default now.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Share of drifted features at which the data set counts as drifted.
    #[arg(long, default_value_t = 0.5)]
    pub drift_share: f64,
    /// p-value below which a test (small references) says drift.
    #[arg(long, default_value_t = 0.05)]
    pub p_value: f64,
    /// Distance at or above which Wasserstein / Jensen–Shannon (large references) say drift.
    #[arg(long, default_value_t = 0.1)]
    pub distance: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 5 when the data set drifted for any version.
    #[arg(long)]
    pub fail_on_drift: bool,
    /// POST each alert (drift, prediction drift, data quality) to this URL, signed with HMAC-SHA256 under
    /// MLOPS_ALERT_WEBHOOK_SECRET; an alert already delivered for the window is not sent again.
    #[arg(long, env = "MLOPS_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
    /// Put the scores in this CloudWatch namespace: per version (dimensions Model, Version) and
    /// per feature (Model, Version, Feature).
    #[arg(long, env = "MLOPS_CLOUDWATCH_NAMESPACE")]
    pub cloudwatch_namespace: Option<String>,
    /// Data-quality alert: rise of a feature's missing share over training's.
    #[arg(long, default_value_t = 0.1)]
    pub max_missing_rise: f64,
    /// Data-quality alert: share of a feature's values outside training's range or unseen.
    #[arg(long, default_value_t = 0.05)]
    pub max_outside_share: f64,
}

/// The report of one run.
#[derive(Debug, Serialize, Deserialize)]
pub struct MonitorReport {
    /// Model.
    pub model: String,
    /// Window start (inclusive).
    pub from: DateTime<Utc>,
    /// Window end (exclusive).
    pub until: DateTime<Utc>,
    /// Log records read in the window.
    pub records: u64,
    /// Records that could not be read (not JSON, or no input object).
    pub unreadable: u64,
    /// Whole hours merged from their kept sketches.
    pub hours_from_cache: u32,
    /// Whole hours sketched from their logs (and kept) by this run.
    pub hours_sketched: u32,
    /// Per version served in the window.
    pub versions: Vec<VersionDrift>,
    /// Alerts the window raised.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// What became of them, with a webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
}

/// One version's drift in the window.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionDrift {
    /// Version.
    pub version: u64,
    /// Its verdict.
    pub drift: DatasetDrift,
}

/// The fields of a logged prediction the monitor reads.
#[derive(Deserialize)]
struct LoggedInput {
    at: DateTime<Utc>,
    version: u64,
    input: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    output: Option<f64>,
}

/// Runs the command.
pub async fn run(args: MonitorArgs, settings: &Settings) -> Result<()> {
    let within = |x: f64, low: f64, high: f64| x > low && x <= high;
    if !within(args.drift_share, 0.0, 1.0) {
        bail!("--drift-share {} must be in (0, 1]", args.drift_share);
    }
    if !within(args.p_value, 0.0, 1.0) || args.p_value == 1.0 {
        bail!("--p-value {} must be in (0, 1)", args.p_value);
    }
    if !within(args.distance, 0.0, f64::INFINITY) {
        bail!("--distance {} must be above 0", args.distance);
    }
    let registry = settings.registry().await?;
    ensure_model(&registry, &args.model).await?;
    let until = args.until.unwrap_or_else(Utc::now);
    let from = args
        .since
        .unwrap_or(until - Duration::hours(i64::from(args.hours)));
    if from >= until {
        bail!("the window is empty: --since {from} is not before --until {until}");
    }
    let rule = DriftRule {
        p_value: args.p_value,
        distance: args.distance,
        drift_share: args.drift_share,
    };
    let sink = match &args.alert_webhook {
        Some(url) => {
            let secret = std::env::var("MLOPS_ALERT_WEBHOOK_SECRET").map_err(|_| {
                anyhow::anyhow!("--alert-webhook needs MLOPS_ALERT_WEBHOOK_SECRET (the HMAC key)")
            })?;
            Some(WebhookSink::new(url, &secret)?)
        }
        None => None,
    };
    let mut report = monitor(&registry, &args.model, from, until, &rule).await?;
    let limits = QualityLimits {
        missing_rise: args.max_missing_rise,
        outside_share: args.max_outside_share,
    };
    report.alerts = alerts_of(&report, &limits);
    if let Some(sink) = &sink {
        report.deliveries = deliver(registry.store().as_ref(), sink, &report.alerts).await?;
    }
    if let Some(namespace) = &args.cloudwatch_namespace {
        let sent = put_metrics(namespace, &report).await?;
        eprintln!("{sent} metrics put to CloudWatch namespace {namespace}");
    }
    let key = format!(
        "monitoring/{}/reports/{}-{}.json",
        args.model,
        from.format("%Y%m%dT%H%M%SZ"),
        until.format("%Y%m%dT%H%M%SZ")
    );
    registry
        .store()
        .put(
            &key,
            serde_json::to_vec_pretty(&report)?,
            PutCondition::None,
        )
        .await
        .with_context(|| format!("cannot write the report to {}", registry.store().uri(&key)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
        for alert in &report.alerts {
            println!("ALERT {:?}: {}", alert.rule, alert.summary);
        }
        eprintln!("report: {}", registry.store().uri(&key));
    }
    for failed in report.deliveries.iter().filter_map(|d| match d {
        Delivery::Failed { id, error } => Some((id, error)),
        _ => None,
    }) {
        eprintln!(
            "warning: alert {} was not delivered: {}",
            failed.0, failed.1
        );
    }
    if args.fail_on_drift && report.versions.iter().any(|v| v.drift.drifted) {
        return Err(ExitWith {
            code: EXIT_DRIFT,
            message: format!("{}: the data set drifted", args.model),
        }
        .into());
    }
    Ok(())
}

/// The alerts each version's window raises.
fn alerts_of(report: &MonitorReport, limits: &QualityLimits) -> Vec<Alert> {
    report
        .versions
        .iter()
        .flat_map(|v| {
            alerts(
                &report.model,
                v.version,
                report.from,
                report.until,
                &v.drift,
                limits,
            )
        })
        .collect()
}

/// Sketches every logged record of `model` in `[from, until)`, per version, and tests each
/// version's window against its reference. Whole hours that ended more than [`WRITE_LAG`] ago
/// are sketched once and kept on the store (`monitoring/MODEL/sketches/`); a later window
/// merges them instead of reading their logs again.
pub async fn monitor(
    registry: &Registry,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    rule: &DriftRule,
) -> Result<MonitorReport> {
    let mut references = References::default();
    let mut window = Sketches::default();
    let (mut cached_hours, mut scanned_hours) = (0u32, 0u32);
    for (start, end) in segments(from, until) {
        let whole_hour = end - start == Duration::hours(1);
        let complete = whole_hour && end + WRITE_LAG <= Utc::now();
        let key = hour_key(model, start);
        let cached = if complete {
            read_hour(
                registry.store().as_ref(),
                &key,
                &mut references,
                registry,
                model,
            )
            .await?
        } else {
            None
        };
        let part = match cached {
            Some(part) => {
                cached_hours += 1;
                part
            }
            None => {
                let part = scan(registry, model, start, end, &mut references).await?;
                if complete {
                    scanned_hours += 1;
                    let bytes = serde_json::to_vec(&part)?;
                    registry
                        .store()
                        .put(&key, bytes, PutCondition::None)
                        .await?;
                }
                part
            }
        };
        window.merge(&part)?;
    }
    let versions = window
        .versions
        .iter()
        .map(|(&version, sketch)| {
            let reference = references.get(version);
            Ok(VersionDrift {
                version,
                drift: rule.check(
                    reference.expect("sketched versions have references"),
                    sketch,
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MonitorReport {
        model: model.into(),
        from,
        until,
        records: window.records,
        unreadable: window.unreadable,
        hours_from_cache: cached_hours,
        hours_sketched: scanned_hours,
        versions,
        alerts: Vec::new(),
        deliveries: Vec::new(),
    })
}

/// `[from, until)` cut at the hours: a leading part, whole hours, a trailing part.
fn segments(from: DateTime<Utc>, until: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut start = from;
    while start < until {
        let next_hour = start
            .duration_trunc(Duration::hours(1))
            .expect("hours truncate")
            + Duration::hours(1);
        let end = next_hour.min(until);
        out.push((start, end));
        start = end;
    }
    out
}

fn hour_key(model: &str, hour: DateTime<Utc>) -> String {
    format!(
        "monitoring/{model}/sketches/date={}/hour={}.json",
        hour.format("%Y-%m-%d"),
        hour.format("%H")
    )
}

/// The references of the versions met so far.
#[derive(Default)]
struct References(BTreeMap<u64, Reference>);

impl References {
    async fn load(&mut self, registry: &Registry, model: &str, version: u64) -> Result<&Reference> {
        Ok(match self.0.entry(version) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(reference_of(registry, model, version).await?)
            }
        })
    }

    fn get(&self, version: u64) -> Option<&Reference> {
        self.0.get(&version)
    }
}

/// Per-version sketches of some stretch of logs, as kept for a whole hour.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sketches {
    records: u64,
    unreadable: u64,
    versions: BTreeMap<u64, WindowSketch>,
}

impl Sketches {
    fn merge(&mut self, other: &Sketches) -> Result<()> {
        self.records += other.records;
        self.unreadable += other.unreadable;
        for (version, sketch) in &other.versions {
            match self.versions.get_mut(version) {
                Some(mine) => mine.merge(sketch)?,
                None => {
                    self.versions.insert(*version, sketch.clone());
                }
            }
        }
        Ok(())
    }
}

/// A kept hour, if there is one and it is in the bins of today's references.
async fn read_hour(
    store: &dyn ObjectStore,
    key: &str,
    references: &mut References,
    registry: &Registry,
    model: &str,
) -> Result<Option<Sketches>> {
    let Some(object) = store.get(key).await? else {
        return Ok(None);
    };
    let Ok(hour) = serde_json::from_slice::<Sketches>(&object.bytes) else {
        tracing::warn!(key, "unreadable hour sketch; sketching the hour again");
        return Ok(None);
    };
    for (&version, sketch) in &hour.versions {
        if references.load(registry, model, version).await?.digest() != sketch.reference {
            return Ok(None);
        }
    }
    Ok(Some(hour))
}

/// The records of a log object (`None` for a line that does not parse), parsed on every core.
fn parse_lines(bytes: &[u8]) -> Vec<Option<LoggedInput>> {
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = lines.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = lines
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|l| serde_json::from_slice::<LoggedInput>(l).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("parsing does not panic"))
            .collect()
    })
}

/// Log objects read ahead of the one being sketched.
const LOOKAHEAD: usize = 2;

/// The records of one log object, fetched, decompressed and parsed off the async threads;
/// `None` when it is gone.
async fn read_object(
    store: Arc<dyn ObjectStore>,
    key: String,
) -> Result<Option<Vec<Option<LoggedInput>>>> {
    let Some(object) = store.get(&key).await? else {
        return Ok(None);
    };
    let uri = store.uri(&key);
    let parsed = tokio::task::spawn_blocking(move || {
        predlog::decode(&key, object.bytes).map(|lines| parse_lines(&lines))
    })
    .await
    .context("the log parser panicked")?
    .with_context(|| format!("log object {uri} is not gzip"))?;
    Ok(Some(parsed))
}

/// Reads the logs of `[from, until)` into per-version sketches.
async fn scan(
    registry: &Registry,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    references: &mut References,
) -> Result<Sketches> {
    let store = registry.store();
    let mut out = Sketches::default();
    // Objects are fetched, decompressed and parsed ahead (two at a time) while the one before
    // is added to the sketches.
    let mut ahead = std::collections::VecDeque::new();
    let mut keys = log_objects(store.as_ref(), model, from, until)
        .await?
        .into_iter();
    loop {
        while ahead.len() < LOOKAHEAD {
            let Some(key) = keys.next() else { break };
            ahead.push_back(tokio::spawn(read_object(Arc::clone(store), key)));
        }
        let Some(next) = ahead.pop_front() else { break };
        let Some(parsed) = next.await.context("the log reader panicked")?? else {
            continue; // expired between the listing and the read
        };
        for logged in parsed {
            let Some(logged) = logged else {
                out.unreadable += 1;
                continue;
            };
            if logged.at < from || logged.at >= until {
                continue;
            }
            let reference = references.load(registry, model, logged.version).await?;
            let sketch = out
                .versions
                .entry(logged.version)
                .or_insert_with(|| reference.sketch());
            reference.add(sketch, &logged.input);
            if let Some(output) = logged.output {
                reference.add_prediction(sketch, output);
            }
            out.records += 1;
        }
    }
    Ok(out)
}

async fn reference_of(registry: &Registry, model: &str, version: u64) -> Result<Reference> {
    let record = registry
        .version(model, version)
        .await
        .with_context(|| format!("logged predictions name {model} v{version}"))?;
    let bundle = registry.load_bundle(&record).await?;
    let manifest = &bundle.manifest;
    Ok(Reference::new(
        &manifest.reference_profile,
        manifest.prediction_profile.as_ref(),
    ))
}

/// The log objects that may hold records of `[from, until)`: written in the window or up to
/// [`WRITE_LAG`] after it (an object holds records from before it was written), in both layouts
/// (hour partitions, and the day folders of earlier builds).
async fn log_objects(
    store: &dyn ObjectStore,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<String>> {
    let last = until + WRITE_LAG;
    let mut prefixes = Vec::new();
    let mut hour = from.duration_trunc(Duration::hours(1))?;
    while hour <= last {
        prefixes.push(predlog::hour_prefix(model, hour));
        hour += Duration::hours(1);
    }
    let mut day: NaiveDate = from.date_naive();
    while day <= last.date_naive() {
        prefixes.push(predlog::legacy_day_prefix(model, day));
        day = day.succ_opt().context("date out of range")?;
    }
    let mut keys = Vec::new();
    for prefix in prefixes {
        for key in store.list(&prefix).await? {
            // Names carry the second an object was written in: it holds records from before
            // the end of that second only.
            match predlog::written_at(&key) {
                Some(t) if t + Duration::seconds(1) <= from || t > last => {}
                _ => keys.push(key),
            }
        }
    }
    Ok(keys)
}

/// The report's scores as CloudWatch metrics.
async fn put_metrics(namespace: &str, report: &MonitorReport) -> Result<usize> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
    let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
    let cloudwatch = mlops_aws::CloudWatchMetrics::new(&config, namespace);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut sent = 0;
    for v in &report.versions {
        let (d, version) = (&v.drift, v.version.to_string());
        let alerts = report
            .alerts
            .iter()
            .filter(|a| a.version == v.version)
            .count();
        let mut values = vec![
            ("rows".to_owned(), d.rows as f64),
            ("drifted_features".to_owned(), d.drifted_features as f64),
            ("drifted_share".to_owned(), d.drifted_share),
            ("dataset_drift".to_owned(), flag(d.drifted)),
            ("alerts".to_owned(), alerts as f64),
        ];
        if let Some(p) = &d.prediction {
            values.push(("prediction_drift_score".into(), p.score.unwrap_or(f64::NAN)));
            values.push(("prediction_drifted".into(), flag(p.drifted)));
        }
        let model = report.model.as_str();
        let dimensions = [("Model", model), ("Version", version.as_str())];
        sent += cloudwatch
            .put(&values, &dimensions)
            .await
            .map_err(anyhow::Error::msg)?;
        for f in &d.features {
            let values = [
                ("drift_score".to_owned(), f.score.unwrap_or(f64::NAN)),
                ("drifted".to_owned(), flag(f.drifted)),
                ("psi".to_owned(), f.psi.unwrap_or(f64::NAN)),
                ("missing_share".to_owned(), f.missing_share),
                (
                    "outside_share".to_owned(),
                    f.out_of_range_share.or(f.unseen_share).unwrap_or(0.0),
                ),
            ];
            let dimensions = [
                ("Model", model),
                ("Version", version.as_str()),
                ("Feature", f.feature.as_str()),
            ];
            sent += cloudwatch
                .put(&values, &dimensions)
                .await
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(sent)
}

/// The report as a table.
fn table(report: &MonitorReport) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{} from {} to {}: {} logged predictions{}\n",
        report.model,
        report.from.format("%Y-%m-%d %H:%M"),
        report.until.format("%Y-%m-%d %H:%M"),
        report.records,
        if report.unreadable > 0 {
            format!(" ({} unreadable lines skipped)", report.unreadable)
        } else {
            String::new()
        }
    );
    if report.versions.is_empty() {
        out.push_str("no predictions logged in the window\n");
    }
    for v in &report.versions {
        let d = &v.drift;
        let _ = writeln!(
            out,
            "\nv{}: {} rows; {} of {} features drifted ({:.0}%, data-set drift at {:.0}%): {}",
            v.version,
            d.rows,
            d.drifted_features,
            d.features.len(),
            d.drifted_share * 100.0,
            d.drift_share * 100.0,
            if d.drifted { "DRIFT" } else { "no drift" }
        );
        let _ = writeln!(
            out,
            "  {:<22} {:<15} {:>10} {:>9}  {:<7} {:>7} {:<8} {:>8} {:>8}",
            "feature", "test", "score", "threshold", "drifted", "psi", "band", "missing", "new/out"
        );
        for f in d.features.iter().chain(&d.prediction) {
            let _ = writeln!(
                out,
                "  {:<22} {:<15} {:>10} {:>9}  {:<7} {:>7} {:<8} {:>7.1}% {:>7.1}%",
                f.feature,
                serde_json::to_value(f.test)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                f.score.map_or("-".into(), |s| format!("{s:.4}")),
                f.threshold,
                if f.drifted { "yes" } else { "no" },
                f.psi.map_or("-".into(), |p| format!("{p:.3}")),
                f.psi_band
                    .and_then(|b| serde_json::to_value(b).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "-".into()),
                f.missing_share * 100.0,
                f.unseen_share.or(f.out_of_range_share).unwrap_or(0.0) * 100.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mlops_domain::registry::RegisterOptions;
    use mlops_domain::testing::sample_bundle;
    use mlops_store::LocalStore;

    use super::*;

    /// Writes one log object at `written` holding `n` records of `x` served at `at`.
    async fn log(
        store: &dyn ObjectStore,
        written: DateTime<Utc>,
        at: DateTime<Utc>,
        n: usize,
        x: f64,
    ) {
        let lines: String = (0..n)
            .map(|i| {
                format!(
                    "{}\n",
                    serde_json::json!({"at": at, "request_id": format!("r{i}"), "model": "m", "version": 1,
                        "variant": "champion", "input": {"x": x}, "output": 0.0, "latency_us": 10})
                )
            })
            .collect();
        let id = (at.timestamp_nanos_opt().unwrap() ^ n as i64).to_string();
        // One object in the layout of earlier builds: both are read.
        let (key, body) = if x == 3.0 && n == 10 {
            let key = format!(
                "{}{}-{id}.jsonl",
                predlog::legacy_day_prefix("m", written.date_naive()),
                written.format("%H%M%S")
            );
            (key, lines.into_bytes())
        } else {
            let key = predlog::object_key("m", written, &id);
            (key, predlog::encode(lines.as_bytes()))
        };
        store.put(&key, body, PutCondition::IfAbsent).await.unwrap();
    }

    /// A local store with model `m` registered and two whole past hours of logs.
    struct Logged {
        _dir: tempfile::TempDir,
        store: Arc<dyn ObjectStore>,
    }

    fn five_hours_ago() -> DateTime<Utc> {
        (Utc::now() - Duration::hours(5))
            .duration_trunc(Duration::hours(1))
            .unwrap()
    }

    async fn logged(first: DateTime<Utc>) -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let options = RegisterOptions {
            idempotency_key: None,
            registered_by: "test".into(),
        };
        Registry::new(Arc::clone(&store))
            .register("m", &sample_bundle(), options)
            .await
            .unwrap();
        let minute = Duration::minutes(1);
        let s = store.as_ref();
        log(s, first + minute * 10, first + minute * 9, 40, 1.0).await;
        // Written in the next hour, served in this one: it counts here.
        log(s, first + minute * 61, first + minute * 59, 10, 3.0).await;
        log(s, first + minute * 70, first + minute * 70, 50, 3.0).await;
        Logged { _dir: dir, store }
    }

    #[tokio::test]
    async fn whole_past_hours_are_sketched_once_then_merged() {
        let first = five_hours_ago();
        let Logged { _dir, store } = logged(first).await;
        let registry = Registry::new(Arc::clone(&store));
        let minute = Duration::minutes(1);
        let s = store.as_ref();
        let rule = DriftRule::default();
        let until = first + Duration::hours(2);
        let sketched = monitor(&registry, "m", first, until, &rule).await.unwrap();
        assert_eq!(
            (
                sketched.records,
                sketched.hours_sketched,
                sketched.hours_from_cache
            ),
            (100, 2, 0)
        );
        let merged = monitor(&registry, "m", first, until, &rule).await.unwrap();
        assert_eq!(
            (
                merged.records,
                merged.hours_sketched,
                merged.hours_from_cache
            ),
            (100, 0, 2)
        );
        assert_eq!(
            serde_json::to_value(&merged.versions).unwrap(),
            serde_json::to_value(&sketched.versions).unwrap()
        );
        // A third hour is the only one read; a window that starts mid-hour reads that part.
        log(s, first + minute * 130, first + minute * 130, 30, 1.0).await;
        let three = monitor(&registry, "m", first, first + Duration::hours(3), &rule)
            .await
            .unwrap();
        assert_eq!(
            (three.records, three.hours_sketched, three.hours_from_cache),
            (130, 1, 2)
        );
        let late = monitor(
            &registry,
            "m",
            first + minute * 60,
            first + Duration::hours(3),
            &rule,
        )
        .await
        .unwrap();
        assert_eq!((late.records, late.hours_from_cache), (80, 2));
        let part = monitor(
            &registry,
            "m",
            first + minute * 30,
            first + minute * 90,
            &rule,
        )
        .await
        .unwrap();
        assert_eq!(
            (part.records, part.hours_from_cache, part.hours_sketched),
            (60, 0, 0)
        );
    }

    /// Records the alerts it is sent.
    #[derive(Default)]
    struct Inbox(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl mlops_domain::alerts::AlertSink for Inbox {
        async fn send(&self, alert: &Alert) -> Result<(), String> {
            self.0.lock().unwrap().push(alert.id.clone());
            Ok(())
        }
        fn describe(&self) -> String {
            "inbox".into()
        }
    }

    /// A monitor run with alerts over two whole past hours: hour sketches, then alert records.
    struct MonitorRun {
        first: DateTime<Utc>,
    }

    struct World {
        logged: Logged,
        inbox: Inbox,
    }

    impl MonitorRun {
        /// Two hours of logs with a value training never saw (a data-quality alert).
        async fn logs(&self) -> Logged {
            let logged = logged(self.first).await;
            let at = self.first + Duration::minutes(20);
            log(logged.store.as_ref(), at, at, 20, 7.0).await;
            logged
        }

        async fn run(&self, w: &World, store: Arc<dyn ObjectStore>) -> Result<MonitorReport> {
            let registry = Registry::new(Arc::clone(&store));
            let until = self.first + Duration::hours(2);
            let rule = DriftRule::default();
            let mut report = monitor(&registry, "m", self.first, until, &rule).await?;
            report.alerts = alerts_of(&report, &QualityLimits::default());
            report.deliveries = deliver(store.as_ref(), &w.inbox, &report.alerts).await?;
            Ok(report)
        }
    }

    #[async_trait::async_trait]
    impl mlops_domain::faults::CrashScenario for MonitorRun {
        type World = World;
        async fn world(&self) -> World {
            World {
                logged: self.logs().await,
                inbox: Inbox::default(),
            }
        }
        async fn run(
            &self,
            w: &World,
            plan: &mlops_domain::faults::FaultPlan,
        ) -> Result<(), String> {
            let store = plan.store(Arc::clone(&w.logged.store));
            let report = MonitorRun::run(self, w, store).await;
            report.map(drop).map_err(|e| format!("{e:#}"))
        }
        async fn check(&self, w: &World) -> Result<(), String> {
            // Another run over what was kept gives the verdict of a run over the logs alone,
            // and finds every alert delivered and recorded.
            let store = Arc::clone(&w.logged.store);
            let kept = MonitorRun::run(self, w, store)
                .await
                .map_err(|e| e.to_string())?;
            let fresh = self.world().await;
            let store = Arc::clone(&fresh.logged.store);
            let expected = MonitorRun::run(self, &fresh, store).await.unwrap();
            let verdicts = |r: &MonitorReport| serde_json::to_value(&r.versions).unwrap();
            if verdicts(&kept) != verdicts(&expected) || kept.alerts != expected.alerts {
                return Err(format!(
                    "kept hours give another verdict: {:?}",
                    kept.versions
                ));
            }
            if kept.alerts.is_empty() {
                return Err("the window raised no alert".into());
            }
            let inbox = w.inbox.0.lock().unwrap();
            if let Some(lost) = kept.alerts.iter().find(|a| !inbox.contains(&a.id)) {
                return Err(format!("alert {} was never delivered", lost.id));
            }
            match kept
                .deliveries
                .iter()
                .find(|d| !matches!(d, Delivery::AlreadySent { .. }))
            {
                Some(d) => Err(format!("an alert was not recorded as delivered: {d:?}")),
                None => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn a_monitor_run_converges_at_every_crash_point() {
        let scenario = MonitorRun {
            first: five_hours_ago(),
        };
        let report = mlops_domain::faults::explore(&scenario).await.unwrap();
        println!("monitor with alerts: {report}");
    }
}
