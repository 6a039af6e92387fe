//! The OpenAPI document: generated from the handlers (utoipa), trimmed to the routes a binary
//! mounts, and completed with the served models — each model gets its own predict path whose
//! request schema lists its input columns with their types, ranges, categories and required
//! fields, so clients (and schemathesis) see exactly what the server accepts.

use mlops_domain::schema::{ColumnRole, ColumnSpec, ColumnType, Schema};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::{ApiDoc, AppState, RouteSet};

/// JSON Schema of one input column.
fn column_schema(c: &ColumnSpec) -> Value {
    let mut s = Map::new();
    let base = match c.column_type {
        ColumnType::Float => "number",
        ColumnType::Integer => "integer",
        ColumnType::Categorical | ColumnType::Text => "string",
    };
    s.insert(
        "type".into(),
        if c.nullable && c.role == ColumnRole::Feature {
            json!([base, "null"])
        } else {
            json!(base)
        },
    );
    if let Some(lo) = c.min {
        s.insert("minimum".into(), json!(lo));
    }
    if let Some(hi) = c.max {
        s.insert("maximum".into(), json!(hi));
    }
    if !c.categories.is_empty() {
        let mut values: Vec<Value> = c.categories.iter().map(|v| json!(v)).collect();
        if c.nullable {
            values.push(Value::Null);
        }
        s.insert("enum".into(), Value::Array(values));
    }
    if c.column_type == ColumnType::Text {
        s.insert("maxLength".into(), json!(256));
    }
    if !c.description.is_empty() {
        s.insert("description".into(), json!(c.description));
    }
    Value::Object(s)
}

/// JSON Schema of a record for a model's input schema: feature columns (required unless
/// nullable) and the optional id column; nothing else.
pub fn record_schema(schema: &Schema) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for c in &schema.columns {
        match c.role {
            ColumnRole::Feature => {
                properties.insert(c.name.clone(), column_schema(c));
                if !c.nullable {
                    required.push(json!(c.name));
                }
            }
            ColumnRole::Id => {
                properties.insert(c.name.clone(), column_schema(c));
            }
            ColumnRole::Target => {}
        }
    }
    json!({
        "type": "object",
        "description": format!("One {} record: {}", schema.name, schema.description),
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

/// Renders the document for the mounted routes and the models served now.
///
/// `with_models: false` (a caller without a key) leaves out the served models: the generic
/// contract only, nothing about which models exist or their inputs.
pub fn render(state: &AppState, set: RouteSet, with_models: bool) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return doc.to_string();
    };
    // Admin routes are the operations tagged `admin`.
    let tagged_admin = |item: &Value| {
        item.as_object().is_some_and(|ops| {
            ops.values().any(|op| {
                op.get("tags")
                    .and_then(Value::as_array)
                    .is_some_and(|tags| tags.iter().any(|t| t == "admin"))
            })
        })
    };
    paths.retain(|path, item| {
        if path.starts_with("/v1/batch-jobs") {
            set.batch
        } else if tagged_admin(item) {
            set.admin
        } else {
            set.models
        }
    });
    let snapshot = if with_models {
        state.models.snapshot()
    } else {
        Default::default()
    };
    let names: Vec<Value> = snapshot.keys().map(|n| json!(n)).collect();
    // The templated predict and feedback paths become one path per served model with its
    // exact schema: the records it takes, and the labels its target takes.
    if with_models {
        let per_model = PerModel {
            snapshot: &snapshot,
            max_items: state.config.max_records,
        };
        per_model.expand(paths, "predict", "Predict with {}", |m| {
            record_schema(&m.manifest.schema)
        });
        per_model.expand(
            paths,
            "feedback",
            "Send ground truth for {}'s predictions",
            |m| label_schema(&m.manifest.schema),
        );
    }
    // What JSON Schema can say about a split beyond the derived schema.
    if let Some(body) = paths
        .get_mut("/v1/models/{name}/traffic")
        .and_then(|p| p.pointer_mut("/put/requestBody/content/application~1json"))
    {
        body["schema"] = json!({
            "type": "object",
            "required": ["weights"],
            "additionalProperties": false,
            "properties": {"weights": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": mlops_domain::traffic::MAX_VARIANTS,
                "propertyNames": {"pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
                "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 100}
            }}
        });
    }
    // Every operation needs an API key (predict scope, or admin for admin routes).
    let error = json!({"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    for item in paths.values_mut() {
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    let mut e401 = error.clone();
                    e401["description"] = json!("No API key (x-api-key)");
                    let mut e403 = error.clone();
                    e403["description"] =
                        json!("Unknown or revoked key, or a key without the route's scope");
                    responses.entry("401").or_insert(e401);
                    responses.entry("403").or_insert(e403);
                }
            }
        }
    }
    // Other model paths take a served model name.
    for (path, item) in paths.iter_mut() {
        if !with_models || !path.contains("{name}") {
            continue;
        }
        if let Some(ops) = item.as_object_mut() {
            for op in ops.values_mut() {
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    for p in params.iter_mut().filter(|p| p["name"] == "name") {
                        p["schema"] = json!({"type": "string", "enum": names});
                    }
                }
            }
        }
    }
    doc.to_string()
}

