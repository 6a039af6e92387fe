//! `mlops monitor`: drift of the served inputs over a window of prediction logs, per version,
//! against the training reference each version's artifact carries.
//!
//! The logs are read one object at a time into mergeable sketches ([`mlops_domain::drift`]), so
//! memory grows with the number of features, not with the rows in the window. The report is
//! printed (a table, or JSON with `--json`) and written to the store under
//! `monitoring/MODEL/reports/`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use clap::Args;
use mlops_domain::drift::{DatasetDrift, DriftRule, Reference, WindowSketch};
use mlops_domain::registry::Registry;
use mlops_domain::store::{ObjectStore, PutCondition};
use serde::{Deserialize, Serialize};

use crate::commands::registry::ensure_model;
use crate::config::Settings;
use crate::exit::ExitWith;

/// Where the prediction logs are (the serving side writes them, `mlops_serving::predlog`).
const LOG_PREFIX: &str = "prediction-logs";
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
    /// Per version served in the window.
    pub versions: Vec<VersionDrift>,
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
}

/// Runs the command.
pub async fn run(args: MonitorArgs, settings: &Settings) -> Result<()> {
    if !(0.0..=1.0).contains(&args.drift_share) || args.drift_share == 0.0 {
        bail!("--drift-share {} must be in (0, 1]", args.drift_share);
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
    let report = monitor(&registry, &args.model, from, until, &rule).await?;
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
        eprintln!("report: {}", registry.store().uri(&key));
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

/// Sketches every logged record of `model` in `[from, until)`, per version, and tests each
/// version's window against its reference.
pub async fn monitor(
    registry: &Registry,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    rule: &DriftRule,
) -> Result<MonitorReport> {
    let store = registry.store();
    let mut sketches: BTreeMap<u64, (Reference, WindowSketch)> = BTreeMap::new();
    let (mut records, mut unreadable) = (0u64, 0u64);
    for key in log_objects(store.as_ref(), model, from, until).await? {
        let Some(object) = store.get(&key).await? else {
            continue; // expired between the listing and the read
        };
        for line in object
            .bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let Ok(logged) = serde_json::from_slice::<LoggedInput>(line) else {
                unreadable += 1;
                continue;
            };
            if logged.at < from || logged.at >= until {
                continue;
            }
            let (reference, sketch) = match sketches.entry(logged.version) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let reference = reference_of(registry, model, logged.version).await?;
                    let sketch = reference.sketch();
                    e.insert((reference, sketch))
                }
            };
            reference.add(sketch, &logged.input);
            records += 1;
        }
    }
    let versions = sketches
        .into_iter()
        .map(|(version, (reference, sketch))| {
            Ok(VersionDrift {
                version,
                drift: rule.check(&reference, &sketch)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MonitorReport {
        model: model.into(),
        from,
        until,
        records,
        unreadable,
        versions,
    })
}

async fn reference_of(registry: &Registry, model: &str, version: u64) -> Result<Reference> {
    let record = registry
        .version(model, version)
        .await
        .with_context(|| format!("logged predictions name {model} v{version}"))?;
    let bundle = registry.load_bundle(&record).await?;
    Ok(Reference::from_profiles(&bundle.manifest.reference_profile))
}

/// The log objects that may hold records of `[from, until)`: written in the window or up to
/// [`WRITE_LAG`] after it (an object holds records from before it was written), in time order.
async fn log_objects(
    store: &dyn ObjectStore,
    model: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<String>> {
    let last = until + WRITE_LAG;
    let mut keys = Vec::new();
    let mut day: NaiveDate = from.date_naive();
    while day <= last.date_naive() {
        let prefix = format!("{LOG_PREFIX}/{model}/date={}/", day.format("%Y-%m-%d"));
        for key in store.list(&prefix).await? {
            let written = key[prefix.len()..]
                .get(..6)
                .and_then(|hms| chrono::NaiveTime::parse_from_str(hms, "%H%M%S").ok())
                .map(|t| day.and_time(t).and_utc());
            // Names carry the second an object was written in: it holds records from before
            // the end of that second only.
            match written {
                Some(t) if t + Duration::seconds(1) <= from || t > last => {}
                _ => keys.push(key),
            }
        }
        day = day.succ_opt().context("date out of range")?;
    }
    Ok(keys)
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
        for f in &d.features {
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
