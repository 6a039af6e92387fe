//! Estimated performance without labels (CBPE) on real data: a LightGBM churn model on Telco,
//! calibrated on one half of its held-out rows as `mlops train` calibrates on its test split,
//! then scored on the other half cut into windows by tenure (churn and model quality change
//! with it). Each window's AUC and accuracy estimated from the probabilities alone are compared
//! with the ones realized from the labels. `cargo test -p mlops-trainer --test cbpe_real_data
//! -- --nocapture` prints the figures.

use mlops_domain::data::Value;
use mlops_domain::quality::{Calibration, QualitySketch};
use mlops_domain::schema::Task;
use mlops_trainer::lightgbm::LgbmParams;
use mlops_trainer::select::{CandidateSpec, TrainConfig, train_and_select};

mod common;
use common::load;

#[test]
fn estimated_auc_and_accuracy_follow_the_realized_ones_over_windows() {
    let (schema, data) = load("telco_churn");
    let config = TrainConfig {
        test_fraction: 0.5,
        candidates: vec![CandidateSpec::Lightgbm(LgbmParams::default())],
        ..TrainConfig::default()
    };
    let outcome = train_and_select(&schema, &data, &config, |_| {}).unwrap();
    let (p, y) = (&outcome.test_predictions, &outcome.test_labels);
    let tenure = outcome
        .test_data
        .feature_columns
        .iter()
        .position(|c| c.name == "tenure")
        .unwrap();
    let tenure_of = |i: usize| match outcome.test_data.rows[i][tenure] {
        Value::Number(t) => t,
        _ => f64::NAN,
    };
    // Even rows calibrate (the reference); odd rows are production, in windows by tenure.
    let (reference, mut analysis): (Vec<usize>, Vec<usize>) =
        (0..p.len()).partition(|i| i % 2 == 0);
    let pick = |rows: &[usize], v: &[f64]| rows.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    let calibration = Calibration::fit(&pick(&reference, p), &pick(&reference, y)).unwrap();
    // Windows in arrival order (no shift), then windows by tenure (churn from 54 % to 6 %).
    let (random, random_acc) = windows_report(
        "in arrival order",
        &analysis,
        &|i| tenure_of(i),
        p,
        y,
        &calibration,
    );
    analysis.sort_by(|&a, &b| tenure_of(a).total_cmp(&tenure_of(b)).then(a.cmp(&b)));
    let (by_tenure, by_tenure_acc) = windows_report(
        "by tenure",
        &analysis,
        &|i| tenure_of(i),
        p,
        y,
        &calibration,
    );
    assert!(
        mean(&random) < 0.03 && mean(&random_acc) < 0.03,
        "{random:?} {random_acc:?}"
    );
    assert!(
        mean(&by_tenure) < 0.05 && mean(&by_tenure_acc) < 0.04,
        "{by_tenure:?} {by_tenure_acc:?}"
    );
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Six windows of `rows` in order: estimated vs realized AUC and accuracy printed; the absolute
/// errors of each.
fn windows_report(
    name: &str,
    rows: &[usize],
    tenure_of: &dyn Fn(usize) -> f64,
    p: &[f64],
    y: &[f64],
    calibration: &Calibration,
) -> (Vec<f64>, Vec<f64>) {
    let windows = 6;
    let per = rows.len().div_ceil(windows);
    let mut auc_errors = Vec::new();
    let mut accuracy_errors = Vec::new();
    let mut inside = 0;
    println!("  {windows} windows {name}:");
    println!(
        "  {:<14} {:>5} {:>6}  {:>9} {:>9} {:>15}  {:>9} {:>9}",
        "tenure", "rows", "churn", "est. AUC", "real AUC", "95% interval", "est. acc", "real acc"
    );
    for window in rows.chunks(per) {
        let mut sketch = QualitySketch::new(Task::BinaryClassification);
        for &i in window {
            sketch.add(p[i], Some(y[i]));
        }
        let q = sketch.report(Some(calibration));
        let (auc, accuracy) = (q.metrics["roc_auc"], q.metrics["accuracy"]);
        let (est_auc, est_accuracy) = (q.estimated["roc_auc"], q.estimated["accuracy"]);
        let churn = window.iter().map(|&i| y[i]).sum::<f64>() / window.len() as f64;
        let tenures = window.iter().map(|&i| tenure_of(i));
        let (low, high) = tenures.fold((f64::MAX, f64::MIN), |(l, h), t| (l.min(t), h.max(t)));
        println!(
            "  {:>4.0}–{:<4.0} mo {:>5} {:>5.1}%  {:>9.4} {:>9.4} [{:.3}, {:.3}]  {:>9.4} {:>9.4}",
            low,
            high,
            window.len(),
            churn * 100.0,
            est_auc,
            auc.value,
            auc.low,
            auc.high,
            est_accuracy,
            accuracy.value
        );
        auc_errors.push((est_auc - auc.value).abs());
        accuracy_errors.push((est_accuracy - accuracy.value).abs());
        inside += usize::from(auc.contains(est_auc));
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "  |estimated − realized|: AUC mean {:.4} max {:.4}; accuracy mean {:.4} max {:.4}; estimated AUC inside the realized one's 95% interval in {inside} of {windows}",
        mean(&auc_errors),
        max(&auc_errors),
        mean(&accuracy_errors),
        max(&accuracy_errors)
    );
    (auc_errors, accuracy_errors)
}
