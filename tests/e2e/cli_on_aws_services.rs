//! The `mlops` command line with its real-service configuration: registry on moto S3, tracking on
//! a real MLflow server. Everything is read back from S3 and through MLflow's REST API.

use std::process::{Command, Output};

use mlops_domain::registry::{CHALLENGER, CHAMPION, Registry};
use mlops_e2e::{
    boto3, mlflow_uri, mlops_bin, moto_endpoint, python, s3_store, shared_data, unique,
};
use mlops_tracking::MlflowClient;

fn mlops(home: &std::path::Path, store: &str, args: &[&str]) -> Output {
    Command::new(mlops_bin())
        .args(["--home", home.to_str().unwrap(), "--store", store])
        .args([
            "--s3-endpoint",
            &moto_endpoint(),
            "--tracking",
            &mlflow_uri(),
        ])
        .args(args)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .output()
        .expect("run mlops")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mlops failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The metrics in a CloudWatch namespace on moto: name and dimensions of each.
fn cloudwatch_metrics(
    namespace: &str,
) -> Vec<(String, std::collections::BTreeMap<String, String>)> {
    let listed = Command::new(python())
        .args([
            "-c",
            "import boto3, json, sys; cw = boto3.client('cloudwatch', endpoint_url=sys.argv[1], region_name='us-east-1'); \
             print(json.dumps([[m['MetricName'], {d['Name']: d['Value'] for d in m['Dimensions']}] for m in cw.list_metrics(Namespace=sys.argv[2])['Metrics']]))",
            &moto_endpoint(),
            namespace,
        ])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    serde_json::from_slice(&listed.stdout).unwrap()
}

/// An SNS topic on moto with an SQS queue subscribed (raw delivery): (topic ARN, queue URL).
fn topic_with_queue(name: &str) -> (String, String) {
    let made = boto3(
        "import boto3, json, sys; kw = dict(endpoint_url=sys.argv[1], region_name='us-east-1'); \
         sns, sqs = boto3.client('sns', **kw), boto3.client('sqs', **kw); \
         topic = sns.create_topic(Name=sys.argv[2])['TopicArn']; \
         url = sqs.create_queue(QueueName=sys.argv[2])['QueueUrl']; \
         arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=['QueueArn'])['Attributes']['QueueArn']; \
         sns.subscribe(TopicArn=topic, Protocol='sqs', Endpoint=arn, Attributes={'RawMessageDelivery': 'true'}); \
         print(json.dumps([topic, url]))",
        &[name],
    );
    (
        made[0].as_str().unwrap().into(),
        made[1].as_str().unwrap().into(),
    )
}

/// Every message waiting on an SQS queue (bodies), removed.
fn drain(queue_url: &str) -> Vec<String> {
    let got = boto3(
        "import boto3, json, sys; sqs = boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1'); \
         out = []\n\
         while True:\n\
         \x20   m = sqs.receive_message(QueueUrl=sys.argv[2], MaxNumberOfMessages=10, WaitTimeSeconds=1).get('Messages', [])\n\
         \x20   if not m: break\n\
         \x20   out += [x['Body'] for x in m]\n\
         \x20   sqs.delete_message_batch(QueueUrl=sys.argv[2], Entries=[{'Id': str(i), 'ReceiptHandle': x['ReceiptHandle']} for i, x in enumerate(m)])\n\
         print(json.dumps(out))",
        &[queue_url],
    );
    got.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn train_registers_on_s3_and_tracks_in_mlflow() {
    let bucket_store = s3_store("").await;
    let store_uri = format!("s3://{}/registry", bucket_store.bucket());
    let home = tempfile::tempdir().unwrap();
    let model = unique("churn").replace('-', "_");
    let experiment = unique("cli");
    let namespace = unique("mlops-e2e");
    let data = shared_data("telco_churn.csv");
    let stdout = ok(&mlops(
        home.path(),
        &store_uri,
        &[
            "train",
            "telco_churn",
            "--data",
            data.to_str().unwrap(),
            "--model-name",
            &model,
            "--candidates",
            "linear,lightgbm",
            "--experiment",
            &experiment,
            "--promote",
            CHALLENGER,
            "--cloudwatch-namespace",
            &namespace,
        ],
    ));
    // The final scores are in CloudWatch (moto), by model and model kind.
    let names: Vec<String> = cloudwatch_metrics(&namespace)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for expected in [
        "test_roc_auc",
        "test_log_loss",
        "train_seconds",
        "registry_version",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    assert!(
        stdout.contains(&format!("registered {model} version 1")),
        "{stdout}"
    );

    // Registry on S3 (read with the library, through the same bucket/prefix).
    let registry = Registry::new(std::sync::Arc::new(
        mlops_store::S3Store::connect(mlops_store::S3Config {
            bucket: bucket_store.bucket().into(),
            prefix: "registry".into(),
            endpoint: Some(moto_endpoint()),
            region: Some("us-east-1".into()),
        })
        .await,
    ));
    let record = registry.version(&model, 1).await.unwrap();
    assert_eq!(registry.resolve(&model, CHALLENGER).await.unwrap(), 1);
    let bundle = registry.load_bundle(&record).await.unwrap();
    assert!(
        bundle.manifest.metrics["roc_auc"] >= 0.84,
        "{:?}",
        bundle.manifest.metrics
    );
    assert_eq!(
        bundle.manifest.lineage.data_sha256,
        "16320c9c1ec72448db59aa0a26a0b95401046bef5d02fd3aeb906448e3055e91"
    );
    let run_id = record
        .lineage
        .run_id
        .clone()
        .expect("lineage names the run");

    // MLflow: the selected run, its siblings, artifacts and the mirrored model version + alias.
    let mlflow = MlflowClient::new(&mlflow_uri());
    let run = mlflow.get_run(&run_id).await.unwrap();
    let metrics = run["run"]["data"]["metrics"].as_array().unwrap();
    assert!(
        metrics.iter().any(|m| m["key"] == "test_roc_auc"),
        "{metrics:?}"
    );
    let manifest = mlflow
        .download_artifact(&run_id, "bundle/manifest.json")
        .await
        .unwrap();
    assert_eq!(manifest, bundle.manifest_bytes());
    assert!(
        !mlflow
            .download_artifact(&run_id, "report/report.md")
            .await
            .unwrap()
            .is_empty()
    );
    let experiment_id = run["run"]["info"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let runs = mlflow
        .post(
            "runs/search",
            serde_json::json!({"experiment_ids": [experiment_id]}),
        )
        .await
        .unwrap();
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        3,
        "a parent run and one run per candidate"
    );
    let alias = mlflow
        .get(
            "registered-models/alias",
            &[("name", model.as_str()), ("alias", CHALLENGER)],
        )
        .await
        .unwrap();
    assert_eq!(alias["model_version"]["run_id"], run_id.as_str());

    // Champion needs an approved card; then predictions come from the champion.
    let out = mlops(
        home.path(),
        &store_uri,
        &["registry", "promote", &model, "1", "--alias", CHAMPION],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model card is not approved"));
    ok(&mlops(
        home.path(),
        &store_uri,
        &[
            "registry",
            "card",
            &model,
            "1",
            "--intended-use",
            "tests",
            "--limitations",
            "test data",
            "--approve",
            "--by",
            "lead",
        ],
    ));
    ok(&mlops(
        home.path(),
        &store_uri,
        &[
            "registry", "promote", &model, "1", "--alias", CHAMPION, "--by", "lead",
        ],
    ));
    let rows = home.path().join("rows.json");
    std::fs::write(
        &rows,
        r#"[{"customerID": "a", "gender": "Female", "SeniorCitizen": 0, "Partner": "Yes", "Dependents": "No", "tenure": 1,
            "PhoneService": "No", "MultipleLines": "No phone service", "InternetService": "Fiber optic",
            "OnlineSecurity": "No", "OnlineBackup": "No", "DeviceProtection": "No", "TechSupport": "No",
            "StreamingTV": "No", "StreamingMovies": "No", "Contract": "Month-to-month", "PaperlessBilling": "Yes",
            "PaymentMethod": "Electronic check", "MonthlyCharges": 70.0, "TotalCharges": null}]"#,
    )
    .unwrap();
    let out = ok(&mlops(
        home.path(),
        &store_uri,
        &["predict", &model, "--json", rows.to_str().unwrap()],
    ));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["row"].as_u64(), line["id"].as_str()),
        (Some(1), Some("a"))
    );
    let p = line["prediction"].as_f64().unwrap();
    assert!(
        p > 0.5 && p < 1.0,
        "a new month-to-month fiber customer is likely to churn: {p}"
    );
    let audit = ok(&mlops(
        home.path(),
        &store_uri,
        &["registry", "audit", &model],
    ));
    assert_eq!(
        audit.lines().count(),
        3,
        "a header and two changes: {audit}"
    );

    // The champion–challenger gate: an AUC margin of 0.5 cannot be met, so the new version is
    // challenger only; the decision and both scores are in the audit log and in MLflow.
    let gated = ok(&mlops(
        home.path(),
        &store_uri,
        &[
            "train",
            "telco_churn",
            "--data",
            data.to_str().unwrap(),
            "--model-name",
            &model,
            "--candidates",
            "linear",
            "--experiment",
            &experiment,
            "--gate-margin",
            "0.5",
        ],
    ));
    assert!(gated.contains("→ not promoted"), "{gated}");
    assert_eq!(registry.resolve(&model, CHAMPION).await.unwrap(), 1);
    assert_eq!(registry.resolve(&model, CHALLENGER).await.unwrap(), 2);
    let audit = ok(&mlops(
        home.path(),
        &store_uri,
        &["registry", "audit", &model],
    ));
    assert!(
        audit.lines().last().unwrap().contains("vs champion"),
        "{audit}"
    );
    let runs = mlflow
        .post(
            "runs/search",
            serde_json::json!({
                "experiment_ids": [experiment_id],
                "filter": "tags.`mlops.gate.decision` = 'not_promoted'"
            }),
        )
        .await
        .unwrap();
    let gate_run = &runs["runs"][0]["data"];
    let keys: Vec<&str> = gate_run["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["key"].as_str())
        .collect();
    assert!(
        keys.contains(&"gate_challenger_score") && keys.contains(&"gate_champion_score"),
        "{runs}"
    );
}

/// A budgeted search: every trial is a child run in MLflow with its parameters, fold scores and
/// status (pruned trials end KILLED); the training run carries the search totals, the device it
/// chose (CPU here, and why) and the selection's significance test.
#[tokio::test]
async fn every_search_trial_is_a_child_run_in_mlflow() {
    let bucket_store = s3_store("").await;
    let store_uri = format!("s3://{}/registry", bucket_store.bucket());
    let home = tempfile::tempdir().unwrap();
    let model = unique("search").replace('-', "_");
    let experiment = unique("search");
    let data = shared_data("telco_churn.csv");
    // 2 starting points + one bracket of 9 linear configurations = 11 trials.
    let out = mlops(
        home.path(),
        &store_uri,
        &[
            "train",
            "telco_churn",
            "--data",
            data.to_str().unwrap(),
            "--model-name",
            &model,
            "--candidates",
            "linear,lightgbm",
            "--experiment",
            &experiment,
            "--search-trials",
            "11",
        ],
    );
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("search: 11 trials"), "{stderr}");
    assert!(stderr.contains("corrected paired t-test"), "{stderr}");

    let mlflow = MlflowClient::new(&mlflow_uri());
    let experiment_id = mlflow.experiment_id(&experiment).await.unwrap();
    let runs = mlflow
        .post(
            "runs/search",
            serde_json::json!({"experiment_ids": [experiment_id], "max_results": 100}),
        )
        .await
        .unwrap();
    let runs = runs["runs"].as_array().unwrap();
    let tag = |run: &serde_json::Value, key: &str| -> Option<String> {
        run["data"]["tags"]
            .as_array()?
            .iter()
            .find(|t| t["key"] == key)
            .and_then(|t| t["value"].as_str().map(str::to_string))
    };
    let trials: Vec<_> = runs
        .iter()
        .filter(|r| tag(r, "mlops.trial").is_some())
        .collect();
    assert_eq!(trials.len(), 11, "{runs:?}");
    let parent = runs
        .iter()
        .find(|r| tag(r, "mlflow.parentRunId").is_none())
        .expect("the training run");
    let parent_id = parent["info"]["run_id"].as_str().unwrap();
    let mut killed = 0;
    for t in &trials {
        assert_eq!(tag(t, "mlflow.parentRunId").as_deref(), Some(parent_id));
        let status = tag(t, "mlops.trial.status").unwrap();
        let run_status = t["info"]["status"].as_str().unwrap();
        match status.as_str() {
            "complete" => assert_eq!(run_status, "FINISHED"),
            "pruned" => {
                assert_eq!(run_status, "KILLED");
                killed += 1;
            }
            other => panic!("unexpected trial status {other}"),
        }
        assert!(
            t["data"]["params"]
                .as_array()
                .is_some_and(|p| !p.is_empty()),
            "{t}"
        );
        let metrics: Vec<&str> = t["data"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["key"].as_str())
            .collect();
        assert!(
            metrics.contains(&"cv_roc_auc") && metrics.contains(&"cv_roc_auc_mean"),
            "{metrics:?}"
        );
    }
    // One bracket of 9 over 5 folds with eta 3: 6 pruned after one fold, 2 after three.
    assert_eq!(killed, 8);
    let parent_metrics: Vec<&str> = parent["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["key"].as_str())
        .collect();
    for expected in [
        "search_trials",
        "search_best_roc_auc",
        "selection_p_value",
        "test_roc_auc",
    ] {
        assert!(
            parent_metrics.contains(&expected),
            "{expected}: {parent_metrics:?}"
        );
    }
    assert_eq!(tag(parent, "mlops.device").as_deref(), Some("cpu"));
    assert!(
        tag(parent, "mlops.device.summary").is_some_and(|s| s.starts_with("cpu (")),
        "{parent}"
    );

    // What the console's training page reads back through the same server: the run, its 11
    // trials under it, the selection test, and each metric's history by step.
    use mlops_domain::tracking::RunReader;
    let listed = mlflow.runs(&experiment, 100).await.unwrap();
    assert_eq!(listed.len(), runs.len());
    let trials_under_parent = listed
        .iter()
        .filter(|r| r.parent_run_id.as_deref() == Some(parent_id))
        .filter(|r| r.tags.contains_key("mlops.trial"))
        .count();
    assert_eq!(trials_under_parent, 11);
    let read = mlflow.run(parent_id).await.unwrap();
    assert!(read.metrics.contains_key("selection_p_value"), "{read:?}");
    assert_eq!(read.history["search_trials"].len(), 1);
    let best = &read.history["search_best_roc_auc"];
    assert!(
        (1..=11).contains(&best.len()),
        "a point per trial once one scored: {best:?}"
    );
    assert!(
        best.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{best:?}"
    );
    assert!(
        mlflow
            .runs("no-such-experiment", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        mlflow.run("0123456789abcdef0123456789abcdef").await,
        Err(mlops_domain::tracking::TrackingError::NotFound(_))
    ));
}

/// `mlops monitor` with the registry on moto S3: an hour of logs written as serving writes them
/// (incomes raised) and feedback for them are read from S3, kept there as a sketch and merged on
/// the next run; the scores land in CloudWatch by model, version, variant and feature and on
/// the version's MLflow monitoring run; the alerts reach an SNS topic once.
#[tokio::test]
async fn monitor_reads_logs_on_s3_and_puts_scores_in_cloudwatch() {
    use chrono::{DurationRound, TimeDelta, Utc};
    let bucket = s3_store("").await;
    let store = format!("s3://{}/registry", bucket.bucket());
    let home = tempfile::tempdir().unwrap();
    mlops_e2e::publish_housing(home.path(), &store, &moto_endpoint(), 42, true);
    let hour = (Utc::now() - TimeDelta::hours(3))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap();
    let text = std::fs::read_to_string(shared_data("california_housing.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut labels = String::from("request_id,record,actual\n");
    let logged: String = lines
        .step_by(10)
        .enumerate()
        .map(|(i, line)| {
            let value = line.split(',').nth(header.iter().position(|h| *h == "median_house_value").unwrap());
            labels.push_str(&format!("r{i},1,{}\n", value.unwrap()));
            let mut input = serde_json::Map::new();
            for (name, value) in header.iter().zip(line.split(',')) {
                let v = match (*name, value.parse::<f64>()) {
                    ("median_house_value", _) => continue,
                    ("median_income", Ok(x)) => serde_json::json!(x * 1.8 + 1.0),
                    (_, Ok(x)) => serde_json::json!(x),
                    (_, Err(_)) if value.is_empty() => serde_json::Value::Null,
                    _ => serde_json::json!(value),
                };
                input.insert((*name).to_owned(), v);
            }
            let at = hour + TimeDelta::seconds(i as i64);
            format!(
                "{}\n",
                serde_json::json!({"at": at, "request_id": format!("r{i}"), "model": "california_housing",
                    "version": 1, "variant": "champion", "input": input, "output": 2.0, "latency_us": 300})
            )
        })
        .collect();
    let key = format!(
        "registry/prediction-logs/california_housing/date={}/{}-e2e.jsonl",
        hour.format("%Y-%m-%d"),
        (hour + TimeDelta::minutes(45)).format("%H%M%S")
    );
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key(&key)
        .body(logged.into_bytes().into())
        .send()
        .await
        .unwrap();
    // The labels arrive as a bulk file dropped into the next hour's feedback partition.
    let drop_key = format!(
        "registry/feedback/model=california_housing/date={}/hour={}/labels.csv",
        (hour + TimeDelta::hours(1)).format("%Y-%m-%d"),
        (hour + TimeDelta::hours(1)).format("%H")
    );
    bucket
        .client()
        .put_object()
        .bucket(bucket.bucket())
        .key(&drop_key)
        .body(labels.into_bytes().into())
        .send()
        .await
        .unwrap();
    let namespace = unique("mlops-monitor");
    let (topic, queue) = topic_with_queue(&unique("mlops-alerts"));
    let (since, until) = (hour.to_rfc3339(), (hour + TimeDelta::hours(1)).to_rfc3339());
    let monitor = || {
        let out = ok(&mlops(
            home.path(),
            &store,
            &[
                "monitor",
                "--model",
                "california_housing",
                "--since",
                &since,
                "--until",
                &until,
                "--json",
                "--cloudwatch-namespace",
                &namespace,
                "--alert-topic-arn",
                &topic,
                "--track",
            ],
        ));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let first = monitor();
    // Every logged prediction has its label; a constant 2.0 is far worse than the test RMSE.
    assert_eq!(first["labelled"], 2064, "{first}");
    let live = &first["versions"][0]["quality"]["champion"]["metrics"]["rmse"];
    assert!(live["low"].as_f64().unwrap() > 0.9, "{live}");
    let rules: Vec<&str> = first["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["prediction_drift", "live_quality"], "{first}");
    let published = drain(&queue);
    assert_eq!(published.len(), 2, "{published:?}");
    let alert: serde_json::Value = serde_json::from_str(&published[1]).unwrap();
    assert_eq!(alert["rule"], "live_quality");
    assert_eq!(alert["metrics"][0]["metric"], "rmse");
    assert_eq!(
        (&first["records"], &first["hours_sketched"]),
        (&serde_json::json!(2064), &serde_json::json!(1)),
        "{first}"
    );
    let drifted: Vec<&str> = first["versions"][0]["drift"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["drifted"] == true)
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert_eq!(drifted, ["median_income"], "{first}");
    let again = monitor();
    assert_eq!(
        again["hours_from_cache"], 1,
        "the hour's sketch is kept on S3"
    );
    assert_eq!(again["versions"], first["versions"]);
    assert!(
        drain(&queue).is_empty(),
        "alerts are published once per window"
    );
    // Both runs logged to the version's one monitoring run in MLflow.
    let mlflow = MlflowClient::new(&mlflow_uri());
    let record = bucket
        .client()
        .get_object()
        .bucket(bucket.bucket())
        .key("registry/monitoring/california_housing/tracking/v1.json")
        .send()
        .await
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&record.body.collect().await.unwrap().into_bytes()).unwrap();
    let run = mlflow
        .get_run(record["run_id"].as_str().unwrap())
        .await
        .unwrap();
    let metrics: Vec<&str> = run["run"]["data"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert!(
        metrics.contains(&"variant.champion.live_rmse")
            && metrics.contains(&"feature.median_income.drift_score"),
        "{metrics:?}"
    );

    let metrics = cloudwatch_metrics(&namespace);
    let has = |name: &str, feature: Option<&str>| {
        metrics.iter().any(|(n, d)| {
            n == name
                && d.get("Model").map(String::as_str) == Some("california_housing")
                && d.get("Version").map(String::as_str) == Some("1")
                && d.get("Feature").map(String::as_str) == feature
        })
    };
    assert!(has("drifted_share", None), "{metrics:?}");
    assert!(has("prediction_drift_score", None), "{metrics:?}");
    assert!(has("drift_score", Some("median_income")), "{metrics:?}");
    assert!(has("psi", Some("longitude")), "{metrics:?}");
    assert!(
        metrics
            .iter()
            .any(|(n, d)| n == "live_rmse"
                && d.get("Variant").map(String::as_str) == Some("champion")),
        "{metrics:?}"
    );
}
