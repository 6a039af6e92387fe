//! The MLflow REST client against a real MLflow server: everything written is read back through
//! MLflow's own REST API.

use mlops_domain::tracking::{RunStatus, Tracker};
use mlops_e2e::{mlflow_uri, unique};
use mlops_tracking::MlflowClient;

#[tokio::test]
async fn runs_params_metrics_artifacts_versions_and_aliases_round_trip() {
    let client = MlflowClient::new(&mlflow_uri());
    let experiment = unique("exp");
    let parent = client
        .start_run(&experiment, "train", &[("team".into(), "ml".into())], None)
        .await
        .unwrap();
    let run = client
        .start_run(
            &experiment,
            "xgboost",
            &[("mlops.model_kind".into(), "xgboost".into())],
            Some(&parent.run_id),
        )
        .await
        .unwrap();
    assert_eq!(
        run.experiment_id, parent.experiment_id,
        "the experiment is created once and reused"
    );

    let params: Vec<(String, String)> =
        (0..130).map(|i| (format!("p{i}"), i.to_string())).collect();
    client.log_params(&run.run_id, &params).await.unwrap();
    client
        .log_metrics(&run.run_id, &[("rmse".into(), 0.5), ("mae".into(), 0.3)], 0)
        .await
        .unwrap();
    client
        .log_metrics(&run.run_id, &[("rmse".into(), 0.45)], 1)
        .await
        .unwrap();
    client
        .set_tags(&run.run_id, &[("stage".into(), "test".into())])
        .await
        .unwrap();
    let artifact = b"{\"learner\": {}}".to_vec();
    client
        .log_artifact(&run.run_id, "bundle/model.json", artifact.clone())
        .await
        .unwrap();
    client
        .end_run(&run.run_id, RunStatus::Finished)
        .await
        .unwrap();

    let got = client.get_run(&run.run_id).await.unwrap();
    let info = &got["run"]["info"];
    assert_eq!(info["status"], "FINISHED");
    assert_eq!(info["run_name"], "xgboost");
    let data = &got["run"]["data"];
    assert_eq!(
        data["params"].as_array().unwrap().len(),
        130,
        "params beyond one batch are all logged"
    );
    let metric = |k: &str| {
        data["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == k)
            .unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(metric("rmse"), 0.45, "latest value");
    assert_eq!(metric("mae"), 0.3);
    let tags = data["tags"].as_array().unwrap();
    let tag = |k: &str| {
        tags.iter()
            .find(|t| t["key"] == k)
            .map(|t| t["value"].as_str().unwrap().to_string())
    };
    assert_eq!(tag("mlflow.parentRunId"), Some(parent.run_id.clone()));
    assert_eq!(tag("stage").as_deref(), Some("test"));
    let history = client
        .get(
            "metrics/get-history",
            &[("run_id", run.run_id.as_str()), ("metric_key", "rmse")],
        )
        .await
        .unwrap();
    assert_eq!(history["metrics"].as_array().unwrap().len(), 2);
    assert_eq!(
        client
            .download_artifact(&run.run_id, "bundle/model.json")
            .await
            .unwrap(),
        artifact
    );

    let model = unique("model");
    let v1 = client
        .mirror_model_version(&model, 1, &run.run_id, "s3://bucket/models/x/1")
        .await
        .unwrap();
    let v2 = client
        .mirror_model_version(&model, 2, &run.run_id, "s3://bucket/models/x/2")
        .await
        .unwrap();
    assert_eq!((v1.as_str(), v2.as_str()), ("1", "2"));
    client.mirror_alias(&model, "champion", &v2).await.unwrap();
    let alias = client
        .get(
            "registered-models/alias",
            &[("name", model.as_str()), ("alias", "champion")],
        )
        .await
        .unwrap();
    let mv = &alias["model_version"];
    assert_eq!(mv["version"], "2");
    assert_eq!(mv["run_id"], run.run_id.as_str());
    assert_eq!(mv["source"], "s3://bucket/models/x/2");
    assert!(
        mv["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "mlops.registry_version" && t["value"] == "2"),
        "{mv}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let client = MlflowClient::new("http://127.0.0.1:9");
    let err = client
        .start_run("x", "y", &[], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("tracking server http://127.0.0.1:9"),
        "{err}"
    );
}
