//! Fixtures shared by the feature store's tests and the end-to-end tests: a `customer` entity
//! with a `stats` view (float, text and integer features, 72-hour TTL), and random rows of it.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::columns::{Micros, format_time};
use crate::definition::{Definitions, Entity, Feature, FeatureType, FeatureView, Ttl};

/// 2024-03-01T00:00:00Z.
pub const T0: Micros = 1_709_251_200_000_000;
/// The `stats` view's TTL.
pub const TTL_HOURS: u64 = 72;

/// The `customer` entity and its `stats` view.
pub fn definitions() -> Definitions {
    Definitions {
        entities: vec![Entity {
            name: "customer".into(),
            join_keys: vec!["customer_id".into()],
            owner: "tests".into(),
            description: "A customer".into(),
            tags: Default::default(),
        }],
        feature_views: vec![FeatureView {
            name: "stats".into(),
            entities: vec!["customer".into()],
            event_time: "ts".into(),
            ttl: Some(Ttl(Duration::from_secs(TTL_HOURS * 3600))),
            source: String::new(),
            owner: "tests".into(),
            description: "Customer statistics".into(),
            tags: Default::default(),
            features: vec![
                Feature {
                    name: "spend".into(),
                    dtype: FeatureType::Float64,
                    description: String::new(),
                },
                Feature {
                    name: "plan".into(),
                    dtype: FeatureType::String,
                    description: String::new(),
                },
                Feature {
                    name: "visits".into(),
                    dtype: FeatureType::Int64,
                    description: String::new(),
                },
            ],
        }],
    }
}

/// Writes `rows` random rows for `entities` customers over `hours` hours from `from` (distinct
/// times per customer, some values empty) to a CSV; returns its path.
pub fn generate(
    dir: &std::path::Path,
    name: &str,
    seed: u64,
    entities: u32,
    rows: usize,
    from: Micros,
    hours: i64,
) -> std::path::PathBuf {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let path = dir.join(name);
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["customer_id", "ts", "spend", "plan", "visits"])
        .unwrap();
    for _ in 0..rows {
        let t = from + rng.gen_range(0..hours * 3600) * 1_000_000 + rng.gen_range(0..1_000_000);
        let spend = if rng.gen_bool(0.05) {
            String::new()
        } else {
            format!("{:.2}", rng.gen_range(0.0..500.0))
        };
        let plan = ["basic", "pro", "team"][rng.gen_range(0..3)].to_string();
        w.write_record([
            format!("c{}", rng.gen_range(0..entities)),
            format_time(t),
            spend,
            plan,
            rng.gen_range(0..90).to_string(),
        ])
        .unwrap();
    }
    w.flush().unwrap();
    path
}
