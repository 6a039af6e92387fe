//! LightGBM text models (`save_model` / `model_to_string`, format `version=v4`).

use std::collections::HashMap;

use crate::EngineError;
use crate::tree::{Ensemble, Missing, Node, OutputTransform, SplitRule, Trees};

fn parse_err(message: impl std::fmt::Display) -> EngineError {
    EngineError::Parse {
        format: "LightGBM text",
        message: message.to_string(),
    }
}

fn numbers<T: std::str::FromStr>(
    fields: &HashMap<&str, &str>,
    key: &str,
    tree: usize,
    expected: usize,
) -> Result<Vec<T>, EngineError> {
    let Some(text) = fields.get(key) else {
        return if expected == 0 {
            Ok(Vec::new())
        } else {
            Err(parse_err(format!("tree {tree}: '{key}' is missing")))
        };
    };
    let mut out = Vec::new();
    for token in text.split_ascii_whitespace() {
        if out.len() == expected {
            return Err(parse_err(format!(
                "tree {tree}: '{key}' has more than {expected} values"
            )));
        }
        out.push(
            token.parse::<T>().map_err(|_| {
                parse_err(format!("tree {tree}: '{key}' has a bad value '{token}'"))
            })?,
        );
    }
    if out.len() != expected {
        return Err(parse_err(format!(
            "tree {tree}: '{key}' has {} values, expected {expected}",
            out.len()
        )));
    }
    Ok(out)
}

fn key_values(block: &str) -> HashMap<&str, &str> {
    block.lines().filter_map(|l| l.split_once('=')).collect()
}

