//! The experiment-tracking port: runs with params, metrics, tags and artifacts, plus a mirror of
//! registry versions and aliases (MLflow's model registry). Adapters: MLflow REST, local run log.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A started run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Experiment id.
    pub experiment_id: String,
    /// Where a person can look at it (UI URL or directory).
    pub location: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    /// Completed.
    Finished,
    /// Errored.
    Failed,
    /// Stopped early.
    Killed,
}

impl RunStatus {
    /// MLflow's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

/// Tracking failures.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// The tracking server could not be reached or answered with an error.
    #[error("tracking server {endpoint}: {message}")]
    Server {
        /// Endpoint called.
        endpoint: String,
        /// What went wrong (status and body).
        message: String,
    },
    /// A run that does not exist.
    #[error("run '{0}' not found")]
    NotFound(String),
    /// The local run log could not be written.
    #[error("run log {path}: {message}")]
    Local {
        /// Path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// An experiment tracker.
#[async_trait]
pub trait Tracker: Send + Sync {
    /// Where runs go (URI or directory).
    fn describe(&self) -> String;
    /// Starts a run in an experiment (created if absent), optionally as a child of another run.
    async fn start_run(
        &self,
        experiment: &str,
        run_name: &str,
        tags: &[(String, String)],
        parent_run_id: Option<&str>,
    ) -> Result<RunInfo, TrackingError>;
    /// Logs parameters.
    async fn log_params(
        &self,
        run_id: &str,
        params: &[(String, String)],
    ) -> Result<(), TrackingError>;
    /// Logs metrics at a step.
    async fn log_metrics(
        &self,
        run_id: &str,
        metrics: &[(String, f64)],
        step: i64,
    ) -> Result<(), TrackingError>;
    /// Sets tags.
    async fn set_tags(&self, run_id: &str, tags: &[(String, String)]) -> Result<(), TrackingError>;
    /// Stores an artifact file under the run (path relative to the run's artifact root).
    async fn log_artifact(
        &self,
        run_id: &str,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), TrackingError>;
    /// Ends a run.
    async fn end_run(&self, run_id: &str, status: RunStatus) -> Result<(), TrackingError>;
    /// Mirrors a registry version into the tracker's model registry; returns the tracker's
    /// version id.
    async fn mirror_model_version(
        &self,
        model: &str,
        registry_version: u64,
        run_id: &str,
        source_uri: &str,
    ) -> Result<String, TrackingError>;
    /// Mirrors an alias onto a tracker model version.
    async fn mirror_alias(
        &self,
        model: &str,
        alias: &str,
        tracker_version: &str,
    ) -> Result<(), TrackingError>;
}

/// A run as read back for display: latest metric values, and on [`RunReader::run`] every metric's
/// history (GPU telemetry, search progress).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Run name.
    pub run_name: String,
    /// Parent run (search trials are children of the training run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// RUNNING, FINISHED, FAILED or KILLED.
    pub status: String,
    /// Start, milliseconds since the epoch.
    pub start_time: i64,
    /// End, milliseconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    /// Parameters.
    pub params: std::collections::BTreeMap<String, String>,
    /// The latest value of each metric.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Each metric's (step, value) points, oldest first (filled by [`RunReader::run`] only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub history: std::collections::BTreeMap<String, Vec<(i64, f64)>>,
}

/// Reads runs back from a tracker (the console's training page).
#[async_trait]
pub trait RunReader: Send + Sync {
    /// The newest `limit` runs of an experiment (parents and children), newest first.
    async fn runs(&self, experiment: &str, limit: usize) -> Result<Vec<RunRecord>, TrackingError>;
    /// One run with its metric histories.
    async fn run(&self, run_id: &str) -> Result<RunRecord, TrackingError>;
}
