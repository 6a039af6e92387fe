//! MLflow REST client (API 2.0): experiments, runs, params, metrics, tags, artifacts through the
//! `mlflow-artifacts` proxy, registered models, model versions and aliases.

use async_trait::async_trait;
use mlops_domain::tracking::{RunInfo, RunReader, RunRecord, RunStatus, Tracker, TrackingError};
use serde_json::{Value, json};

/// MLflow's per-request limits of `runs/log-batch`.
const MAX_PARAMS_PER_BATCH: usize = 100;
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_TAGS_PER_BATCH: usize = 100;
/// MLflow's limit on the length of a param value.
const MAX_PARAM_VALUE: usize = 6000;

/// A client of one MLflow tracking server.
#[derive(Debug, Clone)]
pub struct MlflowClient {
    base: String,
    http: reqwest::Client,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn pairs(kv: &[(String, String)]) -> Vec<Value> {
    kv.iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

impl MlflowClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                // MLflow's server closes idle keep-alive connections after a few seconds (2 s
                // under gunicorn): a request sent on one it is closing fails with "error sending
                // request". Drop idle connections first.
                .pool_idle_timeout(std::time::Duration::from_secs(1))
                .build()
                .expect("HTTP client builds"),
        }
    }

    /// Server base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn err(&self, endpoint: &str, message: impl std::fmt::Display) -> TrackingError {
        TrackingError::Server {
            endpoint: format!("{}{endpoint}", self.base),
            message: message.to_string(),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<Value, TrackingError> {
        let response = request.send().await.map_err(|e| self.err(endpoint, e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.err(endpoint, e))?;
        if !status.is_success() {
            return Err(self.err(
                endpoint,
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(500).collect::<String>()
                ),
            ));
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text)
            .map_err(|e| self.err(endpoint, format!("invalid JSON answer: {e}")))
    }

    /// POSTs JSON to an API 2.0 endpoint.
    pub async fn post(&self, endpoint: &str, body: Value) -> Result<Value, TrackingError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        self.send(self.http.post(url).json(&body), endpoint).await
    }

    /// GETs an API 2.0 endpoint with query parameters.
    pub async fn get(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, TrackingError> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        self.send(self.http.get(url).query(query), endpoint).await
    }

    /// The id of an experiment, created if absent.
    pub async fn experiment_id(&self, name: &str) -> Result<String, TrackingError> {
        match self
            .get("experiments/get-by-name", &[("experiment_name", name)])
            .await
        {
            Ok(v) => {
                if let Some(id) = v["experiment"]["experiment_id"].as_str() {
                    return Ok(id.to_string());
                }
            }
            Err(TrackingError::Server { message, .. })
                if message.contains("RESOURCE_DOES_NOT_EXIST") => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", json!({"name": name})).await {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| self.err("experiments/create", "no experiment_id in the answer")),
            // Another trainer created it in between.
            Err(TrackingError::Server { message, .. })
                if message.contains("RESOURCE_ALREADY_EXISTS") =>
            {
                let v = self
                    .get("experiments/get-by-name", &[("experiment_name", name)])
                    .await?;
                v["experiment"]["experiment_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        self.err("experiments/get-by-name", "no experiment_id in the answer")
                    })
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches a run (`runs/get`).
    pub async fn get_run(&self, run_id: &str) -> Result<Value, TrackingError> {
        self.get("runs/get", &[("run_id", run_id)]).await
    }

    async fn artifact_root(&self, run_id: &str) -> Result<String, TrackingError> {
        let run = self.get_run(run_id).await?;
        run["run"]["info"]["artifact_uri"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err("runs/get", "the run has no artifact_uri"))
    }

    /// Downloads an artifact of a run through the `mlflow-artifacts` proxy.
    pub async fn download_artifact(
        &self,
        run_id: &str,
        path: &str,
    ) -> Result<Vec<u8>, TrackingError> {
        let url = self.artifact_url(run_id, path).await?;
        let endpoint = "mlflow-artifacts/artifacts";
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.err(endpoint, e))?;
        if !response.status().is_success() {
            return Err(self.err(endpoint, format!("HTTP {}", response.status())));
        }
        Ok(response
            .bytes()
            .await
            .map_err(|e| self.err(endpoint, e))?
            .to_vec())
    }

    async fn artifact_url(&self, run_id: &str, path: &str) -> Result<String, TrackingError> {
        let root = self.artifact_root(run_id).await?;
        let rel = root.strip_prefix("mlflow-artifacts:").ok_or_else(|| {
            self.err(
                "runs/get",
                format!("artifact root '{root}' is not served by the mlflow-artifacts proxy; start the server with --artifacts-destination"),
            )
        })?;
        let rel = rel.trim_start_matches('/');
        // mlflow-artifacts:/<exp>/<run>/artifacts or mlflow-artifacts://host/<exp>/...
        let rel = if root.starts_with("mlflow-artifacts://") {
            rel.split_once('/').map_or("", |(_, r)| r)
        } else {
            rel
        };
        Ok(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}/{}",
            self.base,
            rel.trim_end_matches('/'),
            path.trim_start_matches('/')
        ))
    }
}

