//! The monitor: drift of the served inputs and outputs over a window of prediction logs, per
//! version, against the training reference each version's artifact carries; live quality from
//! the feedback joined to them; A/B verdicts between variants; and the alerts they raise. The
//! `mlops monitor` command and the monitor Lambda function both run it.
//!
//! The logs are read one object at a time into mergeable sketches ([`mlops_domain::drift`],
//! [`mlops_domain::quality`]), so memory grows with the number of features, not with the rows
//! in the window; whole past hours are kept as sketches and merged by later runs. A run's report
//! is written to the store under `monitoring/MODEL/reports/`; alerts go to a sink once per
//! window and rule ([`mlops_domain::alerts`]).

pub mod html;
pub mod retrain;
pub mod rollback;
pub mod tracking;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Duration, DurationRound, Utc};
pub use mlops_domain::ab::AbVerdict;
use mlops_domain::ab::{AbStatus, Arm, SequentialTest};
use mlops_domain::alerts::{
    Alert, AlertSink, Delivery, QualityLimits, alerts, attribution_alert, deliver, quality_alerts,
};
use mlops_domain::attribution::{AttributionDrift, AttributionProfile, AttributionSketch};
use mlops_domain::drift::{DatasetDrift, DriftRule, Reference, WindowSketch};
use mlops_domain::feedback::{self, Labels};
use mlops_domain::metrics::Metric;
use mlops_domain::predlog::{self, WRITE_LAG};
use mlops_domain::quality::{Calibration, LiveQuality, QualitySketch};
use mlops_domain::registry::Registry;
use mlops_domain::schema::{Schema, Task};
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_engine::Predictor;
use serde::{Deserialize, Serialize};

/// Longest between the time a feedback object is named after and the moment it can be listed
/// (the feedback route names it, then writes it within its request deadline).
const FEEDBACK_PUT_LAG: Duration = Duration::minutes(5);

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
    /// Labels found for predictions in the window (within the label delay).
    #[serde(default)]
    pub labelled: u64,
    /// Per variant other than the champion with labels: the sequential A/B verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ab: Vec<AbVerdict>,
    /// Alerts the window raised.
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The quality sketches behind `versions[].quality`, by version and variant (not
    /// serialized).
    #[serde(skip)]
    pub quality_sketches: BTreeMap<u64, BTreeMap<String, QualitySketch>>,
    /// What became of them, with a webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
}

impl MonitorReport {
    /// The quality sketch of a version served as a variant.
    pub fn quality_sketch(&self, version: u64, variant: &str) -> Option<&QualitySketch> {
        self.quality_sketches.get(&version)?.get(variant)
    }
}

/// One version's drift and quality in the window.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionDrift {
    /// Version.
    pub version: u64,
    /// Its verdict.
    pub drift: DatasetDrift,
    /// Its task.
    #[serde(default)]
    pub task: Option<Task>,
    /// Its metrics on the test split (what live quality is compared with).
    #[serde(default)]
    pub test_metrics: BTreeMap<String, f64>,
    /// Live quality per variant that served it: realized from feedback, and estimated.
    #[serde(default)]
    pub quality: BTreeMap<String, LiveQuality>,
    /// Feature-attribution drift of a sample of the window's records, when the model explains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionDrift>,
    /// Reference and window distributions per feature (and of the predictions), for plots.
    #[serde(default)]
    pub histograms: Vec<mlops_domain::drift::Histogram>,
}

/// The fields of a logged prediction the monitor reads.
#[derive(Deserialize)]
struct LoggedInput {
    at: DateTime<Utc>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default = "first_record")]
    record: u32,
    #[serde(default)]
    variant: String,
    version: u64,
    input: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    output: Option<f64>,
}

fn first_record() -> u32 {
    1
}

/// When alerts fire.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub data: QualityLimits,
    /// Relative worsening of the primary metric against the test metric.
    pub degradation: f64,
    /// Rows a variant needs before a quality alert.
    pub min_quality_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            data: QualityLimits::default(),
            degradation: 0.1,
            min_quality_rows: 100,
        }
    }
}

