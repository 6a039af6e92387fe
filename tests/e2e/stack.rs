//! The whole stack on emulated AWS: `template.yaml` transformed offline and created in moto's
//! CloudFormation (`tests/python/stack_in_moto.py`), then the functions under `cargo lambda
//! watch` with exactly the environment the stack gave them, driving train → promote → predict →
//! batch job → monitor → rollback through the stack's own bucket, secret, queues, job
//! definitions and topic.
//!
//! AWS Batch on moto records jobs without running them (`use_docker: false`): each job the
//! functions submit is run here as its container would run it — the command and environment
//! moto reports for it (the job definition's, with the submission's overrides). API Gateway,
//! the schedules, alarms, metric filters, Glue and Athena are resources moto's CloudFormation
//! does not create; `tests/e2e/template.rs` checks them in the transformed template, the
//! emulator's API Gateway v2 events stand in for the API, and the schedule's event is sent
//! by hand. A queue subscribed to the stack's topic reads the alerts the monitor publishes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mlops_e2e::{boto3, mlops_bin, mlops_cli, moto_endpoint, shared_data, stack_in_moto, unique};
use mlops_store::{S3Config, S3Store};
use serde_json::Value;

#[path = "../support/lambda_watch.rs"]
mod lambda_watch;
use lambda_watch::{Watch, event, http};

/// The functions' environments as one env file for the emulator (which serves every function
/// with the same environment): the stack's variables, which must agree where they overlap,
/// plus the endpoint and credentials of moto.
fn env_file(stack: &Value, path: &Path) {
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for (function, vars) in stack["environments"].as_object().unwrap() {
        for (k, v) in vars.as_object().unwrap() {
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            if let Some(other) = merged.insert(k.clone(), v.clone()) {
                assert_eq!(other, v, "{function} sets {k} differently");
            }
        }
    }
    merged.insert("AWS_ENDPOINT_URL".into(), moto_endpoint());
    merged.insert("AWS_ACCESS_KEY_ID".into(), "testing".into());
    merged.insert("AWS_SECRET_ACCESS_KEY".into(), "testing".into());
    merged.insert("AWS_REGION".into(), "us-east-1".into());
    // Test pacing only: logs reach the bucket within 0.2 s instead of the default minute.
    merged.insert("MLOPS_PREDICTION_LOG_FLUSH_SECONDS".into(), "0.2".into());
    let text: String = merged.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Runs an AWS Batch job that moto recorded as its container would: its command (`mlops …`)
/// with its environment. Returns stderr.
fn run_batch_job(job_id: &str, home: &Path) -> String {
    let job = boto3(
        "import boto3, json, sys; print(json.dumps(boto3.client('batch', endpoint_url=sys.argv[1], region_name='us-east-1').describe_jobs(jobs=[sys.argv[2]])['jobs'][0], default=str))",
        &[job_id],
    );
    let container = &job["container"];
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(command[0], "mlops", "{job}");
    let mut run = Command::new(mlops_bin());
    run.args(&command[1..])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("MLOPS_HOME", home)
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1");
    for var in container["environment"].as_array().unwrap() {
        run.env(
            var["name"].as_str().unwrap(),
            var["value"].as_str().unwrap(),
        );
    }
    let out = run.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "job {command:?}: {stderr}");
    stderr
}

async fn put(s3: &S3Store, key: &str, body: Vec<u8>) {
    s3.client()
        .put_object()
        .bucket(s3.bucket())
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap();
}

async fn get_bytes(s3: &S3Store, key: &str) -> Vec<u8> {
    s3.client()
        .get_object()
        .bucket(s3.bucket())
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{key}: {e:?}"))
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}

async fn get_json(s3: &S3Store, key: &str) -> Value {
    serde_json::from_slice(&get_bytes(s3, key).await).unwrap()
}

