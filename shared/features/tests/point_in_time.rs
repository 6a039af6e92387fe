//! Point-in-time correctness of the offline store on the real local store: a property test over
//! random timelines (ties, several snapshots, day boundaries and TTL edges) against a brute-force
//! reference, plus the file-to-file retrieval.

use std::sync::Arc;
use std::time::Duration;

use mlops_features::columns::{Micros, Values, format_time};
use mlops_features::definition::{
    Definitions, Entity, Feature, FeatureType, FeatureView, Ttl, ViewRef,
};
use mlops_features::offline::OfflineStore;
use mlops_features::pit::{as_of_join, historical_features};
use mlops_features::registry::FeatureRegistry;
use mlops_store::LocalStore;
use proptest::prelude::*;

const HOUR: Micros = 3_600_000_000;
/// 2024-03-01T00:00:00Z.
const T0: Micros = 1_709_251_200_000_000;

fn definitions(ttl: Option<Duration>) -> Definitions {
    Definitions {
        entities: vec![Entity {
            name: "account".into(),
            join_keys: vec!["region".into(), "account_id".into()],
            owner: "tests".into(),
            description: "An account in a region".into(),
            tags: Default::default(),
        }],
        feature_views: vec![FeatureView {
            name: "balances".into(),
            entities: vec!["account".into()],
            event_time: "ts".into(),
            ttl: ttl.map(Ttl),
            source: String::new(),
            owner: "tests".into(),
            description: "Balance snapshots".into(),
            tags: Default::default(),
            features: vec![
                Feature {
                    name: "row_id".into(),
                    dtype: FeatureType::Int64,
                    description: "which input row".into(),
                },
                Feature {
                    name: "written_at".into(),
                    dtype: FeatureType::Int64,
                    description: "the row's event time".into(),
                },
            ],
        }],
    }
}

/// A feature row: (entity, time, snapshot it is ingested in).
type Row = (u8, Micros, usize);

fn timeline() -> impl Strategy<Value = (Vec<Row>, Vec<(u8, Micros)>, Option<u64>)> {
    let rows = prop::collection::vec((0u8..4, 0i64..120, 0usize..3), 0..60).prop_map(|v| {
        v.into_iter()
            .map(|(e, h, s)| (e, T0 + h * HOUR, s))
            .collect::<Vec<_>>()
    });
    let ttl_hours = prop_oneof![Just(None), (1u64..72).prop_map(Some)];
    (rows, ttl_hours).prop_flat_map(|(rows, ttl)| {
        let n = rows.len().max(1);
        let edges = rows.clone();
        let probe = (0u8..5, 0usize..n, 0i64..4, -2i64..130).prop_map(move |(e, r, kind, h)| {
            // Probes at a row's own time, at exactly TTL after it, 1 µs past the TTL, or anywhere.
            let base = edges.get(r).map_or(T0, |x| x.1);
            let ttl = ttl.map_or(24 * HOUR, |t| t as i64 * HOUR);
            let entity = edges.get(r).map_or(e, |x| if e < 4 { x.0 } else { e });
            let t = match kind {
                0 => base,
                1 => base + ttl,
                2 => base + ttl + 1,
                _ => T0 + h * HOUR + 17,
            };
            (entity, t)
        });
        (Just(rows), prop::collection::vec(probe, 1..40), Just(ttl))
    })
}

fn key(e: u8) -> String {
    format!("eu\u{1f}acct-{e}")
}

/// The reference: the latest row of the entity at or before `t` within the TTL; ties go to the
/// later snapshot, then the later row in it.
fn expected(rows: &[Row], order: &[usize], e: u8, t: Micros, ttl: Option<Micros>) -> Option<usize> {
    order
        .iter()
        .copied()
        .filter(|&i| rows[i].0 == e && rows[i].1 <= t && ttl.is_none_or(|ttl| t - rows[i].1 <= ttl))
        .max_by_key(|&i| (rows[i].1, rows[i].2, order.iter().position(|&j| j == i)))
}

