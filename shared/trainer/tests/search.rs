//! The budgeted search on the Telco churn data set: successive halving over CV folds,
//! selection among complete trials, the paired significance test and the time budget.

use std::path::PathBuf;

use mlops_domain::data::{Dataset, TargetPolicy, load_csv};
use mlops_domain::schema::Schema;
use mlops_trainer::lightgbm::LgbmParams;
use mlops_trainer::search::{SearchConfig, SearchEvent, TrialStatus};
use mlops_trainer::select::{CandidateSpec, Progress, TrainConfig, train_and_select};

fn telco() -> (Schema, Dataset) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = Schema::from_file(&repo.join("data/telco_churn.schema.toml")).unwrap();
    let file = repo.join("../shared/data/telco_churn.csv");
    let (data, _) = load_csv(&file, &schema, TargetPolicy::Required).unwrap();
    (schema, data)
}

fn config(search: SearchConfig) -> TrainConfig {
    TrainConfig {
        candidates: vec![
            CandidateSpec::Linear { l2: 1.0 },
            CandidateSpec::Lightgbm(LgbmParams {
                max_rounds: 300,
                early_stopping_rounds: 30,
                ..LgbmParams::default()
            }),
        ],
        search: Some(search),
        ..TrainConfig::default()
    }
}

#[test]
fn successive_halving_prunes_by_rung_and_selects_among_complete_trials() {
    let (schema, data) = telco();
    // 2 starting points + one bracket of 9 per family.
    let search = SearchConfig {
        max_trials: Some(20),
        max_seconds: None,
        ..SearchConfig::default()
    };
    let mut events = 0;
    let outcome = train_and_select(&schema, &data, &config(search.clone()), |e| {
        if let Progress::Search(SearchEvent::TrialEnded { .. }) = e {
            events += 1;
        }
    })
    .unwrap();
    let searched = outcome.search.as_ref().unwrap();
    assert_eq!(searched.trials.len(), 20);
    assert_eq!(events, 20);
    assert!(!searched.out_of_time);
    let count = |s: TrialStatus| searched.trials.iter().filter(|t| t.status == s).count();
    // Per bracket of 9 with eta 3 over 5 folds (rungs of 1, 3, 5 folds): 6 pruned after one
    // fold, 2 after three, 1 complete.
    assert_eq!(count(TrialStatus::Complete), 4);
    assert_eq!(count(TrialStatus::Pruned), 16);
    for t in &searched.trials {
        let expected: &[usize] = match t.status {
            TrialStatus::Complete => &[5],
            TrialStatus::Pruned => &[1, 3],
            TrialStatus::OutOfBudget => &[],
        };
        assert!(expected.contains(&t.fold_scores.len()), "{t:?}");
        assert!(
            t.fold_scores.iter().all(|s| (0.5..1.0).contains(s)),
            "{t:?}"
        );
    }
    // Nothing pruned after the first fold beat a survivor on that fold (AUC: higher is better).
    for family in 0..2 {
        let bracket: Vec<_> = searched
            .trials
            .iter()
            .filter(|t| t.family == family && t.bracket == 1)
            .collect();
        assert_eq!(bracket.len(), 9);
        let best_pruned = bracket
            .iter()
            .filter(|t| t.fold_scores.len() == 1)
            .map(|t| t.fold_scores[0])
            .fold(f64::MIN, f64::max);
        let worst_kept = bracket
            .iter()
            .filter(|t| t.fold_scores.len() > 1)
            .map(|t| t.fold_scores[0])
            .fold(f64::MAX, f64::min);
        assert!(worst_kept >= best_pruned, "{worst_kept} < {best_pruned}");
    }
    // Each candidate is its family's best complete trial, with that trial's fold scores.
    for (family, c) in outcome.candidates.iter().enumerate() {
        let best = searched
            .best_of_family(family, outcome.primary)
            .expect("every family has a complete trial");
        assert_eq!(c.cv_scores, best.fold_scores);
        assert_eq!(c.spec, best.spec);
    }
    let test = outcome.selection_test.as_ref().expect("a runner-up");
    assert_eq!(test.test.folds, 5);
    assert!((0.0..=1.0).contains(&test.test.p_value));
    assert!(
        test.test.mean_difference >= 0.0,
        "the selected one is not worse"
    );
    let auc = outcome.test_metrics["roc_auc"];
    println!(
        "telco search: {} selected, test AUC {auc:.4}, vs {} p = {:.4}",
        outcome.best().name,
        test.runner_up,
        test.test.p_value
    );
    assert!(auc >= 0.83, "test AUC {auc}");

    // Same seed, same search.
    let again = train_and_select(&schema, &data, &config(search), |_| {}).unwrap();
    let again = again.search.unwrap();
    for (a, b) in searched.trials.iter().zip(&again.trials) {
        assert_eq!(
            (&a.spec, &a.fold_scores, a.status),
            (&b.spec, &b.fold_scores, b.status)
        );
    }
}

#[test]
fn the_time_budget_stops_the_search_after_the_starting_points() {
    let (schema, data) = telco();
    let search = SearchConfig {
        max_trials: None,
        max_seconds: Some(1e-3),
        ..SearchConfig::default()
    };
    let outcome = train_and_select(&schema, &data, &config(search), |_| {}).unwrap();
    let searched = outcome.search.unwrap();
    assert!(searched.out_of_time);
    // The configured parameters are always scored on every fold, whatever the budget.
    assert_eq!(searched.trials.len(), 2);
    assert!(
        searched
            .trials
            .iter()
            .all(|t| t.status == TrialStatus::Complete && t.fold_scores.len() == 5)
    );
    assert_eq!(outcome.candidates.len(), 2);
}

#[test]
fn the_test_library_is_the_cpu_build_of_libxgboost() {
    // Tests link the `xgboost-cpu` wheel's library; the CUDA image carries the `xgboost` one.
    assert!(!mlops_trainer::xgboost::library_has_cuda().unwrap());
}