/// The alerts each version's window raises.
pub fn alerts_of(report: &MonitorReport, limits: &Limits) -> Vec<Alert> {
    let (model, from, until) = (report.model.as_str(), report.from, report.until);
    report
        .versions
        .iter()
        .flat_map(|v| {
            let mut out = alerts(model, v.version, from, until, &v.drift, &limits.data);
            out.extend(v.attribution.as_ref().and_then(|a| {
                attribution_alert(model, v.version, from, until, a, ATTRIBUTION_MIN_ROWS)
            }));
            if let Some(task) = v.task {
                let primary = Metric::primary(task);
                out.extend(quality_alerts(
                    model,
                    v.version,
                    from,
                    until,
                    primary,
                    v.test_metrics.get(primary.name()).copied(),
                    &v.quality,
                    limits.degradation,
                    limits.min_quality_rows,
                ));
            }
            out
        })
        .collect()
}

/// What a monitor run covers.
#[derive(Debug, Clone)]
pub struct Window {
    /// Start (inclusive).
    pub from: DateTime<Utc>,
    /// End (exclusive).
    pub until: DateTime<Utc>,
    /// Longest a label may arrive after its prediction and still count.
    pub label_delay: Duration,
    /// The variant A/B verdicts compare the others with.
    pub champion: String,
    /// The A/B test.
    pub ab_test: SequentialTest,
}

