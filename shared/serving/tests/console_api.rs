//! The routes behind the console's pages, in-process over a real registry on a local store:
//! prediction history and its export, registry changes and their audit entries, monitor reports,
//! training runs, recent batch jobs. With API keys on, as `mlops serve` runs them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mlops_domain::apikeys::{ApiKeySet, KeyStore, Scope};
use mlops_domain::store::PutCondition;
use mlops_domain::tracking::Tracker;
use mlops_serving::auth::{KeyCache, require_key};
use mlops_serving::{AppState, Backends, RouteSet, ServeConfig, router};
use mlops_store::FileKeyStore;
use mlops_tracking::LocalRunLog;
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

/// The router with keys on: an admin key named `console`, and a predict key.
struct Keyed {
    app: axum::Router,
    admin: String,
    predict: String,
    _keys: tempfile::TempDir,
}

async fn keyed(state: Arc<AppState>) -> Keyed {
    let dir = tempfile::tempdir().unwrap();
    let keys = FileKeyStore::new(&dir.path().join("api-keys.json"));
    let mut set = ApiKeySet::default();
    let admin = set.create("console", &[Scope::Admin]).unwrap();
    let predict = set.create("app", &[Scope::Predict]).unwrap();
    keys.save(&set).await.unwrap();
    let cache = Arc::new(KeyCache::new(Arc::new(keys), Duration::from_secs(60)));
    let app = router(state, RouteSet::ALL)
        .layer(axum::middleware::from_fn_with_state(cache, require_key));
    Keyed {
        app,
        admin,
        predict,
        _keys: dir,
    }
}

