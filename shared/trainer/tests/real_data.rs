//! Training on the real data sets in `../shared/data/` (beside the repository): quality targets,
//! determinism and native model-file round trips.

use mlops_trainer::lightgbm::LgbmParams;
use mlops_trainer::load_model;
use mlops_trainer::select::{CandidateSpec, TrainConfig, train_and_select};
use mlops_trainer::xgboost::XgbParams;

mod common;
use common::load;

fn trees() -> Vec<CandidateSpec> {
    vec![
        CandidateSpec::Xgboost(XgbParams::default()),
        CandidateSpec::Lightgbm(LgbmParams::default()),
    ]
}

#[test]
fn california_housing_best_candidate_reaches_rmse_045() {
    let (schema, data) = load("california_housing");
    assert_eq!(data.len(), 20_640);
    let outcome = train_and_select(&schema, &data, &TrainConfig::default(), |_| {}).unwrap();
    let rmse = outcome.test_metrics["rmse"];
    println!(
        "california_housing: selected {} test rmse {rmse:.4}",
        outcome.best().name
    );
    assert_eq!(outcome.test_labels.len(), 4128);
    assert!(rmse <= 0.45, "test RMSE {rmse}");
    // Labels are in units of 100,000 USD.
    assert!(
        outcome
            .test_labels
            .iter()
            .all(|&y| (0.14..=5.0001).contains(&y))
    );
}

#[test]
fn telco_churn_best_candidate_reaches_auc_084() {
    let (schema, data) = load("telco_churn");
    let outcome = train_and_select(&schema, &data, &TrainConfig::default(), |_| {}).unwrap();
    let auc = outcome.test_metrics["roc_auc"];
    println!(
        "telco_churn: selected {} test roc_auc {auc:.4}",
        outcome.best().name
    );
    assert!(auc >= 0.84, "test AUC {auc}");
    assert!(
        outcome.test_metrics["f1"] > 0.5,
        "{:?}",
        outcome.test_metrics
    );
}

#[test]
fn same_seed_gives_the_same_models_and_another_seed_does_not() {
    let (schema, data) = load("telco_churn");
    let config = |seed| TrainConfig {
        seed,
        candidates: trees(),
        ..TrainConfig::default()
    };
    let a = train_and_select(&schema, &data, &config(7), |_| {}).unwrap();
    let b = train_and_select(&schema, &data, &config(7), |_| {}).unwrap();
    let c = train_and_select(&schema, &data, &config(8), |_| {}).unwrap();
    for i in 0..2 {
        let (ma, mb, mc) = (
            a.candidates[i].model.to_bytes().unwrap(),
            b.candidates[i].model.to_bytes().unwrap(),
            c.candidates[i].model.to_bytes().unwrap(),
        );
        assert!(
            ma == mb,
            "{} differs between two runs with the same seed",
            a.candidates[i].name
        );
        assert!(ma != mc, "{} ignores the seed", a.candidates[i].name);
    }
}

#[test]
fn saved_models_reload_with_identical_predictions() {
    let (schema, data) = load("california_housing");
    let mut config = TrainConfig::default();
    for spec in &mut config.candidates {
        match spec {
            CandidateSpec::Xgboost(p) => p.max_rounds = 60,
            CandidateSpec::Lightgbm(p) => p.max_rounds = 60,
            CandidateSpec::Mlp(p) => p.max_epochs = 5,
            CandidateSpec::Linear { .. } => {}
        }
    }
    let outcome = train_and_select(&schema, &data, &config, |_| {}).unwrap();
    for c in &outcome.candidates {
        let (x, _) = c.pipeline.transform(&outcome.test_data);
        let reloaded =
            load_model(c.kind, schema.task, x.cols, &c.model.to_bytes().unwrap()).unwrap();
        assert_eq!(
            reloaded.predict(&x).unwrap(),
            c.model.predict(&x).unwrap(),
            "{}",
            c.name
        );
    }
}

#[test]
fn cross_validation_scores_every_fold() {
    let (schema, data) = load("telco_churn");
    let config = TrainConfig {
        cv_folds: Some(3),
        candidates: vec![
            CandidateSpec::Linear { l2: 1.0 },
            CandidateSpec::Lightgbm(LgbmParams::default()),
        ],
        ..TrainConfig::default()
    };
    let mut folds = 0;
    let outcome = train_and_select(&schema, &data, &config, |e| {
        if matches!(e, mlops_trainer::select::Progress::FoldFinished(..)) {
            folds += 1;
        }
    })
    .unwrap();
    assert_eq!(folds, 6);
    for c in &outcome.candidates {
        assert_eq!(c.cv_scores.len(), 3);
        assert!(
            c.cv_scores.iter().all(|s| (0.7..1.0).contains(s)),
            "{:?}",
            c.cv_scores
        );
    }
}

#[test]
fn corrupt_model_files_are_errors_not_crashes() {
    use mlops_domain::artifact::ModelKind;
    use mlops_domain::schema::Task;
    for kind in [ModelKind::Xgboost, ModelKind::Lightgbm, ModelKind::Linear] {
        for bytes in [
            &b""[..],
            b"{\"learner\": 1",
            b"\xff\xfe garbage",
            b"tree\nversion=v4\n",
        ] {
            assert!(
                load_model(kind, Task::Regression, 3, bytes).is_err(),
                "{kind} accepted {bytes:?}"
            );
        }
    }
}