/// Sketches every logged record of `model` in the window, per version, joined to the labels
/// received within the label delay, and tests each version's window against its reference.
/// Whole hours that ended more than [`WRITE_LAG`] ago are sketched once and kept on the store
/// (`monitoring/MODEL/sketches/`); a later window merges them instead of reading their logs
/// again, unless labels for them arrived since.
pub async fn monitor(
    registry: &Registry,
    model: &str,
    window: Window,
    rule: &DriftRule,
) -> Result<MonitorReport> {
    let Window {
        from,
        until,
        label_delay,
        champion,
        ab_test,
    } = window;
    let now = Utc::now();
    let mut references = References::default();
    let mut labels = FeedbackIndex::list(registry, model, from, until + label_delay).await?;
    let mut window = Sketches::default();
    let (mut cached_hours, mut scanned_hours) = (0u32, 0u32);
    for (start, end) in segments(from, until) {
        let whole_hour = end - start == Duration::hours(1);
        let complete = whole_hour && end + WRITE_LAG <= now;
        let key = hour_key(model, start);
        let cached = if complete {
            read_hour(registry, &key, &mut references, model)
                .await?
                .filter(|hour| {
                    hour.label_delay_seconds == label_delay.num_seconds()
                        && labels.settled(hour.labels_through, end + label_delay)
                })
        } else {
            None
        };
        let part = match cached {
            Some(part) => {
                cached_hours += 1;
                part
            }
            None => {
                let labelled = labels.read(registry, model).await?;
                let span = Span {
                    from: start,
                    until: end,
                    label_delay,
                };
                let mut part = scan(registry, model, span, &mut references, labelled).await?;
                if complete {
                    scanned_hours += 1;
                    part.labels_through = Some(now.min(end + label_delay));
                    part.label_delay_seconds = label_delay.num_seconds();
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
    let mut versions = Vec::new();
    for (&version, sketch) in &window.versions {
        let r = references
            .get(version)
            .expect("sketched versions have references");
        let quality = window
            .quality
            .get(&version)
            .into_iter()
            .flatten()
            .map(|(variant, q)| (variant.clone(), q.report(r.calibration.as_ref())))
            .collect();
        versions.push(VersionDrift {
            version,
            drift: rule.check(&r.reference, sketch)?,
            histograms: r.reference.histograms(sketch),
            attribution: match (&r.attribution, window.attribution.get(&version)) {
                (Some((profile, ..)), Some(sketch)) => profile.check(sketch),
                _ => None,
            },
            quality,
            task: Some(r.task),
            test_metrics: r.test_metrics.clone(),
        });
    }
    Ok(MonitorReport {
        model: model.into(),
        from,
        until,
        records: window.records,
        unreadable: window.unreadable,
        hours_from_cache: cached_hours,
        hours_sketched: scanned_hours,
        labelled: window
            .quality
            .values()
            .flatten()
            .map(|(_, q)| q.labelled())
            .sum(),
        ab: ab_verdicts(&window, &ab_test, &champion),
        quality_sketches: std::mem::take(&mut window.quality),
        versions,
        alerts: Vec::new(),
        deliveries: Vec::new(),
    })
}

/// Every variant with labels against `champion`, over all versions they served.
fn ab_verdicts(window: &Sketches, test: &SequentialTest, champion: &str) -> Vec<AbVerdict> {
    let mut by_variant: BTreeMap<&str, QualitySketch> = BTreeMap::new();
    for (variant, sketch) in window.quality.values().flatten() {
        match by_variant.get_mut(variant.as_str()) {
            Some(mine) => {
                if mine.merge(sketch).is_err() {
                    return Vec::new(); // versions of different tasks: no comparison
                }
            }
            None => {
                by_variant.insert(variant, sketch.clone());
            }
        }
    }
    let arm = |s: &QualitySketch| {
        s.loss_moments().map(|(rows, mean, variance)| Arm {
            rows,
            mean,
            variance,
        })
    };
    let Some(base) = by_variant.get(champion).and_then(arm) else {
        return Vec::new();
    };
    by_variant
        .iter()
        .filter(|(name, _)| **name != champion)
        .filter_map(|(name, sketch)| {
            let other = arm(sketch)?;
            Some(AbVerdict {
                champion: champion.into(),
                challenger: (*name).into(),
                loss: match sketch {
                    QualitySketch::Regression(_) => "squared_error",
                    QualitySketch::BinaryClassification(_) => "log_loss",
                }
                .into(),
                rows: (base.rows, other.rows),
                mean_loss: (base.mean, other.mean),
                verdict: test.verdict(base, other),
            })
        })
        .collect()
}

/// The feedback objects that may hold labels for a window, read only when an hour has to be
/// sketched.
struct FeedbackIndex {
    /// Each object and the latest it can have been received.
    objects: Vec<(String, DateTime<Utc>)>,
    labels: Option<Labels>,
}

impl FeedbackIndex {
    async fn list(
        registry: &Registry,
        model: &str,
        from: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<Self> {
        let mut objects = Vec::new();
        let mut hour = from.duration_trunc(Duration::hours(1))?;
        while hour <= last {
            let prefix = predlog::hour_prefix_under(feedback::PREFIX, model, hour);
            for key in registry.store().list(&prefix).await? {
                if let Some(t) = received_at(&key) {
                    objects.push((key, t));
                }
            }
            hour += Duration::hours(1);
        }
        Ok(Self {
            objects,
            labels: None,
        })
    }

    /// Whether an hour sketched with the labels received by `through` still has them all:
    /// its labels were final then, or none arrived since.
    fn settled(&self, through: Option<DateTime<Utc>>, final_at: DateTime<Utc>) -> bool {
        let Some(through) = through else {
            return self.objects.is_empty();
        };
        through >= final_at
            || !self
                .objects
                .iter()
                .any(|(_, t)| *t + FEEDBACK_PUT_LAG >= through && *t <= final_at)
    }

    /// The labels of every listed object (read once).
    async fn read(&mut self, registry: &Registry, model: &str) -> Result<&Labels> {
        if self.labels.is_none() {
            let mut labels = Labels::default();
            if !self.objects.is_empty() {
                let schema = latest_schema(registry, model).await?;
                for (key, received) in &self.objects {
                    let Some(object) = registry.store().get(key).await? else {
                        continue;
                    };
                    let uri = registry.store().uri(key);
                    let (read, unreadable) =
                        feedback::read_object(&schema, key, object.bytes, *received)
                            .with_context(|| format!("feedback object {uri}"))?;
                    if unreadable > 0 {
                        tracing::warn!(%uri, unreadable, "feedback rows skipped");
                    }
                    for label in read {
                        labels.insert(label, *received);
                    }
                }
            }
            self.labels = Some(labels);
        }
        Ok(self.labels.as_ref().expect("just read"))
    }
}

/// When a feedback object was received: the second in its name, or (a dropped file) the start
/// of its hour partition.
fn received_at(key: &str) -> Option<DateTime<Utc>> {
    predlog::written_at(key).or_else(|| predlog::partition_hour(key))
}

/// The input schema of a model's newest version.
pub async fn latest_schema(
    registry: &Registry,
    model: &str,
) -> Result<mlops_domain::schema::Schema> {
    let record = registry
        .versions(model)
        .await?
        .pop()
        .with_context(|| format!("model {model} has no versions"))?;
    Ok(registry.load_bundle(&record).await?.manifest.schema)
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

/// What the monitor needs of a version's bundle.
struct VersionReference {
    reference: Reference,
    task: Task,
    calibration: Option<Calibration>,
    test_metrics: BTreeMap<String, f64>,
    /// The attribution reference and what explains records (models the engine can explain).
    attribution: Option<(AttributionProfile, Box<Predictor>, Schema)>,
}

/// The references of the versions met so far.
#[derive(Default)]
struct References(BTreeMap<u64, VersionReference>);

impl References {
    async fn load(
        &mut self,
        registry: &Registry,
        model: &str,
        version: u64,
    ) -> Result<&VersionReference> {
        Ok(match self.0.entry(version) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(reference_of(registry, model, version).await?)
            }
        })
    }

    fn get(&self, version: u64) -> Option<&VersionReference> {
        self.0.get(&version)
    }
}

/// Per-version sketches of some stretch of logs, as kept for a whole hour.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Sketches {
    records: u64,
    unreadable: u64,
    versions: BTreeMap<u64, WindowSketch>,
    /// Per version and variant.
    #[serde(default)]
    quality: BTreeMap<u64, BTreeMap<String, QualitySketch>>,
    /// Per version: |contributions| of a sample of the records.
    #[serde(default)]
    attribution: BTreeMap<u64, AttributionSketch>,
    /// Labels received by then are in `quality` (kept hours only).
    #[serde(default)]
    labels_through: Option<DateTime<Utc>>,
    /// The label delay they were joined with, in seconds (kept hours only).
    #[serde(default)]
    label_delay_seconds: i64,
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
        for (version, sketch) in &other.attribution {
            self.attribution.entry(*version).or_default().merge(sketch);
        }
        for (version, variants) in &other.quality {
            let mine = self.quality.entry(*version).or_default();
            for (variant, sketch) in variants {
                match mine.get_mut(variant) {
                    Some(m) => m.merge(sketch).map_err(anyhow::Error::msg)?,
                    None => {
                        mine.insert(variant.clone(), sketch.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A kept hour, if there is one and it is in the bins of today's references.
async fn read_hour(
    registry: &Registry,
    key: &str,
    references: &mut References,
    model: &str,
) -> Result<Option<Sketches>> {
    let Some(object) = registry.store().get(key).await? else {
        return Ok(None);
    };
    let hour = match serde_json::from_slice::<Sketches>(&object.bytes) {
        Ok(hour) => hour,
        Err(e) => {
            tracing::warn!(key, error = %e, "unreadable hour sketch; sketching the hour again");
            return Ok(None);
        }
    };
    for (&version, sketch) in &hour.versions {
        if references
            .load(registry, model, version)
            .await?
            .reference
            .digest()
            != sketch.reference
        {
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

/// Explained records an attribution-drift alert needs.
const ATTRIBUTION_MIN_ROWS: u64 = 30;
/// Records explained per sketched stretch (an hour) and version, at most.
const ATTRIBUTION_PER_SPAN: u64 = 256;
/// One record in this many is explained (chosen by a hash of its id, so reruns pick the same).
const ATTRIBUTION_SAMPLE: u64 = 16;

/// Whether a record is in the attribution sample.
fn sampled(request_id: &str, record: u32) -> bool {
    // FNV-1a: stable across runs and builds, unlike the std hasher's seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in request_id.bytes().chain(record.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h.is_multiple_of(ATTRIBUTION_SAMPLE)
}

/// Adds one logged record's |contributions| (skipped when it does not validate).
fn explain_into(
    predictor: &Predictor,
    schema: &Schema,
    input: &serde_json::Map<String, serde_json::Value>,
    sketch: &mut AttributionSketch,
) {
    let Ok(row) = mlops_domain::data::record_from_json(schema, input) else {
        return;
    };
    if let Ok(e) = predictor.explain(&row) {
        let values: Vec<f64> = e.contributions.iter().map(|(_, c)| *c).collect();
        sketch.add(&values);
    }
}

/// A stretch of logs to sketch.
#[derive(Clone, Copy)]
struct Span {
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    label_delay: Duration,
}

/// Reads the logs of a span into per-version sketches, joining each record to its label.
async fn scan(
    registry: &Registry,
    model: &str,
    span: Span,
    references: &mut References,
    labels: &Labels,
) -> Result<Sketches> {
    let Span {
        from,
        until,
        label_delay,
    } = span;
    let store = registry.store();
    let mut out = Sketches::default();
    // Objects are fetched, decompressed and parsed ahead (two at a time) while the one before
    // is added to the sketches.
    let mut ahead = std::collections::VecDeque::new();
    let mut keys = predlog::objects_for_window(store.as_ref(), model, from, until)
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
            let r = references.load(registry, model, logged.version).await?;
            let reference = &r.reference;
            let sketch = out
                .versions
                .entry(logged.version)
                .or_insert_with(|| reference.sketch());
            reference.add(sketch, &logged.input);
            if let Some(output) = logged.output {
                reference.add_prediction(sketch, output);
                let actual = logged
                    .request_id
                    .as_deref()
                    .and_then(|id| labels.get(id, logged.record, logged.at + label_delay));
                out.quality
                    .entry(logged.version)
                    .or_default()
                    .entry(logged.variant)
                    .or_insert_with(|| QualitySketch::new(r.task))
                    .add(output, actual);
            }
            if let (Some((_, predictor, schema)), Some(id)) = (&r.attribution, &logged.request_id) {
                let sketch = out.attribution.entry(logged.version).or_default();
                if sketch.rows < ATTRIBUTION_PER_SPAN && sampled(id, logged.record) {
                    explain_into(predictor, schema, &logged.input, sketch);
                }
            }
            out.records += 1;
        }
    }
    Ok(out)
}

async fn reference_of(registry: &Registry, model: &str, version: u64) -> Result<VersionReference> {
    let record = registry
        .version(model, version)
        .await
        .with_context(|| format!("logged predictions name {model} v{version}"))?;
    let bundle = registry.load_bundle(&record).await?;
    let attribution = match &bundle.manifest.attribution_profile {
        Some(profile) => {
            let predictor = Predictor::from_bundle(&bundle)
                .with_context(|| format!("the engine cannot load {model} v{version}"))?;
            Some((
                profile.clone(),
                Box::new(predictor),
                bundle.manifest.schema.clone(),
            ))
        }
        None => None,
    };
    let manifest = bundle.manifest;
    Ok(VersionReference {
        reference: Reference::new(
            &manifest.reference_profile,
            manifest.prediction_profile.as_ref(),
        ),
        task: manifest.task,
        calibration: manifest.calibration,
        test_metrics: manifest.metrics,
        attribution,
    })
}

/// Several alert destinations as one: an alert counts as delivered when every destination
/// took it (a retry sends it again to all, and receivers drop duplicates by its id).
pub struct AllSinks(pub Vec<Box<dyn AlertSink>>);

#[async_trait::async_trait]
impl AlertSink for AllSinks {
    async fn send(&self, alert: &Alert) -> Result<(), String> {
        let mut errors = Vec::new();
        for sink in &self.0 {
            if let Err(e) = sink.send(alert).await {
                errors.push(format!("{}: {e}", sink.describe()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|s| s.describe())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The key of a window's report.
pub fn report_key(model: &str, from: DateTime<Utc>, until: DateTime<Utc>) -> String {
    format!(
        "monitoring/{model}/reports/{}-{}.json",
        from.format("%Y%m%dT%H%M%SZ"),
        until.format("%Y%m%dT%H%M%SZ")
    )
}

/// A whole run: the window's report with its alerts, delivered through `sink` (once per window
/// and rule), its A/B verdicts written where serving reads them
/// ([`mlops_domain::ab::status_key`]), the report written at [`report_key`] as JSON and beside it
/// as one HTML page ([`html`]).
pub async fn run(
    registry: &Registry,
    model: &str,
    window: Window,
    rule: &DriftRule,
    limits: &Limits,
    sink: Option<&dyn AlertSink>,
) -> Result<MonitorReport> {
    let mut report = monitor(registry, model, window, rule).await?;
    report.alerts = alerts_of(&report, limits);
    if let Some(sink) = sink {
        report.deliveries = deliver(registry.store().as_ref(), sink, &report.alerts).await?;
    }
    if !report.ab.is_empty() {
        let status = AbStatus {
            from: report.from,
            until: report.until,
            verdicts: report.ab.clone(),
        };
        let key = mlops_domain::ab::status_key(model);
        registry
            .store()
            .put(
                &key,
                serde_json::to_vec_pretty(&status)?,
                PutCondition::None,
            )
            .await
            .with_context(|| format!("cannot write {}", registry.store().uri(&key)))?;
    }
    let key = report_key(model, report.from, report.until);
    let page = key.replace(".json", ".html");
    registry
        .store()
        .put(
            &page,
            html::render(&report).into_bytes(),
            PutCondition::None,
        )
        .await
        .with_context(|| format!("cannot write the report to {}", registry.store().uri(&page)))?;
    registry
        .store()
        .put(
            &key,
            serde_json::to_vec_pretty(&report)?,
            PutCondition::None,
        )
        .await
        .with_context(|| format!("cannot write the report to {}", registry.store().uri(&key)))?;
    Ok(report)
}

/// Metric values and the dimensions they share.
pub type MetricGroup = (Vec<(String, f64)>, Vec<(&'static str, String)>);

/// The report's scores as metrics: (name, value) pairs with their dimensions, per version
/// (Model, Version), per variant (Model, Version, Variant) and per feature (Model, Version,
/// Feature).
pub fn metric_data(report: &MonitorReport) -> Vec<MetricGroup> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut out = Vec::new();
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
        let model = report.model.clone();
        out.push((
            values,
            vec![("Model", model.clone()), ("Version", version.clone())],
        ));
        for (variant, q) in &v.quality {
            let mut values = vec![("labelled".to_owned(), q.labelled as f64)];
            values.extend(
                q.metrics
                    .iter()
                    .map(|(k, e)| (format!("live_{k}"), e.value)),
            );
            values.extend(
                q.estimated
                    .iter()
                    .map(|(k, e)| (format!("estimated_{k}"), *e)),
            );
            out.push((
                values,
                vec![
                    ("Model", model.clone()),
                    ("Version", version.clone()),
                    ("Variant", variant.clone()),
                ],
            ));
        }
        for f in &d.features {
            let values = vec![
                ("drift_score".to_owned(), f.score.unwrap_or(f64::NAN)),
                ("drifted".to_owned(), flag(f.drifted)),
                ("psi".to_owned(), f.psi.unwrap_or(f64::NAN)),
                ("missing_share".to_owned(), f.missing_share),
                (
                    "outside_share".to_owned(),
                    f.out_of_range_share.or(f.unseen_share).unwrap_or(0.0),
                ),
            ];
            out.push((
                values,
                vec![
                    ("Model", model.clone()),
                    ("Version", version.clone()),
                    ("Feature", f.feature.clone()),
                ],
            ));
        }
    }
    out
}

/// The report as a table.
pub fn table(report: &MonitorReport) -> String {
    let mut out = header(report);
    if report.versions.is_empty() {
        out.push_str("no predictions logged in the window\n");
    }
    for v in &report.versions {
        out.push_str(&drift_table(v));
        out.push_str(&quality_lines(v));
    }
    out.push_str(&ab_lines(report));
    out
}

pub fn header(report: &MonitorReport) -> String {
    format!(
        "{} from {} to {}: {} logged predictions, {} with labels{}\n",
        report.model,
        report.from.format("%Y-%m-%d %H:%M"),
        report.until.format("%Y-%m-%d %H:%M"),
        report.records,
        report.labelled,
        if report.unreadable > 0 {
            format!(" ({} unreadable lines skipped)", report.unreadable)
        } else {
            String::new()
        }
    )
}

pub fn drift_table(v: &VersionDrift) -> String {
    use std::fmt::Write;
    let mut out = String::new();
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
    out
}

pub fn quality_lines(v: &VersionDrift) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (variant, q) in &v.quality {
        let metrics: Vec<String> = q
            .metrics
            .iter()
            .map(|(name, e)| format!("{name} {:.4} [{:.4}, {:.4}]", e.value, e.low, e.high))
            .chain(
                q.estimated
                    .iter()
                    .map(|(name, e)| format!("estimated {name} {e:.4}")),
            )
            .collect();
        let _ = writeln!(
            out,
            "  quality of {variant}: {} labelled of {} rows{}{}",
            q.labelled,
            q.rows,
            if metrics.is_empty() { "" } else { "; " },
            metrics.join(", ")
        );
    }
    out
}

pub fn ab_lines(report: &MonitorReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for ab in &report.ab {
        let v = &ab.verdict;
        let _ = writeln!(
            out,
            "\nA/B {} vs {} ({} rows vs {}; mean {} {:.4} vs {:.4}): {}{}",
            ab.challenger,
            ab.champion,
            ab.rows.1,
            ab.rows.0,
            ab.loss,
            ab.mean_loss.1,
            ab.mean_loss.0,
            serde_json::to_value(v.decision)
                .ok()
                .and_then(|d| d.as_str().map(str::to_owned))
                .unwrap_or_default(),
            match v.rows_still_needed {
                Some(n) => format!(" (about {n} more labelled rows a variant)"),
                None => format!(" (always-valid p {:.4})", v.p_value),
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mlops_domain::alerts::AlertRule;
    use mlops_domain::registry::RegisterOptions;
    use mlops_domain::testing::sample_bundle;
    use mlops_store::LocalStore;

    use super::*;

    /// Writes one log object at `written` holding `n` records of `x` served at `at`; their
    /// request ids.
    async fn log(
        store: &dyn ObjectStore,
        written: DateTime<Utc>,
        at: DateTime<Utc>,
        n: usize,
        x: f64,
    ) -> Vec<String> {
        let id = (at.timestamp_nanos_opt().unwrap() ^ n as i64).to_string();
        let ids: Vec<String> = (0..n).map(|i| format!("{id}-{i}")).collect();
        let lines: String = ids
            .iter()
            .map(|request_id| {
                format!(
                    "{}\n",
                    serde_json::json!({"at": at, "request_id": request_id, "record": 1, "model": "m", "version": 1,
                        "variant": "champion", "input": {"x": x}, "output": 0.0, "latency_us": 10})
                )
            })
            .collect();
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
        ids
    }

    /// Writes feedback received at `received`: `actual` for each request id.
    async fn feedback(
        store: &dyn ObjectStore,
        received: DateTime<Utc>,
        ids: &[String],
        actual: f64,
    ) {
        let labels: Vec<feedback::Feedback> = ids
            .iter()
            .map(|id| feedback::Feedback {
                request_id: id.clone(),
                record: 1,
                sent: actual.into(),
                actual,
                observed_at: received,
            })
            .collect();
        let key = predlog::object_key_under(feedback::PREFIX, "m", received, &ids[0]);
        let body = predlog::encode(&feedback::to_lines(&labels));
        store.put(&key, body, PutCondition::None).await.unwrap();
    }

    fn window(from: DateTime<Utc>, until: DateTime<Utc>) -> Window {
        Window {
            from,
            until,
            label_delay: Duration::hours(24),
            champion: "champion".into(),
            ab_test: SequentialTest::default(),
        }
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
        logged_with_ids(first).await.0
    }

    /// [`logged`], and the request ids of the first hour's first object and of the second hour.
    async fn logged_with_ids(first: DateTime<Utc>) -> (Logged, Vec<String>, Vec<String>) {
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
        let early = log(s, first + minute * 10, first + minute * 9, 40, 1.0).await;
        // Written in the next hour, served in this one: it counts here.
        log(s, first + minute * 61, first + minute * 59, 10, 3.0).await;
        let later = log(s, first + minute * 70, first + minute * 70, 50, 3.0).await;
        (Logged { _dir: dir, store }, early, later)
    }

    #[tokio::test]
    async fn labels_join_within_the_delay_and_new_ones_reopen_kept_hours() {
        let first = five_hours_ago();
        let (Logged { _dir, store }, early, later) = logged_with_ids(first).await;
        let registry = Registry::new(Arc::clone(&store));
        let rule = DriftRule::default();
        let until = first + Duration::hours(2);
        // Labels for the first 40 records, received 30 minutes after them.
        feedback(store.as_ref(), first + Duration::minutes(39), &early, 1.0).await;
        let run = |w: Window| {
            let registry = registry.clone();
            async move { monitor(&registry, "m", w, &rule).await.unwrap() }
        };
        let one = run(window(first, until)).await;
        let q = &one.versions[0].quality["champion"];
        assert_eq!((one.labelled, q.labelled, q.rows), (40, 40, 40));
        // Predictions 0.0 against labels 1.0.
        assert!((q.metrics["rmse"].value - 1.0).abs() < 1e-12, "{q:?}");
        assert!((q.metrics["mae"].value - 1.0).abs() < 1e-12);
        let again = run(window(first, until)).await;
        assert_eq!((again.hours_from_cache, again.labelled), (2, 40));
        // Labels for 20 records of the second hour arrive (named as received before the last run
        // but stored after it, as a slow write may be): kept hours are read again.
        let received = Utc::now() - FEEDBACK_PUT_LAG + Duration::seconds(5);
        feedback(store.as_ref(), received, &later[..20], 3.0).await;
        let more = run(window(first, until)).await;
        assert_eq!((more.hours_sketched, more.labelled), (2, 60));
        let q = &more.versions[0].quality["champion"];
        let expected = ((40.0 + 20.0 * 9.0) / 60.0f64).sqrt();
        assert!((q.metrics["rmse"].value - expected).abs() < 1e-12, "{q:?}");
        // Until the feedback is older than the write lag, a run cannot know it saw it all.
        assert_eq!(run(window(first, until)).await.hours_sketched, 2);
        // With a one-hour label delay the labels received hours later do not count.
        let strict = Window {
            label_delay: Duration::hours(1),
            ..window(first, until)
        };
        let strict = run(strict).await;
        assert_eq!((strict.labelled, strict.hours_sketched), (40, 2));
        // Feedback on a window fresh from the logs and from kept hours agree.
        let part = run(window(first, first + Duration::minutes(90))).await;
        assert_eq!(part.labelled, 60);
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
        let sketched = monitor(&registry, "m", window(first, until), &rule)
            .await
            .unwrap();
        assert_eq!(
            (
                sketched.records,
                sketched.hours_sketched,
                sketched.hours_from_cache
            ),
            (100, 2, 0)
        );
        let merged = monitor(&registry, "m", window(first, until), &rule)
            .await
            .unwrap();
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
        let three = monitor(
            &registry,
            "m",
            window(first, first + Duration::hours(3)),
            &rule,
        )
        .await
        .unwrap();
        assert_eq!(
            (three.records, three.hours_sketched, three.hours_from_cache),
            (130, 1, 2)
        );
        let late = monitor(
            &registry,
            "m",
            window(first + minute * 60, first + Duration::hours(3)),
            &rule,
        )
        .await
        .unwrap();
        assert_eq!((late.records, late.hours_from_cache), (80, 2));
        let part = monitor(
            &registry,
            "m",
            window(first + minute * 30, first + minute * 90),
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

    /// A monitor run with alerts over two whole past hours: hour sketches, alert records, then
    /// the report.
    struct MonitorRun {
        first: DateTime<Utc>,
    }

    struct World {
        logged: Logged,
        inbox: Inbox,
    }

    impl MonitorRun {
        /// Two hours of logs with a value training never saw (a data-quality alert) and labels
        /// far from the predictions (a live-quality alert).
        async fn logs(&self) -> Logged {
            let (logged, early, _) = logged_with_ids(self.first).await;
            let at = self.first + Duration::minutes(20);
            log(logged.store.as_ref(), at, at, 20, 7.0).await;
            feedback(logged.store.as_ref(), at, &early, 1.0).await;
            logged
        }

        async fn run(&self, w: &World, store: Arc<dyn ObjectStore>) -> Result<MonitorReport> {
            let registry = Registry::new(Arc::clone(&store));
            let until = self.first + Duration::hours(2);
            let rule = DriftRule::default();
            let limits = Limits {
                min_quality_rows: 10,
                ..Limits::default()
            };
            let window = window(self.first, until);
            super::run(&registry, "m", window, &rule, &limits, Some(&w.inbox)).await
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
            let rules: Vec<AlertRule> = kept.alerts.iter().map(|a| a.rule).collect();
            if rules != [AlertRule::DataQuality, AlertRule::LiveQuality] {
                return Err(format!("the window raised {rules:?}"));
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
