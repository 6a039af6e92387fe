//! The pure-Rust engine against the native libraries, on the whole test split of both data sets,
//! for every model kind the project trains: predictions within 1e-6 relative on every row;
//! TreeSHAP sums to the margin and matches the native contributions within 1e-5 on every tenth
//! row (TreeSHAP costs trees × leaves × depth² per row). Tree models loaded from their engine
//! image equal the natively compiled ones bit for bit on every row.

use mlops_domain::artifact::ModelKind;
use mlops_engine::CompiledModel;
use mlops_trainer::select::{TrainConfig, train_and_select};

mod common;

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn check(dataset: &str) {
    let (schema, data) = common::load(dataset);
    let outcome = train_and_select(&schema, &data, &TrainConfig::default(), |_| {}).unwrap();
    for c in &outcome.candidates {
        let (x, _) = c.pipeline.transform(&outcome.test_data);
        let native = c.model.predict(&x).unwrap();
        let engine = CompiledModel::load(c.kind, &c.model.to_bytes().unwrap()).unwrap();
        let ours = engine.predict_batch(&x.values);
        let single: Vec<f64> = (0..x.rows)
            .map(|i| engine.transform(engine.margin(x.row(i))))
            .collect();
        assert_eq!(
            ours, single,
            "{dataset} {}: batch and single-row paths agree exactly",
            c.name
        );
        let worst = ours
            .iter()
            .zip(&native)
            .map(|(a, b)| relative(*a, *b))
            .fold(0.0, f64::max);
        let worst_abs = ours
            .iter()
            .zip(&native)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{dataset} {:<9} {} rows: max relative |engine − native| = {worst:e} (abs {worst_abs:e})",
            c.name, x.rows
        );
        assert!(
            worst <= 1e-6,
            "{dataset} {}: relative difference {worst}",
            c.name
        );

        let native_phi = c.model.contributions(&x).unwrap();
        let width = x.cols + 1;
        let (mut worst_phi, mut worst_sum) = (0.0f64, 0.0f64);
        for i in (0..x.rows).step_by(10) {
            let phi = engine.contributions(x.row(i)).unwrap();
            let margin = engine.margin(x.row(i));
            let sum: f64 = phi.iter().sum();
            worst_sum = worst_sum.max((sum - margin).abs() / margin.abs().max(1.0));
            for (a, b) in phi.iter().zip(&native_phi[i * width..(i + 1) * width]) {
                worst_phi = worst_phi.max((a - b).abs());
            }
        }
        println!(
            "{dataset} {:<9} TreeSHAP: max |engine − native| = {worst_phi:e}, max |Σφ − margin| = {worst_sum:e}",
            c.name
        );
        let tolerance = if c.kind == ModelKind::Xgboost {
            1e-5
        } else {
            1e-9
        };
        assert!(
            worst_phi <= tolerance,
            "{dataset} {}: contributions differ by {worst_phi}",
            c.name
        );
        assert!(
            worst_sum <= 1e-5,
            "{dataset} {}: contributions sum off by {worst_sum}",
            c.name
        );
        check_image(dataset, &c.name, &engine, &c.model.to_bytes().unwrap(), &x);
    }
}

/// A tree model loaded from its engine image predicts every test row, single and batched, and
/// explains every tenth, bit for bit as the model compiled from its native file.
fn check_image(
    dataset: &str,
    name: &str,
    engine: &CompiledModel,
    model_bytes: &[u8],
    x: &mlops_domain::features::FeatureMatrix,
) {
    let Some(image) = engine.image(model_bytes) else {
        return;
    };
    let source = mlops_domain::hashing::sha256_hex(model_bytes);
    let loaded = CompiledModel::Trees(
        mlops_engine::image::load(&image, &source, mlops_engine::image::Integrity::CheckBody)
            .unwrap(),
    );
    let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
    assert_eq!(
        bits(loaded.predict_batch(&x.values)),
        bits(engine.predict_batch(&x.values)),
        "{dataset} {name}: image batch predictions"
    );
    for i in 0..x.rows {
        assert_eq!(
            loaded.margin(x.row(i)).to_bits(),
            engine.margin(x.row(i)).to_bits(),
            "{dataset} {name}: image margin of row {i}"
        );
    }
    for i in (0..x.rows).step_by(10) {
        assert_eq!(
            bits(loaded.contributions(x.row(i)).unwrap()),
            bits(engine.contributions(x.row(i)).unwrap()),
            "{dataset} {name}: image contributions of row {i}"
        );
    }
    println!(
        "{dataset} {name:<9} engine image: {} bytes (model file {}), {} rows bit for bit",
        image.len(),
        model_bytes.len(),
        x.rows
    );
}

#[test]
fn california_housing_engine_matches_native() {
    check("california_housing");
}

#[test]
fn telco_churn_engine_matches_native() {
    check("telco_churn");
}
