//! Times the phases of a point-in-time retrieval and a materialization on an existing store:
//! `cargo run --release -p mlops-features --example pit_phases -- STORE_DIR ENTITIES.csv VIEW`.

use std::sync::Arc;
use std::time::Instant;

use mlops_features::definition::ViewRef;
use mlops_features::offline::OfflineStore;
use mlops_features::pit::{EntityFrame, as_of_join};
use mlops_features::registry::FeatureRegistry;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store: Arc<dyn mlops_domain::store::ObjectStore> =
        Arc::new(mlops_store::LocalStore::new(&args[1]));
    let view = FeatureRegistry::new(store.clone())
        .view(&args[3].parse::<ViewRef>().unwrap())
        .await
        .unwrap();
    let offline = OfflineStore::new(store.clone());
    let t = Instant::now();
    let keys = [(
        view.definition.view.name.as_str(),
        view.definition.join_keys.as_slice(),
    )];
    let frame =
        EntityFrame::read_csv(std::path::Path::new(&args[2]), "event_timestamp", &keys).unwrap();
    println!(
        "read entity frame: {:.2} s ({} rows)",
        t.elapsed().as_secs_f64(),
        frame.times.len()
    );
    let t = Instant::now();
    let j = as_of_join(&offline, &view, &frame.keys[0], &frame.times)
        .await
        .unwrap();
    println!(
        "as-of join: {:.2} s ({} matched, {} rows read)",
        t.elapsed().as_secs_f64(),
        j.matched,
        j.rows_read
    );
    let t = Instant::now();
    let snapshots = offline.snapshots(&view.definition.view.name).await.unwrap();
    let names: Vec<String> = view
        .definition
        .view
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    for p in snapshots.iter().flat_map(|s| &s.parts) {
        offline
            .read_part(p, &view.definition, &names)
            .await
            .unwrap();
    }
    println!(
        "read and decode every part: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().unwrap();
    let online =
        mlops_domain::online::StoreOnline::new(Arc::new(mlops_store::LocalStore::new(dir.path())));
    let t = Instant::now();
    let m = mlops_features::materialize::materialize(
        &offline,
        &online,
        &view,
        i64::MIN / 2,
        i64::MAX / 2,
    )
    .await
    .unwrap();
    println!(
        "materialize into an empty embedded online store: {:.2} s ({} entities)",
        t.elapsed().as_secs_f64(),
        m.entities
    );
}
