//! `template.yaml` as CloudFormation receives it (transformed offline by aws-sam-translator):
//! the authorizer cannot be flooded — its decisions are cached per key *and route*, the stage
//! throttles every route, the authorizer's concurrency is reserved and capped, refused keys are
//! alarmed — and only the health, contract and explorer routes skip it. Each role reaches only
//! what it needs; the batch job role's read scope is checked on the stack moto's CloudFormation
//! creates from the transformed template (intrinsics resolved).

use std::process::Command;

use mlops_e2e::{moto_endpoint, python, repo};
use serde_json::Value;

/// The JSON a script in `tests/python/` prints.
fn script_json(script: &str, args: &[String]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn transformed() -> Value {
    let template = repo().join("template.yaml").display().to_string();
    script_json("transform_template.py", &[template])
}

fn default_of(template: &Value, parameter: &Value) -> f64 {
    let name = parameter["Ref"].as_str().expect("a parameter reference");
    let default = &template["Parameters"][name]["Default"];
    default
        .as_f64()
        .or_else(|| default.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("parameter {name} has no numeric default"))
}

#[test]
fn the_authorizer_is_cached_per_key_and_route_throttled_capped_and_alarmed() {
    let t = transformed();
    let resources = t["Resources"].as_object().unwrap();
    let api = &t["Resources"]["HttpApi"]["Properties"]["Body"];
    let authorizer =
        &api["components"]["securitySchemes"]["ApiKeyAuthorizer"]["x-amazon-apigateway-authorizer"];
    let identity: Vec<&str> = authorizer["identitySource"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        identity,
        ["$request.header.x-api-key", "$context.routeKey"],
        "{authorizer}"
    );
    let ttl = default_of(&t, &authorizer["authorizerResultTtlInSeconds"]);
    assert!((60.0..=3600.0).contains(&ttl), "cache {ttl} s");

    let stage = resources
        .values()
        .find(|r| r["Type"] == "AWS::ApiGatewayV2::Stage")
        .expect("a stage");
    let routes = &stage["Properties"]["DefaultRouteSettings"];
    assert!(
        default_of(&t, &routes["ThrottlingRateLimit"]) > 0.0,
        "{stage}"
    );
    assert!(
        default_of(&t, &routes["ThrottlingBurstLimit"]) > 0.0,
        "{stage}"
    );

    let reserved =
        &t["Resources"]["AuthorizerFunction"]["Properties"]["ReservedConcurrentExecutions"];
    assert!(default_of(&t, reserved) >= 1.0, "{reserved}");

    let alarm = resources
        .values()
        .find(|r| {
            r["Type"] == "AWS::CloudWatch::Alarm"
                && r["Properties"]["MetricName"] == "AuthorizerDenials"
        })
        .expect("an alarm on authorizer denials");
    let filter = resources
        .values()
        .find(|r| r["Type"] == "AWS::Logs::MetricFilter")
        .expect("a metric filter feeding it");
    assert_eq!(
        filter["Properties"]["MetricTransformations"][0]["MetricName"],
        alarm["Properties"]["MetricName"]
    );

    // Only probes, the API's generic contract and its explorer skip the authorizer.
    let mut public: Vec<String> = Vec::new();
    for (path, item) in api["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["security"] == serde_json::json!([{"NONE": []}]) {
                public.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    public.sort();
    assert_eq!(
        public,
        [
            "GET /docs",
            "GET /docs/{asset}",
            "GET /health/live",
            "GET /health/ready",
            "GET /openapi.json"
        ]
    );
}

/// Every statement of a role's inline policies, as (actions, resources) in JSON text.
fn statements(template: &Value, role: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for policy in template["Resources"][role]["Properties"]["Policies"]
        .as_array()
        .unwrap()
    {
        for s in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            out.push((s["Action"].to_string(), s["Resource"].to_string()));
        }
    }
    out
}

#[test]
fn roles_reach_only_what_they_need_and_prediction_logs_expire() {
    let t = transformed();
    // The predict function reads models/ and nothing else (no managed read policy either).
    let predict = statements(&t, "PredictFunctionRole");
    for (action, resource) in &predict {
        if action.contains("s3:GetObject") {
            assert!(
                resource.contains("/models/*") && !resource.contains("batch-jobs"),
                "{resource}"
            );
        }
    }
    let managed =
        t["Resources"]["PredictFunctionRole"]["Properties"]["ManagedPolicyArns"].to_string();
    assert!(!managed.contains("RegistryReadPolicy"), "{managed}");
    // SubmitJob names its queue and job definition.
    let batch = statements(&t, "BatchFunctionRole");
    let submit = batch
        .iter()
        .find(|(a, _)| a.contains("batch:SubmitJob"))
        .expect("a SubmitJob statement");
    assert!(
        submit.1.contains("job-queue/${BatchJobQueue}"),
        "{}",
        submit.1
    );
    assert!(
        submit.1.contains("job-definition/${BatchJobDefinition}"),
        "{}",
        submit.1
    );
    assert!(!submit.1.contains("\"*\""), "{}", submit.1);
    // Prediction logs expire.
    let rules = t["Resources"]["RegistryBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
        .as_array()
        .unwrap();
    let logs = rules
        .iter()
        .find(|r| r["Prefix"].to_string().contains("prediction-logs"))
        .expect("a lifecycle rule for prediction logs");
    assert!(
        logs["ExpirationInDays"].is_object() || logs["ExpirationInDays"].is_number(),
        "{logs}"
    );
}

/// The stack moto's CloudFormation creates from the transformed template, with overrides.
fn stack_in_moto(overrides: &[&str]) -> Value {
    let args: Vec<String> = std::iter::once(moto_endpoint())
        .chain(overrides.iter().map(|o| o.to_string()))
        .collect();
    let stack = script_json("stack_in_moto.py", &args);
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{}", stack["reason"]);
    stack
}

/// The resources a role's statements grant `action` on.
fn granted(stack: &Value, role: &str, action: &str) -> Vec<String> {
    let mut out = Vec::new();
    for document in stack["roles"][role]
        .as_array()
        .expect("the role's policies")
    {
        for s in document["Statement"].as_array().unwrap() {
            let actions = match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                list => serde_json::from_value(list.clone()).unwrap(),
            };
            if actions.iter().any(|a| a == action) {
                match &s["Resource"] {
                    Value::String(r) => out.push(r.clone()),
                    list => {
                        out.extend(serde_json::from_value::<Vec<String>>(list.clone()).unwrap())
                    }
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_batch_job_role_reads_the_allowed_inputs_and_nothing_else() {
    // By default: the registry's bucket, as the batch function's allow-list.
    let stack = stack_in_moto(&[]);
    let store = stack["outputs"]["RegistryStoreUri"].as_str().unwrap();
    let bucket = store["s3://".len()..].split('/').next().unwrap();
    let registry = format!("arn:aws:s3:::{bucket}/registry");
    assert_eq!(
        granted(&stack, "BatchJobRole", "s3:GetObject"),
        [
            format!("arn:aws:s3:::{bucket}/*"),
            format!("{registry}/batch-jobs/*"),
            format!("{registry}/models/*"),
        ]
    );
    assert_eq!(
        stack["environments"]["BatchFunction"]["MLOPS_BATCH_INPUT_PREFIXES"],
        format!("s3://{bucket}/")
    );
    assert!(
        stack["outputs"]["BatchJobRoleArn"].is_string(),
        "{}",
        stack["outputs"]
    );

    // With input locations: exactly those (and the job's own files), in the role and the check.
    let stack = stack_in_moto(&["BatchInputLocations=data-lake/exports/,scores-in/"]);
    let store = stack["outputs"]["RegistryStoreUri"].as_str().unwrap();
    let bucket = store["s3://".len()..].split('/').next().unwrap();
    let registry = format!("arn:aws:s3:::{bucket}/registry");
    assert_eq!(
        granted(&stack, "BatchJobRole", "s3:GetObject"),
        [
            "arn:aws:s3:::data-lake/exports/*".to_owned(),
            format!("{registry}/batch-jobs/*"),
            format!("{registry}/models/*"),
            "arn:aws:s3:::scores-in/*".to_owned(),
        ]
    );
    assert_eq!(
        granted(&stack, "BatchJobRole", "s3:GetObjectVersion"),
        [
            "arn:aws:s3:::data-lake/exports/*".to_owned(),
            format!("{registry}/batch-jobs/*"),
            "arn:aws:s3:::scores-in/*".to_owned(),
        ]
    );
    assert_eq!(
        granted(&stack, "BatchJobRole", "s3:PutObject"),
        [format!("{registry}/batch-jobs/*")]
    );
    assert_eq!(
        stack["environments"]["BatchFunction"]["MLOPS_BATCH_INPUT_PREFIXES"],
        "s3://data-lake/exports/,s3://scores-in/"
    );
}

#[test]
fn the_monitor_runs_on_a_schedule_and_writes_only_its_own_records() {
    let t = transformed();
    // SAM's ScheduleV2 event: an EventBridge Scheduler schedule invoking the monitor function.
    let schedule = t["Resources"]
        .as_object()
        .unwrap()
        .values()
        .find(|r| r["Type"] == "AWS::Scheduler::Schedule")
        .expect("a schedule");
    assert_eq!(
        schedule["Properties"]["ScheduleExpression"],
        serde_json::json!({"Ref": "MonitorSchedule"})
    );
    assert!(
        schedule["Properties"]["Target"]["Arn"]
            .to_string()
            .contains("MonitorFunction"),
        "{schedule}"
    );
    let stack = stack_in_moto(&[]);
    let store = stack["outputs"]["RegistryStoreUri"].as_str().unwrap();
    let bucket = store["s3://".len()..].split('/').next().unwrap();
    let registry = format!("arn:aws:s3:::{bucket}/registry");
    assert_eq!(
        granted(&stack, "MonitorFunctionRole", "s3:PutObject"),
        [
            format!("{registry}/models/*/ab.json"),
            format!("{registry}/models/*/aliases.json"),
            format!("{registry}/monitoring/*"),
            format!("{registry}/retraining/*"),
        ]
    );
    let topic = stack["outputs"]["AlertTopicArn"].as_str().unwrap();
    assert_eq!(
        granted(&stack, "MonitorFunctionRole", "sns:Publish"),
        [topic]
    );
    let env = &stack["environments"]["MonitorFunction"];
    assert_eq!(env["MLOPS_ALERT_TOPIC_ARN"], topic, "{env}");
    assert_eq!(env["MLOPS_STORE"], store);
    // The predict function may add feedback beside the logs, and nothing else new.
    assert_eq!(
        granted(&stack, "PredictFunctionRole", "s3:PutObject"),
        [
            format!("{registry}/feedback/*"),
            format!("{registry}/models/*/traffic.json"),
            format!("{registry}/prediction-logs/*"),
        ]
    );
    assert!(env.get("MLOPS_RETRAIN_SPEC").is_none(), "{env}");
    // With a training-job spec: retraining on alerts and on its own schedule.
    let stack = stack_in_moto(&[
        "RetrainSpecKey=retraining/housing.toml",
        "TrainingJobQueue=training",
        "TrainingJobDefinition=train:3",
    ]);
    let env = &stack["environments"]["MonitorFunction"];
    let store = stack["outputs"]["RegistryStoreUri"].as_str().unwrap();
    assert_eq!(
        env["MLOPS_RETRAIN_SPEC"],
        format!("{store}/retraining/housing.toml"),
        "{env}"
    );
    assert_eq!(env["MLOPS_TRAINING_QUEUE"], "training");
    let submit = granted(&stack, "MonitorFunctionRole", "batch:SubmitJob");
    assert!(
        submit.iter().any(|r| r.ends_with(":job-queue/training")),
        "{submit:?}"
    );
    let retrain = &t["Resources"]["RetrainScheduleEvent"];
    assert_eq!(retrain["Condition"], "HasRetraining");
    assert_eq!(
        retrain["Properties"]["Target"]["Input"],
        "{\"retrain\": \"schedule\"}"
    );
}
