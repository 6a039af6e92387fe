//! XGBoost JSON models (the format of XGBoost 2.x/3.x `save_model("*.json")`).

use serde::Deserialize;
use serde_json::Value as Json;

use crate::EngineError;
use crate::tree::{Ensemble, LEAF, Missing, Node, OutputTransform, SplitRule, Trees};

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    learner_model_param: ModelParam,
    objective: Objective,
    gradient_booster: Booster,
}

#[derive(Deserialize)]
struct ModelParam {
    base_score: String,
    num_feature: String,
    #[serde(default)]
    num_class: Option<String>,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    #[serde(default)]
    model: Option<BoosterModel>,
}

#[derive(Deserialize)]
struct BoosterModel {
    trees: Vec<Tree>,
}

#[derive(Deserialize)]
struct Tree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f64>,
    default_left: Vec<Json>,
    sum_hessian: Vec<f64>,
    #[serde(default)]
    split_type: Vec<i64>,
}

fn parse_err(message: impl std::fmt::Display) -> EngineError {
    EngineError::Parse {
        format: "XGBoost JSON",
        message: message.to_string(),
    }
}

/// Parses `"0.5"`, `"[5E-1]"` (XGBoost ≥ 3.1 writes a vector) into one f32.
fn parse_base_score(text: &str) -> Result<f32, EngineError> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    let values: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match values.as_slice() {
        [one] => one
            .parse::<f32>()
            .map_err(|_| parse_err(format!("base_score '{text}' is not a number"))),
        _ => Err(EngineError::Unsupported(format!(
            "base_score '{text}': only single-target models are supported"
        ))),
    }
}

fn flag(v: &Json) -> bool {
    match v {
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_i64().unwrap_or(0) != 0,
        _ => false,
    }
}

/// Loads an XGBoost JSON model into a validated ensemble.
pub fn load(bytes: &[u8]) -> Result<Ensemble, EngineError> {
    let file: File = serde_json::from_slice(bytes).map_err(parse_err)?;
    let learner = file.learner;
    let n_features: usize = learner
        .learner_model_param
        .num_feature
        .parse()
        .map_err(|_| parse_err("num_feature is not a number"))?;
    for (name, value) in [
        ("num_class", &learner.learner_model_param.num_class),
        ("num_target", &learner.learner_model_param.num_target),
    ] {
        if let Some(v) = value
            && v.parse::<u64>().unwrap_or(0) > 1
        {
            return Err(EngineError::Unsupported(format!(
                "{name}={v}: only single-output models are supported"
            )));
        }
    }
    if learner.gradient_booster.name != "gbtree" {
        return Err(EngineError::Unsupported(format!(
            "booster '{}': only gbtree models are supported",
            learner.gradient_booster.name
        )));
    }
    let base = parse_base_score(&learner.learner_model_param.base_score)?;
    // Margin of the base score, computed in f32 as libxgboost's ProbToMargin does.
    let (base_margin, transform) = match learner.objective.name.as_str() {
        "reg:squarederror"
        | "reg:linear"
        | "reg:pseudohubererror"
        | "reg:absoluteerror"
        | "reg:squaredlogerror" => (base, OutputTransform::Identity),
        "binary:logistic" | "reg:logistic" => (
            -(1.0f32 / base - 1.0f32).ln(),
            OutputTransform::Sigmoid { scale: 1.0 },
        ),
        "binary:logitraw" => (-(1.0f32 / base - 1.0f32).ln(), OutputTransform::Identity),
        "count:poisson" | "reg:gamma" | "reg:tweedie" => (base.ln(), OutputTransform::Exp),
        other => return Err(EngineError::Unsupported(format!("objective '{other}'"))),
    };
    let model = learner
        .gradient_booster
        .model
        .ok_or_else(|| parse_err("gradient_booster has no model"))?;
    let mut nodes = Vec::new();
    let mut roots = Vec::with_capacity(model.trees.len());
    for (t, tree) in model.trees.iter().enumerate() {
        let n = tree.left_children.len();
        let lengths = [
            tree.right_children.len(),
            tree.split_indices.len(),
            tree.split_conditions.len(),
            tree.default_left.len(),
            tree.sum_hessian.len(),
        ];
        if n == 0 || lengths.iter().any(|&l| l != n) {
            return Err(parse_err(format!(
                "tree {t}: node arrays have different lengths"
            )));
        }
        if tree.split_type.iter().any(|&s| s != 0) {
            return Err(EngineError::Unsupported(format!(
                "tree {t} has categorical splits; train with one-hot features (as the project's pipeline does)"
            )));
        }
        let offset = nodes.len();
        roots.push(offset as u32);
        for i in 0..n {
            let (l, r) = (tree.left_children[i], tree.right_children[i]);
            let child = |c: i64| -> Result<u32, EngineError> {
                if c < 0 || c as usize >= n {
                    Err(EngineError::InvalidModel(format!(
                        "tree {t}: node {i} has child index {c} outside 0..{n}"
                    )))
                } else {
                    Ok((offset + c as usize) as u32)
                }
            };
            let node = if l == -1 {
                Node {
                    value: tree.split_conditions[i] as f32 as f64,
                    feature: 0,
                    left: LEAF,
                    right: LEAF,
                    default_left: false,
                    missing: Missing::Nan,
                    category_set: None,
                    cover: tree.sum_hessian[i],
                }
            } else {
                let feature = tree.split_indices[i];
                if feature < 0 || feature > u32::MAX as i64 {
                    return Err(EngineError::InvalidModel(format!(
                        "tree {t}: node {i} splits on feature {feature}"
                    )));
                }
                Node {
                    value: tree.split_conditions[i] as f32 as f64,
                    feature: feature as u32,
                    left: child(l)?,
                    right: child(r)?,
                    default_left: flag(&tree.default_left[i]),
                    missing: Missing::Nan,
                    category_set: None,
                    cover: tree.sum_hessian[i],
                }
            };
            nodes.push(node);
        }
    }
    Trees {
        n_features,
        nodes,
        roots,
        category_sets: Vec::new(),
        base_margin: base_margin as f64,
        rule: SplitRule::XgboostLess,
        transform,
        average_output: false,
    }
    .compile()
}
