//! The budgeted search on the Telco churn data set: successive halving over CV folds,
//! selection among complete trials, the paired significance test and the time budget.

use std::path::PathBuf;

use mlops_domain::data::{Dataset, TargetPolicy, load_csv};
use mlops_domain::schema::Schema;
use mlops_trainer::lightgbm::LgbmParams;
use std::collections::BTreeMap;

use mlops_trainer::TrainError;
use mlops_trainer::search::{
    FoldUnit, SearchConfig, SearchEvent, SearchOutcome, SearchProblem, SearchRunner,
    SharedProgress, Step, TrialStatus,
};
use mlops_trainer::select::{
    CandidateSpec, Progress, TrainConfig, search_training_split, train_and_select,
};

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

/// Workers sharing one search in-process: each round one free waiting fit, picked at random, is
/// made; now and then a worker claims a fit and dies with it (its claim lapses after a few rounds).
struct ScrambledWorkers {
    state: u64,
    fits: BTreeMap<FoldUnit, usize>,
    rounds_waited_on_claims: usize,
    out_of_time: bool,
}

impl ScrambledWorkers {
    fn new(seed: u64, out_of_time: bool) -> Self {
        Self {
            state: seed,
            fits: BTreeMap::new(),
            rounds_waited_on_claims: 0,
            out_of_time,
        }
    }

    fn next(&mut self, n: usize) -> usize {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % n as u64) as usize
    }
}

impl SearchRunner for ScrambledWorkers {
    fn run(
        &mut self,
        problem: &SearchProblem<'_>,
        on: &mut dyn FnMut(SearchEvent),
    ) -> Result<SearchOutcome, TrainError> {
        let mut progress = SharedProgress {
            out_of_time: self.out_of_time,
            ..SharedProgress::default()
        };
        let mut dead: Vec<(FoldUnit, usize)> = Vec::new();
        for round in 0.. {
            // Claims of dead workers lapse after three rounds.
            dead.retain(|&(unit, until)| {
                let live = round < until;
                if !live {
                    progress.claimed.remove(&unit);
                }
                live
            });
            let waiting = match problem.step(&progress, on)? {
                Step::Done(outcome) => return Ok(outcome),
                Step::Wait(waiting) => waiting,
            };
            let free: Vec<_> = waiting
                .iter()
                .filter(|p| !progress.claimed.contains(&p.unit))
                .collect();
            if free.len() < waiting.len() {
                self.rounds_waited_on_claims += 1;
            }
            assert!(!free.is_empty() || !dead.is_empty(), "nothing to do");
            if free.is_empty() {
                continue;
            }
            let pick = free[self.next(free.len())];
            if round % 7 == 3 {
                progress.claimed.insert(pick.unit);
                dead.push((pick.unit, round + 3));
                continue;
            }
            let score = problem.fit(pick)?;
            *self.fits.entry(pick.unit).or_default() += 1;
            progress.scores.insert(pick.unit, score);
        }
        unreachable!()
    }
}

fn same_trials(a: &SearchOutcome, b: &SearchOutcome) {
    assert_eq!(a.trials.len(), b.trials.len());
    for (x, y) in a.trials.iter().zip(&b.trials) {
        let bits = |t: &[f64]| t.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            (x.id, x.family, x.bracket, x.slot, &x.spec, x.status),
            (y.id, y.family, y.bracket, y.slot, &y.spec, y.status)
        );
        assert_eq!(bits(&x.fold_scores), bits(&y.fold_scores), "trial {}", x.id);
    }
}

#[test]
fn workers_sharing_a_search_end_where_one_container_does() {
    let (schema, data) = telco();
    let search = SearchConfig {
        max_trials: Some(20),
        max_seconds: None,
        ..SearchConfig::default()
    };
    let config = config(search);
    let here = train_and_select(&schema, &data, &config, |_| {})
        .unwrap()
        .search
        .unwrap();
    let mut workers = ScrambledWorkers::new(0x9e3779b97f4a7c15, false);
    let mut ended = Vec::new();
    let shared = search_training_split(&schema, &data, &config, &mut workers, &mut |e| {
        let SearchEvent::TrialEnded { trial, .. } = e;
        ended.push(trial.id);
    })
    .unwrap();
    same_trials(&here, &shared);
    assert_eq!(
        ended,
        (0..20).collect::<Vec<_>>(),
        "every trial reported once, in order"
    );
    // Every fit the single container made, made once: 2 × 5 starting folds, and per bracket of
    // 9: 9 first folds, 3 × 2 more, 1 × 2 more.
    let made: usize = here.trials.iter().map(|t| t.fold_scores.len()).sum();
    assert_eq!(made, 10 + 2 * (9 + 6 + 2));
    assert_eq!(workers.fits.len(), made);
    assert!(workers.fits.values().all(|&n| n == 1), "{:?}", workers.fits);
    assert!(
        workers.rounds_waited_on_claims > 0,
        "a claim held fits back"
    );
}

#[test]
fn a_shared_search_past_its_time_scores_only_the_starting_points() {
    let (schema, data) = telco();
    let search = SearchConfig {
        max_trials: None,
        max_seconds: Some(60.0),
        ..SearchConfig::default()
    };
    let mut workers = ScrambledWorkers::new(7, true);
    let outcome =
        search_training_split(&schema, &data, &config(search), &mut workers, &mut |_| {}).unwrap();
    assert!(outcome.out_of_time);
    assert_eq!(outcome.trials.len(), 2);
    assert!(
        outcome
            .trials
            .iter()
            .all(|t| t.bracket == 0 && t.status == TrialStatus::Complete)
    );
    assert_eq!(workers.fits.len(), 10);
}

#[test]
fn fold_units_name_themselves_and_read_back() {
    let unit = FoldUnit {
        family: 2,
        bracket: 17,
        slot: 8,
        fold: 4,
    };
    assert_eq!(unit.name(), "f2-b00017-t008-k04");
    assert_eq!(FoldUnit::parse(&unit.name()), Some(unit));
    for bad in [
        "",
        "f2-b00017-t008",
        "f2-b17-t008-k04",
        "x2-b00017-t008-k04",
        "f2-b00017-t008-k04-z",
    ] {
        assert_eq!(FoldUnit::parse(bad), None, "{bad}");
    }
}

#[test]
fn the_test_library_is_the_cpu_build_of_libxgboost() {
    // Tests link the `xgboost-cpu` wheel's library; the CUDA image carries the `xgboost` one.
    assert!(!mlops_trainer::xgboost::library_has_cuda().unwrap());
}
