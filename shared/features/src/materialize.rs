//! Materialization: the latest row per entity of a time range, from the offline store into the
//! online store.
//!
//! "Latest per entity" is computed by the offline read, not by deduplicating the range in
//! memory: day partitions are read newest first and, within a day, rows newest first, so the
//! first row met for an entity is its latest; later (older) rows of it are skipped. Memory is the
//! set of entities met with their values, plus one day of rows.
//!
//! `materialize_incremental` keeps a watermark per view (`features/online/{view}/watermark.json`).
//! A run first claims the range `[watermark, end)` with a compare-and-swap that records it as
//! pending; only the winner of that write applies it, then moves the watermark with a second
//! compare-and-swap. So two concurrent runs never apply the same range. A claim older than the
//! lease (a run that died) is taken over and re-applied: online writes keep the newer row, so
//! applying a range twice converges to the same state.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mlops_domain::online::{OnlineError, OnlineRow, OnlineStore, Written, bucket_of};
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError};
use serde::{Deserialize, Serialize};

use crate::columns::{Column, Micros, Scalar, date_of, format_time};
use crate::keys::KeyIndex;
use crate::offline::{OfflineError, OfflineStore, Part};
use crate::pit::KEY_SEPARATOR;
use crate::registry::{Registered, ViewDefinition};

/// Rows per online write call.
const WRITE_CHUNK: usize = 50_000;

/// Materialization failures.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// Offline read failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// Online write failed.
    #[error(transparent)]
    Online(#[from] OnlineError),
    /// Store failure (the watermark).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run holds the range.
    #[error(
        "feature view '{view}': run {run_id} is materializing {from} .. {to} (claimed {claimed_at}); retry after it finishes or after its lease ends at {lease_ends}, or, if that run died, resume its range now with --run-id {run_id}"
    )]
    Busy {
        /// View.
        view: String,
        /// The other run.
        run_id: String,
        /// Its range.
        from: String,
        /// Its range end.
        to: String,
        /// When it claimed it.
        claimed_at: DateTime<Utc>,
        /// When it may be taken over.
        lease_ends: DateTime<Utc>,
    },
    /// No snapshot to start an incremental run from.
    #[error(
        "feature view '{view}' has no ingested snapshot yet; run `mlops features ingest {view}` first"
    )]
    NothingIngested {
        /// View.
        view: String,
    },
    /// A bad range.
    #[error("materialization range: start {start} is not before end {end}")]
    EmptyRange {
        /// Start.
        start: String,
        /// End.
        end: String,
    },
    /// A watermark that does not decode.
    #[error("watermark '{key}' is unreadable: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// What one materialization did.
#[derive(Debug, Clone, Serialize)]
pub struct Materialized {
    /// View.
    pub view: String,
    /// Range `[start, end)`, µs.
    pub start: Micros,
    /// End (exclusive).
    pub end: Micros,
    /// Feature rows read.
    pub rows_read: u64,
    /// Entities with a row in the range.
    pub entities: u64,
    /// What the online store did with them.
    pub written: Written,
}

