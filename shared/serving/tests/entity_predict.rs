//! Predictions by entity key for a model trained from feature views: the features come from the
//! online store (here the embedded one on the registry's store), equal the predictions sent every
//! feature, and the prediction log keeps the values that were used.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{Request, StatusCode};
use mlops_domain::online::{OnlineRow, OnlineStore, ServingView, StoreOnline};
use mlops_domain::registry::Registry;
use mlops_serving::{AppState, RouteSet, router};
use serde_json::{Value, json};
use support::*;

const BILLING: [&str; 3] = ["tenure", "MonthlyCharges", "TotalCharges"];

fn profile() -> Value {
    json!({
        "customerID": "7590-VHVEG", "gender": "Female", "SeniorCitizen": 0, "Partner": "Yes",
        "Dependents": "No", "PhoneService": "No", "MultipleLines": "No phone service",
        "InternetService": "DSL", "OnlineSecurity": "No", "OnlineBackup": "Yes",
        "DeviceProtection": "No", "TechSupport": "No", "StreamingTV": "No",
        "StreamingMovies": "No", "Contract": "Month-to-month", "PaperlessBilling": "Yes",
        "PaymentMethod": "Electronic check"
    })
}

#[tokio::test]
async fn a_key_and_request_fields_predict_like_every_feature_and_the_log_keeps_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn mlops_domain::store::ObjectStore> =
        Arc::new(mlops_store::LocalStore::new(dir.path().join("store")));
    let registry = Registry::new(Arc::clone(&store));
    let mut b = bundle("telco_churn", 0.05);
    b.manifest.feature_views = vec![ServingView {
        name: "billing".into(),
        version: 1,
        join_keys: vec!["customerID".into()],
        features: BILLING.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: Some(86_400),
    }];
    let b = mlops_domain::artifact::Bundle::new(b.manifest, b.files).unwrap();
    publish_bundle(&registry, "telco_churn", &b, "champion").await;
    let values = BTreeMap::from([
        ("tenure".to_string(), json!(5)),
        ("MonthlyCharges".to_string(), json!(29.85)),
        ("TotalCharges".to_string(), json!(149.25)),
    ]);
    StoreOnline::new(Arc::clone(&store))
        .write(
            "billing",
            vec![OnlineRow {
                key: "7590-VHVEG".into(),
                event_time: chrono::Utc::now().timestamp_micros() - 3_600_000_000,
                values: values.clone(),
            }],
        )
        .await
        .unwrap();
    let state = AppState::start(registry, config(), None).await;
    let app = router(Arc::clone(&state), RouteSet::ALL);
    let path = "/v1/models/telco_churn/predict";

    let (status, _, by_key) = call(&app, post(path, profile().to_string())).await;
    assert_eq!(status, StatusCode::OK, "{by_key}");
    let mut full = profile();
    for (k, v) in &values {
        full[k] = v.clone();
    }
    let (status, _, by_features) = call(&app, post(path, full.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{by_features}");
    assert_eq!(
        by_key["predictions"][0]["prediction"],
        by_features["predictions"][0]["prediction"]
    );

    let mut unknown = profile();
    unknown["customerID"] = json!("0000-NOBODY");
    let (status, _, e) = call(&app, post(path, unknown.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["code"], "unknown_entity");
    assert_eq!(e["error"]["fields"][0]["field"], "customerID");

    // The logged record of the request by key holds the fetched values.
    state.predictions_log.as_ref().unwrap().flush().await;
    let request = Request::get("/v1/models/telco_churn/predictions?limit=10")
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, _, page) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let logged = page["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["request_id"] == by_key["request_id"])
        .unwrap_or_else(|| panic!("the request by key is logged: {page}"));
    for (k, v) in &values {
        assert_eq!(&logged["input"][k], v, "{logged}");
    }
}
