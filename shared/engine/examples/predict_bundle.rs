//! The serving path in miniature: verify a bundle directory, compile it with the pure-Rust engine
//! and predict JSON records read from standard input (one object or a list), one JSON line each.
//!
//! `cargo run --release -p mlops-engine --example predict_bundle -- BUNDLE_DIR < rows.json`

use std::io::Read;
use std::process::ExitCode;

use mlops_domain::artifact::Bundle;
use mlops_domain::data::record_from_json;
use mlops_engine::Predictor;

fn run() -> Result<(), String> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: predict_bundle BUNDLE_DIR < rows.json")?;
    let bundle = Bundle::read_dir(std::path::Path::new(&dir)).map_err(|e| e.to_string())?;
    let predictor = Predictor::from_bundle(&bundle).map_err(|e| e.to_string())?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("standard input: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&input).map_err(|e| format!("standard input: {e}"))?;
    let records = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut rows = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let obj = record
            .as_object()
            .ok_or(format!("record {}: not an object", i + 1))?;
        let row = record_from_json(&bundle.manifest.schema, obj).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("record {}: {}", i + 1, list.join("; "))
        })?;
        rows.push(row);
    }
    let (predictions, _) = predictor.predict(&rows).map_err(|e| e.to_string())?;
    for p in predictions {
        println!("{}", serde_json::json!({ "prediction": p }));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