/// Writes the latest row per entity with an event time in `[start, end)` to `online`.
pub async fn materialize(
    offline: &OfflineStore,
    online: &dyn OnlineStore,
    view: &Registered<ViewDefinition>,
    start: Micros,
    end: Micros,
) -> Result<Materialized, MaterializeError> {
    if start >= end {
        return Err(MaterializeError::EmptyRange {
            start: format_time(start),
            end: format_time(end),
        });
    }
    let def = &view.definition;
    let features: Vec<String> = def.view.features.iter().map(|f| f.name.clone()).collect();
    let mut days: std::collections::BTreeMap<chrono::NaiveDate, Vec<Part>> = Default::default();
    for snapshot in offline.snapshots(&def.view.name).await? {
        for part in snapshot.parts {
            if (date_of(start)..=date_of(end)).contains(&part.date) {
                days.entry(part.date).or_default().push(part);
            }
        }
    }
    let width = features.len();
    let mut seen = KeyIndex::default();
    let mut times: Vec<Micros> = Vec::new();
    let mut values: Vec<Scalar> = Vec::new();
    let mut rows_read = 0;
    // The next (older) day is read and decoded on another thread while this one is scanned.
    let read = |parts: Vec<Part>| offline.read_parts_in_background(def, &features, parts);
    let mut days = days.into_values().rev();
    let mut next = days.next().map(read);
    while let Some(pending) = next.take() {
        let decoded = pending.await.expect("reading a day does not panic")?;
        next = days.next().map(read);
        let columns: Vec<Vec<Column>> = decoded
            .iter()
            .map(|d| d.features.iter().map(Column::of).collect())
            .collect();
        let mut rows: Vec<(Micros, u32, u32)> = Vec::new();
        for (p, d) in decoded.iter().enumerate() {
            rows.extend(
                d.times
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| (start..end).contains(*t))
                    .map(|(r, &t)| (t, p as u32, r as u32)),
            );
        }
        // Forward order is (time, snapshot, row); its reverse meets each entity's latest first.
        rows.sort_unstable();
        rows_read += rows.len() as u64;
        let mut composite = String::new();
        for &(t, p, r) in rows.iter().rev() {
            let (d, r) = (&decoded[p as usize], r as usize);
            composite.clear();
            for (j, k) in d.keys.iter().enumerate() {
                if j > 0 {
                    composite.push(KEY_SEPARATOR);
                }
                composite.push_str(k.value(r));
            }
            let known = seen.len();
            if seen.insert(&composite) as usize != known {
                continue; // met before: a newer row of this entity was taken
            }
            times.push(t);
            values.extend(columns[p as usize].iter().map(|c| c.get(r)));
        }
    }
    // Written in bucket order, so a chunk touches few of the embedded store's bucket objects.
    let mut entities: Vec<(u32, u32)> = (0..seen.len() as u32)
        .map(|s| (bucket_of(seen.key(s)), s))
        .collect();
    entities.sort_unstable();
    let mut written = Written::default();
    for chunk in entities.chunks(WRITE_CHUNK) {
        let rows = chunk
            .iter()
            .map(|&(_, s)| {
                let s = s as usize;
                OnlineRow {
                    key: seen.key(s as u32).to_string(),
                    event_time: times[s],
                    values: features
                        .iter()
                        .zip(&values[s * width..(s + 1) * width])
                        .map(|(f, v)| (f.clone(), v.json()))
                        .collect(),
                }
            })
            .collect();
        let w = online.write(&def.view.name, rows).await?;
        written += w;
    }
    Ok(Materialized {
        view: def.view.name.clone(),
        start,
        end,
        rows_read,
        entities: entities.len() as u64,
        written,
    })
}

/// A view's incremental-materialization state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Everything before this time (µs) has been applied; `None` before the first run.
    pub applied_until: Option<Micros>,
    /// A range being applied.
    pub pending: Option<Claim>,
}

/// A claimed range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Start (µs, inclusive).
    pub from: Micros,
    /// End (µs, exclusive).
    pub to: Micros,
    /// The claiming run.
    pub run_id: String,
    /// When it claimed.
    pub claimed_at: DateTime<Utc>,
}

/// The store key of a view's watermark.
pub fn watermark_key(view: &str) -> String {
    format!("features/online/{view}/watermark.json")
}

async fn read_watermark(
    store: &dyn ObjectStore,
    view: &str,
) -> Result<(Watermark, Option<ETag>), MaterializeError> {
    let key = watermark_key(view);
    match store.get(&key).await? {
        None => Ok((
            Watermark {
                applied_until: None,
                pending: None,
            },
            None,
        )),
        Some(o) => serde_json::from_slice(&o.bytes)
            .map(|w| (w, Some(o.etag)))
            .map_err(|e| MaterializeError::Corrupt {
                key,
                message: e.to_string(),
            }),
    }
}