fn request(key: &str, method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

async fn text(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// 30 housing predictions in 3 requests (median_income 1.0 … 10.0), logged and flushed, and a
/// label for the third record of the second request; the request ids in order.
async fn logged(f: &Fixture, k: &Keyed) -> Vec<String> {
    let mut ids = Vec::new();
    for r in 0..3 {
        let records: Vec<Value> = (0..10)
            .map(|i| {
                let mut record = housing_record();
                record["median_income"] = json!(1.0 + f64::from(r * 10 + i) * 0.3);
                record
            })
            .collect();
        let path = "/v1/models/california_housing/predict";
        let (status, _, body) = call(
            &k.app,
            request(&k.predict, "POST", path, Some(json!(records))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["request_id"].as_str().unwrap().to_string());
        // One object per request, so pages cross objects.
        f.state.predictions_log.as_ref().unwrap().flush().await;
    }
    let label = json!({"request_id": ids[1], "record": 3, "actual": 4.25});
    let (status, _, body) = call(
        &k.app,
        request(
            &k.predict,
            "POST",
            "/v1/models/california_housing/feedback",
            Some(label),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    ids
}

#[tokio::test]
async fn history_pages_and_exports_hold_the_same_rows_with_labels() {
    let f = fixture(config()).await;
    let k = keyed(Arc::clone(&f.state)).await;
    let ids = logged(&f, &k).await;
    let base = "/v1/models/california_housing/predictions";

    // Pages of 7, newest first, across the three log objects.
    let mut paged: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("{base}?limit=7");
        if let Some(c) = &cursor {
            path += &format!("&cursor={}", urlencode(c));
        }
        let (status, _, page) = call(&k.app, request(&k.admin, "GET", &path, None)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        paged.extend(page["predictions"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paged.len(), 30);
    let order: Vec<(String, u64)> = paged
        .iter()
        .map(|p| {
            (
                p["request_id"].as_str().unwrap().to_string(),
                p["record"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = ids
        .iter()
        .rev()
        .flat_map(|id| (1..=10).rev().map(move |r| (id.clone(), r)))
        .collect();
    assert_eq!(order, expected, "newest request first, last record first");
    let labelled: Vec<&Value> = paged.iter().filter(|p| p.get("actual").is_some()).collect();
    assert_eq!(labelled.len(), 1);
    assert_eq!(
        (
            labelled[0]["request_id"].as_str(),
            labelled[0]["actual"].as_f64()
        ),
        (Some(ids[1].as_str()), Some(4.25))
    );

    // The JSON-lines export is the pages' rows; the CSV export holds the same values.
    let (status, jsonl) = text(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("{base}/export?format=jsonl"),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let exported: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported, paged);
    let (status, csv_text) = text(
        &k.app,
        request(&k.admin, "GET", &format!("{base}/export"), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(
        &headers.iter().take(9).collect::<Vec<_>>(),
        &[
            "at",
            "request_id",
            "record",
            "model",
            "version",
            "variant",
            "output",
            "latency_us",
            "actual"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 30);
    for (row, api) in rows.iter().zip(&paged) {
        let cell = |name: &str| {
            row.get(headers.iter().position(|h| h == name).unwrap())
                .unwrap()
        };
        assert_eq!(cell("request_id"), api["request_id"]);
        assert_eq!(
            cell("output").parse::<f64>().unwrap(),
            api["output"].as_f64().unwrap()
        );
        assert_eq!(
            cell("median_income").parse::<f64>().unwrap(),
            api["input"]["median_income"].as_f64().unwrap()
        );
        assert_eq!(cell("ocean_proximity"), "NEAR BAY");
        assert_eq!(
            cell("actual"),
            api.get("actual").map_or(String::new(), Value::to_string)
        );
    }

    // A field range, the same on both routes.
    let filter = "field=median_income&min=2&max=4";
    let (_, _, page) = call(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("{base}?{filter}&limit=1000"),
            None,
        ),
    )
    .await;
    let selected = page["predictions"].as_array().unwrap();
    assert_eq!(selected.len(), 7, "1.0 + 0.3 n within [2, 4]: n = 4 ..= 10");
    let (_, jsonl) = text(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("{base}/export?format=jsonl&{filter}"),
            None,
        ),
    )
    .await;
    assert_eq!(jsonl.lines().count(), 7);

    // The logs hold callers' inputs: admin scope only. Bad parameters are named.
    let (status, _, _) = call(&k.app, request(&k.predict, "GET", base, None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for (query, named) in [
        ("since=yesterday", "since"),
        ("from=soon", "from"),
        ("cursor=api-keys.json~0", "cursor"),
        ("limit=5000", "limit"),
    ] {
        let (status, _, body) = call(
            &k.app,
            request(&k.admin, "GET", &format!("{base}?{query}"), None),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("parameter {named}")),
            "{body}"
        );
    }
    let (status, _, _) = call(
        &k.app,
        request(&k.admin, "GET", "/v1/models/nope/predictions", None),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Inside Lambda the response is buffered: an export over the bound is refused with 413 and a
/// way forward, one under it is answered whole.
#[tokio::test]
async fn a_buffered_export_over_its_bound_is_refused_by_name() {
    let f = fixture(ServeConfig {
        export_max_bytes: Some(4_000),
        ..config()
    })
    .await;
    let k = keyed(Arc::clone(&f.state)).await;
    logged(&f, &k).await;
    let base = "/v1/models/california_housing/predictions/export";
    let (status, body) = text(&k.app, request(&k.admin, "GET", base, None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("Athena"), "{body}");
    let (status, csv_text) = text(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("{base}?field=median_income&max=2"),
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        csv_text.lines().count(),
        1 + 4,
        "a header and 1.0, 1.3, 1.6, 1.9"
    );
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn registry_changes_are_audited_under_the_key_name_and_retries_change_nothing_twice() {
    let f = fixture(config()).await;
    let k = keyed(Arc::clone(&f.state)).await;
    let v2 = register(&f.registry, "california_housing", 0.2).await;
    let model = "/v1/models/california_housing";
    let promote = |version: u64| {
        request(
            &k.admin,
            "POST",
            &format!("{model}/aliases/champion"),
            Some(json!({"version": version, "reason": "better"})),
        )
    };

    // champion needs an approved card; approval needs the reviewer's fields.
    let (status, _, body) = call(&k.app, promote(v2)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let approve = request(
        &k.admin,
        "POST",
        &format!("{model}/versions/{v2}/approve"),
        Some(json!({"note": "looked at it"})),
    );
    let (status, _, body) = call(&k.app, approve).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("intended_use"),
        "{body}"
    );
    f.registry
        .edit_card("california_housing", v2, reviewed_card())
        .await
        .unwrap();
    let approve = request(
        &k.admin,
        "POST",
        &format!("{model}/versions/{v2}/approve"),
        Some(json!({"note": "looked at it"})),
    );
    let (status, _, card) = call(&k.app, approve).await;
    assert_eq!(status, StatusCode::OK, "{card}");
    assert!(
        card["approval"]["approved_by"]
            .as_str()
            .unwrap()
            .starts_with("console (key ")
    );

    // Promote: served at once, audited under the key's name.
    let (status, _, event) = call(&k.app, promote(v2)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(
        (event["from"].as_u64(), event["to"].as_u64()),
        (Some(1), Some(v2))
    );
    let (_, _, info) = call(&k.app, request(&k.predict, "GET", model, None)).await;
    assert_eq!(info["aliases"]["champion"], v2);

    // Rollback with a request id: the retry returns the same entry and rolls back once.
    let rollback = || {
        request(
            &k.admin,
            "POST",
            &format!("{model}/aliases/champion/rollback"),
            Some(json!({"reason": "alarm", "request_id": "incident-7"})),
        )
    };
    let (status, _, first) = call(&k.app, rollback()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, _, again) = call(&k.app, rollback()).await;
    assert_eq!(first, again);
    assert_eq!(first["to"], 1);
    let (status, _, audit) = call(
        &k.app,
        request(&k.admin, "GET", &format!("{model}/audit"), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let history = audit["history"].as_array().unwrap();
    let last: Vec<(&str, &str, &str)> = history[history.len() - 2..]
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(last[0].0, "promote");
    assert_eq!((last[1].0, last[1].1), ("rollback", "alarm"));
    assert!(
        last.iter().all(|e| e.2.starts_with("console (key ")),
        "{last:?}"
    );
    assert_eq!(audit["aliases"]["champion"], 1);

    // Admin scope; a reason is required; unknown versions are 404.
    let as_app = request(
        &k.predict,
        "POST",
        &format!("{model}/aliases/champion"),
        Some(json!({"version": 1, "reason": "x"})),
    );
    assert_eq!(call(&k.app, as_app).await.0, StatusCode::FORBIDDEN);
    let silent = request(
        &k.admin,
        "POST",
        &format!("{model}/aliases/staging"),
        Some(json!({"version": 1, "reason": " "})),
    );
    assert_eq!(call(&k.app, silent).await.0, StatusCode::BAD_REQUEST);
    let missing = request(
        &k.admin,
        "POST",
        &format!("{model}/aliases/staging"),
        Some(json!({"version": 99, "reason": "x"})),
    );
    assert_eq!(call(&k.app, missing).await.0, StatusCode::NOT_FOUND);
    let (status, _, card) = call(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("{model}/versions/{v2}/card"),
            None,
        ),
    )
    .await;
    assert_eq!(
        (status, card["intended_use"].as_str()),
        (StatusCode::OK, Some("tests"))
    );
}

#[tokio::test]
async fn monitoring_answers_the_newest_report_and_a_series_without_histograms() {
    let f = fixture(config()).await;
    let k = keyed(Arc::clone(&f.state)).await;
    let path = "/v1/models/california_housing/monitoring";
    let (status, _, body) = call(&k.app, request(&k.admin, "GET", path, None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"latest": null, "series": []}));
    for (hour, drifted) in [(10, false), (11, true)] {
        let report = json!({"model": "california_housing", "from": format!("2026-12-01T{hour}:00:00Z"),
            "until": format!("2026-12-01T{}:00:00Z", hour + 1), "records": 100 + hour, "labelled": 0, "alerts": [],
            "versions": [{"version": 1, "histograms": [{"feature": "median_income"}],
                "drift": {"rows": 100, "drifted": drifted, "drifted_share": 0.5, "drifted_features": 1, "features": []}}]});
        let key = format!(
            "monitoring/california_housing/reports/20261201T{hour}0000Z-20261201T{}0000Z.json",
            hour + 1
        );
        f.store
            .put(&key, report.to_string().into_bytes(), PutCondition::None)
            .await
            .unwrap();
    }
    let (_, _, body) = call(&k.app, request(&k.admin, "GET", path, None)).await;
    assert_eq!(body["latest"]["records"], 111);
    assert_eq!(
        body["latest"]["versions"][0]["histograms"][0]["feature"],
        "median_income"
    );
    let series = body["series"].as_array().unwrap();
    assert_eq!(
        series
            .iter()
            .map(|s| s["records"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [110, 111]
    );
    assert_eq!(series[1]["versions"][0]["drifted"], true);
    assert!(series[1]["versions"][0].get("histograms").is_none());
    let (_, _, body) = call(
        &k.app,
        request(&k.admin, "GET", &format!("{path}?reports=1"), None),
    )
    .await;
    assert_eq!(body["series"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(&k.app, request(&k.predict, "GET", path, None)).await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn training_runs_are_read_back_with_their_trials_and_histories() {
    let f = fixture(config()).await;
    let runs_dir = tempfile::tempdir().unwrap();
    let log = LocalRunLog::new(runs_dir.path());
    let parent = log
        .start_run("california_housing", "train", &[], None)
        .await
        .unwrap();
    log.log_metrics(&parent.run_id, &[("gpu_utilization".into(), 40.0)], 0)
        .await
        .unwrap();
    log.log_metrics(&parent.run_id, &[("gpu_utilization".into(), 90.0)], 1)
        .await
        .unwrap();
    let trial = log
        .start_run(
            "california_housing",
            "trial-001-xgboost",
            &[],
            Some(&parent.run_id),
        )
        .await
        .unwrap();
    log.log_metrics(&trial.run_id, &[("cv_rmse".into(), 0.5)], 0)
        .await
        .unwrap();
    let state = AppState::start_with(
        f.registry.clone(),
        config(),
        Backends {
            runs: Some(Arc::new(LocalRunLog::new(runs_dir.path()))),
            ..Backends::default()
        },
    )
    .await;
    let k = keyed(state).await;
    let (status, _, body) = call(
        &k.app,
        request(
            &k.admin,
            "GET",
            "/v1/runs?experiment=california_housing",
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let runs = body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().any(|r| r["parent_run_id"] == parent.run_id.as_str() && r["metrics"]["cv_rmse"] == 0.5));
    let (_, _, run) = call(
        &k.app,
        request(
            &k.admin,
            "GET",
            &format!("/v1/runs/{}", parent.run_id),
            None,
        ),
    )
    .await;
    assert_eq!(
        run["history"]["gpu_utilization"],
        json!([[0, 40.0], [1, 90.0]])
    );
    assert_eq!(run["metrics"]["gpu_utilization"], 90.0);
    for bad in [
        "/v1/runs",
        "/v1/runs?experiment=x&limit=0",
        "/v1/runs/..%2Fetc",
    ] {
        assert_eq!(
            call(&k.app, request(&k.admin, "GET", bad, None)).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let (status, _, _) = call(
        &k.app,
        request(&k.admin, "GET", "/v1/runs/california_housing.0000", None),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without a tracker the route says so.
    let plain = keyed(Arc::clone(&f.state)).await;
    let (status, _, body) = call(
        &plain.app,
        request(&plain.admin, "GET", "/v1/runs?experiment=x", None),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no tracker")
    );
}

#[tokio::test]
async fn recent_batch_jobs_are_listed_newest_first() {
    let f = fixture(config()).await;
    let queue = Arc::new(mlops_domain::faults::MemoryQueue::default());
    let state = AppState::start(f.registry.clone(), config(), Some(queue.clone())).await;
    let k = keyed(state).await;
    let (_, _, empty) = call(&k.app, request(&k.admin, "GET", "/v1/batch-jobs", None)).await;
    assert_eq!(empty["jobs"], json!([]));
    let input = f.store.uri("inputs/a.csv");
    for _ in 0..2 {
        f.store
            .put("inputs/a.csv", b"x\n1\n".to_vec(), PutCondition::None)
            .await
            .unwrap();
        let body = json!({"model": "california_housing", "input_uri": input});
        let (status, _, job) = call(
            &k.app,
            request(&k.admin, "POST", "/v1/batch-jobs", Some(body)),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    }
    let (status, _, list) = call(&k.app, request(&k.admin, "GET", "/v1/batch-jobs", None)).await;
    assert_eq!(status, StatusCode::OK);
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs[0]["created_at"].as_str() >= jobs[1]["created_at"].as_str());
    assert_eq!(jobs[0]["state"], "queued");
    assert_eq!(queue.submissions().len(), 2);
    assert_eq!(
        call(&k.app, request(&k.predict, "GET", "/v1/batch-jobs", None))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // A path outside the local store is refused by name.
    let body = json!({"model": "california_housing", "input_uri": "/etc/passwd"});
    let (status, _, refused) = call(
        &k.app,
        request(&k.admin, "POST", "/v1/batch-jobs", Some(body)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
}
