//! What the router tests share: bundles from the real data sets, a registry on a local store with
//! published models, and a way to call the router in-process.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mlops_domain::artifact::{BUNDLE_FORMAT, Bundle, Lineage, Manifest, ModelKind};
use mlops_domain::data::{TargetPolicy, load_csv};
use mlops_domain::features::{FeaturePipeline, PipelineOptions};
use mlops_domain::registry::{CardEdit, RegisterOptions, Registry};
use mlops_domain::schema::Schema;
use mlops_domain::store::ObjectStore;
use mlops_serving::{AppState, ServeConfig};
use mlops_store::LocalStore;
use serde_json::{Value, json};
use tower::ServiceExt;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A bundle for a real data set with a linear model whose coefficients are `slope`.
pub fn bundle(name: &str, slope: f64) -> Bundle {
    let schema = Schema::from_file(&repo().join(format!("data/{name}.schema.toml"))).unwrap();
    let file = repo()
        .join("../shared/data")
        .join(&schema.source.as_ref().unwrap().file);
    let (data, report) = load_csv(&file, &schema, TargetPolicy::Required).unwrap();
    let pipeline = FeaturePipeline::fit(&schema, &data, PipelineOptions { standardize: true });
    let classification = schema.task == mlops_domain::schema::Task::BinaryClassification;
    let n = pipeline.feature_names.len();
    let model = json!({
        "link": if classification { "logit" } else { "identity" },
        "intercept": if classification { -1.0 } else { 2.0 },
        "coefficients": vec![slope; n],
        "l2": 0.0
    });
    let manifest = Manifest {
        format_version: BUNDLE_FORMAT,
        model_name: name.into(),
        task: schema.task,
        model_kind: if classification {
            ModelKind::Logistic
        } else {
            ModelKind::Linear
        },
        model_file: "model.json".into(),
        feature_names: pipeline.feature_names.clone(),
        schema,
        pipeline,
        metrics: BTreeMap::from([("rmse".into(), 0.7)]),
        validation_metrics: BTreeMap::new(),
        cv_score: None,
        params: BTreeMap::new(),
        lineage: Lineage {
            data_sha256: report.sha256,
            ..Default::default()
        },
        created_at: chrono::Utc::now(),
        reference_profile: mlops_domain::profile::profile(&data),
        prediction_profile: None,
        calibration: None,
        attribution_profile: None,
        feature_views: Vec::new(),
        files: BTreeMap::new(),
    };
    Bundle::new(
        manifest,
        BTreeMap::from([("model.json".into(), model.to_string().into_bytes())]),
    )
    .unwrap()
}

pub async fn publish(registry: &Registry, name: &str, slope: f64, alias: &str) -> u64 {
    publish_bundle(registry, name, &bundle(name, slope), alias).await
}

/// Registers `bundle` as `name`, approves its card and points `alias` at it.
pub async fn publish_bundle(registry: &Registry, name: &str, bundle: &Bundle, alias: &str) -> u64 {
    let v = registry
        .register(name, bundle, RegisterOptions::default())
        .await
        .unwrap()
        .version;
    registry.edit_card(name, v, reviewed_card()).await.unwrap();
    registry
        .approve_card(name, v, "tester", "ok")
        .await
        .unwrap();
    registry
        .promote(name, alias, v, "tester", "test")
        .await
        .unwrap();
    v
}

pub async fn register(registry: &Registry, name: &str, slope: f64) -> u64 {
    registry
        .register(name, &bundle(name, slope), RegisterOptions::default())
        .await
        .unwrap()
        .version
}

/// The card fields a reviewer must fill before approving.
pub fn reviewed_card() -> CardEdit {
    CardEdit {
        intended_use: Some("tests".into()),
        limitations: Some("synthetic".into()),
        ..CardEdit::default()
    }
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub registry: Registry,
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<AppState>,
}

pub async fn fixture(config: ServeConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
    let registry = Registry::new(Arc::clone(&store));
    publish(&registry, "california_housing", 0.1, "champion").await;
    publish(&registry, "telco_churn", 0.05, "champion").await;
    let state = AppState::start(registry.clone(), config, None).await;
    Fixture {
        _dir: dir,
        registry,
        store,
        state,
    }
}

pub fn config() -> ServeConfig {
    ServeConfig {
        refresh_every: Duration::from_secs(3600),
        prediction_log_flush: Duration::from_millis(50),
        ..ServeConfig::default()
    }
}

pub async fn call(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, value)
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub fn housing_record() -> Value {
    json!({
        "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0,
        "total_rooms": 880.0, "total_bedrooms": 129.0, "population": 322.0,
        "households": 126.0, "median_income": 8.3252, "ocean_proximity": "NEAR BAY"
    })
}
