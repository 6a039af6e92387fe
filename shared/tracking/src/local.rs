//! The embedded default tracker: a run log in a local directory.
//!
//! Layout: `ROOT/EXPERIMENT/RUN_ID/run.json` (params, metrics with steps, tags, status, times) and
//! `ROOT/EXPERIMENT/RUN_ID/artifacts/…`. `run.json` is rewritten atomically (temp file + rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use mlops_domain::tracking::{RunInfo, RunReader, RunRecord, RunStatus, Tracker, TrackingError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// One metric observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Value.
    pub value: f64,
    /// Step.
    pub step: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
}

/// The content of `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalRun {
    /// Run id.
    pub run_id: String,
    /// Run name.
    pub run_name: String,
    /// Experiment.
    pub experiment: String,
    /// Parent run, if a child.
    pub parent_run_id: Option<String>,
    /// Status (RUNNING until ended).
    pub status: String,
    /// Start (ms).
    pub start_time: i64,
    /// End (ms).
    pub end_time: Option<i64>,
    /// Params.
    pub params: BTreeMap<String, String>,
    /// Metric history.
    pub metrics: BTreeMap<String, Vec<MetricPoint>>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A run log in a directory.
#[derive(Debug)]
pub struct LocalRunLog {
    root: PathBuf,
    /// Serializes read-modify-write of run files within the process.
    lock: Mutex<()>,
}

fn local_err(path: &Path, e: impl std::fmt::Display) -> TrackingError {
    TrackingError::Local {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn safe_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}

impl LocalRunLog {
    /// A run log under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            lock: Mutex::new(()),
        }
    }

    fn run_dir(&self, run_id: &str) -> Result<PathBuf, TrackingError> {
        // run ids are "<experiment>.<uuid>" so the directory is found without an index
        let (experiment, _) = run_id
            .split_once('.')
            .ok_or_else(|| local_err(&self.root, format!("malformed run id '{run_id}'")))?;
        Ok(self
            .root
            .join(safe_segment(experiment))
            .join(safe_segment(run_id)))
    }

    /// Reads a run.
    pub fn read_run(&self, run_id: &str) -> Result<LocalRun, TrackingError> {
        let path = self.run_dir(run_id)?.join("run.json");
        let bytes = std::fs::read(&path).map_err(|e| local_err(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| local_err(&path, e))
    }

    fn write_run(&self, run: &LocalRun) -> Result<(), TrackingError> {
        let dir = self.run_dir(&run.run_id)?;
        std::fs::create_dir_all(&dir).map_err(|e| local_err(&dir, e))?;
        let path = dir.join("run.json");
        let tmp = dir.join(".run.json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(run).expect("run serializes"),
        )
        .map_err(|e| local_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| local_err(&path, e))
    }

    async fn update(
        &self,
        run_id: &str,
        f: impl FnOnce(&mut LocalRun),
    ) -> Result<(), TrackingError> {
        let _guard = self.lock.lock().await;
        let mut run = self.read_run(run_id)?;
        f(&mut run);
        self.write_run(&run)
    }
}

#[async_trait]
impl Tracker for LocalRunLog {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn start_run(
        &self,
        experiment: &str,
        run_name: &str,
        tags: &[(String, String)],
        parent_run_id: Option<&str>,
    ) -> Result<RunInfo, TrackingError> {
        let run_id = format!(
            "{}.{}",
            safe_segment(experiment),
            uuid::Uuid::new_v4().simple()
        );
        let run = LocalRun {
            run_id: run_id.clone(),
            run_name: run_name.into(),
            experiment: experiment.into(),
            parent_run_id: parent_run_id.map(str::to_string),
            status: "RUNNING".into(),
            start_time: chrono::Utc::now().timestamp_millis(),
            tags: tags.iter().cloned().collect(),
            ..Default::default()
        };
        let _guard = self.lock.lock().await;
        self.write_run(&run)?;
        Ok(RunInfo {
            location: self.run_dir(&run_id)?.display().to_string(),
            experiment_id: safe_segment(experiment),
            run_id,
        })
    }

    async fn log_params(
        &self,
        run_id: &str,
        params: &[(String, String)],
    ) -> Result<(), TrackingError> {
        self.update(run_id, |r| r.params.extend(params.iter().cloned()))
            .await
    }

    async fn log_metrics(
        &self,
        run_id: &str,
        metrics: &[(String, f64)],
        step: i64,
    ) -> Result<(), TrackingError> {
        let timestamp = chrono::Utc::now().timestamp_millis();
        self.update(run_id, |r| {
            for (k, v) in metrics {
                r.metrics.entry(k.clone()).or_default().push(MetricPoint {
                    value: *v,
                    step,
                    timestamp,
                });
            }
        })
        .await
    }

    async fn set_tags(&self, run_id: &str, tags: &[(String, String)]) -> Result<(), TrackingError> {
        self.update(run_id, |r| r.tags.extend(tags.iter().cloned()))
            .await
    }

