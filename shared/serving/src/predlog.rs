//! Prediction logs: every prediction (inputs, outputs, version, variant, latency) is queued and
//! written in gzip-compressed JSON-lines batches to the store under
//! `prediction-logs/model=MODEL/date=YYYY-MM-DD/hour=HH/HHMMSS-UUID.jsonl.gz` (S3 on AWS, files
//! locally; the layout is [`mlops_domain::predlog`]), where `mlops monitor` reads them.
//!
//! Requests never wait for the store. What is queued or waiting for a retry is bounded in bytes
//! (`MLOPS_PREDICTION_LOG_MAX_BYTES`); past the bound new records are dropped and counted
//! (`mlops_prediction_log_dropped_records_total` in `/metrics`, and a warning). Nothing buffered is
//! lost on a clean stop: [`PredictionLog::flush`] runs on SIGTERM in `mlops serve` and on the
//! Lambda runtime's shutdown signal, and a Lambda environment that is frozen between invocations
//! flushes at the end of an invocation once its oldest buffered record is older than
//! `MLOPS_PREDICTION_LOG_MAX_AGE_SECONDS` (see [`PredictionLog::flush_if_older`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mlops_domain::store::{ObjectStore, PutCondition};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Prefix of the logs in the store.
pub use mlops_domain::predlog::PREFIX;

/// One logged prediction.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedPrediction {
    /// When it was served.
    pub at: DateTime<Utc>,
    /// Request id.
    pub request_id: String,
    /// 1-based number of the record in the request (feedback names it with the request id).
    pub record: u32,
    /// Model.
    pub model: String,
    /// Version.
    pub version: u64,
    /// Variant (alias).
    pub variant: String,
    /// The record as sent.
    pub input: serde_json::Value,
    /// Prediction.
    pub output: f64,
    /// Server-side latency of the whole request, microseconds.
    pub latency_us: u64,
}

/// One record, serialized when it is logged (its size is what the byte bound counts).
struct Line {
    model: String,
    at_ms: i64,
    bytes: Vec<u8>,
}

enum Message {
    Record(Line),
    Flush(oneshot::Sender<()>),
}

/// How the writer batches and what it may hold.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Records per object.
    pub batch: usize,
    /// Longest a record waits before its batch is written (while the process runs).
    pub flush_every: Duration,
    /// Most bytes of records queued or waiting for a retry.
    pub max_bytes: usize,
}

/// Handle to the background writer.
#[derive(Clone)]
pub struct PredictionLog {
    sender: mpsc::UnboundedSender<Message>,
    held_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Unix milliseconds of the oldest record not yet written; 0 when none.
    oldest_ms: Arc<AtomicI64>,
    /// After a failed write, [`PredictionLog::flush_if_older`] leaves the retries to the writer
    /// until then (a failing store must not slow every invocation).
    quiet_until_ms: Arc<AtomicI64>,
    dropped: Counter,
    written: Counter,
}

impl PredictionLog {
    /// Starts the writer on the current tokio runtime; `dropped` and `written` count records.
    pub fn start(
        store: Arc<dyn ObjectStore>,
        limits: LogLimits,
        dropped: Counter,
        written: Counter,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let log = Self {
            sender,
            held_bytes: Arc::new(AtomicUsize::new(0)),
            max_bytes: limits.max_bytes.max(1),
            oldest_ms: Arc::new(AtomicI64::new(0)),
            quiet_until_ms: Arc::new(AtomicI64::new(0)),
            dropped,
            written,
        };
        tokio::spawn(writer(store, receiver, limits, log.clone()));
        log
    }

    /// Queues a record without waiting; drops it (counted) when the byte bound is reached.
    pub fn log(&self, record: LoggedPrediction) {
        let Ok(mut bytes) = serde_json::to_vec(&record) else {
            self.drop_records(1);
            return;
        };
        bytes.push(b'\n');
        let size = bytes.len();
        if self.held_bytes.fetch_add(size, Ordering::AcqRel) + size > self.max_bytes {
            self.held_bytes.fetch_sub(size, Ordering::AcqRel);
            self.drop_records(1);
            return;
        }
        let at_ms = record.at.timestamp_millis().max(1);
        let _ = self
            .oldest_ms
            .compare_exchange(0, at_ms, Ordering::AcqRel, Ordering::Acquire);
        let line = Line {
            model: record.model,
            at_ms,
            bytes,
        };
        if self.sender.send(Message::Record(line)).is_err() {
            self.held_bytes.fetch_sub(size, Ordering::AcqRel);
            self.drop_records(1);
        }
    }

    fn drop_records(&self, n: u64) {
        let before = self.dropped.inc_by(n);
        // One warning per 1,000 drops, so a flood cannot flood the logs too.
        if before / 1_000 != (before + n) / 1_000 || before == 0 {
            tracing::warn!(
                dropped_total = before + n,
                max_bytes = self.max_bytes,
                "prediction log records dropped (queue over its byte bound)"
            );
        }
    }

    /// Writes everything queued so far (waits for the store).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Message::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Flushes when the oldest buffered record is older than `age` (a Lambda environment is
    /// frozen between invocations, so its background timer may not run for hours).
    pub async fn flush_if_older(&self, age: Duration) {
        let oldest = self.oldest_ms.load(Ordering::Acquire);
        let now = Utc::now().timestamp_millis();
        if oldest != 0
            && now.saturating_sub(oldest) >= age.as_millis() as i64
            && now >= self.quiet_until_ms.load(Ordering::Acquire)
        {
            self.flush().await;
        }
    }

