//! `mlops features`: the feature store's definitions, offline store and point-in-time retrieval.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mlops_features::columns::{Micros, format_time, parse_time};
use mlops_features::definition::{Definitions, ViewRef};
use mlops_features::materialize::{
    Incremental, Materialized, materialize, materialize_incremental,
};
use mlops_features::offline::OfflineStore;
use mlops_features::pit::KEY_SEPARATOR;
use mlops_features::pit::historical_features;
use mlops_features::registry::{FeatureRegistry, Registered, ViewDefinition};

use crate::config::Settings;

/// `mlops features`.
#[derive(Args, Debug)]
pub struct FeaturesArgs {
    #[command(subcommand)]
    command: FeaturesCommand,
}

#[derive(Subcommand, Debug)]
enum FeaturesCommand {
    /// Register the entities and feature views of a TOML file (a changed definition becomes a new
    /// version; an unchanged one writes nothing).
    Apply {
        /// Definitions file.
        file: PathBuf,
        /// Who is registering (recorded with each version).
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// List registered feature views with their latest version and snapshots.
    List,
    /// Show a feature view (`NAME` or `NAME@VERSION`) and its offline snapshots as JSON.
    Show {
        /// View reference.
        view: ViewRef,
    },
    /// Ingest a CSV or Parquet file (path or s3://bucket/key) into a view's offline store as a new
    /// snapshot (the same content twice is one snapshot).
    Ingest {
        /// View reference (the latest version unless pinned).
        view: ViewRef,
        /// Input file; default: the view's `source`.
        #[arg(long)]
        input: Option<String>,
        /// Who is ingesting.
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// Point-in-time correct training set: each entity row joined to the latest feature values
    /// at or before its time and within each view's TTL.
    Retrieve {
        /// Entity frame: CSV with the views' join keys and a time column.
        #[arg(long)]
        entities: PathBuf,
        /// Time column of the entity frame.
        #[arg(long, default_value = "event_timestamp")]
        time_column: String,
        /// Views to join, `NAME` or `NAME@VERSION` (repeat or separate with commas).
        #[arg(long = "features", required = true, value_delimiter = ',')]
        views: Vec<ViewRef>,
        /// Output: `.parquet` for Parquet, anything else for CSV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the latest row per entity with an event time in [start, end) to the online store.
    Materialize {
        /// View reference.
        view: ViewRef,
        /// Range start (RFC 3339, `YYYY-MM-DD HH:MM:SS` UTC, or a date).
        #[arg(long, value_parser = parse_time_arg)]
        start: Micros,
        /// Range end, exclusive (default: now).
        #[arg(long, value_parser = parse_time_arg)]
        end: Option<Micros>,
    },
    /// Materialize from the view's watermark to --end (default now), once: the range is claimed
    /// with a conditional write, so concurrent runs never apply it twice.
    MaterializeIncremental {
        /// View reference.
        view: ViewRef,
        /// Range end, exclusive (default: now).
        #[arg(long, value_parser = parse_time_arg)]
        end: Option<Micros>,
        /// This run's id in the claim; pass a dead run's id to resume its range at once.
        #[arg(long, env = "AWS_BATCH_JOB_ID")]
        run_id: Option<String>,
        /// How long a claim holds before another run may take it over.
        #[arg(long, default_value = "15m", value_parser = humantime_arg)]
        lease: std::time::Duration,
    },
    /// Create the online store's DynamoDB table (--online-store dynamodb://TABLE) unless it
    /// exists; on AWS the stack creates it (output FeatureTableName).
    InitOnline,
    /// Read entities' latest values from the online store, as JSON.
    Get {
        /// View reference.
        view: ViewRef,
        /// Entity keys (join-key values; several join keys separated by '|').
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn parse_time_arg(s: &str) -> Result<Micros, String> {
    parse_time(s).ok_or_else(|| {
        format!("'{s}' is not a time (RFC 3339, 'YYYY-MM-DD HH:MM:SS' UTC, or a date)")
    })
}

fn humantime_arg(s: &str) -> Result<std::time::Duration, String> {
    serde_json::from_value::<mlops_features::definition::Ttl>(serde_json::Value::from(s))
        .map(|t| t.0)
        .map_err(|e| e.to_string())
}

/// Runs the command.
pub async fn run(args: FeaturesArgs, settings: &Settings) -> Result<()> {
    let store = settings.store().await?;
    let registry = FeatureRegistry::new(store.clone());
    let offline = OfflineStore::new(store);
    match args.command {
        FeaturesCommand::Apply { file, by } => apply(&registry, &file, &by).await,
        FeaturesCommand::List => list(&registry, &offline).await,
        FeaturesCommand::Show { view } => show(&registry, &offline, &view).await,
        FeaturesCommand::Ingest { view, input, by } => {
            ingest(settings, &registry, &offline, &view, input, &by).await
        }
        FeaturesCommand::Retrieve {
            entities,
            time_column,
            views,
            out,
        } => {
            let views = resolve(&registry, &views).await?;
            let started = Instant::now();
            let report =
                historical_features(&offline, &entities, &time_column, &views, &out).await?;
            for (name, version, matched, read) in &report.views {
                println!(
                    "{name}@{version}: {matched} of {} rows matched ({read} feature rows read)",
                    report.rows
                );
            }
            println!(
                "wrote {} rows × {} columns to {} in {:.2} s",
                report.rows,
                report.columns.len(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        FeaturesCommand::Materialize { view, start, end } => {
            let view = registry.view(&view).await?;
            let online = settings.online_store().await?;
            let started = Instant::now();
            let end = end.unwrap_or_else(now);
            let m = materialize(&offline, online.as_ref(), &view, start, end).await?;
            print_materialized(&m, online.describe(), started);
            Ok(())
        }
        FeaturesCommand::MaterializeIncremental {
            view,
            end,
            run_id,
            lease,
        } => {
            let view = registry.view(&view).await?;
            let online = settings.online_store().await?;
            let run_id = run_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let lease = chrono::Duration::from_std(lease).context("--lease is too long")?;
            let started = Instant::now();
            match materialize_incremental(
                &offline,
                online.as_ref(),
                &view,
                end.unwrap_or_else(now),
                &run_id,
                lease,
            )
            .await?
            {
                Incremental::UpToDate { applied_until } => {
                    println!(
                        "{}: up to date (applied until {})",
                        view.definition.view.name,
                        format_time(applied_until)
                    );
                }
                Incremental::Applied { result, took_over } => {
                    if let Some(dead) = took_over {
                        println!("took over the range claimed by run {dead}");
                    }
                    print_materialized(&result, online.describe(), started);
                }
            }
            Ok(())
        }
        FeaturesCommand::InitOnline => {
            let Some(table) = settings
                .online_store
                .as_deref()
                .and_then(|u| u.strip_prefix("dynamodb://"))
            else {
                println!(
                    "the online store is on the store ({}); nothing to create",
                    settings.store_uri()
                );
                return Ok(());
            };
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
            mlops_aws::DynamoOnline::new(&config, table)
                .ensure_table()
                .await?;
            println!("online store table {table} is ready");
            Ok(())
        }
        FeaturesCommand::Get { view, keys } => {
            let view = registry.view(&view).await?;
            let online = settings.online_store().await?;
            let keys: Vec<String> = keys
                .iter()
                .map(|k| k.replace('|', &KEY_SEPARATOR.to_string()))
                .collect();
            let rows = online.read(&view.definition.view.name, &keys).await?;
            let out: Vec<serde_json::Value> = keys
                .iter()
                .zip(rows)
                .map(|(k, r)| match r {
                    None => {
                        serde_json::json!({ "key": k.replace(KEY_SEPARATOR, "|"), "found": false })
                    }
                    Some(r) => serde_json::json!({
                        "key": k.replace(KEY_SEPARATOR, "|"),
                        "found": true,
                        "event_time": format_time(r.event_time),
                        "values": r.values,
                    }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

fn now() -> Micros {
    chrono::Utc::now().timestamp_micros()
}

fn print_materialized(m: &Materialized, online: String, started: Instant) {
    println!(
        "{}: {} .. {}: {} rows read, latest of {} entities; {} written to {online}, {} kept (stored row newer) in {:.2} s",
        m.view,
        format_time(m.start),
        format_time(m.end),
        m.rows_read,
        m.entities,
        m.written.stored,
        m.written.older,
        started.elapsed().as_secs_f64()
    );
}

/// Looks up every view reference (latest unless pinned).
pub async fn resolve(
    registry: &FeatureRegistry,
    refs: &[ViewRef],
) -> Result<Vec<Registered<ViewDefinition>>> {
    let mut out = Vec::new();
    for r in refs {
        out.push(registry.view(r).await?);
    }
    Ok(out)
}

async fn apply(registry: &FeatureRegistry, file: &Path, by: &str) -> Result<()> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
    let defs = Definitions::parse(&name, &text)?;
    if defs.entities.is_empty() && defs.feature_views.is_empty() {
        bail!("{name} defines no [[entity]] or [[feature_view]]");
    }
    for a in registry.apply(&defs, by).await? {
        let what = if a.created { "registered" } else { "unchanged" };
        println!("{} {} v{} ({what}, id {})", a.kind, a.name, a.version, a.id);
    }
    Ok(())
}

async fn list(registry: &FeatureRegistry, offline: &OfflineStore) -> Result<()> {
    let names = registry.view_names().await?;
    if names.is_empty() {
        println!("no feature views; register some with `mlops features apply FILE`");
    }
    for name in names {
        let v = registry
            .view(&ViewRef {
                name: name.clone(),
                version: None,
            })
            .await?;
        let snapshots = offline.snapshots(&name).await?;
        let rows: u64 = snapshots.iter().map(|s| s.rows).sum();
        println!(
            "{name}@{}  {} features  keys {}  ttl {}  {} snapshots, {rows} rows  owner {}",
            v.version,
            v.definition.view.features.len(),
            v.definition.join_keys.join("+"),
            v.definition
                .view
                .ttl
                .map_or("none".into(), |t| mlops_features::definition::ttl_text(t.0)),
            snapshots.len(),
            v.definition.view.owner,
        );
    }
    Ok(())
}

async fn show(registry: &FeatureRegistry, offline: &OfflineStore, at: &ViewRef) -> Result<()> {
    let view = registry.view(at).await?;
    let snapshots = offline.snapshots(&at.name).await?;
    let out = serde_json::json!({ "view": view, "snapshots": snapshots });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn ingest(
    settings: &Settings,
    registry: &FeatureRegistry,
    offline: &OfflineStore,
    at: &ViewRef,
    input: Option<String>,
    by: &str,
) -> Result<()> {
    let view = registry.view(at).await?;
    let source = input.unwrap_or_else(|| view.definition.view.source.clone());
    if source.is_empty() {
        bail!(
            "feature view '{}' has no `source`; pass --input FILE",
            at.name
        );
    }
    let started = Instant::now();
    // An s3:// input is downloaded to a scratch file first (Parquet needs random access).
    let scratch = tempfile::tempdir()?;
    let path = if source.starts_with("s3://") {
        let name = source
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("input.csv");
        let local = scratch.path().join(name);
        let bytes = mlops_store::read_uri(&source, settings.s3_endpoint.clone())
            .await
            .with_context(|| format!("cannot read {source}"))?;
        std::fs::write(&local, bytes)?;
        local
    } else {
        PathBuf::from(&source)
    };
    let done = offline.ingest(&view, &path, &source, by).await?;
    let s = &done.snapshot;
    if done.created {
        println!(
            "{}@{}: snapshot {} of {} rows in {} day partitions (sha256 {}) in {:.2} s",
            s.view,
            s.view_version,
            s.seq,
            s.rows,
            s.parts
                .iter()
                .map(|p| p.date)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            &s.content.sha256[..12],
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{}@{}: already ingested as snapshot {} (same content, sha256 {})",
            s.view,
            s.view_version,
            s.seq,
            &s.content.sha256[..12]
        );
    }
    Ok(())
}