    async fn log_artifact(
        &self,
        run_id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), TrackingError> {
        let mut target = self.run_dir(run_id)?.join("artifacts");
        for part in path.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(local_err(&target, format!("unsafe artifact path '{path}'")));
            }
            target.push(part);
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| local_err(dir, e))?;
        }
        std::fs::write(&target, bytes).map_err(|e| local_err(&target, e))
    }

    async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<(), TrackingError> {
        let end = chrono::Utc::now().timestamp_millis();
        self.update(run_id, |r| {
            r.status = status.as_str().into();
            r.end_time = Some(end);
        })
        .await
    }

    /// The local registry is the system of record, so there is no second registry to mirror into:
    /// the registry version itself identifies the model.
    async fn mirror_model_version(
        &self,
        _model: &str,
        registry_version: u64,
        _run_id: &str,
        _source_uri: &str,
    ) -> Result<String, TrackingError> {
        Ok(registry_version.to_string())
    }

    /// See [`Self::mirror_model_version`]: aliases live in the registry itself.
    async fn mirror_alias(
        &self,
        _model: &str,
        _alias: &str,
        _tracker_version: &str,
    ) -> Result<(), TrackingError> {
        Ok(())
    }
}

impl LocalRun {
    /// The run as [`RunReader`] answers: latest metric values, and the histories when asked.
    fn record(self, with_history: bool) -> RunRecord {
        let latest = |points: &Vec<MetricPoint>| {
            points
                .iter()
                .max_by_key(|p| (p.step, p.timestamp))
                .map(|p| p.value)
        };
        RunRecord {
            metrics: self
                .metrics
                .iter()
                .filter_map(|(k, v)| latest(v).map(|x| (k.clone(), x)))
                .collect(),
            history: if with_history {
                self.metrics
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().map(|p| (p.step, p.value)).collect()))
                    .collect()
            } else {
                Default::default()
            },
            run_id: self.run_id,
            run_name: self.run_name,
            parent_run_id: self.parent_run_id,
            status: self.status,
            start_time: self.start_time,
            end_time: self.end_time,
            params: self.params,
            tags: self.tags,
        }
    }
}

#[async_trait]
impl RunReader for LocalRunLog {
    async fn runs(&self, experiment: &str, limit: usize) -> Result<Vec<RunRecord>, TrackingError> {
        let dir = self.root.join(safe_segment(experiment));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(local_err(&dir, e)),
        };
        let mut runs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("run.json");
            // A run directory without a readable run.json (being created) is left out.
            if let Ok(run) = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<LocalRun>(&b).map_err(|e| e.to_string()))
            {
                runs.push(run.record(false));
            }
        }
        runs.sort_by(|a, b| {
            b.start_time
                .cmp(&a.start_time)
                .then(b.run_id.cmp(&a.run_id))
        });
        runs.truncate(limit);
        Ok(runs)
    }

    async fn run(&self, run_id: &str) -> Result<RunRecord, TrackingError> {
        let exists = self
            .run_dir(run_id)
            .is_ok_and(|dir| dir.join("run.json").is_file());
        if !exists {
            return Err(TrackingError::NotFound(run_id.chars().take(200).collect()));
        }
        Ok(self.read_run(run_id)?.record(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalRunLog::new(dir.path());
        let run = log
            .start_run("housing", "xgboost", &[("k".into(), "v".into())], None)
            .await
            .unwrap();
        log.log_params(&run.run_id, &[("eta".into(), "0.1".into())])
            .await
            .unwrap();
        log.log_metrics(&run.run_id, &[("rmse".into(), 0.5)], 3)
            .await
            .unwrap();
        log.log_artifact(&run.run_id, "report/a.md", b"# hi".to_vec())
            .await
            .unwrap();
        log.end_run(&run.run_id, RunStatus::Finished).await.unwrap();
        let r = log.read_run(&run.run_id).unwrap();
        assert_eq!(r.status, "FINISHED");
        assert_eq!(r.params["eta"], "0.1");
        assert_eq!(r.metrics["rmse"][0].step, 3);
        assert_eq!(r.tags["k"], "v");
        assert!(
            std::path::Path::new(&run.location)
                .join("artifacts/report/a.md")
                .exists()
        );
        assert!(log.log_artifact(&run.run_id, "../x", vec![]).await.is_err());
        log.log_metrics(&run.run_id, &[("rmse".into(), 0.4)], 4)
            .await
            .unwrap();
        let listed = log.runs("housing", 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].metrics["rmse"], 0.4);
        assert!(listed[0].history.is_empty());
        let one = log.run(&run.run_id).await.unwrap();
        assert_eq!(one.history["rmse"], [(3, 0.5), (4, 0.4)]);
        assert!(log.runs("nothing-here", 10).await.unwrap().is_empty());
        for missing in ["housing.0000", "no-dot", ".."] {
            assert!(
                matches!(log.run(missing).await, Err(TrackingError::NotFound(_))),
                "{missing}"
            );
        }
    }
}
