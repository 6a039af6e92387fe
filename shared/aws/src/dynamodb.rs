//! The online feature store in a DynamoDB table: one item per (view, entity), partition key
//! `pk = "{view}#{entity key}"`, the event time in `t` (µs) and the values as JSON in `v`.
//!
//! Writes read the stored event times first (`BatchGetItem`, 100 keys a call) and write only
//! rows that are not older (`BatchWriteItem`, 25 a call), several calls in flight; concurrent
//! materializations of one view are serialized by its watermark claim, so the read-then-write
//! cannot race another writer of the same rows. Reads are `BatchGetItem` calls; unprocessed keys
//! and items are retried with backoff.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeyType, KeysAndAttributes, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use mlops_domain::online::{OnlineError, OnlineRow, OnlineStore, Written, newer_wins};
use tokio::task::JoinSet;

/// Keys per `BatchGetItem`.
const GET_BATCH: usize = 100;
/// Items per `BatchWriteItem`.
const WRITE_BATCH: usize = 25;
/// Calls in flight.
const IN_FLIGHT: usize = 16;
/// Retries of unprocessed keys or items.
const RETRIES: u32 = 8;

/// The online store in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoOnline {
    client: Client,
    table: String,
}

fn backend<E>(operation: &'static str, e: &aws_sdk_dynamodb::error::SdkError<E>) -> OnlineError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    let message = match e {
        SdkError::ServiceError(s) => format!(
            "{} ({})",
            s.err().message().unwrap_or("no message"),
            s.err().code().unwrap_or("no code")
        ),
        SdkError::DispatchFailure(d) => format!("cannot reach DynamoDB: {d:?}"),
        SdkError::TimeoutError(_) => "timed out".into(),
        other => format!("{other:?}"),
    };
    OnlineError::Backend { operation, message }
}

fn pk(view: &str, key: &str) -> String {
    format!("{view}#{key}")
}

fn decode(view: &str, item: &HashMap<String, AttributeValue>) -> Result<OnlineRow, OnlineError> {
    let corrupt = |why: &str| OnlineError::Corrupt {
        key: item
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        message: why.into(),
    };
    let key = item
        .get("pk")
        .and_then(|v| v.as_s().ok())
        .and_then(|s| s.strip_prefix(view)?.strip_prefix('#'))
        .ok_or_else(|| corrupt("no pk of this view"))?;
    let event_time = item
        .get("t")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| corrupt("no event time 't'"))?;
    let values = match item.get("v").and_then(|v| v.as_s().ok()) {
        Some(json) => serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))?,
        None => Default::default(),
    };
    Ok(OnlineRow {
        key: key.into(),
        event_time,
        values,
    })
}

impl DynamoOnline {
    /// The store in `table`.
    pub fn new(config: &aws_config::SdkConfig, table: &str) -> Self {
        Self {
            client: Client::new(config),
            table: table.into(),
        }
    }