async fn keys_under(s3: &S3Store, prefix: &str) -> Vec<String> {
    let listed = s3
        .client()
        .list_objects_v2()
        .bucket(s3.bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stack_on_moto_trains_serves_predicts_in_batch_monitors_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let stack = stack_in_moto(&["ImageTag=e2e", "RetrainSpecKey=retraining/housing.toml"]);
    let out = &stack["outputs"];
    let bucket = out["RegistryBucketName"].as_str().unwrap();
    let store = out["RegistryStoreUri"].as_str().unwrap().to_owned();
    let s3 = S3Store::connect(S3Config {
        bucket: bucket.into(),
        prefix: String::new(),
        endpoint: Some(moto_endpoint()),
        region: Some("us-east-1".into()),
    })
    .await;
    // What moto could not create is reported (and covered by template.rs).
    eprintln!(
        "moto stand-ins: {}\nnot created by moto: {}",
        stack["stand_ins"], stack["not_created"]
    );

    // The data set and the training-job spec in the stack's bucket, where RetrainSpecKey says.
    let data = std::fs::read(shared_data("california_housing.csv")).unwrap();
    put(&s3, "datasets/california_housing.csv", data).await;
    let spec = format!(
        "dataset = \"california_housing\"\ndata = \"s3://{bucket}/datasets/california_housing.csv\"\ncandidates = [\"linear\"]\nseed = 42\ndevice = \"cpu\"\n\n[promotion]\ngate_margin = 0.0\nintended_use = \"stack test\"\nlimitations = \"test data only\"\n"
    );
    put(&s3, "registry/retraining/housing.toml", spec.into_bytes()).await;

    // API keys in the stack's secret.
    let secret = stack["environments"]["AuthorizerFunction"]["MLOPS_API_KEYS_SECRET"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = mlops_cli(
        &home,
        &store,
        &moto_endpoint(),
        &[
            "keys", "--secret", &secret, "create", "--name", "app", "--scope", "predict",
        ],
    )
    .trim()
    .to_owned();

    let env = dir.path().join("stack.env");
    env_file(&stack, &env);
    let watch = Watch::start(&env, dir.path());
    let ev = |name: &str, vars: &[(&str, &str)]| event(dir.path(), name, vars);

    // --- train: the monitor function submits the training job to the stack's GPU queue ----
    let answer = watch.invoke("monitor", &ev("retrain.json", &[]));
    let record = &answer["models"][0]["retraining"];
    let job_id = record["queue_job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let job_log = run_batch_job(job_id, &home);
    // --- promote: the job's gate approved the card and made version 1 champion -------------
    let (champion, shown) = champion_version(&home, &store);
    assert_eq!(champion, 1, "{shown}\n{job_log}");

    // --- predict, through the authorizer with the stack's secret --------------------------
    let decision = watch.invoke(
        "authorizer",
        &ev("authorizer-predict.json", &[("API_KEY", &key)]),
    );
    assert_eq!(decision["isAuthorized"], true, "{decision}");
    let (status, body) = http(&watch.invoke("predict", &ev("predict.json", &[])));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    let (status, body) = http(&watch.invoke("predict", &ev("feedback.json", &[])));
    assert_eq!(status, 202, "{body}");

    // Traffic unlike the training data (higher incomes, older houses), in one request of 300
    // records through the function URL, for the monitor to flag.
    let shifted: Vec<Value> = housing_records(300)
        .into_iter()
        .map(|mut r| {
            r["median_income"] = (r["median_income"].as_f64().unwrap() * 1.6 + 1.0).into();
            r["housing_median_age"] = (r["housing_median_age"].as_f64().unwrap() + 20.0).into();
            r
        })
        .collect();
    let response = reqwest::Client::new()
        .post(watch.url("predict", "/v1/models/california_housing/predict"))
        .json(&shifted)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // The stack's alert topic, with a queue subscribed to read what it publishes.
    let topic = out["AlertTopicArn"].as_str().unwrap();
    let alerts = boto3(
        "import boto3, json, sys\nsqs = boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1')\nurl = sqs.create_queue(QueueName=sys.argv[3])['QueueUrl']\narn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']\nboto3.client('sns', endpoint_url=sys.argv[1], region_name='us-east-1').subscribe(TopicArn=sys.argv[2], Protocol='sqs', Endpoint=arn)\nprint(json.dumps(url))",
        &[topic, &unique("alerts")],
    );

    // --- batch job: the batch function submits to the stack's Fargate queue ----------------
    let rows: String = std::fs::read_to_string(shared_data("california_housing.csv"))
        .unwrap()
        .lines()
        .take(101)
        .map(|l| format!("{l}\n"))
        .collect();
    put(&s3, "inputs/houses.csv", rows.into_bytes()).await;
    let input = format!("s3://{bucket}/inputs/houses.csv");
    let (status, job) = http(&watch.invoke(
        "batch",
        &ev(
            "batch-create.json",
            &[("INPUT_URI", &input), ("IDEMPOTENCY_KEY", &unique("idem"))],
        ),
    ));
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let queue_job = get_json(&s3, &format!("registry/batch-jobs/{id}/job.json")).await;
    let queue_job_id = queue_job["queue_job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{queue_job}"))
        .to_owned();
    run_batch_job(&queue_job_id, &home);
    let checkpoint = get_json(
        &s3,
        &format!("registry/batch-jobs/{id}/output/_checkpoint.json"),
    )
    .await;
    assert_eq!(checkpoint["rows_done"], 100, "{checkpoint}");
    assert_eq!(checkpoint["complete"], true, "{checkpoint}");

    // --- the prediction logs match the Glue table Athena reads ------------------------------
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let logs = keys_under(&s3, "registry/prediction-logs/model=california_housing/").await;
    assert!(!logs.is_empty(), "no prediction logs");
    let transformed = mlops_e2e::python_script_json(
        "transform_template.py",
        &[mlops_e2e::repo()
            .join("template.yaml")
            .display()
            .to_string()],
    );
    let table = &transformed["Resources"]["PredictionLogTable"]["Properties"]["TableInput"];
    let template = table["Parameters"]["storage.location.template"]["Fn::Sub"]
        .as_str()
        .unwrap()
        .replace("${RegistryBucket}", bucket)
        .replace("${RegistryPrefix}", "registry");
    let first = format!("s3://{bucket}/{}", logs[0]);
    let day_hour: Vec<&str> = logs[0].split('/').collect();
    let expected_dir = template
        .replace("${!model}", "california_housing")
        .replace("${!day}", day_hour[3].trim_start_matches("date="))
        .replace("${!hour}", day_hour[4].trim_start_matches("hour="));
    assert!(
        first.starts_with(&expected_dir),
        "{first} is not under {expected_dir}"
    );
    let line = read_log_line(&s3, &logs[0]).await;
    for column in table["StorageDescriptor"]["Columns"].as_array().unwrap() {
        let name = column["Name"].as_str().unwrap();
        assert!(line.get(name).is_some(), "the log has no '{name}': {line}");
    }

    // --- monitor: the scheduled run's event, over the test's hour ---------------------------
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let until = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    let answer = watch.invoke(
        "monitor",
        &ev("monitor.json", &[("SINCE", &since), ("UNTIL", &until)]),
    );
    let outcome = &answer["models"][0];
    assert!(outcome["error"].is_null(), "{answer}");
    assert!(outcome["records"].as_u64().unwrap() >= 1, "{answer}");
    let report = get_json(
        &s3,
        &format!("registry/{}", outcome["report"].as_str().unwrap()),
    )
    .await;
    assert_eq!(report["model"], "california_housing", "{report}");
    assert!(
        outcome["alerts"].to_string().contains("drift"),
        "the shifted records raised no drift alert: {answer}"
    );
    // The alerts reached the stack's topic.
    let received = boto3(
        "import boto3, json, sys\nsqs = boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1')\nm = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10, WaitTimeSeconds=2).get('Messages', [])\nprint(json.dumps([x['Body'] for x in m]))",
        &[alerts.as_str().unwrap()],
    );
    assert!(
        received.to_string().contains("california_housing"),
        "nothing on the alert topic: {received}"
    );
    // Its scores went to CloudWatch in the stack's namespace.
    let metrics = boto3(
        "import boto3, json, sys; print(json.dumps([m['MetricName'] for m in boto3.client('cloudwatch', endpoint_url=sys.argv[1], region_name='us-east-1').list_metrics(Namespace='mlops/monitor')['Metrics']]))",
        &[],
    );
    assert!(metrics.to_string().contains("dataset_drift"), "{metrics}");

    // --- rollback through the monitor function (what rollback.yml sends) --------------------
    mlops_e2e::publish_housing(&home, &store, &moto_endpoint(), 7, true);
    let request_id = unique("rollback");
    let rollback = ev(
        "rollback.json",
        &[("REASON", "stack test"), ("REQUEST_ID", &request_id)],
    );
    let answer = watch.invoke("monitor", &rollback);
    assert_eq!(answer["models"][0]["rolled_back"]["to"], 1, "{answer}");
    // A retry of the same request reports the same rollback, not a second one.
    let again = watch.invoke("monitor", &rollback);
    assert_eq!(
        again["models"][0]["rolled_back"]["revision"],
        answer["models"][0]["rolled_back"]["revision"]
    );
    let (champion, shown) = champion_version(&home, &store);
    assert_eq!(champion, 1, "{shown}");
    let audit = mlops_cli(
        &home,
        &store,
        &moto_endpoint(),
        &["registry", "audit", "california_housing"],
    );
    assert!(audit.contains("stack test"), "{audit}");
}

/// The version `champion` points at (`mlops registry show`), with the command's output.
fn champion_version(home: &Path, store: &str) -> (u64, String) {
    let shown = mlops_cli(
        home,
        store,
        &moto_endpoint(),
        &["registry", "show", "california_housing", "champion"],
    );
    let champion: Value = serde_json::from_str(&shown).unwrap();
    let version = champion["version"]["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no champion version: {shown}"));
    (version, shown)
}

/// The first `n` complete rows of California Housing as API records (no target).
fn housing_records(n: usize) -> Vec<Value> {
    let mut reader = csv::Reader::from_path(shared_data("california_housing.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(Result::unwrap)
        .filter(|row| row.iter().all(|v| !v.is_empty()))
        .take(n)
        .map(|row| {
            let mut record = serde_json::Map::new();
            for (name, value) in headers.iter().zip(row.iter()) {
                match name {
                    "median_house_value" => {}
                    "ocean_proximity" => {
                        record.insert(name.into(), value.into());
                    }
                    _ => {
                        record.insert(name.into(), value.parse::<f64>().unwrap().into());
                    }
                }
            }
            Value::Object(record)
        })
        .collect()
}

/// The first record of a gzip JSON-lines log object.
async fn read_log_line(s3: &S3Store, key: &str) -> Value {
    use std::io::Read;
    let body = get_bytes(s3, key).await;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}