/// Loads a LightGBM text model into a validated ensemble.
pub fn load(bytes: &[u8]) -> Result<Ensemble, EngineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| parse_err(format!("not UTF-8 text: {e}")))?;
    let text = text.split("\nend of trees").next().unwrap_or(text);
    let mut blocks = text.split("\nTree=");
    let header_text = blocks.next().unwrap_or("");
    if !header_text.starts_with("tree\n") && !header_text.starts_with("tree\r\n") {
        return Err(parse_err("does not start with 'tree'"));
    }
    let header = key_values(header_text);
    let get = |k: &str| {
        header
            .get(k)
            .copied()
            .ok_or_else(|| parse_err(format!("header has no '{k}'")))
    };
    let max_feature_idx: i64 = get("max_feature_idx")?
        .trim()
        .parse()
        .map_err(|_| parse_err("bad max_feature_idx"))?;
    if !(0..i64::from(u32::MAX)).contains(&max_feature_idx) {
        return Err(parse_err(format!(
            "max_feature_idx {max_feature_idx} is out of range"
        )));
    }
    for key in ["num_class", "num_tree_per_iteration"] {
        if let Some(v) = header.get(key)
            && v.trim() != "1"
        {
            return Err(EngineError::Unsupported(format!(
                "{key}={v}: only single-output models are supported"
            )));
        }
    }
    let objective = get("objective")?.trim();
    let mut parts = objective.split_ascii_whitespace();
    let transform = match parts.next().unwrap_or("") {
        "binary" | "cross_entropy" => {
            let scale = parts
                .find_map(|p| p.strip_prefix("sigmoid:"))
                .map_or(Ok(1.0), |s| {
                    s.parse::<f64>()
                        .map_err(|_| parse_err(format!("bad sigmoid in '{objective}'")))
                })?;
            OutputTransform::Sigmoid { scale }
        }
        "poisson" | "gamma" | "tweedie" => OutputTransform::Exp,
        "regression" | "regression_l1" | "huber" | "fair" | "quantile" | "mape" => {
            if objective.split_ascii_whitespace().any(|p| p == "sqrt") {
                return Err(EngineError::Unsupported(
                    "regression with the 'sqrt' transform".into(),
                ));
            }
            OutputTransform::Identity
        }
        other => return Err(EngineError::Unsupported(format!("objective '{other}'"))),
    };
    let average_output = header_text.lines().any(|l| l.trim() == "average_output");

    let mut nodes = Vec::new();
    let mut roots = Vec::new();
    let mut category_sets = Vec::new();
    for (t, block) in blocks.enumerate() {
        let fields = key_values(block);
        let n_leaves: usize = fields
            .get("num_leaves")
            .ok_or_else(|| parse_err(format!("tree {t}: no num_leaves")))?
            .trim()
            .parse()
            .map_err(|_| parse_err(format!("tree {t}: bad num_leaves")))?;
        // Lengths are checked against the text itself, so a huge claimed count cannot allocate.
        if n_leaves == 0 || n_leaves > block.len() {
            return Err(parse_err(format!(
                "tree {t}: num_leaves {n_leaves} is impossible"
            )));
        }
        if fields.get("is_linear").is_some_and(|v| v.trim() != "0") {
            return Err(EngineError::Unsupported(format!(
                "tree {t} is a linear tree"
            )));
        }
        let n_cat: usize = fields.get("num_cat").map_or(Ok(0), |v| {
            v.trim()
                .parse()
                .map_err(|_| parse_err(format!("tree {t}: bad num_cat")))
        })?;
        let internal = n_leaves - 1;
        let leaf_value: Vec<f64> = numbers(&fields, "leaf_value", t, n_leaves)?;
        let leaf_count: Vec<f64> = if fields.contains_key("leaf_count") {
            numbers(&fields, "leaf_count", t, n_leaves)?
        } else {
            vec![0.0; n_leaves]
        };
        let split_feature: Vec<i64> = numbers(&fields, "split_feature", t, internal)?;
        let threshold: Vec<f64> = numbers(&fields, "threshold", t, internal)?;
        let decision_type: Vec<u8> = numbers(&fields, "decision_type", t, internal)?;
        let left: Vec<i64> = numbers(&fields, "left_child", t, internal)?;
        let right: Vec<i64> = numbers(&fields, "right_child", t, internal)?;
        let internal_count: Vec<f64> = if fields.contains_key("internal_count") {
            numbers(&fields, "internal_count", t, internal)?
        } else {
            vec![0.0; internal]
        };
        let cat_offset = category_sets.len();
        if n_cat > 0 {
            if n_cat > block.len() {
                return Err(parse_err(format!(
                    "tree {t}: num_cat {n_cat} is impossible"
                )));
            }
            let boundaries: Vec<usize> = numbers(&fields, "cat_boundaries", t, n_cat + 1)?;
            let words_text = fields
                .get("cat_threshold")
                .ok_or_else(|| parse_err(format!("tree {t}: no cat_threshold")))?;
            let words: Vec<u32> = words_text
                .split_ascii_whitespace()
                .map(|w| {
                    w.parse::<u32>()
                        .map_err(|_| parse_err(format!("tree {t}: bad cat_threshold '{w}'")))
                })
                .collect::<Result<_, _>>()?;
            for k in 0..n_cat {
                let (a, b) = (boundaries[k], boundaries[k + 1]);
                if a > b || b > words.len() {
                    return Err(parse_err(format!(
                        "tree {t}: cat_boundaries are inconsistent"
                    )));
                }
                category_sets.push(words[a..b].to_vec());
            }
        }
        let offset = nodes.len();
        roots.push(offset as u32);
        let index = |c: i64| -> Result<u32, EngineError> {
            let i = if c >= 0 {
                c as usize
            } else {
                internal + (!c) as usize
            };
            if (c >= 0 && i >= internal) || (c < 0 && (!c) as usize >= n_leaves) {
                return Err(EngineError::InvalidModel(format!(
                    "tree {t}: child {c} is out of range"
                )));
            }
            Ok((offset + i) as u32)
        };
        for i in 0..internal {
            let dt = decision_type[i];
            let categorical = dt & 1 == 1;
            let missing = match (dt >> 2) & 3 {
                0 => Missing::NoneAsZero,
                1 => Missing::Zero,
                2 => Missing::Nan,
                m => return Err(parse_err(format!("tree {t}: unknown missing type {m}"))),
            };
            let category_set = if categorical {
                let k = threshold[i];
                if !(k >= 0.0 && (k as usize) < n_cat && k.fract() == 0.0) {
                    return Err(EngineError::InvalidModel(format!(
                        "tree {t}: categorical split names set {k} of {n_cat}"
                    )));
                }
                Some((cat_offset + k as usize) as u32)
            } else {
                None
            };
            if split_feature[i] < 0 || split_feature[i] > max_feature_idx {
                return Err(EngineError::InvalidModel(format!(
                    "tree {t}: node {i} splits on feature {}",
                    split_feature[i]
                )));
            }
            nodes.push(Node {
                value: threshold[i],
                feature: split_feature[i] as u32,
                left: index(left[i])?,
                right: index(right[i])?,
                default_left: dt & 2 == 2,
                missing,
                category_set,
                cover: internal_count[i],
            });
        }
        for j in 0..n_leaves {
            nodes.push(Node::leaf(leaf_value[j], leaf_count[j]));
        }
    }
    Trees {
        n_features: max_feature_idx as usize + 1,
        nodes,
        roots,
        category_sets,
        base_margin: 0.0,
        rule: SplitRule::LightgbmLessEqual,
        transform,
        average_output,
    }
    .compile()
}
