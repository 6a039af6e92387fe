//! `template.yaml` as CloudFormation receives it (transformed offline by aws-sam-translator):
//! the authorizer cannot be flooded — its decisions are cached per key *and route*, the stage
//! throttles every route, the authorizer's concurrency is reserved and capped, refused keys are
//! alarmed — and only the health, contract and explorer routes skip it.

use std::process::Command;

use mlops_e2e::{python, repo};
use serde_json::Value;

fn transformed() -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/python/transform_template.py"))
        .arg(repo().join("template.yaml"))
        .output()
        .expect("run the SAM transform");
    assert!(
        out.status.success(),
        "transform failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
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