async fn swap_watermark(
    store: &dyn ObjectStore,
    view: &str,
    w: &Watermark,
    etag: Option<ETag>,
) -> Result<Option<ETag>, MaterializeError> {
    let condition = etag.map_or(PutCondition::IfAbsent, PutCondition::IfMatch);
    match store
        .put(
            &watermark_key(view),
            serde_json::to_vec_pretty(w).expect("watermarks serialize"),
            condition,
        )
        .await
    {
        Ok(tag) => Ok(Some(tag)),
        Err(StoreError::PreconditionFailed { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The outcome of an incremental run.
#[derive(Debug, Clone, Serialize)]
pub enum Incremental {
    /// Applied a range (possibly a dead run's, taken over).
    Applied {
        /// What was written.
        result: Materialized,
        /// The dead run whose claim was taken over, if any.
        took_over: Option<String>,
    },
    /// Nothing new: the watermark is already at or past `end`.
    UpToDate {
        /// The watermark.
        applied_until: Micros,
    },
}

/// Applies `[watermark, end)` once (see the module docs). Before the first run the range starts
/// at the view's earliest ingested event time. `run_id` names this run in the claim; a claim
/// older than `lease` is taken over.
pub async fn materialize_incremental(
    offline: &OfflineStore,
    online: &dyn OnlineStore,
    view: &Registered<ViewDefinition>,
    end: Micros,
    run_id: &str,
    lease: chrono::Duration,
) -> Result<Incremental, MaterializeError> {
    let name = &view.definition.view.name;
    let store: Arc<dyn ObjectStore> = offline.store().clone();
    let (claim, took_over, etag) = loop {
        let (w, etag) = read_watermark(store.as_ref(), name).await?;
        let now = Utc::now();
        let (claim, took_over) = match &w.pending {
            Some(c) if c.run_id == run_id => (c.clone(), None),
            Some(c) if now < c.claimed_at + lease => {
                return Err(MaterializeError::Busy {
                    view: name.clone(),
                    run_id: c.run_id.clone(),
                    from: format_time(c.from),
                    to: format_time(c.to),
                    claimed_at: c.claimed_at,
                    lease_ends: c.claimed_at + lease,
                });
            }
            Some(c) => (
                Claim {
                    run_id: run_id.into(),
                    claimed_at: now,
                    ..c.clone()
                },
                Some(c.run_id.clone()),
            ),
            None => {
                let from = match w.applied_until {
                    Some(t) => t,
                    // Nothing ingested yet: nothing to apply, and no watermark to write.
                    None => match earliest(offline, name).await? {
                        Some(t) => t,
                        None => {
                            return Err(MaterializeError::NothingIngested { view: name.clone() });
                        }
                    },
                };
                if from >= end {
                    return Ok(Incremental::UpToDate {
                        applied_until: w.applied_until.unwrap_or(from),
                    });
                }
                (
                    Claim {
                        from,
                        to: end,
                        run_id: run_id.into(),
                        claimed_at: now,
                    },
                    None,
                )
            }
        };
        let claimed = Watermark {
            applied_until: w.applied_until,
            pending: Some(claim.clone()),
        };
        if w.pending.as_ref() == Some(&claim) {
            break (claim, took_over, etag);
        }
        if let Some(tag) = swap_watermark(store.as_ref(), name, &claimed, etag).await? {
            break (claim, took_over, Some(tag));
        }
    };
    let result = materialize(offline, online, view, claim.from, claim.to).await?;
    let done = Watermark {
        applied_until: Some(claim.to),
        pending: None,
    };
    if swap_watermark(store.as_ref(), name, &done, etag)
        .await?
        .is_none()
    {
        // The claim was taken over (this run outlived its lease): its writes were idempotent,
        // and the run that took over moves the watermark.
        let (w, _) = read_watermark(store.as_ref(), name).await?;
        if w.applied_until < Some(claim.to) {
            return Err(MaterializeError::Busy {
                view: name.clone(),
                run_id: w.pending.as_ref().map_or("?".into(), |c| c.run_id.clone()),
                from: format_time(claim.from),
                to: format_time(claim.to),
                claimed_at: w.pending.as_ref().map_or(Utc::now(), |c| c.claimed_at),
                lease_ends: w
                    .pending
                    .as_ref()
                    .map_or(Utc::now(), |c| c.claimed_at + lease),
            });
        }
    }
    Ok(Incremental::Applied { result, took_over })
}

async fn earliest(offline: &OfflineStore, view: &str) -> Result<Option<Micros>, MaterializeError> {
    Ok(offline
        .snapshots(view)
        .await?
        .iter()
        .filter_map(|s| s.event_time_range.map(|r| r.0))
        .min())
}

/// The state of a view's watermark (for `mlops features show`).
pub async fn watermark(store: &dyn ObjectStore, view: &str) -> Result<Watermark, MaterializeError> {
    Ok(read_watermark(store, view).await?.0)
}
