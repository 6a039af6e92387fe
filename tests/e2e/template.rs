//! `template.yaml` as CloudFormation receives it (transformed offline by aws-sam-translator):
//! the authorizer cannot be flooded — its decisions are cached per key *and route*, the stage
//! throttles every route, the authorizer's concurrency is reserved and capped, refused keys are
//! alarmed — and only the health, contract and explorer routes skip it. Each role reaches only
//! what it needs; the batch job role's read scope is checked on the stack moto's CloudFormation
//! creates from the transformed template (intrinsics resolved).

use mlops_e2e::{python_script_json, repo, stack_in_moto};
use serde_json::Value;

fn transformed() -> Value {
    let template = repo().join("template.yaml").display().to_string();
    python_script_json("transform_template.py", &[template])
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

    // Only probes, the API's generic contract, its explorer and the console's assets skip the
    // authorizer.
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
            "GET /console",
            "GET /console/{asset}",
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
    // The predict function may add feedback beside the logs and, through the admin routes,
    // change splits, aliases and cards; nothing else.
    assert_eq!(
        granted(&stack, "PredictFunctionRole", "s3:PutObject"),
        [
            format!("{registry}/feedback/*"),
            format!("{registry}/models/*/aliases.json"),
            format!("{registry}/models/*/cards/*"),
            format!("{registry}/models/*/traffic.json"),
            format!("{registry}/prediction-logs/*"),
        ]
    );
    assert!(env.get("MLOPS_RETRAIN_SPEC").is_none(), "{env}");
    // With a training-job spec: retraining on alerts and on its own schedule.
    let stack = stack_in_moto(&["RetrainSpecKey=retraining/housing.toml", "ImageTag=abc123"]);
    // The two images of one commit: training as the tag, the native-free batch image beside it.
    let images = &stack["job_images"];
    let repository = images["TrainingJobDefinition"]
        .as_str()
        .and_then(|i| i.strip_suffix(":abc123"))
        .unwrap_or_else(|| panic!("training image: {images}"));
    assert_eq!(
        images["BatchPredictionJobDefinition"],
        format!("{repository}:abc123-batch"),
        "{images}"
    );
    let env = &stack["environments"]["MonitorFunction"];
    let store = stack["outputs"]["RegistryStoreUri"].as_str().unwrap();
    assert_eq!(
        env["MLOPS_RETRAIN_SPEC"],
        format!("{store}/retraining/housing.toml"),
        "{env}"
    );
    let queue = &stack["outputs"]["TrainingJobQueueArn"];
    let definition = &stack["outputs"]["TrainingJobDefinitionArn"];
    assert_eq!(&env["MLOPS_TRAINING_QUEUE"], queue, "{env}");
    assert_eq!(&env["MLOPS_TRAINING_JOB_DEFINITION"], definition, "{env}");
    assert_eq!(
        granted(&stack, "MonitorFunctionRole", "batch:SubmitJob"),
        [definition.as_str().unwrap(), queue.as_str().unwrap()]
    );
    let retrain = &t["Resources"]["RetrainScheduleEvent"];
    assert_eq!(retrain["Condition"], "HasRetraining");
    assert_eq!(
        retrain["Properties"]["Target"]["Input"],
        "{\"retrain\": \"schedule\"}"
    );
}

/// An intrinsic value as text (`Fn::Sub` strings as written, `Ref:X`, `X.Attribute`); an
/// `Fn::If` stands for both of its branches.
fn render(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(render).collect(),
        Value::Object(o) => {
            if let Some(s) = o.get("Fn::Sub") {
                render(s)
            } else if let Some(r) = o.get("Ref") {
                vec![format!("Ref:{}", r.as_str().unwrap())]
            } else if let Some(a) = o.get("Fn::GetAtt") {
                vec![format!(
                    "{}.{}",
                    a[0].as_str().unwrap(),
                    a[1].as_str().unwrap()
                )]
            } else if let Some(branches) = o.get("Fn::If") {
                branches.as_array().unwrap()[1..]
                    .iter()
                    .flat_map(render)
                    .filter(|s| s != "Ref:AWS::NoValue")
                    .collect()
            } else {
                vec![value.to_string()]
            }
        }
        other => vec![other.to_string()],
    }
}