/// One feedback label for a model: the request id as serving issues or accepts them, the record's
/// place, and `actual` as the model's target takes it.
fn label_schema(schema: &mlops_domain::schema::Schema) -> Value {
    let actual = match schema.task {
        mlops_domain::schema::Task::Regression => json!({"type": "number"}),
        mlops_domain::schema::Task::BinaryClassification => {
            let (positive, negative) = schema.class_names();
            let mut classes: Vec<String> = schema.target_column().categories.clone();
            for class in [positive, negative] {
                if !classes.contains(&class) {
                    classes.push(class);
                }
            }
            json!({"oneOf": [{"type": "string", "enum": classes}, {"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]})
        }
    };
    json!({
        "type": "object",
        "required": ["request_id", "actual"],
        "additionalProperties": false,
        "properties": {
            "request_id": {
                "type": "string",
                "pattern": "^[!-.0-\\[\\]-~]{1,128}$",
                "description": "The request_id of the prediction"
            },
            "record": {"type": "integer", "minimum": 1, "maximum": u32::MAX, "description": "1-based place of the record in that request (default 1)"},
            "actual": actual,
            "observed_at": {"type": "string", "format": "date-time", "description": "When the outcome was observed (not in the future; default: when received)"}
        }
    })
}

/// The served models, for paths specialized per model.
struct PerModel<'a> {
    snapshot: &'a std::collections::BTreeMap<String, std::sync::Arc<crate::models::ModelRoutes>>,
    max_items: usize,
}

impl PerModel<'_> {
    /// Replaces `/v1/models/{name}/ACTION` by one POST path per served model whose body is one
    /// `item` or a list of 1 to `max_items` of them; `summary` names the model at `{}`.
    fn expand(
        &self,
        paths: &mut serde_json::Map<String, Value>,
        action: &str,
        summary: &str,
        item: impl Fn(&crate::models::LoadedModel) -> Value,
    ) {
        let Some(template) = paths.remove(&format!("/v1/models/{{name}}/{action}")) else {
            return;
        };
        for (name, routes) in self.snapshot.iter() {
            let Some(model) = routes.by_alias.values().next() else {
                continue;
            };
            let mut op = template.clone();
            let Some(post) = op.get_mut("post") else {
                continue;
            };
            if let Some(params) = post.get_mut("parameters").and_then(Value::as_array_mut) {
                params.retain(|p| p["name"] != "name");
            }
            post["operationId"] = json!(format!("{action}_{name}"));
            post["summary"] = json!(summary.replace("{}", name));
            let item = item(model);
            post["requestBody"]["content"]["application/json"]["schema"] = json!({
                "oneOf": [
                    item,
                    {"type": "array", "items": item, "minItems": 1, "maxItems": self.max_items}
                ]
            });
            if let Some(responses) = post.get_mut("responses").and_then(Value::as_object_mut) {
                responses.remove("404");
            }
            paths.insert(format!("/v1/models/{name}/{action}"), op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_schema_follows_the_data_schema() {
        let schema = Schema::from_toml(
            "name = \"s\"\ntask = \"regression\"\ndescription = \"d\"\n[target]\ncolumn = \"y\"\n\
             [[columns]]\nname = \"id\"\ntype = \"text\"\nrole = \"id\"\n\
             [[columns]]\nname = \"x\"\ntype = \"float\"\nmin = 0.0\nmax = 5.0\n\
             [[columns]]\nname = \"n\"\ntype = \"integer\"\nnullable = true\n\
             [[columns]]\nname = \"c\"\ntype = \"categorical\"\ncategories = [\"a\", \"b\"]\n\
             [[columns]]\nname = \"y\"\ntype = \"float\"\nrole = \"target\"\n",
            "s.toml",
        )
        .unwrap();
        let s = record_schema(&schema);
        assert_eq!(s["required"], json!(["x", "c"]));
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["x"]["maximum"], 5.0);
        assert_eq!(s["properties"]["n"]["type"], json!(["integer", "null"]));
        assert_eq!(s["properties"]["c"]["enum"], json!(["a", "b"]));
        assert!(s["properties"].get("y").is_none());
        assert_eq!(s["properties"]["id"]["type"], "string");
    }
}
