//! The serving router end to end in-process (tower `oneshot`), over a real registry on a local
//! store, with bundles built from the real data-set schemas and files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mlops_domain::apikeys::{ApiKeySet, KeyStore, Scope};
use mlops_domain::registry::{CardEdit, Registry};
use mlops_domain::schema::Schema;
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_serving::auth::{KeyCache, require_key};
use mlops_serving::{AppState, RouteSet, ServeConfig, router};
use mlops_store::{FileKeyStore, LocalStore};
use serde_json::{Value, json};
use tower::ServiceExt;

mod support;

use support::*;

#[tokio::test]
async fn predicts_single_and_batch_and_explains() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let (status, headers, body) = call(
        &app,
        post(
            "/v1/models/california_housing/predict",
            housing_record().to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model"], "california_housing");
    assert_eq!(body["version"], 1);
    assert_eq!(body["variant"], "champion");
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    // The same number the engine gives for the same record.
    let predictor =
        mlops_engine::Predictor::from_bundle(&bundle("california_housing", 0.1)).unwrap();
    let row = mlops_domain::data::record_from_json(
        &predictor_schema(),
        housing_record().as_object().unwrap(),
    )
    .unwrap();
    let expected = predictor.predict(&[row]).unwrap().0[0];
    assert_eq!(
        body["predictions"][0]["prediction"].as_f64().unwrap(),
        expected
    );

    let many = json!([housing_record(), housing_record(), housing_record()]);
    let (status, _, body) = call(
        &app,
        post(
            "/v1/models/california_housing/predict?explain=true",
            many.to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    let e = &predictions[0]["explanation"];
    let sum: f64 = e["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contribution"].as_f64().unwrap())
        .sum::<f64>()
        + e["bias"].as_f64().unwrap();
    assert!((sum - e["margin"].as_f64().unwrap()).abs() < 1e-9);

    // Classification: probabilities by class name and a label.
    let telco = json!({
        "customerID": "7590-VHVEG", "gender": "Female", "SeniorCitizen": 0, "Partner": "Yes",
        "Dependents": "No", "tenure": 1, "PhoneService": "No", "MultipleLines": "No phone service",
        "InternetService": "DSL", "OnlineSecurity": "No", "OnlineBackup": "Yes",
        "DeviceProtection": "No", "TechSupport": "No", "StreamingTV": "No", "StreamingMovies": "No",
        "Contract": "Month-to-month", "PaperlessBilling": "Yes",
        "PaymentMethod": "Electronic check", "MonthlyCharges": 29.85, "TotalCharges": null
    });
    let (status, _, body) = call(
        &app,
        post("/v1/models/telco_churn/predict", telco.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = &body["predictions"][0];
    let probs = p["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 2);
    let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-12);
    assert!(probs.contains_key("Yes") && probs.contains_key("No"));
    assert!(p["label"] == "Yes" || p["label"] == "No");

    // Every prediction is logged to the store.
    if let Some(log) = &f.state.predictions_log {
        log.flush().await;
        assert_eq!(log.written(), 5);
    }
    let logs = f
        .store
        .list("prediction-logs/model=california_housing/")
        .await
        .unwrap();
    assert!(!logs.is_empty());
    let body = f.store.get(&logs[0]).await.unwrap().unwrap().bytes;
    let text = String::from_utf8(mlops_domain::predlog::decode(&logs[0], body).unwrap()).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["version"], 1);
    assert_eq!(first["variant"], "champion");
    assert_eq!(first["record"], 1);
    assert_eq!(first["input"]["ocean_proximity"], "NEAR BAY");

    // Metrics count what happened.
    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("mlops_predictions_total{route=\"/v1/models/{name}/predict\",model=\"california_housing\",variant=\"champion\"} 4"), "{text}");
}

fn predictor_schema() -> Schema {
    Schema::from_file(&repo().join("data/california_housing.schema.toml")).unwrap()
}

/// At least 30 malformed requests: every one gets a 4xx JSON error naming the problem.
#[tokio::test]
async fn malformed_requests_get_a_4xx_naming_the_problem() {
    let f = fixture(ServeConfig {
        max_body_bytes: 1 << 20,
        ..config()
    })
    .await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let with = |field: &str, value: Value| {
        let mut r = housing_record();
        r[field] = value;
        r.to_string()
    };
    let without = |field: &str| {
        let mut r = housing_record();
        r.as_object_mut().unwrap().remove(field);
        r.to_string()
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let ten_mb = format!("[{}]", vec![housing_record().to_string(); 40_000].join(","));
    let too_many = json!(vec![housing_record(); 1_001]).to_string();
    let path = "/v1/models/california_housing/predict";
    let cases: Vec<(&str, Request<Body>, u16, &str)> = vec![
        ("empty body", post(path, ""), 400, "empty"),
        ("whitespace body", post(path, "  \n"), 400, "empty"),
        ("not JSON", post(path, "hello"), 400, "not valid JSON"),
        (
            "truncated JSON",
            post(path, "{\"longitude\": -122.2"),
            400,
            "not valid JSON",
        ),
        ("JSON null", post(path, "null"), 400, "got null"),
        ("JSON number", post(path, "42"), 400, "got a number"),
        ("JSON string", post(path, "\"x\""), 400, "got a string"),
        ("empty list", post(path, "[]"), 400, "empty"),
        (
            "list of numbers",
            post(path, "[1,2]"),
            400,
            "record 0 is a number",
        ),
        (
            "list with null",
            post(path, format!("[{},null]", housing_record())),
            400,
            "record 1 is null",
        ),
        ("empty object", post(path, "{}"), 400, "is required"),
        (
            "missing field",
            post(path, without("median_income")),
            400,
            "median_income",
        ),
        (
            "unknown field",
            post(path, with("colour", json!("red"))),
            400,
            "colour",
        ),
        (
            "string for number",
            post(path, with("median_income", json!("8.3"))),
            400,
            "expected a number",
        ),
        (
            "NaN string",
            post(path, with("median_income", json!("NaN"))),
            400,
            "median_income",
        ),
        (
            "Infinity string",
            post(path, with("latitude", json!("Infinity"))),
            400,
            "latitude",
        ),
        (
            "-Infinity string",
            post(path, with("latitude", json!("-Infinity"))),
            400,
            "latitude",
        ),
        (
            "bare NaN token",
            post(path, housing_record().to_string().replace("8.3252", "NaN")),
            400,
            "not valid JSON",
        ),
        (
            "bare Infinity token",
            post(
                path,
                housing_record().to_string().replace("8.3252", "Infinity"),
            ),
            400,
            "not valid JSON",
        ),
        (
            "huge number 1e400",
            post(
                path,
                housing_record().to_string().replace("8.3252", "1e400"),
            ),
            400,
            "not valid JSON",
        ),
        (
            "out of range latitude",
            post(path, with("latitude", json!(1.0e12))),
            400,
            "latitude",
        ),
        (
            "negative rooms",
            post(path, with("total_rooms", json!(-5.0))),
            400,
            "total_rooms",
        ),
        (
            "boolean for number",
            post(path, with("households", json!(true))),
            400,
            "households",
        ),
        (
            "object for number",
            post(path, with("households", json!({"v": 1}))),
            400,
            "households",
        ),
        (
            "list for number",
            post(path, with("households", json!([1]))),
            400,
            "households",
        ),
        (
            "null for required",
            post(path, with("median_income", Value::Null)),
            400,
            "median_income",
        ),
        (
            "unknown category",
            post(path, with("ocean_proximity", json!("ON MARS"))),
            400,
            "unknown category",
        ),
        (
            "number for category",
            post(path, with("ocean_proximity", json!(3))),
            400,
            "ocean_proximity",
        ),
        ("deep nesting", post(path, deep), 400, "not valid JSON"),
        ("1,001 records", post(path, too_many), 400, "limit of 1000"),
        ("10 MB body", post(path, ten_mb), 413, "over the limit"),
        (
            "text/plain",
            Request::post(path)
                .header("content-type", "text/plain")
                .body(Body::from(housing_record().to_string()))
                .unwrap(),
            415,
            "application/json",
        ),
        (
            "no content type",
            Request::post(path)
                .body(Body::from(housing_record().to_string()))
                .unwrap(),
            415,
            "application/json",
        ),
        (
            "form content type",
            Request::post(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("a=1"))
                .unwrap(),
            415,
            "application/json",
        ),
        (
            "bad explain flag",
            post(
                &format!("{path}?explain=maybe"),
                housing_record().to_string(),
            ),
            400,
            "explain",
        ),
        (
            "unknown model",
            post("/v1/models/nope/predict", housing_record().to_string()),
            404,
            "nope",
        ),
        (
            "unknown route",
            Request::get("/v2/whatever").body(Body::empty()).unwrap(),
            404,
            "no such route",
        ),
        (
            "GET on predict",
            Request::get(path).body(Body::empty()).unwrap(),
            405,
            "method not allowed",
        ),
        (
            "invalid UTF-8",
            post(path, vec![0xff, 0xfe, 0x7b]),
            400,
            "not valid JSON",
        ),
        (
            "bad traffic split",
            Request::put("/v1/models/california_housing/traffic")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"weights":{}}"#))
                .unwrap(),
            400,
            "variants",
        ),
        (
            "traffic to unknown alias",
            Request::put("/v1/models/california_housing/traffic")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"weights":{"ghost":100}}"#))
                .unwrap(),
            404,
            "ghost",
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, request, want, needle) in cases {
        let (status, headers, body) = call(&app, request).await;
        assert_eq!(status.as_u16(), want, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let fields = body["error"]["fields"].to_string();
        assert!(
            message.contains(needle) || fields.contains(needle),
            "{what}: '{needle}' not in {body}"
        );
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap(),
            "{what}"
        );
    }
    // All field problems of a record are listed, with the record's 1-based number (as `row` in
    // predictions, `mlops predict` and batch prediction count).
    let bad = json!([housing_record(), {"longitude": "x", "latitude": true}]);
    let (status, _, body) = call(&app, post(path, bad.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields = body["error"]["fields"].as_array().unwrap();
    assert!(fields.len() >= 8, "{body}");
    assert!(fields.iter().all(|f| f["record"] == 2));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first in record 2"),
        "{body}"
    );
    let (_, _, ok) = call(
        &app,
        post(
            path,
            json!([housing_record(), housing_record()]).to_string(),
        ),
    )
    .await;
    assert_eq!(
        (
            ok["predictions"][0]["row"].as_u64(),
            ok["predictions"][1]["row"].as_u64()
        ),
        (Some(1), Some(2))
    );
}

#[tokio::test]
async fn info_health_and_openapi() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let (status, _, info) = call(
        &app,
        Request::get("/v1/models/california_housing")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["aliases"]["champion"], 1);
    assert_eq!(info["versions"].as_array().unwrap().len(), 1);
    assert_eq!(info["served"][0]["model_kind"], "linear");
    assert!(info["card"]["approval"].is_object());
    assert!(info["input_schema"]["columns"].as_array().unwrap().len() >= 9);
    let (status, _, list) = call(
        &app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["models"], json!(["california_housing", "telco_churn"]));
    let (status, _, live) = call(
        &app,
        Request::get("/health/live").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, live["status"].as_str()),
        (StatusCode::OK, Some("live"))
    );
    let (status, _, ready) = call(
        &app,
        Request::get("/health/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let (status, _, doc) = call(
        &app,
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // One predict path per served model, with that model's record schema.
    let predict = &doc["paths"]["/v1/models/california_housing/predict"]["post"];
    let record = &predict["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0];
    assert_eq!(record["additionalProperties"], false, "{record}");
    assert!(
        record["properties"]["ocean_proximity"]["enum"]
            .as_array()
            .unwrap()
            .len()
            == 5
    );
    assert!(doc["paths"]["/v1/models/telco_churn/predict"]["post"].is_object());
    assert!(doc["paths"].get("/v1/models/{name}/predict").is_none());
    assert_eq!(
        doc["paths"]["/v1/models/{name}"]["get"]["parameters"][0]["schema"]["enum"],
        json!(["california_housing", "telco_churn"])
    );

    // An empty registry: live, not ready.
    let dir = tempfile::tempdir().unwrap();
    let empty = Registry::new(Arc::new(LocalStore::new(dir.path())));
    let state = AppState::start(empty, config(), None).await;
    let app = router(state, RouteSet::ALL);
    let (status, _, ready) = call(
        &app,
        Request::get("/health/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
    );
    let (status, _, body) = call(
        &app,
        post(
            "/v1/models/california_housing/predict",
            housing_record().to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn swaps_versions_keeps_last_good_model_and_splits_traffic() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let path = "/v1/models/california_housing/predict";
    let v2 = publish(&f.registry, "california_housing", 0.2, "champion").await;
    assert!(f.state.models.refresh().await.is_empty());
    let (_, _, body) = call(&app, post(path, housing_record().to_string())).await;
    assert_eq!(body["version"], v2);

    // A corrupt alias record: the refresh fails, the last good model keeps serving, health says so.
    f.store
        .put(
            "models/california_housing/aliases.json",
            b"{broken".to_vec(),
            PutCondition::None,
        )
        .await
        .unwrap();
    assert!(!f.state.models.refresh().await.is_empty());
    let (status, _, body) = call(&app, post(path, housing_record().to_string())).await;
    assert_eq!(
        (status, body["version"].as_u64()),
        (StatusCode::OK, Some(v2))
    );
    let (status, _, ready) = call(
        &app,
        Request::get("/health/ready").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "degraded");
    assert!(
        ready["error"].as_str().unwrap().contains("aliases.json"),
        "{ready}"
    );
    // A request that needs the broken record gets 503 without the store's own words.
    let put = Request::put("/v1/models/california_housing/traffic")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"weights":{"champion":100}}"#))
        .unwrap();
    let (status, _, e) = call(&app, put).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["error"]["code"], "registry_unavailable");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("aliases.json") && !message.contains(&*f._dir.path().to_string_lossy()),
        "{message}"
    );

    // Repaired: v2 champion, v3 challenger, 50/50 split by routing key, sticky.
    let fresh = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(fresh.path()));
    let registry = Registry::new(store);
    publish(&registry, "california_housing", 0.1, "champion").await;
    publish(&registry, "california_housing", 0.3, "challenger").await;
    let state = AppState::start(registry, config(), None).await;
    let app = router(Arc::clone(&state), RouteSet::ALL);
    let put = Request::put("/v1/models/california_housing/traffic")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"weights":{"champion":50,"challenger":50.0}}"#,
        ))
        .unwrap();
    let (status, _, split) = call(&app, put).await;
    assert_eq!(status, StatusCode::OK, "{split}");
    assert_eq!(split["revision"], 1);
    let mut seen = BTreeMap::new();
    for user in 0..200 {
        let key = format!("user-{user}");
        let mut variants = Vec::new();
        for _ in 0..2 {
            let request = Request::post(path)
                .header("content-type", "application/json")
                .header("x-routing-key", &key)
                .body(Body::from(housing_record().to_string()))
                .unwrap();
            let (_, headers, body) = call(&app, request).await;
            assert_eq!(
                headers["x-model-variant"],
                body["variant"].as_str().unwrap()
            );
            variants.push((
                body["variant"].as_str().unwrap().to_owned(),
                body["version"].as_u64().unwrap(),
            ));
        }
        assert_eq!(variants[0], variants[1], "sticky for {key}");
        *seen.entry(variants[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|&n| n > 60), "{seen:?}");
    assert!(
        seen.get(&("challenger".to_string(), 2))
            .copied()
            .unwrap_or(0)
            > 0
    );
    assert_eq!(split["weights"], json!({"champion": 50, "challenger": 50}));

    // Weights are percentages: a split that does not add up to 100 is refused.
    let put = |body: &'static str| {
        Request::put("/v1/models/california_housing/traffic")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let (status, _, e) = call(&app, put(r#"{"weights":{"champion":80,"challenger":30}}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert!(e.to_string().contains("add up to 110"), "{e}");

    // An unapproved version can neither join a split nor be moved under an alias that has
    // traffic.
    let v3 = register(&state.models.registry().clone(), "california_housing", 0.5).await;
    let registry = state.models.registry().clone();
    let e = registry
        .promote("california_housing", "challenger", v3, "tester", "t")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not approved"), "{e}");
    registry
        .promote("california_housing", "candidate", v3, "tester", "t")
        .await
        .unwrap();
    let (status, _, e) = call(&app, put(r#"{"weights":{"champion":90,"candidate":10}}"#)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(e.to_string().contains("candidate"), "{e}");

    // A card edited after the split was set loses its approval: its arm gets no more traffic.
    registry
        .edit_card(
            "california_housing",
            2,
            CardEdit {
                limitations: Some("found a leak".into()),
                ..CardEdit::default()
            },
        )
        .await
        .unwrap();
    state.models.refresh().await;
    for user in 0..200 {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .header("x-routing-key", format!("user-{user}"))
            .body(Body::from(housing_record().to_string()))
            .unwrap();
        let (_, _, body) = call(&app, request).await;
        assert_eq!(body["variant"], "champion", "{body}");
    }
}

#[tokio::test]
async fn api_keys_401_403_and_scopes() {
    let f = fixture(config()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyStore::new(&dir.path().join("api-keys.json"));
    let mut set = ApiKeySet::default();
    let predict = set.create("app", &[Scope::Predict]).unwrap();
    let admin = set.create("ops", &[Scope::Admin]).unwrap();
    let revoked = set.create("old", &[Scope::Admin]).unwrap();
    let revoked_id = set.keys[2].id.clone();
    set.revoke(&revoked_id).unwrap();
    keys.save(&set).await.unwrap();
    let cache = Arc::new(KeyCache::new(Arc::new(keys), Duration::from_secs(60)));
    let app = router(Arc::clone(&f.state), RouteSet::ALL)
        .layer(axum::middleware::from_fn_with_state(cache, require_key));
    let request = |key: Option<&str>, method: &str, path: &str| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        let body = if method == "PUT" {
            r#"{"weights":{"champion":100}}"#.to_string()
        } else {
            housing_record().to_string()
        };
        r.body(Body::from(body)).unwrap()
    };
    let predict_path = "/v1/models/california_housing/predict";
    let traffic = "/v1/models/california_housing/traffic";
    let cases = [
        (None, "POST", predict_path, 401),
        (Some("mlk_000000000000_nope"), "POST", predict_path, 403),
        (Some(revoked.as_str()), "POST", predict_path, 403),
        (Some(predict.as_str()), "POST", predict_path, 200),
        (Some(predict.as_str()), "PUT", traffic, 403),
        (Some(predict.as_str()), "GET", "/metrics", 403),
        (Some(admin.as_str()), "PUT", traffic, 200),
        (Some(admin.as_str()), "POST", predict_path, 200),
    ];
    for (key, method, path, want) in cases {
        let (status, _, body) = call(&app, request(key, method, path)).await;
        assert_eq!(
            status.as_u16(),
            want,
            "{method} {path} with {:?}: {body}",
            key.map(|k| &k[..8])
        );
        if want >= 400 {
            let message = body["error"]["message"].as_str().unwrap();
            if let Some(k) = key {
                assert!(!message.contains(k), "a key must never be echoed");
            }
        }
    }
    // Model info: a predict key gets the public view (no bundle prefixes, data paths or tracking
    // locations); an admin key the whole records.
    let info = "/v1/models/california_housing";
    let (_, _, public) = call(&app, request(Some(predict.as_str()), "GET", info)).await;
    let (_, _, full) = call(&app, request(Some(admin.as_str()), "GET", info)).await;
    let versions = |v: &Value| v["versions"].as_array().unwrap().clone();
    assert!(!versions(&public).is_empty());
    for v in versions(&public) {
        assert_eq!(v["bundle_prefix"], "", "{v}");
        assert!(v["lineage"].get("tracking_uri").is_none(), "{v}");
    }
    for v in versions(&full) {
        assert!(
            v["bundle_prefix"].as_str().unwrap().starts_with("models/"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn health_probes_need_no_key_and_learn_only_the_status() {
    let f = fixture(config()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyStore::new(&dir.path().join("api-keys.json"));
    let mut set = ApiKeySet::default();
    let admin = set.create("ops", &[Scope::Admin]).unwrap();
    keys.save(&set).await.unwrap();
    let cache = Arc::new(KeyCache::new(Arc::new(keys), Duration::from_secs(60)));
    let app = router(Arc::clone(&f.state), RouteSet::ALL)
        .layer(axum::middleware::from_fn_with_state(cache, require_key));
    let get = |path: &str, key: Option<&str>| {
        let mut r = Request::get(path);
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.body(Body::empty()).unwrap()
    };
    let (status, _, _) = call(&app, get("/health/live", None)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&app, get("/health/ready", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    assert_eq!(body["models"], json!([]), "{body}");
    let (_, _, body) = call(&app, get("/health/ready", Some(&admin))).await;
    assert_eq!(body["models"].as_array().unwrap().len(), 2, "{body}");
    // Everything else still needs a key.
    for path in ["/v1/models", "/metrics", "/v1/models/california_housing"] {
        let (status, _, _) = call(&app, get(path, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // The API's contract is public, without the served models; with a key it names them.
    let (status, _, doc) = call(&app, get("/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["paths"].get("/v1/models/{name}/predict").is_some(),
        "{doc}"
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(
        !paths.keys().any(|p| p.contains("california_housing")),
        "{doc}"
    );
    let (_, _, doc) = call(&app, get("/openapi.json", Some(&admin))).await;
    assert!(
        doc["paths"]
            .get("/v1/models/california_housing/predict")
            .is_some()
    );
    // The explorer page: embedded, no inline script, a strict CSP.
    for (path, kind) in [
        ("/docs", "text/html"),
        ("/docs/explorer.js", "text/javascript"),
        ("/docs/explorer.css", "text/css"),
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let (status, headers, _) = call(&app, get(path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
    }
}

/// The console's first page loads small, keyless and script-safe: no inline script or handler
/// attribute in its HTML, nothing from another origin, and under 150 KB with its assets.
#[tokio::test]
async fn the_console_is_small_and_has_no_inline_script() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let mut total = 0;
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        let response = app
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        total += body.len();
        let text = String::from_utf8(body.to_vec()).unwrap();
        if path == "/console" {
            for script in text.split("<script").skip(1) {
                let tag = &script[..script.find('>').unwrap()];
                assert!(
                    tag.contains("src=\"/console/"),
                    "an inline script: <script{tag}>"
                );
                assert!(script[script.find('>').unwrap() + 1..].starts_with("</script>"));
            }
            for tag in text.split('<').skip(1).map(|s| &s[..s.find('>').unwrap()]) {
                let handler = tag
                    .split_whitespace()
                    .skip(1)
                    .any(|attribute| attribute.starts_with("on") && attribute.contains('='));
                assert!(!handler, "an inline event handler: <{tag}>");
            }
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "another origin"
            );
        }
        if path == "/console/app.js" {
            assert!(
                !text.contains("innerHTML"),
                "the console never parses API text as HTML"
            );
        }
    }
    assert!(total < 150_000, "{total} bytes");
}

#[tokio::test]
async fn explanations_have_their_own_record_cap() {
    let f = fixture(ServeConfig {
        max_explain_records: 3,
        ..config()
    })
    .await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let path = "/v1/models/california_housing/predict?explain=true";
    let records = |n: usize| json!(vec![housing_record(); n]).to_string();
    let (status, _, _) = call(&app, post(path, records(3))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&app, post(path, records(4))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"]["code"], "too_many_records_to_explain",
        "{body}"
    );
    // Without explanations the general limit applies.
    let (status, _, _) = call(
        &app,
        post("/v1/models/california_housing/predict", records(4)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// The predict function's cold start: ready once the model is loaded, the registry view (version
/// list, card) read right after in the background, without a request asking for it.
#[tokio::test]
async fn with_the_view_after_ready_model_info_fills_in_after_start() {
    let f = fixture(ServeConfig {
        view_after_ready: true,
        ..config()
    })
    .await;
    assert!(f.state.models.is_ready());
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let info = || async {
        let request = Request::get("/v1/models/california_housing")
            .body(Body::empty())
            .unwrap();
        call(&app, request).await.2
    };
    let first = info().await;
    assert_eq!(first["aliases"]["champion"], 1, "{first}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = info().await;
        if now["versions"].as_array().is_some_and(|v| v.len() == 1)
            && now["card"]["approval"].is_object()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "view never filled: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn model_info_is_answered_without_reading_the_registry() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let (_, _, before) = call(
        &app,
        Request::get("/v1/models/california_housing")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    // The registry disappears: model info is still answered, the same, from memory.
    std::fs::remove_dir_all(f._dir.path().join("store")).unwrap();
    let (status, _, after) = call(
        &app,
        Request::get("/v1/models/california_housing")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(before, after);
    assert_eq!(after["versions"].as_array().unwrap().len(), 1);
    assert!(after["card"]["approval"].is_object(), "{after}");
}

/// A key store that takes `delay` to answer (a Secrets Manager that hangs).
struct SlowKeys {
    inner: FileKeyStore,
    delay: std::sync::Mutex<Duration>,
}

#[async_trait::async_trait]
impl KeyStore for SlowKeys {
    async fn load(&self) -> Result<ApiKeySet, mlops_domain::apikeys::KeyError> {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.inner.load().await
    }
    async fn save(&self, keys: &ApiKeySet) -> Result<(), mlops_domain::apikeys::KeyError> {
        self.inner.save(keys).await
    }
    fn describe(&self) -> String {
        "slow keys".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_key_store_never_holds_requests() {
    let dir = tempfile::tempdir().unwrap();
    let inner = FileKeyStore::new(&dir.path().join("api-keys.json"));
    let mut set = ApiKeySet::default();
    let key = set.create("app", &[Scope::Predict]).unwrap();
    inner.save(&set).await.unwrap();
    let slow = Arc::new(SlowKeys {
        inner,
        delay: std::sync::Mutex::new(Duration::ZERO),
    });
    let cache = Arc::new(KeyCache::new(slow.clone(), Duration::from_millis(50)));
    let path = "/v1/models/m/predict";
    cache.authorize(Some(&key), "POST", path).await.unwrap();
    // The store now hangs for 30 s; the set goes stale.
    *slow.delay.lock().unwrap() = Duration::from_secs(30);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (cache, key) = (Arc::clone(&cache), key.clone());
            tokio::spawn(async move { cache.authorize(Some(&key), "POST", path).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // One caller waits for the reload's 2 s deadline; the others use the cached set at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Model work runs on the blocking pool under a deadline: past `request_timeout` the caller
/// gets 503 `request_timeout` with `Retry-After`, and liveness still answers.
#[tokio::test]
async fn a_request_past_its_deadline_gets_503_and_liveness_answers() {
    let f = fixture(ServeConfig {
        request_timeout: Duration::ZERO,
        model_concurrency: 1,
        ..config()
    })
    .await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let path = "/v1/models/california_housing/predict";
    let records = json!(vec![housing_record(); 500]).to_string();
    // The model pool is busy (its one permit held here), so the request cannot finish before
    // its deadline, however fast the machine is.
    let busy = Arc::clone(&f.state.model_work)
        .acquire_owned()
        .await
        .unwrap();
    let (status, headers, body) = call(&app, post(path, records)).await;
    drop(busy);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout");
    assert_eq!(headers["retry-after"], "1");
    let live = Request::get("/health/live").body(Body::empty()).unwrap();
    let (status, _, _) = call(&app, live).await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn the_key_cache_ttl_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(FileKeyStore::new(&dir.path().join("api-keys.json")));
    let cache = KeyCache::new(keys, Duration::from_secs(24 * 3600));
    assert_eq!(cache.ttl(), mlops_serving::auth::MAX_TTL);
}

/// A browser's CORS preflight carries no key: it is answered (for an allowed origin) before
/// the key check, which then applies to the real request.
#[tokio::test]
async fn cors_preflight_is_answered_before_the_key_check() {
    let f = fixture(ServeConfig {
        cors_allow_origins: vec!["https://app.example".into()],
        ..config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyStore::new(&dir.path().join("api-keys.json"));
    let mut set = ApiKeySet::default();
    set.create("app", &[Scope::Predict]).unwrap();
    keys.save(&set).await.unwrap();
    let cache = Arc::new(KeyCache::new(Arc::new(keys), Duration::from_secs(60)));
    let app = mlops_serving::router_with_keys(Arc::clone(&f.state), RouteSet::ALL, Some(cache));
    let preflight = Request::options("/v1/models/california_housing/predict")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-api-key")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = call(&app, preflight).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (status, _, _) = call(
        &app,
        post(
            "/v1/models/california_housing/predict",
            housing_record().to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn feedback_is_validated_like_predict_and_stored_for_the_monitor() {
    let f = fixture(config()).await;
    let app = router(Arc::clone(&f.state), RouteSet::ALL);
    let path = "/v1/models/telco_churn/feedback";
    let (status, headers, body) = call(
        &app,
        post(
            path,
            json!([
                {"request_id": "req-1", "actual": "Yes"},
                {"request_id": "req-1", "record": 2, "actual": false, "observed_at": "2026-12-01T07:00:00Z"}
            ])
            .to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    let keys = f.store.list("feedback/model=telco_churn/").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        mlops_domain::predlog::partition_hour(&keys[0]).is_some(),
        "{}",
        keys[0]
    );
    let object = f.store.get(&keys[0]).await.unwrap().unwrap();
    let schema = f
        .registry
        .load_bundle(&f.registry.version("telco_churn", 1).await.unwrap())
        .await
        .unwrap()
        .manifest
        .schema;
    let (labels, unreadable) =
        mlops_domain::feedback::read_object(&schema, &keys[0], object.bytes, chrono::Utc::now())
            .unwrap();
    assert_eq!(unreadable, 0);
    assert_eq!(
        labels
            .iter()
            .map(|l| (l.request_id.as_str(), l.record, l.actual))
            .collect::<Vec<_>>(),
        [("req-1", 1, 1.0), ("req-1", 2, 0.0)]
    );

    // Every field problem is named with its item, and nothing is stored.
    let (status, _, body) = call(
        &app,
        post(
            path,
            json!([{"request_id": "ok", "actual": 1}, {"actual": "Maybe", "record": 0}])
                .to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_fields");
    let fields: Vec<(u64, &str)> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["record"].as_u64().unwrap(), p["field"].as_str().unwrap()))
        .collect();
    assert_eq!(fields, [(2, "request_id"), (2, "record"), (2, "actual")]);
    let (status, _, _) = call(
        &app,
        post(
            "/v1/models/nope/feedback",
            json!({"request_id": "r", "actual": 1}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let regression = post(
        "/v1/models/california_housing/feedback",
        json!({"request_id": "r", "actual": "high"}).to_string(),
    );
    let (status, _, body) = call(&app, regression).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be a number"),
        "{body}"
    );
    assert_eq!(f.store.list("feedback/").await.unwrap().len(), 1);
}
