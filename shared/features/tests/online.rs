//! Materialization into the embedded online store (the object store), on the real local store:
//! offline/online consistency over 10,000 entities, incremental runs that never apply a range
//! twice, and every crash point of apply, ingest and incremental materialization.

use std::sync::Arc;

use chrono::TimeDelta;
use mlops_domain::faults::{CrashScenario, FaultPlan, explore};
use mlops_domain::online::{OnlineStore, StoreOnline};
use mlops_domain::store::ObjectStore;
use mlops_features::columns::Micros;
use mlops_features::definition::ViewRef;
use mlops_features::materialize::{Incremental, materialize, materialize_incremental, watermark};
use mlops_features::offline::OfflineStore;
use mlops_features::pit::as_of_join;
use mlops_features::registry::{FeatureRegistry, Registered, ViewDefinition};
use mlops_features::testing::{T0, TTL_HOURS, definitions, generate};
use mlops_store::LocalStore;
use rand::{Rng, SeedableRng};

const HOUR: Micros = 3_600_000_000;

struct World {
    store: Arc<dyn ObjectStore>,
    dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
        Self { store, dir }
    }

    async fn view(&self) -> Registered<ViewDefinition> {
        FeatureRegistry::new(self.store.clone())
            .view(&"stats".parse::<ViewRef>().unwrap())
            .await
            .unwrap()
    }
}

async fn setup(w: &World) -> Registered<ViewDefinition> {
    FeatureRegistry::new(w.store.clone())
        .apply(&definitions(), "test")
        .await
        .unwrap();
    let view = w.view().await;
    let offline = OfflineStore::new(w.store.clone());
    for (i, seed) in [1u64, 2].iter().enumerate() {
        let path = generate(
            w.dir.path(),
            &format!("part{i}.csv"),
            *seed,
            20_000,
            60_000,
            T0,
            24 * 10,
        );
        offline
            .ingest(&view, &path, "generated", "test")
            .await
            .unwrap();
    }
    view
}

/// The online values of `keys` as of `at` (TTL applied as serving applies it) against the
/// offline point-in-time values at `at`.
async fn assert_consistent(
    store: &Arc<dyn ObjectStore>,
    view: &Registered<ViewDefinition>,
    keys: &[String],
    at: Micros,
) -> usize {
    let online = StoreOnline::new(store.clone());
    let rows = online.read("stats", keys).await.unwrap();
    let boxed: Vec<Box<str>> = keys.iter().map(|k| k.as_str().into()).collect();
    let offline = as_of_join(
        &OfflineStore::new(store.clone()),
        view,
        &boxed,
        &vec![at; keys.len()],
    )
    .await
    .unwrap();
    let ttl = TTL_HOURS as i64 * HOUR;
    let mut fresh = 0;
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref().filter(|r| at - r.event_time <= ttl);
        for (f, values) in offline.features.iter().zip(&offline.values) {
            let want = if row.is_some() || values.json(i).is_null() {
                values.json(i)
            } else {
                panic!("{}: offline has {f} but online has nothing fresh", keys[i])
            };
            let got = row.map_or(serde_json::Value::Null, |r| r.values[f].clone());
            assert_eq!(got, want, "{} {f}", keys[i]);
        }
        fresh += usize::from(row.is_some());
    }
    fresh
}