#[async_trait]
impl Tracker for MlflowClient {
    fn describe(&self) -> String {
        self.base.clone()
    }

    async fn start_run(
        &self,
        experiment: &str,
        run_name: &str,
        tags: &[(String, String)],
        parent_run_id: Option<&str>,
    ) -> Result<RunInfo, TrackingError> {
        let experiment_id = self.experiment_id(experiment).await?;
        let mut all_tags = tags.to_vec();
        if let Some(parent) = parent_run_id {
            all_tags.push(("mlflow.parentRunId".into(), parent.into()));
        }
        let v = self
            .post(
                "runs/create",
                json!({
                    "experiment_id": experiment_id,
                    "run_name": run_name,
                    "start_time": now_ms(),
                    "tags": pairs(&all_tags),
                }),
            )
            .await?;
        let run_id = v["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| self.err("runs/create", "no run_id in the answer"))?
            .to_string();
        Ok(RunInfo {
            location: format!("{}/#/experiments/{experiment_id}/runs/{run_id}", self.base),
            run_id,
            experiment_id,
        })
    }

    async fn log_params(
        &self,
        run_id: &str,
        params: &[(String, String)],
    ) -> Result<(), TrackingError> {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.clone(), v.chars().take(MAX_PARAM_VALUE).collect()))
            .collect();
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "params": pairs(chunk)}),
            )
            .await?;
        }
        Ok(())
    }

    async fn log_metrics(
        &self,
        run_id: &str,
        metrics: &[(String, f64)],
        step: i64,
    ) -> Result<(), TrackingError> {
        let ts = now_ms();
        let entries: Vec<Value> = metrics
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| json!({"key": k, "value": v, "timestamp": ts, "step": step}))
            .collect();
        for chunk in entries.chunks(MAX_METRICS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "metrics": chunk}),
            )
            .await?;
        }
        Ok(())
    }

    async fn set_tags(&self, run_id: &str, tags: &[(String, String)]) -> Result<(), TrackingError> {
        for chunk in tags.chunks(MAX_TAGS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                json!({"run_id": run_id, "tags": pairs(chunk)}),
            )
            .await?;
        }
        Ok(())
    }

    async fn log_artifact(
        &self,
        run_id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), TrackingError> {
        let url = self.artifact_url(run_id, path).await?;
        self.send(self.http.put(url).body(bytes), "mlflow-artifacts/artifacts")
            .await
            .map(|_| ())
    }

    async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<(), TrackingError> {
        self.post(
            "runs/update",
            json!({"run_id": run_id, "status": status.as_str(), "end_time": now_ms()}),
        )
        .await
        .map(|_| ())
    }

    async fn mirror_model_version(
        &self,
        model: &str,
        registry_version: u64,
        run_id: &str,
        source_uri: &str,
    ) -> Result<String, TrackingError> {
        match self
            .post("registered-models/create", json!({"name": model}))
            .await
        {
            Ok(_) => {}
            Err(TrackingError::Server { message, .. })
                if message.contains("RESOURCE_ALREADY_EXISTS") => {}
            Err(e) => return Err(e),
        }
        let v = self
            .post(
                "model-versions/create",
                json!({
                    "name": model,
                    "source": source_uri,
                    "run_id": run_id,
                    "tags": [{"key": "mlops.registry_version", "value": registry_version.to_string()}],
                    "description": format!("Mirror of registry version {registry_version}"),
                }),
            )
            .await?;
        v["model_version"]["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err("model-versions/create", "no version in the answer"))
    }

    async fn mirror_alias(
        &self,
        model: &str,
        alias: &str,
        tracker_version: &str,
    ) -> Result<(), TrackingError> {
        self.post(
            "registered-models/alias",
            json!({"name": model, "alias": alias, "version": tracker_version}),
        )
        .await
        .map(|_| ())
    }
}

