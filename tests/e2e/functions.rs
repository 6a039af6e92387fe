//! The Lambda functions under the Lambda runtime emulator (`cargo lambda watch`), called with the
//! API Gateway v2 events in `tests/events/` (`cargo lambda invoke`) and over plain HTTP, against
//! moto: S3 (registry), Secrets Manager (API keys) and Batch (with `use_docker: false`).

use std::path::Path;
use std::time::{Duration, Instant};

use mlops_e2e::{
    batch_queue, mlops_cli, mlops_cli_output, moto_endpoint, publish_housing, s3_store,
    shared_data, unique,
};
use serde_json::{Value, json};

#[path = "../support/lambda_watch.rs"]
mod lambda_watch;
use lambda_watch::{Watch, event, http};

fn mlops(home: &Path, store: &str, args: &[&str]) -> String {
    mlops_cli(home, store, &moto_endpoint(), args)
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_under_the_lambda_emulator_against_moto() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    // Registry on moto S3 with a trained, approved champion.
    let bucket = s3_store("").await;
    let store = format!("s3://{}/registry", bucket.bucket());
    publish_housing(&home, &store, &moto_endpoint(), 42, true);

    // API keys in Secrets Manager.
    let secret = unique("mlops-keys");
    let keys = |args: &[&str]| {
        mlops(
            &home,
            &store,
            &[&["keys", "--secret", &secret], args].concat(),
        )
    };
    let predict_key = keys(&["create", "--name", "app", "--scope", "predict"])
        .trim()
        .to_owned();
    let admin_key = keys(&["create", "--name", "ops", "--scope", "admin"])
        .trim()
        .to_owned();
    let old_key = keys(&["create", "--name", "old", "--scope", "admin"])
        .trim()
        .to_owned();
    keys(&["revoke", &old_key[4..16]]);
    let listed = keys(&["list"]);
    assert!(
        listed.contains("revoked") && !listed.contains(&predict_key[17..]),
        "{listed}"
    );

    // A Batch queue on moto.
    let batch = batch_queue("e2e");

    let env_file = dir.path().join("functions.env");
    std::fs::write(
        &env_file,
        format!(
            "MLOPS_STORE={store}\nAWS_ENDPOINT_URL={}\nAWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\nAWS_REGION=us-east-1\nMLOPS_REFRESH_SECONDS=1\nMLOPS_API_KEYS_SECRET={secret}\nMLOPS_API_KEYS_TTL_SECONDS=0\nMLOPS_PREDICTION_LOG_FLUSH_SECONDS=0.2\nMLOPS_BATCH_QUEUE={}\nMLOPS_BATCH_JOB_DEFINITION={}\n",
            moto_endpoint(),
            batch["queue"].as_str().unwrap(),
            batch["definition"].as_str().unwrap()
        ),
    )
    .unwrap();
    let test_started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let watch = Watch::start(&env_file, dir.path());
    let ev = |name: &str, vars: &[(&str, &str)]| event(dir.path(), name, vars);

    // --- predict function ------------------------------------------------------------------
    let (status, body) = http(&watch.invoke("predict", &ev("predict.json", &[])));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    assert_eq!(body["variant"], "champion");
    assert_eq!(
        body["request_id"], "req-predict-1",
        "API Gateway's request id is the request id"
    );
    let p = body["predictions"][0]["prediction"].as_f64().unwrap();
    assert!((0.1..6.0).contains(&p), "{p}");

    // Its label, through the same function; an invalid one names the field.
    let (status, body) = http(&watch.invoke("predict", &ev("feedback.json", &[])));
    assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");
    let (status, body) = http(&watch.invoke("predict", &ev("feedback-invalid.json", &[])));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["fields"][0]["record"], 2, "{body}");

    let (status, body) = http(&watch.invoke("predict", &ev("predict-batch-explain.json", &[])));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"].as_array().unwrap().len(), 2);
    assert!(
        body["predictions"][1]["explanation"]["contributions"]
            .as_array()
            .unwrap()
            .len()
            >= 9
    );

    let (status, body) = http(&watch.invoke("predict", &ev("predict-invalid.json", &[])));
    assert_eq!(status, 400, "{body}");
    let fields = body["error"]["fields"].to_string();
    assert!(
        fields.contains("median_income") && fields.contains("colour"),
        "{body}"
    );
    let (status, _) = http(&watch.invoke("predict", &ev("predict-wrong-content-type.json", &[])));
    assert_eq!(status, 415);

    let (status, info) = http(&watch.invoke("predict", &ev("model-info.json", &[])));
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["aliases"]["champion"], 1);
    assert!(info["card"]["approval"].is_object());
    let (status, ready) = http(&watch.invoke("predict", &ev("health-ready.json", &[])));
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));

    // Plain HTTP through the emulator's function URL.
    let client = reqwest::Client::new();
    let record = json!({
        "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
        "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY"
    });
    let r = client
        .post(watch.url("predict", "/v1/models/california_housing/predict"))
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model-version"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["predictions"][0]["prediction"].as_f64().unwrap(), p);

    // A new champion is picked up within the refresh interval (1 s here).
    publish_housing(&home, &store, &moto_endpoint(), 7, true);
    let promoted = Instant::now();
    loop {
        let (_, body) = http(&watch.invoke("predict", &ev("predict.json", &[])));
        if body["version"] == 2 {
            break;
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(15),
            "still serving {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // --- authorizer ----------------------------------------------------------------------------
    let decide = |event_name: &str, key: &str| {
        let result = watch.invoke("authorizer", &ev(event_name, &[("API_KEY", key)]));
        result["isAuthorized"]
            .as_bool()
            .unwrap_or_else(|| panic!("{result}"))
    };
    assert!(decide("authorizer-predict.json", &predict_key));
    assert!(
        !decide("authorizer-admin-route.json", &predict_key),
        "predict scope on an admin route"
    );
    assert!(decide("authorizer-admin-route.json", &admin_key));
    assert!(!decide("authorizer-predict.json", &old_key), "revoked");
    assert!(
        !decide("authorizer-predict.json", "mlk_0123456789ab_0000"),
        "unknown"
    );
    assert!(!decide("authorizer-no-key.json", ""), "no key");
    // Revocation takes effect (TTL 0 here).
    keys(&["revoke", &predict_key[4..16]]);
    assert!(!decide("authorizer-predict.json", &predict_key));
    let log = std::fs::read_to_string(&watch.log).unwrap();
    for key in [&predict_key, &admin_key, &old_key] {
        assert!(!log.contains(&key[17..]), "a key secret reached the log");
    }

    // --- batch function ------------------------------------------------------------------------
    let input = format!("s3://{}/inputs/houses.csv", bucket.bucket());
    let idempotency = unique("idem");
    let create = ev(
        "batch-create.json",
        &[("INPUT_URI", &input), ("IDEMPOTENCY_KEY", &idempotency)],
    );
    let (status, job) = http(&watch.invoke("batch", &create));
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["version"], 2, "the alias is resolved at submission");
    // moto "runs" jobs at once without docker, so any post-submission state is possible.
    let submitted = ["queued", "running", "succeeded"];
    assert!(submitted.contains(&job["state"].as_str().unwrap()), "{job}");
    assert!(job["queue_state"].is_string(), "{job}");
    let (status, again) = http(&watch.invoke("batch", &create));
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some(id.as_str())),
        "a retry does not submit twice"
    );
    let other_input = format!("s3://{}/inputs/other.csv", bucket.bucket());
    let conflicting = ev(
        "batch-create.json",
        &[
            ("INPUT_URI", &other_input),
            ("IDEMPOTENCY_KEY", &idempotency),
        ],
    );
    let (status, _) = http(&watch.invoke("batch", &conflicting));
    assert_eq!(status, 409);
    // Inputs stay in the allowed buckets (default: the registry's own).
    let elsewhere = ev(
        "batch-create.json",
        &[
            ("INPUT_URI", "s3://someone-elses-bucket/x.csv"),
            ("IDEMPOTENCY_KEY", &unique("idem")),
        ],
    );
    let (status, refused) = http(&watch.invoke("batch", &elsewhere));
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "input_not_allowed");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("s3://{}/", bucket.bucket())),
        "{refused}"
    );
    let (status, view) = http(&watch.invoke("batch", &ev("batch-status.json", &[("JOB_ID", &id)])));
    assert_eq!(status, 200, "{view}");
    assert!(view["queue_state"].is_string(), "{view}");
    assert_eq!(
        view["output_uri"],
        format!("{store}/batch-jobs/{id}/output/")
    );
    // The batch function over plain HTTP, too.
    let r = client
        .get(watch.url("batch", &format!("/v1/batch-jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let over_http: Value = r.json().await.unwrap();
    assert_eq!(over_http["id"], id.as_str());
    // Progress comes from the job's checkpoint.
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key(format!("registry/batch-jobs/{id}/output/_checkpoint.json"))
        .body(
            br#"{"rows_done":500,"rows_total":2000,"parts":["part-00000.csv"],"complete":false}"#
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let (_, view) = http(&watch.invoke("batch", &ev("batch-status.json", &[("JOB_ID", &id)])));
    assert_eq!(view["progress"]["rows_done"], 500);
    assert_eq!(view["progress"]["fraction"], 0.25);

    // Upload flow: a presigned PUT, then start. The bucket keeps versions (as the template's does).
    set_versioning(&bucket, true).await;
    let (status, job) = http(&watch.invoke("batch", &ev("batch-upload.json", &[])));
    assert_eq!(status, 201, "{job}");
    let upload_id = job["id"].as_str().unwrap().to_owned();
    let (status, _) =
        http(&watch.invoke("batch", &ev("batch-start.json", &[("JOB_ID", &upload_id)])));
    assert_eq!(status, 409, "nothing uploaded yet");
    let url = job["upload_url"].as_str().unwrap();
    assert_eq!(job["upload_headers"]["If-None-Match"], "*", "{job}");
    let put = client
        .put(url)
        .header("If-None-Match", "*")
        .body(housing_rows(3))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    // The URL uploads once: a second PUT through it cannot replace the input.
    let again = client
        .put(url)
        .header("If-None-Match", "*")
        .body("something else\n")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 412, "{}", again.text().await.unwrap());
    let (status, started) =
        http(&watch.invoke("batch", &ev("batch-start.json", &[("JOB_ID", &upload_id)])));
    assert_eq!(status, 202, "{started}");
    assert!(
        submitted.contains(&started["state"].as_str().unwrap()),
        "{started}"
    );
    // The started job reads the uploaded version, even after the object is replaced.
    let input_key = format!("registry/batch-jobs/{upload_id}/input.csv");
    replace_object(&bucket, &input_key, housing_rows(1)).await;
    let job_uri = format!("{store}/batch-jobs/{upload_id}/job.json");
    mlops(&home, &store, &["batch-predict", "--job", &job_uri]);
    let checkpoint = read_json(
        &bucket,
        &format!("registry/batch-jobs/{upload_id}/output/_checkpoint.json"),
    )
    .await;
    assert_eq!(checkpoint["rows_done"], 3, "{checkpoint}");

    // Without versions, a replaced input fails the job with a reason instead of mixing inputs.
    set_versioning(&bucket, false).await;
    let (_, job) = http(&watch.invoke("batch", &ev("batch-upload.json", &[])));
    let unversioned = job["id"].as_str().unwrap().to_owned();
    let put = client
        .put(job["upload_url"].as_str().unwrap())
        .header("If-None-Match", "*")
        .body(housing_rows(3))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let (status, _) = http(&watch.invoke(
        "batch",
        &ev("batch-start.json", &[("JOB_ID", &unversioned)]),
    ));
    assert_eq!(status, 202);
    replace_object(
        &bucket,
        &format!("registry/batch-jobs/{unversioned}/input.csv"),
        housing_rows(1),
    )
    .await;
    let job_uri = format!("{store}/batch-jobs/{unversioned}/job.json");
    let out = mlops_cli_output(
        &home,
        &store,
        &moto_endpoint(),
        &["batch-predict", "--job", &job_uri],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was replaced after the job was started"),
        "{stderr}"
    );

    // --- monitor function ------------------------------------------------------------------
    // On demand over the test's window: the predictions the predict function logged, joined to
    // the label it took, reported on S3.
    let until = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let since = test_started.to_rfc3339();
    let answer = watch.invoke(
        "monitor",
        &ev("monitor.json", &[("SINCE", &since), ("UNTIL", &until)]),
    );
    let outcome = &answer["models"][0];
    assert_eq!(outcome["model"], "california_housing", "{answer}");
    assert!(outcome["error"].is_null(), "{answer}");
    assert!(outcome["records"].as_u64().unwrap() >= 3, "{answer}");
    // The predict event is replayed, so several logged predictions carry the labelled id.
    assert!(outcome["labelled"].as_u64().unwrap() >= 1, "{answer}");
    let report = read_json(
        &bucket,
        &format!("registry/{}", outcome["report"].as_str().unwrap()),
    )
    .await;
    assert_eq!(report["labelled"], outcome["labelled"], "{report}");
}

/// The California Housing header and its first `n` rows.
fn housing_rows(n: usize) -> String {
    let text = std::fs::read_to_string(shared_data("california_housing.csv")).unwrap();
    text.lines().take(n + 1).map(|l| format!("{l}\n")).collect()
}

async fn set_versioning(bucket: &mlops_store::S3Store, on: bool) {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    let status = if on {
        BucketVersioningStatus::Enabled
    } else {
        BucketVersioningStatus::Suspended
    };
    bucket
        .client()
        .put_bucket_versioning()
        .bucket(bucket.bucket())
        .versioning_configuration(VersioningConfiguration::builder().status(status).build())
        .send()
        .await
        .unwrap();
}

/// Replaces an object with the bucket owner's credentials (not through an upload URL).
async fn replace_object(bucket: &mlops_store::S3Store, key: &str, body: String) {
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key(key)
        .body(body.into_bytes().into())
        .send()
        .await
        .unwrap();
}

async fn read_json(bucket: &mlops_store::S3Store, key: &str) -> Value {
    let out = bucket
        .client()
        .get_object()
        .bucket(bucket.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&out.body.collect().await.unwrap().into_bytes()).unwrap()
}