async fn ingest(
    dir: &std::path::Path,
    rows: &[Row],
    ttl: Option<u64>,
) -> (
    OfflineStore,
    mlops_features::registry::Registered<mlops_features::registry::ViewDefinition>,
    Vec<usize>,
) {
    let store: Arc<dyn mlops_domain::store::ObjectStore> =
        Arc::new(LocalStore::new(dir.join("store")));
    let registry = FeatureRegistry::new(store.clone());
    registry
        .apply(
            &definitions(ttl.map(|h| Duration::from_secs(h * 3600))),
            "test",
        )
        .await
        .unwrap();
    let view = registry
        .view(&"balances".parse::<ViewRef>().unwrap())
        .await
        .unwrap();
    let offline = OfflineStore::new(store);
    let mut order = Vec::new();
    for snapshot in 0..3 {
        let path = dir.join(format!("snapshot-{snapshot}.csv"));
        let mut w = csv::Writer::from_path(&path).unwrap();
        w.write_record(["ts", "account_id", "written_at", "region", "row_id"])
            .unwrap();
        for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.2 == snapshot) {
            w.write_record([
                format_time(r.1),
                format!("acct-{}", r.0),
                r.1.to_string(),
                "eu".into(),
                i.to_string(),
            ])
            .unwrap();
            order.push(i);
        }
        w.flush().unwrap();
        drop(w);
        offline
            .ingest(&view, &path, &path.display().to_string(), "test")
            .await
            .unwrap();
    }
    (offline, view, order)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No value from after an entity row's time, none older than the TTL, and exactly the latest
    /// one otherwise.
    #[test]
    fn no_leakage_and_exactly_the_latest_value((rows, probes, ttl) in timeline()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (offline, view, order) = ingest(dir.path(), &rows, ttl).await;
            let keys: Vec<Box<str>> = probes.iter().map(|p| key(p.0).into()).collect();
            let times: Vec<Micros> = probes.iter().map(|p| p.1).collect();
            let joined = as_of_join(&offline, &view, &keys, &times).await.unwrap();
            let (Values::I64(row_ids), Values::I64(written)) = (&joined.values[0], &joined.values[1]) else { panic!("int64 features") };
            let ttl_micros = ttl.map(|h| h as i64 * HOUR);
            for (i, &(e, t)) in probes.iter().enumerate() {
                if let Some(w) = written[i] {
                    prop_assert!(w <= t, "probe {i}: a value written at {w} leaked into a row at {t}");
                    prop_assert!(ttl_micros.is_none_or(|ttl| t - w <= ttl), "probe {i}: value older than the TTL");
                }
                let want = expected(&rows, &order, e, t, ttl_micros).map(|r| r as i64);
                prop_assert_eq!(row_ids[i], want, "probe {} (entity {}, t {})", i, e, t);
            }
            prop_assert_eq!(joined.matched, row_ids.iter().filter(|x| x.is_some()).count());
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn retrieval_writes_the_frame_with_its_features_in_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![(1, T0, 0), (1, T0 + 5 * HOUR, 1), (2, T0 + 30 * HOUR, 0)];
    let (offline, view, _) = ingest(dir.path(), &rows, Some(24)).await;
    let frame = dir.path().join("entities.csv");
    std::fs::write(
        &frame,
        format!(
            "account_id,region,event_timestamp,label\nacct-1,eu,{},yes\nacct-1,eu,{},no\nacct-2,eu,{},no\nacct-9,eu,{},yes\n",
            format_time(T0 + HOUR),
            format_time(T0 + 40 * HOUR),
            format_time(T0 + 30 * HOUR),
            format_time(T0 + 30 * HOUR),
        ),
    )
    .unwrap();
    let out = dir.path().join("training.csv");
    let report = historical_features(
        &offline,
        &frame,
        "event_timestamp",
        std::slice::from_ref(&view),
        &out,
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 4);
    assert_eq!(
        report.views[0].2, 2,
        "acct-1 at +40h is past the 24h TTL; acct-9 is unknown"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "account_id,region,event_timestamp,label,row_id,written_at"
    );
    assert!(lines[1].ends_with(&format!(",yes,0,{T0}")), "{}", lines[1]);
    assert!(lines[2].ends_with(",no,,"), "{}", lines[2]);
    assert!(
        lines[3].ends_with(&format!(",no,2,{}", T0 + 30 * HOUR)),
        "{}",
        lines[3]
    );
    assert!(lines[4].ends_with(",yes,,"), "{}", lines[4]);

    let parquet = dir.path().join("training.parquet");
    historical_features(
        &offline,
        &frame,
        "event_timestamp",
        std::slice::from_ref(&view),
        &parquet,
    )
    .await
    .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    assert_eq!(
        batches[0].schema().field(4).data_type(),
        &arrow_schema::DataType::Int64
    );

    // Ingesting the same file again is a no-op; a missing column is named.
    let again = offline
        .ingest(&view, &dir.path().join("snapshot-0.csv"), "again", "test")
        .await
        .unwrap();
    assert!(!again.created);
    std::fs::write(
        dir.path().join("bad.csv"),
        "ts,account_id,region\n2024-03-01,a,eu\n",
    )
    .unwrap();
    let e = offline
        .ingest(&view, &dir.path().join("bad.csv"), "bad", "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no column 'row_id'") && e.contains("feature view 'balances'"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("bad2.csv"),
        "ts,account_id,region,written_at,row_id\nsoon,a,eu,1,2\n",
    )
    .unwrap();
    let e = offline
        .ingest(&view, &dir.path().join("bad2.csv"), "bad", "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2, column 'ts'") && e.contains("'soon' is not a time"),
        "{e}"
    );
}