/// Everything a role of the transformed template can be granted, whatever the parameters:
/// `ACTION RESOURCE[ if CONDITION]` per inline statement, `managed POLICY` per managed policy.
fn grants(template: &Value, role: &str) -> std::collections::BTreeSet<String> {
    let properties = &template["Resources"][role]["Properties"];
    let mut out = std::collections::BTreeSet::new();
    for policy in properties["Policies"].as_array().into_iter().flatten() {
        for s in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
            assert_eq!(s["Effect"], "Allow", "{role}: {s}");
            let condition = match &s["Condition"] {
                Value::Null => String::new(),
                c => format!(" if {c}"),
            };
            for action in render(&s["Action"]) {
                for resource in render(&s["Resource"]) {
                    out.insert(format!("{action} {resource}{condition}"));
                }
            }
        }
    }
    for managed in properties["ManagedPolicyArns"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.extend(render(managed).into_iter().map(|m| format!("managed {m}")));
    }
    out
}

/// The allow-list: every grant of every role the stack makes, whatever its parameters. A
/// change to any role fails here until the list (and so the review) is updated.
#[test]
fn each_role_is_granted_exactly_its_allow_list() {
    let t = transformed();
    let lambda_basic = "managed arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole";
    let registry = "${RegistryBucket.Arn}/${RegistryPrefix}";
    let prefix_condition = |prefixes: &[&str]| {
        let list: Vec<String> = prefixes
            .iter()
            .map(|p| format!(r#"{{"Fn::Sub":"${{RegistryPrefix}}/{p}/*"}}"#))
            .collect();
        match list.as_slice() {
            [one] => format!(r#" if {{"StringLike":{{"s3:prefix":{one}}}}}"#),
            _ => format!(
                r#" if {{"StringLike":{{"s3:prefix":[{}]}}}}"#,
                list.join(",")
            ),
        }
    };
    let input_locations: Vec<String> = ["aws-cn", "aws-us-gov", "aws"]
        .iter()
        .map(|p| format!(r#"{{"Fn::Split":[",",{{"Fn::Join":["",["arn:{p}:s3:::",{{"Fn::Join":["*,arn:{p}:s3:::",{{"Ref":"BatchInputLocations"}}]}},"*"]]}}]}}"#))
        .collect();
    let expected: Vec<(&str, Vec<String>)> = vec![
        // Predict reads the models and writes its logs; the feedback route adds labels beside
        // them; the admin routes (the console) read logs, labels and monitor reports and write
        // splits, aliases and cards; requests by entity key read the feature table. Nothing else.
        ("PredictFunctionRole", vec![
            lambda_basic.into(),
            "dynamodb:BatchGetItem FeatureTable.Arn".into(),
            format!("s3:GetObject {registry}/feedback/*"),
            format!("s3:GetObject {registry}/models/*"),
            format!("s3:GetObject {registry}/monitoring/*"),
            format!("s3:GetObject {registry}/prediction-logs/*"),
            format!("s3:ListBucket RegistryBucket.Arn{}", prefix_condition(&["models", "prediction-logs", "feedback", "monitoring"])),
            format!("s3:PutObject {registry}/feedback/*"),
            format!("s3:PutObject {registry}/models/*/aliases.json"),
            format!("s3:PutObject {registry}/models/*/cards/*"),
            format!("s3:PutObject {registry}/models/*/traffic.json"),
            format!("s3:PutObject {registry}/prediction-logs/*"),
        ]),
        ("AuthorizerFunctionRole", vec![
            lambda_basic.into(),
            "secretsmanager:GetSecretValue Ref:ApiKeysSecret".into(),
        ]),
        ("BatchFunctionRole", vec![
            "batch:DescribeJobs *".into(),
            "batch:ListJobs *".into(),
            "batch:SubmitJob Ref:BatchPredictionJobDefinition".into(),
            "batch:SubmitJob Ref:BatchPredictionJobQueue".into(),
            "managed Ref:RegistryReadPolicy".into(),
            lambda_basic.into(),
            format!("s3:PutObject {registry}/batch-jobs/*"),
        ]),
        ("MonitorFunctionRole", vec![
            "batch:ListJobs *".into(),
            "batch:SubmitJob Ref:TrainingJobDefinition".into(),
            "batch:SubmitJob Ref:TrainingJobQueue".into(),
            r#"cloudwatch:PutMetricData * if {"StringEquals":{"cloudwatch:namespace":"mlops/monitor"}}"#.into(),
            "kms:Decrypt AlertKey.Arn".into(),
            "kms:GenerateDataKey* AlertKey.Arn".into(),
            lambda_basic.into(),
            format!("s3:GetObject {registry}/${{RetrainSpecKey}}"),
            format!("s3:GetObject {registry}/feedback/*"),
            format!("s3:GetObject {registry}/models/*"),
            format!("s3:GetObject {registry}/monitoring/*"),
            format!("s3:GetObject {registry}/prediction-logs/*"),
            format!("s3:GetObject {registry}/retraining/*"),
            format!("s3:ListBucket RegistryBucket.Arn{}", prefix_condition(&["models", "prediction-logs", "feedback", "monitoring"])),
            format!("s3:PutObject {registry}/models/*/ab.json"),
            format!("s3:PutObject {registry}/models/*/aliases.json"),
            format!("s3:PutObject {registry}/monitoring/*"),
            format!("s3:PutObject {registry}/retraining/*"),
            "sns:Publish Ref:AlertTopic".into(),
        ]),
        ("TrainingJobRole", vec![
            r#"cloudwatch:PutMetricData * if {"StringEquals":{"cloudwatch:namespace":"mlops/training"}}"#.into(),
            "managed Ref:RegistryWritePolicy".into(),
            "s3:GetObject ${RegistryBucket.Arn}/*".into(),
            "s3:GetObjectVersion ${RegistryBucket.Arn}/*".into(),
            "s3:ListBucket RegistryBucket.Arn".into(),
            "s3:ListBucketVersions RegistryBucket.Arn".into(),
        ]),
        ("BatchJobRole", [
            format!("s3:GetObject {registry}/batch-jobs/*"),
            format!("s3:GetObject {registry}/models/*"),
            "s3:GetObject ${RegistryBucket.Arn}/*".into(),
            format!("s3:GetObjectVersion {registry}/batch-jobs/*"),
            "s3:GetObjectVersion ${RegistryBucket.Arn}/*".into(),
            format!("s3:ListBucket RegistryBucket.Arn{}", prefix_condition(&["models", "batch-jobs"])),
            format!("s3:PutObject {registry}/batch-jobs/*"),
        ]
        .into_iter()
        .chain(input_locations.iter().flat_map(|l| [format!("s3:GetObject {l}"), format!("s3:GetObjectVersion {l}")]))
        .collect()),
        ("JobExecutionRole", vec![
            "ecr:BatchCheckLayerAvailability ImageRepository.Arn".into(),
            "ecr:BatchGetImage ImageRepository.Arn".into(),
            "ecr:GetAuthorizationToken *".into(),
            "ecr:GetDownloadUrlForLayer ImageRepository.Arn".into(),
            "logs:CreateLogStream BatchPredictionJobLogs.Arn".into(),
            "logs:CreateLogStream TrainingJobLogs.Arn".into(),
            "logs:PutLogEvents BatchPredictionJobLogs.Arn".into(),
            "logs:PutLogEvents TrainingJobLogs.Arn".into(),
        ]),
        ("BatchInstanceRole", vec![
            "managed arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role".into(),
        ]),
        ("RetrainScheduleRole", vec!["lambda:InvokeFunction MonitorFunction.Arn".into()]),
    ];
    let mut checked = Vec::new();
    for (role, allowed) in &expected {
        let got: Vec<String> = grants(&t, role).into_iter().collect();
        let mut allowed = allowed.clone();
        allowed.sort();
        assert_eq!(got, allowed, "{role}");
        checked.push(*role);
    }
    // No role of the stack is left unchecked (SAM's schedule roles invoke one function each).
    for (name, resource) in t["Resources"].as_object().unwrap() {
        if resource["Type"] == "AWS::IAM::Role" && !checked.contains(&name.as_str()) {
            let scheduler = resource["Properties"]["AssumeRolePolicyDocument"].to_string();
            assert!(
                scheduler.contains("scheduler.amazonaws.com"),
                "{name} is not on the allow-list"
            );
            assert_eq!(
                grants(&t, name).into_iter().collect::<Vec<_>>(),
                ["lambda:InvokeFunction MonitorFunction.Arn"],
                "{name}"
            );
        }
    }
}

/// Each alarm the operator guide explains exists, notifies the alert topic and links its
/// runbook section; the metrics they watch are the ones the code emits; the dashboard is JSON.
#[test]
fn alarms_watch_what_the_code_emits_and_link_their_runbook() {
    let t = transformed();
    let resources = t["Resources"].as_object().unwrap();
    let runbook = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let alarms = [
        "ApiErrorRateAlarm",
        "ApiLatencyAlarm",
        "ThrottlesAlarm",
        "DroppedPredictionLogsAlarm",
        "DriftAlarm",
        "MonitorErrorsAlarm",
        "FailedJobsAlarm",
        "AuthorizerDenialsAlarm",
    ];
    for name in alarms {
        let alarm = &resources[name];
        assert_eq!(alarm["Type"], "AWS::CloudWatch::Alarm", "{name}");
        let p = &alarm["Properties"];
        assert_eq!(
            p["AlarmActions"],
            serde_json::json!([{"Ref": "AlertTopic"}]),
            "{name}"
        );
        let description = p["AlarmDescription"].as_str().unwrap();
        let anchor = description
            .split("docs/operations.md#")
            .nth(1)
            .unwrap_or_else(|| panic!("{name} links no runbook section: {description}"));
        let heading = format!("### {}", anchor.trim_end_matches('.'));
        assert!(
            runbook.to_lowercase().contains(&heading.to_lowercase()),
            "docs/operations.md has no section {heading} for {name}"
        );
    }
    // The log line the dropped-records metric counts is the one the predict function writes.
    let pattern = resources["DroppedPredictionLogsMetric"]["Properties"]["FilterPattern"]
        .as_str()
        .unwrap();
    let text = pattern.split('"').nth(1).unwrap().trim_end_matches('*');
    let source = std::fs::read_to_string(repo().join("shared/serving/src/predlog.rs")).unwrap();
    assert!(source.contains(text), "predlog.rs never logs '{text}'");
    // The drift alarm's metric is one the monitor puts.
    let query = resources["DriftAlarm"]["Properties"]["Metrics"][0]["Expression"]
        .as_str()
        .unwrap();
    assert!(query.contains("MAX(dataset_drift)"), "{query}");
    let monitor = std::fs::read_to_string(repo().join("shared/monitor/src/lib.rs")).unwrap();
    assert!(monitor.contains("\"dataset_drift\""));
    // The dashboard body is JSON once CloudFormation substitutes its references.
    let body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .unwrap();
    let mut substituted = String::new();
    let mut rest = body;
    while let Some(start) = rest.find("${") {
        substituted.push_str(&rest[..start]);
        substituted.push('x');
        rest = &rest[start + rest[start..].find('}').unwrap() + 1..];
    }
    substituted.push_str(rest);
    let dashboard: Value = serde_json::from_str(&substituted).expect("the dashboard is JSON");
    assert!(dashboard["widgets"].as_array().unwrap().len() >= 6);
    // Functions run on the architecture parameter, arm64 unless told otherwise.
    assert_eq!(t["Parameters"]["Architecture"]["Default"], "arm64");
    for (name, r) in resources {
        if r["Type"] == "AWS::Lambda::Function" {
            assert_eq!(
                r["Properties"]["Architectures"],
                serde_json::json!([{"Ref": "Architecture"}]),
                "{name}"
            );
        }
    }
}
