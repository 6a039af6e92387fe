//! Drift on real data: California Housing's coastal rows as the reference and its INLAND rows as
//! the window flag the features that differ; 100 random re-splits of the same rows (no drift by
//! construction) count the false alarms. `cargo test -p mlops-trainer --test drift_real_data --
//! --nocapture` prints the figures.

use mlops_domain::data::{Dataset, Value};
use mlops_domain::drift::{DatasetDrift, DriftRule, Reference};
use mlops_domain::profile::profile;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

mod common;
use common::load;

fn subset(data: &Dataset, rows: &[usize]) -> Dataset {
    Dataset {
        rows: rows.iter().map(|&i| data.rows[i].clone()).collect(),
        labels: Vec::new(),
        ids: Vec::new(),
        lines: Vec::new(),
        ..data.clone()
    }
}

/// Drift of `current`'s rows (as logged JSON records) against `reference`'s profile.
fn drift(data: &Dataset, reference: &[usize], current: &[usize]) -> DatasetDrift {
    let reference_profile = Reference::from_profiles(&profile(&subset(data, reference)));
    let mut sketch = reference_profile.sketch();
    for &i in current {
        let record: serde_json::Map<String, serde_json::Value> = data
            .feature_columns
            .iter()
            .zip(&data.rows[i])
            .map(|(c, v)| {
                let v = match v {
                    Value::Missing => serde_json::Value::Null,
                    Value::Number(x) => serde_json::json!(x),
                    Value::Category(s) => serde_json::json!(s),
                };
                (c.name.clone(), v)
            })
            .collect();
        reference_profile.add(&mut sketch, &record);
    }
    DriftRule::default()
        .check(&reference_profile, &sketch)
        .unwrap()
}

#[test]
fn inland_rows_drift_from_coastal_ones_and_random_splits_do_not() {
    let (_, data) = load("california_housing");
    let ocean = data
        .feature_columns
        .iter()
        .position(|c| c.name == "ocean_proximity")
        .unwrap();
    let (inland, coastal): (Vec<usize>, Vec<usize>) = (0..data.len())
        .partition(|&i| matches!(&data.rows[i][ocean], Value::Category(c) if c == "INLAND"));
    let shifted = drift(&data, &coastal, &inland);
    println!(
        "coastal ({}) vs INLAND ({}) rows: {} of {} features drifted",
        coastal.len(),
        inland.len(),
        shifted.drifted_features,
        shifted.features.len()
    );
    for f in &shifted.features {
        println!(
            "  {:<20} {:?} {:.4} (threshold {}) drifted {} PSI {:.3}",
            f.feature,
            f.test,
            f.score.unwrap(),
            f.threshold,
            f.drifted,
            f.psi.unwrap()
        );
    }
    let flagged: Vec<&str> = shifted
        .features
        .iter()
        .filter(|f| f.drifted)
        .map(|f| f.feature.as_str())
        .collect();
    // Inland districts lie east (longitude), are cheaper to live in and earn less; the category
    // itself is new to a coastal reference.
    for expected in ["longitude", "median_income", "ocean_proximity"] {
        assert!(
            flagged.contains(&expected),
            "{expected} not flagged: {flagged:?}"
        );
    }
    assert!(shifted.drifted, "{flagged:?}");

    // Random re-splits of the same rows, sized as above: any flag is a false alarm.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut all: Vec<usize> = (0..data.len()).collect();
    let (mut alarms, mut feature_alarms) = (0, 0);
    for _ in 0..100 {
        all.shuffle(&mut rng);
        let (reference, current) = all.split_at(coastal.len());
        let d = drift(&data, reference, current);
        alarms += usize::from(d.drifted);
        feature_alarms += d.drifted_features;
    }
    let checks = 100 * shifted.features.len();
    println!(
        "100 random re-splits: {alarms} data-set false alarms, {feature_alarms} of {checks} feature checks flagged"
    );
    assert!(alarms <= 5, "{alarms} false alarms in 100");
}