    /// Records dropped before reaching the store.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Records written to the store.
    pub fn written(&self) -> u64 {
        self.written.get()
    }
}

async fn writer(
    store: Arc<dyn ObjectStore>,
    mut receiver: mpsc::UnboundedReceiver<Message>,
    limits: LogLimits,
    log: PredictionLog,
) {
    let mut pending: Vec<Line> = Vec::new();
    let batch = limits.batch.max(1);
    loop {
        let message = if pending.is_empty() {
            receiver.recv().await
        } else {
            match tokio::time::timeout(limits.flush_every, receiver.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    write(&*store, &mut pending, &log).await;
                    continue;
                }
            }
        };
        match message {
            Some(Message::Record(line)) => {
                if pending.is_empty() {
                    log.oldest_ms.store(line.at_ms, Ordering::Release);
                }
                pending.push(line);
                if pending.len() >= batch {
                    write(&*store, &mut pending, &log).await;
                }
            }
            Some(Message::Flush(done)) => {
                write(&*store, &mut pending, &log).await;
                let _ = done.send(());
            }
            None => {
                write(&*store, &mut pending, &log).await;
                return;
            }
        }
    }
}

/// Writes pending records, one object per model; on failure keeps them for the next attempt
/// (the byte bound stops new records while they wait).
async fn write(store: &dyn ObjectStore, pending: &mut Vec<Line>, log: &PredictionLog) {
    if pending.is_empty() {
        return;
    }
    let mut by_model: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for line in pending.drain(..) {
        by_model.entry(line.model.clone()).or_default().push(line);
    }
    for (model, lines) in by_model {
        let size: usize = lines.iter().map(|l| l.bytes.len()).sum();
        let mut body = Vec::with_capacity(size);
        for l in &lines {
            body.extend_from_slice(&l.bytes);
        }
        // Time-ordered (UUIDv7: milliseconds, then a counter): objects written in the same second
        // sort in the order they were written, which is the history's order.
        let id = uuid::Uuid::now_v7().simple().to_string();
        let key = mlops_domain::predlog::object_key(&model, Utc::now(), &id);
        let body = mlops_domain::predlog::encode(&body);
        match store.put(&key, body, PutCondition::IfAbsent).await {
            Ok(_) => {
                log.written.inc_by(lines.len() as u64);
                log.held_bytes.fetch_sub(size, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::warn!(error = %e, records = lines.len(), "prediction log write failed; will retry");
                log.quiet_until_ms
                    .store(Utc::now().timestamp_millis() + 30_000, Ordering::Release);
                pending.extend(lines);
            }
        }
    }
    log.oldest_ms.store(
        pending.iter().map(|l| l.at_ms).min().unwrap_or(0),
        Ordering::Release,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn record(i: u64) -> LoggedPrediction {
        LoggedPrediction {
            at: Utc::now(),
            request_id: format!("r{i}"),
            record: 1,
            model: "m".into(),
            version: 1,
            variant: "champion".into(),
            input: serde_json::json!({"x": i}),
            output: 0.5,
            latency_us: 10,
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_drops_are_counted_and_exported() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(mlops_store::LocalStore::new(dir.path()));
        let metrics = Metrics::new(false, "mlops");
        let size = serde_json::to_vec(&record(0)).unwrap().len() + 1;
        let log = PredictionLog::start(
            store,
            LogLimits {
                batch: 1_000_000,
                flush_every: Duration::from_secs(3600),
                max_bytes: 5 * size,
            },
            metrics.prediction_log_dropped.clone(),
            metrics.prediction_log_written.clone(),
        );
        for i in 0..20 {
            log.log(record(i));
        }
        log.flush().await;
        assert_eq!((log.written(), log.dropped()), (5, 15));
        // Written records free their bytes: the next five fit again.
        for i in 0..5 {
            log.log(record(i));
        }
        log.flush().await;
        assert_eq!((log.written(), log.dropped()), (10, 15));
        let text = metrics.prometheus_text();
        assert!(
            text.contains("mlops_prediction_log_dropped_records_total 15"),
            "{text}"
        );
        assert!(text.contains("mlops_prediction_log_written_records_total 10"));
    }

    #[tokio::test]
    async fn an_old_buffered_record_is_flushed_at_the_end_of_an_invocation() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(mlops_store::LocalStore::new(dir.path()));
        let metrics = Metrics::new(false, "mlops");
        let log = PredictionLog::start(
            store,
            LogLimits {
                batch: 1_000_000,
                flush_every: Duration::from_secs(3600),
                max_bytes: 1 << 20,
            },
            metrics.prediction_log_dropped.clone(),
            metrics.prediction_log_written.clone(),
        );
        log.log(record(1));
        log.flush_if_older(Duration::from_secs(3600)).await;
        assert_eq!(log.written(), 0, "younger than the age: stays buffered");
        tokio::time::sleep(Duration::from_millis(20)).await;
        log.flush_if_older(Duration::from_millis(10)).await;
        assert_eq!(log.written(), 1);
    }
}
