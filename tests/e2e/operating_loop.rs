//! The operating loop end to end on emulated AWS (moto: S3, SNS→SQS, CloudWatch, Batch) and a
//! real MLflow server: train → register → serve → log predictions and feedback → a shifted
//! window → the monitor flags the shifted features and not the others → one signed alert per
//! rule reaches a webhook that fails its first two deliveries → one retraining job is submitted
//! to Batch → run locally as the container would, its gate promotes the new version.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mlops_e2e::{
    ProcessGroup, batch_queue, boto3, mlflow_uri, mlops_bin, mlops_cli, moto_endpoint,
    publish_housing, s3_store, shared_data, unique,
};
use serde_json::{Value, json};

#[path = "../support/webhook_receiver.rs"]
mod webhook_receiver;
use webhook_receiver::{Receiver, mlops_signature};

/// `mlops serve` on the registry `store`, logging predictions every 0.2 s: (process, base URL).
fn serve(home: &Path, store: &str, log: &Path) -> (ProcessGroup, String) {
    let mut command = Command::new(mlops_bin());
    command
        .args(["--home", &home.to_string_lossy(), "--store", store])
        .args(["--s3-endpoint", &moto_endpoint()])
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth"])
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("MLOPS_PREDICTION_LOG_FLUSH_SECONDS", "0.2")
        .env_remove("MLOPS_API_KEYS_SECRET");
    let group = ProcessGroup::spawn(command, log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split(" on http://").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            return (group, format!("http://{addr}"));
        }
        assert!(Instant::now() < deadline, "serve did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// California Housing rows (every `step`-th) as records, with their targets.
fn housing(step: usize) -> Vec<(Value, f64)> {
    let mut reader = csv::Reader::from_path(shared_data("california_housing.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .step_by(step)
        .map(|r| {
            let r = r.unwrap();
            let mut record = serde_json::Map::new();
            let mut target = 0.0;
            for (name, value) in headers.iter().zip(r.iter()) {
                match (name, value.parse::<f64>()) {
                    ("median_house_value", Ok(y)) => target = y,
                    (_, Ok(x)) => {
                        record.insert(name.into(), json!(x));
                    }
                    (_, Err(_)) if value.is_empty() => {
                        record.insert(name.into(), Value::Null);
                    }
                    _ => {
                        record.insert(name.into(), json!(value));
                    }
                }
            }
            (Value::Object(record), target)
        })
        .collect()
}

/// Predicts `rows` in requests of 10, then sends every record's label as feedback.
async fn serve_and_label(url: &str, rows: &[(Value, f64)]) {
    let client = reqwest::Client::new();
    let mut labels = Vec::new();
    for chunk in rows.chunks(10) {
        let records: Vec<&Value> = chunk.iter().map(|(r, _)| r).collect();
        let response = client
            .post(format!("{url}/v1/models/california_housing/predict"))
            .json(&records)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        for (p, (_, actual)) in body["predictions"].as_array().unwrap().iter().zip(chunk) {
            labels.push(
                json!({"request_id": body["request_id"], "record": p["row"], "actual": actual}),
            );
        }
    }
    for chunk in labels.chunks(1000) {
        let response = client
            .post(format!("{url}/v1/models/california_housing/feedback"))
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_alerts_retraining_and_the_gate_close_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let bucket = s3_store("").await;
    let store = format!("s3://{}/registry", bucket.bucket());
    let endpoint = moto_endpoint();
    // v1: linear, the champion.
    assert_eq!(publish_housing(&home, &store, &endpoint, 42, true), 1);

    // Served traffic: an hour like training, then one with higher incomes and older houses.
    let (server, url) = serve(&home, &store, &dir.path().join("serve.log"));
    let rows = housing(9);
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    serve_and_label(&url, &rows).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let middle = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shifted: Vec<(Value, f64)> = rows
        .iter()
        .map(|(r, y)| {
            let mut r = r.clone();
            r["median_income"] = json!(r["median_income"].as_f64().unwrap() * 1.6 + 1.0);
            r["housing_median_age"] = json!(r["housing_median_age"].as_f64().unwrap() + 20.0);
            (r, *y)
        })
        .collect();
    serve_and_label(&url, &shifted).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let end = chrono::Utc::now();
    drop(server);

    // The training job's spec and data on S3, and a Batch queue for it.
    let data_key = "datasets/california_housing.csv";
    let data = std::fs::read(shared_data("california_housing.csv")).unwrap();
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key(data_key)
        .body(data.into())
        .send()
        .await
        .unwrap();
    let spec = format!(
        "dataset = \"california_housing\"\ndata = \"s3://{b}/{data_key}\"\ncandidates = [\"lightgbm\"]\nseed = 42\ndevice = \"cpu\"\nregistry = \"{store}\"\ntracking = \"{mlflow}\"\n\n[promotion]\ngate_margin = 0.0\n",
        b = bucket.bucket(),
        mlflow = mlflow_uri()
    );
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key("specs/housing.toml")
        .body(spec.into_bytes().into())
        .send()
        .await
        .unwrap();
    let spec_uri = format!("s3://{}/specs/housing.toml", bucket.bucket());
    let batch = batch_queue("loop");
    let queue = batch["queue"].as_str().unwrap();
    let definition = batch["definition"].as_str().unwrap();
    let topic = boto3(
        "import boto3, json, sys; print(json.dumps(boto3.client('sns', endpoint_url=sys.argv[1], region_name='us-east-1').create_topic(Name=sys.argv[2])['TopicArn']))",
        &[&unique("loop-alerts")],
    );

    // The monitor over each window; alerts to a webhook that fails twice, and to SNS.
    let receiver = Receiver::start(2);
    let secret = "an-operating-loop-secret";
    let namespace = unique("mlops-loop");
    let monitor = |from: chrono::DateTime<chrono::Utc>, until: chrono::DateTime<chrono::Utc>| {
        let out = Command::new(mlops_bin())
            .args([
                "--home",
                &home.to_string_lossy(),
                "--store",
                &store,
                "--s3-endpoint",
                &endpoint,
            ])
            .args(["--tracking", &mlflow_uri()])
            .args([
                "monitor",
                "--model",
                "california_housing",
                "--json",
                "--track",
            ])
            .args([
                "--since",
                &from.to_rfc3339(),
                "--until",
                &until.to_rfc3339(),
            ])
            .args(["--drift-share", "0.2", "--alert-webhook", &receiver.url])
            .args([
                "--alert-topic-arn",
                topic.as_str().unwrap(),
                "--cloudwatch-namespace",
                &namespace,
            ])
            .args([
                "--retrain-spec",
                &spec_uri,
                "--training-queue",
                queue,
                "--training-job-definition",
                definition,
            ])
            .env("MLOPS_ALERT_WEBHOOK_SECRET", secret)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        (report, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let drifted = |report: &Value| -> Vec<String> {
        report["versions"][0]["drift"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["drifted"] == true)
            .map(|f| f["feature"].as_str().unwrap().to_owned())
            .collect()
    };
    let (before, _) = monitor(start, middle);
    assert!(drifted(&before).is_empty(), "{before}");
    assert!(before["alerts"].as_array().unwrap().is_empty(), "{before}");
    assert_eq!(before["labelled"], rows.len(), "{before}");

    let (after, log) = monitor(middle, end);
    assert_eq!(
        drifted(&after),
        ["housing_median_age", "median_income"],
        "{after}"
    );
    assert_eq!(after["labelled"], rows.len());
    let alerts: Vec<&str> = after["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    let rules: Vec<&str> = after["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"drift"), "{rules:?}");
    // Each alert reached the webhook once, signed, the first after two refusals.
    let delivered = receiver.accepted();
    assert_eq!(receiver.refused(), 2);
    assert_eq!(delivered.len(), alerts.len(), "{rules:?}");
    for (headers, body) in &delivered {
        assert!(headers.contains(&format!(
            "x-mlops-signature: {}",
            mlops_signature(secret, body)
        )));
    }
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    let mut expected: Vec<String> = alerts.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    // One retraining job on Batch for the window's alerts (drift, and the live RMSE it caused).
    assert!(
        log.contains("retraining (degraded): submitted queue job"),
        "{log}"
    );
    let jobs = boto3(
        "import boto3, json, sys; b = boto3.client('batch', endpoint_url=sys.argv[1], region_name='us-east-1'); \
         print(json.dumps([j['jobId'] for s in ['SUBMITTED','PENDING','RUNNABLE','STARTING','RUNNING','SUCCEEDED','FAILED'] for j in b.list_jobs(jobQueue=sys.argv[2], jobStatus=s)['jobSummaryList'] if j['jobName'].startswith('retrain-')]))",
        &[queue],
    );
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    // Run again: nothing is sent or submitted twice.
    let (again, log) = monitor(middle, end);
    assert_eq!(again["alerts"], after["alerts"]);
    assert_eq!(receiver.accepted().len(), alerts.len());
    assert!(log.contains("already submitted"), "{log}");

    // The submitted job, run locally as its container would: LightGBM beats the linear champion.
    let job_id = jobs[0].as_str().unwrap();
    let out = Command::new(mlops_bin())
        .args([
            "--home",
            &home.to_string_lossy(),
            "--s3-endpoint",
            &endpoint,
        ])
        .args(["job", "--spec", &spec_uri])
        .env("AWS_BATCH_JOB_ID", job_id)
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let job_log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{job_log}");
    let champion = mlops_cli(
        &home,
        &store,
        &endpoint,
        &["registry", "show", "california_housing", "champion"],
    );
    let champion: Value = serde_json::from_str(&champion).unwrap();
    assert_eq!(champion["version"]["version"], 2, "{champion}\n{job_log}");
    assert_eq!(champion["version"]["model_kind"], "lightgbm");
    let gate = champion["card"]["approval"]["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(gate.contains("→ promoted"), "{gate}");
    // A manual retraining with the labelled production rows added to the data set.
    let record = mlops_cli(
        &home,
        &store,
        &endpoint,
        &[
            "retrain",
            "--model",
            "california_housing",
            "--spec",
            &spec_uri,
            "--trigger",
            "manual",
            "--append-feedback-days",
            "1",
            "--queue",
            queue,
            "--job-definition",
            definition,
            "--json",
        ],
    );
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["appended"]["rows"], 2 * rows.len(), "{record}");
    assert!(record["queue_job_id"].is_string(), "{record}");
    let data_uri = record["data_uri"].as_str().unwrap();
    assert!(
        data_uri.contains("/registry/retraining/california_housing/data/"),
        "{data_uri}"
    );
    let data_key = data_uri
        .split_once(&format!("{}/", bucket.bucket()))
        .unwrap()
        .1;
    let combined = bucket
        .client()
        .get_object()
        .bucket(bucket.bucket())
        .key(data_key)
        .send()
        .await
        .unwrap();
    let combined = combined.body.collect().await.unwrap().into_bytes();
    let lines = combined.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(
        lines,
        20_641 + 2 * rows.len(),
        "header, the data set, the appended rows"
    );
    println!(
        "operating loop: drifted {:?}; alerts {rules:?}; webhook refused 2 then took {} once each; retraining job {job_id}; {gate}",
        drifted(&after),
        delivered.len()
    );
}