#[tokio::test]
async fn online_values_equal_the_point_in_time_offline_values_for_10000_entities() {
    let w = World::new().await;
    let view = setup(&w).await;
    let end = T0 + 8 * 24 * HOUR; // two days of rows stay after it, unmaterialized
    let online = StoreOnline::new(w.store.clone());
    let m = materialize(&OfflineStore::new(w.store.clone()), &online, &view, T0, end)
        .await
        .unwrap();
    assert!(
        m.entities > 19_000 && m.written.stored == m.entities,
        "{m:?}"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let keys: Vec<String> = (0..10_000)
        .map(|_| format!("c{}", rng.gen_range(0..20_500)))
        .collect();
    // As of the end of the range (exclusive): 1 µs before it.
    let fresh = assert_consistent(&w.store, &view, &keys, end - 1).await;
    println!(
        "10,000 random entities: {fresh} with values within the TTL, all equal to the offline point-in-time values"
    );
    assert!(fresh > 7_000, "{fresh}");

    // Materializing an older range afterwards never moves an entity back in time.
    let older = materialize(
        &OfflineStore::new(w.store.clone()),
        &online,
        &view,
        T0,
        T0 + 24 * HOUR,
    )
    .await
    .unwrap();
    // Only entities whose latest row is in that day are rewritten (with the same row).
    assert!(
        older.written.older > 8_000 && older.written.stored < 500,
        "{older:?}"
    );
    assert_consistent(&w.store, &view, &keys, end - 1).await;
}

#[tokio::test]
async fn incremental_runs_apply_each_range_once() {
    let w = World::new().await;
    let view = setup(&w).await;
    let offline = OfflineStore::new(w.store.clone());
    let online = StoreOnline::new(w.store.clone());
    let lease = TimeDelta::minutes(15);
    let first =
        materialize_incremental(&offline, &online, &view, T0 + 5 * 24 * HOUR, "run-1", lease)
            .await
            .unwrap();
    let Incremental::Applied {
        result,
        took_over: None,
    } = first
    else {
        panic!("{first:?}")
    };
    let earliest = offline
        .snapshots("stats")
        .await
        .unwrap()
        .iter()
        .map(|s| s.event_time_range.unwrap().0)
        .min();
    assert_eq!(
        Some(result.start),
        earliest,
        "the first run starts at the earliest row"
    );
    let second =
        materialize_incremental(&offline, &online, &view, T0 + 5 * 24 * HOUR, "run-2", lease)
            .await
            .unwrap();
    assert!(matches!(second, Incremental::UpToDate { .. }), "{second:?}");
    let third = materialize_incremental(
        &offline,
        &online,
        &view,
        T0 + 10 * 24 * HOUR,
        "run-3",
        lease,
    )
    .await
    .unwrap();
    let Incremental::Applied { result: r3, .. } = third else {
        panic!()
    };
    assert_eq!(r3.start, T0 + 5 * 24 * HOUR, "continues from the watermark");
    assert_eq!(
        watermark(w.store.as_ref(), "stats")
            .await
            .unwrap()
            .applied_until,
        Some(T0 + 10 * 24 * HOUR)
    );
    let keys: Vec<String> = (0..2_000).map(|i| format!("c{i}")).collect();
    assert_consistent(&w.store, &view, &keys, T0 + 10 * 24 * HOUR - 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_incremental_runs_never_apply_a_range_twice() {
    let w = World::new().await;
    let view = setup(&w).await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (store, view) = (w.store.clone(), view.clone());
            tokio::spawn(async move {
                let online = StoreOnline::new(store.clone());
                materialize_incremental(
                    &OfflineStore::new(store),
                    &online,
                    &view,
                    T0 + 10 * 24 * HOUR,
                    &format!("run-{i}"),
                    TimeDelta::minutes(15),
                )
                .await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Incremental::Applied { .. }) => applied += 1,
            Ok(Incremental::UpToDate { .. }) => {}
            Err(e) => assert!(e.to_string().contains("is materializing"), "{e}"),
        }
    }
    assert_eq!(applied, 1, "exactly one run applies the range");
    let wm = watermark(w.store.as_ref(), "stats").await.unwrap();
    assert_eq!(
        (wm.applied_until, wm.pending),
        (Some(T0 + 10 * 24 * HOUR), None)
    );
}

#[tokio::test]
async fn a_dead_runs_claim_is_taken_over_after_its_lease() {
    let w = World::new().await;
    let view = setup(&w).await;
    let offline = OfflineStore::new(w.store.clone());
    let online = StoreOnline::new(w.store.clone());
    // run-1 claims, then dies before applying: the claim's first write fails.
    let plan = FaultPlan::at(2, mlops_domain::faults::Fault::Crash);
    let faulty = plan.store(w.store.clone());
    let dead = materialize_incremental(
        &OfflineStore::new(faulty.clone()),
        &StoreOnline::new(faulty),
        &view,
        T0 + 5 * 24 * HOUR,
        "run-1",
        TimeDelta::minutes(15),
    )
    .await;
    assert!(dead.is_err());
    let busy = materialize_incremental(
        &offline,
        &online,
        &view,
        T0 + 5 * 24 * HOUR,
        "run-2",
        TimeDelta::minutes(15),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        busy.contains("run run-1 is materializing") && busy.contains("--run-id run-1"),
        "{busy}"
    );
    let taken = materialize_incremental(
        &offline,
        &online,
        &view,
        T0 + 5 * 24 * HOUR,
        "run-2",
        TimeDelta::zero(),
    )
    .await
    .unwrap();
    assert!(
        matches!(taken, Incremental::Applied { took_over: Some(ref r), .. } if r == "run-1"),
        "{taken:?}"
    );
    let keys: Vec<String> = (0..2_000).map(|i| format!("c{i}")).collect();
    assert_consistent(&w.store, &view, &keys, T0 + 5 * 24 * HOUR - 1).await;
}

/// Crash scenarios: each runs the operation with a fault at every store write, then the same
/// call again without faults, then checks the result against a fault-free world.
struct Apply;
struct Ingest;
struct MaterializeIncremental;

fn small(dir: &std::path::Path) -> std::path::PathBuf {
    generate(dir, "small.csv", 5, 40, 300, T0, 24 * 3)
}

#[async_trait::async_trait]
impl CrashScenario for Apply {
    type World = World;
    async fn world(&self) -> World {
        World::new().await
    }
    async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
        FeatureRegistry::new(plan.store(w.store.clone()))
            .apply(&definitions(), "test")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn check(&self, w: &World) -> Result<(), String> {
        let r = FeatureRegistry::new(w.store.clone());
        let versions = r.view_versions("stats").await.map_err(|e| e.to_string())?;
        let entity = r
            .entity("customer", None)
            .await
            .map_err(|e| e.to_string())?;
        (versions.len() == 1
            && versions[0].definition.view == definitions().feature_views[0]
            && entity.version == 1)
            .then_some(())
            .ok_or(format!("{} view versions after the retry", versions.len()))
    }
}

#[async_trait::async_trait]
impl CrashScenario for Ingest {
    type World = World;
    async fn world(&self) -> World {
        let w = World::new().await;
        FeatureRegistry::new(w.store.clone())
            .apply(&definitions(), "test")
            .await
            .unwrap();
        w
    }
    async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
        let view = w.view().await;
        OfflineStore::new(plan.store(w.store.clone()))
            .ingest(&view, &small(w.dir.path()), "small", "test")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
    async fn check(&self, w: &World) -> Result<(), String> {
        let offline = OfflineStore::new(w.store.clone());
        let snapshots = offline
            .snapshots("stats")
            .await
            .map_err(|e| e.to_string())?;
        if snapshots.len() != 1 || snapshots[0].rows != 300 {
            return Err(format!("{} snapshots after the retry", snapshots.len()));
        }
        let keys: Vec<Box<str>> = (0..40).map(|i| format!("c{i}").into()).collect();
        let j = as_of_join(
            &offline,
            &w.view().await,
            &keys,
            &vec![T0 + 3 * 24 * HOUR; 40],
        )
        .await
        .map_err(|e| e.to_string())?;
        (j.rows_read == 300)
            .then_some(())
            .ok_or(format!("{} rows readable", j.rows_read))
    }
}

#[async_trait::async_trait]
impl CrashScenario for MaterializeIncremental {
    type World = World;
    async fn world(&self) -> World {
        let w = Ingest.world().await;
        Ingest.run(&w, &FaultPlan::counting()).await.unwrap();
        w
    }
    async fn run(&self, w: &World, plan: &FaultPlan) -> Result<(), String> {
        let store = plan.store(w.store.clone());
        let view = w.view().await;
        materialize_incremental(
            &OfflineStore::new(store.clone()),
            &StoreOnline::new(store),
            &view,
            T0 + 3 * 24 * HOUR,
            "job-1",
            TimeDelta::minutes(15),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }
    async fn check(&self, w: &World) -> Result<(), String> {
        let wm = watermark(w.store.as_ref(), "stats")
            .await
            .map_err(|e| e.to_string())?;
        if wm.applied_until != Some(T0 + 3 * 24 * HOUR) || wm.pending.is_some() {
            return Err(format!("watermark after the retry: {wm:?}"));
        }
        let keys: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let fresh =
            assert_consistent(&w.store, &w.view().await, &keys, T0 + 3 * 24 * HOUR - 1).await;
        (fresh > 0).then_some(()).ok_or("no entity online".into())
    }
}

#[tokio::test]
async fn apply_ingest_and_incremental_materialization_converge_at_every_crash_point() {
    for (name, report) in [
        ("features apply", explore(&Apply).await),
        ("features ingest", explore(&Ingest).await),
        (
            "features materialize-incremental",
            explore(&MaterializeIncremental).await,
        ),
    ] {
        let report = report.unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}: {report}");
    }
}