    /// Creates the table (on-demand capacity, `pk` string hash key) unless it exists.
    pub async fn ensure_table(&self) -> Result<(), OnlineError> {
        if self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete attribute definition"),
            )
            .key_schema(
                aws_sdk_dynamodb::types::KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("complete key schema"),
            )
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend("CreateTable", &e)),
        }
    }

    /// Items of up to 100 keys (missing ones absent), retrying unprocessed keys.
    async fn get_batch(
        &self,
        pks: Vec<String>,
        projection: Option<&str>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, OnlineError> {
        let mut pending: Vec<HashMap<String, AttributeValue>> = pks
            .into_iter()
            .map(|p| HashMap::from([("pk".to_string(), AttributeValue::S(p))]))
            .collect();
        let mut out = Vec::new();
        for attempt in 0..=RETRIES {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(6))).await;
            }
            let mut keys = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true);
            if let Some(p) = projection {
                keys = keys.projection_expression(p);
            }
            let r = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys.build().expect("keys are set"))
                .send()
                .await
                .map_err(|e| backend("BatchGetItem", &e))?;
            out.extend(
                r.responses
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default(),
            );
            pending = r
                .unprocessed_keys
                .and_then(|mut m| m.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        if pending.is_empty() {
            Ok(out)
        } else {
            Err(OnlineError::Backend {
                operation: "BatchGetItem",
                message: format!(
                    "{} keys still unprocessed after {RETRIES} retries",
                    pending.len()
                ),
            })
        }
    }

    async fn write_batch(&self, requests: Vec<WriteRequest>) -> Result<(), OnlineError> {
        let mut pending = requests;
        for attempt in 0..=RETRIES {
            if pending.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(6))).await;
            }
            let r = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut pending))
                .send()
                .await
                .map_err(|e| backend("BatchWriteItem", &e))?;
            pending = r
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
        }
        Err(OnlineError::Backend {
            operation: "BatchWriteItem",
            message: format!(
                "{} items still unprocessed after {RETRIES} retries",
                pending.len()
            ),
        })
    }

    /// Writes up to 100 rows of one view: reads their stored times, writes the not-older ones.
    async fn write_chunk(self, view: String, rows: Vec<OnlineRow>) -> Result<Written, OnlineError> {
        let stored = self
            .get_batch(
                rows.iter().map(|r| pk(&view, &r.key)).collect(),
                Some("pk, t"),
            )
            .await?;
        let mut times: HashMap<String, i64> = HashMap::new();
        for item in &stored {
            if let Ok(r) = decode(&view, item) {
                times.insert(r.key, r.event_time);
            }
        }
        let mut w = Written::default();
        let mut requests = Vec::new();
        for r in rows {
            let old = times.get(&r.key).map(|&t| OnlineRow {
                key: r.key.clone(),
                event_time: t,
                values: Default::default(),
            });
            if !newer_wins(old.as_ref(), &r) {
                w.older += 1;
                continue;
            }
            w.stored += 1;
            let item = HashMap::from([
                ("pk".to_string(), AttributeValue::S(pk(&view, &r.key))),
                ("t".to_string(), AttributeValue::N(r.event_time.to_string())),
                (
                    "v".to_string(),
                    AttributeValue::S(serde_json::to_string(&r.values).expect("values serialize")),
                ),
            ]);
            requests.push(
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("item is set"),
                    )
                    .build(),
            );
        }
        for batch in requests.chunks(WRITE_BATCH) {
            self.write_batch(batch.to_vec()).await?;
        }
        Ok(w)
    }
}

/// A boxed call of the online store.
type Job<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, OnlineError>> + Send>>;

/// Runs `jobs` with at most [`IN_FLIGHT`] at once, in order of completion.
async fn bounded<T: Send + 'static>(jobs: Vec<Job<T>>) -> Result<Vec<T>, OnlineError> {
    let mut set = JoinSet::new();
    let mut out = Vec::new();
    for job in jobs {
        if set.len() >= IN_FLIGHT {
            out.push(
                set.join_next()
                    .await
                    .expect("a task is running")
                    .expect("tasks do not panic")?,
            );
        }
        set.spawn(job);
    }
    while let Some(done) = set.join_next().await {
        out.push(done.expect("tasks do not panic")?);
    }
    Ok(out)
}

#[async_trait]
impl OnlineStore for DynamoOnline {
    async fn write(&self, view: &str, rows: Vec<OnlineRow>) -> Result<Written, OnlineError> {
        let mut jobs: Vec<Job<Written>> = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<OnlineRow> = rows.by_ref().take(GET_BATCH).collect();
            jobs.push(Box::pin(self.clone().write_chunk(view.to_string(), chunk)));
        }
        let mut total = Written::default();
        for w in bounded(jobs).await? {
            total += w;
        }
        Ok(total)
    }

    async fn read(
        &self,
        view: &str,
        keys: &[String],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineError> {
        let mut unique: Vec<String> = keys.iter().map(|k| pk(view, k)).collect();
        unique.sort_unstable();
        unique.dedup();
        let mut jobs: Vec<Job<Vec<HashMap<String, AttributeValue>>>> = Vec::new();
        for chunk in unique.chunks(GET_BATCH) {
            let this = self.clone();
            let chunk = chunk.to_vec();
            jobs.push(Box::pin(async move { this.get_batch(chunk, None).await }));
        }
        let mut found: HashMap<String, OnlineRow> = HashMap::new();
        for items in bounded(jobs).await? {
            for item in &items {
                let row = decode(view, item)?;
                found.insert(row.key.clone(), row);
            }
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn describe(&self) -> String {
        format!("dynamodb://{}", self.table)
    }
}