/// A run as MLflow's REST API returns it (`runs/get`, `runs/search`), in the reader's shape.
fn run_record(run: &Value) -> RunRecord {
    let info = &run["info"];
    let pairs = |list: &Value| -> Vec<(String, Value)> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["key"].as_str()?.to_string(), p["value"].clone())))
            .collect()
    };
    let text = |v: Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let millis = |v: &Value| v.as_i64().or_else(|| v.as_str()?.parse().ok());
    let tags: std::collections::BTreeMap<String, String> = pairs(&run["data"]["tags"])
        .into_iter()
        .map(|(k, v)| (k, text(v)))
        .collect();
    RunRecord {
        run_id: info["run_id"].as_str().unwrap_or_default().to_string(),
        run_name: info["run_name"].as_str().unwrap_or_default().to_string(),
        parent_run_id: tags.get("mlflow.parentRunId").cloned(),
        status: info["status"].as_str().unwrap_or_default().to_string(),
        start_time: millis(&info["start_time"]).unwrap_or_default(),
        end_time: millis(&info["end_time"]),
        params: pairs(&run["data"]["params"])
            .into_iter()
            .map(|(k, v)| (k, text(v)))
            .collect(),
        metrics: pairs(&run["data"]["metrics"])
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_f64()?)))
            .collect(),
        tags,
        history: Default::default(),
    }
}

#[async_trait]
impl RunReader for MlflowClient {
    async fn runs(&self, experiment: &str, limit: usize) -> Result<Vec<RunRecord>, TrackingError> {
        let found = self
            .get(
                "experiments/get-by-name",
                &[("experiment_name", experiment)],
            )
            .await;
        let id = match found {
            Ok(v) => v["experiment"]["experiment_id"]
                .as_str()
                .map(str::to_string),
            Err(TrackingError::Server { message, .. })
                if message.contains("RESOURCE_DOES_NOT_EXIST") =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let Some(id) = id else {
            return Ok(Vec::new());
        };
        let answer = self
            .post(
                "runs/search",
                json!({"experiment_ids": [id], "max_results": limit.clamp(1, 1000),
                       "order_by": ["attributes.start_time DESC"]}),
            )
            .await?;
        Ok(answer["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(run_record)
            .collect())
    }

    async fn run(&self, run_id: &str) -> Result<RunRecord, TrackingError> {
        let run = match self.get_run(run_id).await {
            Err(TrackingError::Server { message, .. })
                if message.contains("RESOURCE_DOES_NOT_EXIST") =>
            {
                return Err(TrackingError::NotFound(run_id.chars().take(200).collect()));
            }
            other => other?,
        };
        let mut record = run_record(&run["run"]);
        for metric in record.metrics.keys().cloned().collect::<Vec<_>>() {
            let answer = self
                .get(
                    "metrics/get-history",
                    &[("run_id", run_id), ("metric_key", &metric)],
                )
                .await?;
            let mut points: Vec<(i64, f64)> = answer["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| Some((m["step"].as_i64().unwrap_or(0), m["value"].as_f64()?)))
                .collect();
            points.sort_by_key(|p| p.0);
            record.history.insert(metric, points);
        }
        Ok(record)
    }
}
