//! Request metrics: Prometheus text for `/metrics` and CloudWatch Embedded Metric Format lines.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What one request did, for metrics and the request log.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Model name, when a model served.
    pub model: String,
    /// Version that served.
    pub version: Option<u64>,
    /// Variant (alias) that served.
    pub variant: String,
    /// Records predicted.
    pub records: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    model: String,
    version: String,
    variant: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route: String,
    model: String,
    variant: String,
}

/// Metrics of the API.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    predictions: Family<LatencyLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    /// Prediction-log records dropped (queue full, or the backlog over its bound while the
    /// store failed).
    pub prediction_log_dropped: Counter,
    /// Prediction-log records written to the store.
    pub prediction_log_written: Counter,
    emf: bool,
    namespace: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    /// Metrics that also print EMF lines when `emf` is set.
    pub fn new(emf: bool, namespace: &str) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let predictions = Family::<LatencyLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let mut registry = Registry::with_prefix("mlops");
        registry.register(
            "http_requests",
            "HTTP requests by route, model, version, variant and status",
            requests.clone(),
        );
        registry.register(
            "predictions",
            "Records predicted by route, model and variant",
            predictions.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency inside the server",
            latency.clone(),
        );
        let prediction_log_dropped = Counter::default();
        let prediction_log_written = Counter::default();
        registry.register(
            "prediction_log_dropped_records",
            "Prediction-log records dropped before reaching the store",
            prediction_log_dropped.clone(),
        );
        registry.register(
            "prediction_log_written_records",
            "Prediction-log records written to the store",
            prediction_log_written.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            predictions,
            latency,
            prediction_log_dropped,
            prediction_log_written,
            emf,
            namespace: namespace.into(),
        }
    }

    /// Records one request.
    pub fn record(&self, route: &str, status: u16, seconds: f64, served: &Served) {
        let version = served.version.map(|v| v.to_string()).unwrap_or_default();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.into(),
                model: served.model.clone(),
                version: version.clone(),
                variant: served.variant.clone(),
                status,
            })
            .inc();
        let labels = LatencyLabels {
            route: route.into(),
            model: served.model.clone(),
            variant: served.variant.clone(),
        };
        self.latency.get_or_create(&labels).observe(seconds);
        if served.records > 0 {
            self.predictions
                .get_or_create(&labels)
                .inc_by(served.records as u64);
        }
        if self.emf && !served.model.is_empty() {
            println!(
                "{}",
                emf_line(&self.namespace, route, status, seconds, served, &version)
            );
        }
    }

    /// Prometheus text exposition.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One CloudWatch Embedded Metric Format record: latency, request, error and prediction counts
/// by model, version and variant.
pub fn emf_line(
    namespace: &str,
    route: &str,
    status: u16,
    seconds: f64,
    served: &Served,
    version: &str,
) -> String {
    let error = u8::from(status >= 500);
    let client_error = u8::from((400..500).contains(&status));
    serde_json::json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Model", "Version", "Variant"], ["Model"]],
                "Metrics": [
                    {"Name": "Latency", "Unit": "Milliseconds"},
                    {"Name": "Requests", "Unit": "Count"},
                    {"Name": "Errors", "Unit": "Count"},
                    {"Name": "ClientErrors", "Unit": "Count"},
                    {"Name": "Predictions", "Unit": "Count"}
                ]
            }]
        },
        "Model": served.model,
        "Version": version,
        "Variant": served.variant,
        "Route": route,
        "Status": status,
        "Latency": seconds * 1e3,
        "Requests": 1,
        "Errors": error,
        "ClientErrors": client_error,
        "Predictions": served.records
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_and_emf() {
        let m = Metrics::new(false, "ns");
        let served = Served {
            model: "m".into(),
            version: Some(3),
            variant: "champion".into(),
            records: 2,
        };
        m.record("predict", 200, 0.0004, &served);
        m.record("predict", 400, 0.0001, &served);
        let text = m.prometheus_text();
        assert!(text.contains(r#"mlops_http_requests_total{route="predict",model="m",version="3",variant="champion",status="200"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"mlops_predictions_total{route="predict",model="m",variant="champion"} 4"#
            ),
            "{text}"
        );
        let line: serde_json::Value =
            serde_json::from_str(&emf_line("ns", "predict", 503, 0.002, &served, "3")).unwrap();
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ns");
        assert_eq!(line["Errors"], 1);
        assert_eq!(line["Latency"], 2.0);
        assert_eq!(line["Version"], "3");
    }
}
