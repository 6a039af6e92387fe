//! Metrics to CloudWatch (PutMetricData): the training job's final scores.

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use crate::describe;

/// A CloudWatch namespace to put metrics in.
pub struct CloudWatchMetrics {
    client: Client,
    namespace: String,
}

impl CloudWatchMetrics {
    /// Metrics in `namespace`.
    pub fn new(config: &aws_config::SdkConfig, namespace: &str) -> Self {
        Self {
            client: Client::new(config),
            namespace: namespace.into(),
        }
    }

    /// Puts unitless values with the same dimensions (at most 1,000 per call, as the API
    /// allows); non-finite values are skipped (CloudWatch rejects them).
    pub async fn put(
        &self,
        values: &[(String, f64)],
        dimensions: &[(&str, &str)],
    ) -> Result<usize, String> {
        let dims: Vec<Dimension> = dimensions
            .iter()
            .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
            .collect();
        let data: Vec<MetricDatum> = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(name, v)| {
                MetricDatum::builder()
                    .metric_name(name)
                    .value(*v)
                    .unit(StandardUnit::None)
                    .set_dimensions(Some(dims.clone()))
                    .build()
            })
            .collect();
        let sent = data.len();
        for chunk in data.chunks(1_000) {
            self.client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| format!("CloudWatch {}: {}", self.namespace, describe(&e)))?;
        }
        Ok(sent)
    }
}
