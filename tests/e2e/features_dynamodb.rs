//! The feature store on AWS services in moto: the offline store on S3 and the online store in
//! DynamoDB. Offline/online consistency over 10,000 random entities, and every crash point of
//! incremental materialization (the watermark's S3 writes and the DynamoDB write calls).

use std::sync::Arc;

use chrono::TimeDelta;
use mlops_aws::DynamoOnline;
use mlops_domain::faults::{CrashScenario, FaultPlan, explore};
use mlops_domain::online::OnlineStore;
use mlops_domain::store::ObjectStore;
use mlops_features::columns::Micros;
use mlops_features::definition::ViewRef;
use mlops_features::materialize::{materialize, materialize_incremental, watermark};
use mlops_features::offline::OfflineStore;
use mlops_features::pit::as_of_join;
use mlops_features::registry::{FeatureRegistry, Registered, ViewDefinition};
use mlops_features::testing::{T0, TTL_HOURS, definitions, generate};
use rand::{Rng, SeedableRng};

const HOUR: Micros = 3_600_000_000;

async fn dynamodb() -> DynamoOnline {
    let config = mlops_aws::sdk_config(Some(&mlops_e2e::moto_endpoint())).await;
    let online = DynamoOnline::new(&config, &mlops_e2e::unique("features"));
    online
        .ensure_table()
        .await
        .expect("create the table in moto");
    online
}

struct World {
    store: Arc<dyn ObjectStore>,
    online: Arc<dyn OnlineStore>,
    dir: tempfile::TempDir,
}

async fn world(customers: u32, rows: usize) -> (World, Registered<ViewDefinition>) {
    let store: Arc<dyn ObjectStore> = mlops_e2e::s3_store("features").await;
    FeatureRegistry::new(store.clone())
        .apply(&definitions(), "e2e")
        .await
        .unwrap();
    let view = FeatureRegistry::new(store.clone())
        .view(&"stats".parse::<ViewRef>().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), "stats.csv", 11, customers, rows, T0, 24 * 10);
    OfflineStore::new(store.clone())
        .ingest(&view, &file, "generated", "e2e")
        .await
        .unwrap();
    (
        World {
            store,
            online: Arc::new(dynamodb().await),
            dir,
        },
        view,
    )
}

/// Online values (TTL applied as serving applies it) against offline point-in-time values.
async fn consistent(
    w: &World,
    view: &Registered<ViewDefinition>,
    keys: &[String],
    at: Micros,
) -> Result<usize, String> {
    let rows = w
        .online
        .read("stats", keys)
        .await
        .map_err(|e| e.to_string())?;
    let boxed: Vec<Box<str>> = keys.iter().map(|k| k.as_str().into()).collect();
    let offline = as_of_join(
        &OfflineStore::new(w.store.clone()),
        view,
        &boxed,
        &vec![at; keys.len()],
    )
    .await
    .map_err(|e| e.to_string())?;
    let ttl = TTL_HOURS as i64 * HOUR;
    let mut fresh = 0;
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref().filter(|r| at - r.event_time <= ttl);
        for (f, values) in offline.features.iter().zip(&offline.values) {
            let got = row.map_or(serde_json::Value::Null, |r| r.values[f].clone());
            if got != values.json(i) && !(row.is_none() && values.json(i).is_null()) {
                return Err(format!(
                    "{} {f}: online {got}, offline {}",
                    keys[i],
                    values.json(i)
                ));
            }
            if row.is_none() && !values.json(i).is_null() {
                return Err(format!("{} {f}: offline has a value, online none", keys[i]));
            }
        }
        fresh += usize::from(row.is_some());
    }
    Ok(fresh)
}

#[tokio::test]
async fn dynamodb_serves_the_point_in_time_offline_values_for_10000_entities() {
    let (w, view) = world(20_000, 100_000).await;
    let end = T0 + 8 * 24 * HOUR;
    let started = std::time::Instant::now();
    let m = materialize(
        &OfflineStore::new(w.store.clone()),
        w.online.as_ref(),
        &view,
        T0,
        end,
    )
    .await
    .unwrap();
    println!(
        "materialized {} entities from {} rows into {} in {:.2} s",
        m.entities,
        m.rows_read,
        w.online.describe(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(m.written.stored, m.entities);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let keys: Vec<String> = (0..10_000)
        .map(|_| format!("c{}", rng.gen_range(0..20_400)))
        .collect();
    let fresh = consistent(&w, &view, &keys, end - 1).await.unwrap();
    println!(
        "10,000 random entities: {fresh} with values within the TTL in DynamoDB, every value equal to the offline point-in-time value"
    );
    assert!(fresh > 7_000, "{fresh}");
    drop(w.dir);
}

struct MaterializeIncrementalOnDynamo;

#[async_trait::async_trait]
impl CrashScenario for MaterializeIncrementalOnDynamo {
    type World = (World, Registered<ViewDefinition>);
    async fn world(&self) -> Self::World {
        world(60, 600).await
    }
    async fn run(&self, (w, view): &Self::World, plan: &FaultPlan) -> Result<(), String> {
        let store = plan.store(w.store.clone());
        let online = plan.online(w.online.clone());
        materialize_incremental(
            &OfflineStore::new(store),
            online.as_ref(),
            view,
            T0 + 5 * 24 * HOUR,
            "job-1",
            TimeDelta::minutes(15),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
    async fn check(&self, (w, view): &Self::World) -> Result<(), String> {
        let wm = watermark(w.store.as_ref(), "stats")
            .await
            .map_err(|e| e.to_string())?;
        if wm.applied_until != Some(T0 + 5 * 24 * HOUR) || wm.pending.is_some() {
            return Err(format!("watermark after the retry: {wm:?}"));
        }
        let keys: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
        consistent(w, view, &keys, T0 + 5 * 24 * HOUR - 1)
            .await
            .map(drop)
    }
}

#[tokio::test]
async fn incremental_materialization_into_dynamodb_converges_at_every_crash_point() {
    let report = explore(&MaterializeIncrementalOnDynamo)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("features materialize-incremental (S3 + DynamoDB): {report}");
}
