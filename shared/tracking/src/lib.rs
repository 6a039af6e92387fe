//! Experiment-tracking adapters for [`mlops_domain::tracking::Tracker`]: the MLflow REST API and a
//! local run log (the embedded default).

pub mod local;
pub mod mlflow;

pub use local::LocalRunLog;
pub use mlflow::MlflowClient;
