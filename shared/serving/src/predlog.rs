//! Prediction logs: every prediction (inputs, outputs, version, variant, latency) is queued and
//! written in compact JSON-lines batches to the store under
//! `prediction-logs/MODEL/date=YYYY-MM-DD/HHMMSS-UUID.jsonl` (S3 on AWS, files locally), where
//! drift checks read them. Requests never wait for the store: when the queue is full, records are
//! dropped and counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mlops_domain::store::{ObjectStore, PutCondition};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Prefix of the logs in the store.
pub const PREFIX: &str = "prediction-logs";
const QUEUE: usize = 100_000;

/// One logged prediction.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedPrediction {
    /// When it was served.
    pub at: DateTime<Utc>,
    /// Request id.
    pub request_id: String,
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

enum Message {
    Record(LoggedPrediction),
    Flush(oneshot::Sender<()>),
}

/// Handle to the background writer.
#[derive(Clone)]
pub struct PredictionLog {
    sender: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl PredictionLog {
    /// Starts the writer on the current tokio runtime.
    pub fn start(store: Arc<dyn ObjectStore>, batch: usize, flush_every: Duration) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(
            store,
            receiver,
            batch.max(1),
            flush_every,
            Arc::clone(&written),
        ));
        Self {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            written,
        }
    }

    /// Queues a record without waiting.
    pub fn log(&self, record: LoggedPrediction) {
        if self.sender.try_send(Message::Record(record)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes everything queued so far.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records written to the store.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

async fn writer(
    store: Arc<dyn ObjectStore>,
    mut receiver: mpsc::Receiver<Message>,
    batch: usize,
    flush_every: Duration,
    written: Arc<AtomicU64>,
) {
    let mut pending: Vec<LoggedPrediction> = Vec::new();
    loop {
        let message = if pending.is_empty() {
            receiver.recv().await
        } else {
            match tokio::time::timeout(flush_every, receiver.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    write(&*store, &mut pending, &written).await;
                    continue;
                }
            }
        };
        match message {
            Some(Message::Record(r)) => {
                pending.push(r);
                if pending.len() >= batch {
                    write(&*store, &mut pending, &written).await;
                }
            }
            Some(Message::Flush(done)) => {
                write(&*store, &mut pending, &written).await;
                let _ = done.send(());
            }
            None => {
                write(&*store, &mut pending, &written).await;
                return;
            }
        }
    }
}

/// Writes pending records, one object per model; on failure keeps them (up to 10 batches) for
/// the next attempt.
async fn write(store: &dyn ObjectStore, pending: &mut Vec<LoggedPrediction>, written: &AtomicU64) {
    if pending.is_empty() {
        return;
    }
    let mut by_model: BTreeMap<String, Vec<LoggedPrediction>> = BTreeMap::new();
    for r in pending.drain(..) {
        by_model.entry(r.model.clone()).or_default().push(r);
    }
    for (model, records) in by_model {
        let mut body = Vec::with_capacity(records.len() * 256);
        for r in &records {
            if serde_json::to_writer(&mut body, r).is_ok() {
                body.push(b'\n');
            }
        }
        let now = Utc::now();
        let key = format!(
            "{PREFIX}/{model}/date={}/{}-{}.jsonl",
            now.format("%Y-%m-%d"),
            now.format("%H%M%S"),
            uuid::Uuid::new_v4().simple()
        );
        match store.put(&key, body, PutCondition::IfAbsent).await {
            Ok(_) => {
                written.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), "prediction log write failed; will retry");
                pending.extend(records);
            }
        }
    }
    const KEEP: usize = 10_000;
    if pending.len() > KEEP {
        let excess = pending.len() - KEEP;
        tracing::warn!(
            dropped = excess,
            "prediction log backlog too large; dropping oldest"
        );
        pending.drain(..excess);
    }
}
