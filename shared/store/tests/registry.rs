//! Registry behaviour on the real local-filesystem store (the S3 adapter is exercised the same way
//! against moto in the end-to-end tests).

use std::sync::Arc;

use mlops_domain::registry::*;
use mlops_domain::testing::sample_bundle;
use mlops_store::LocalStore;

fn registry() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Registry::new(Arc::new(LocalStore::new(dir.path()))), dir)
}

#[tokio::test]
async fn versions_increase_and_bundles_round_trip() {
    let (r, _dir) = registry();
    let b = sample_bundle();
    let v1 = r
        .register("housing", &b, RegisterOptions::default())
        .await
        .unwrap();
    let v2 = r
        .register("housing", &b, RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(r.load_bundle(&v2).await.unwrap(), b);
    assert_eq!(r.models().await.unwrap(), vec!["housing"]);
    assert!(
        r.card(&v1.model, 1)
            .await
            .unwrap()
            .training_data
            .contains("sha256")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_get_distinct_numbers() {
    let (r, _dir) = registry();
    let b = sample_bundle();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (r, b) = (r.clone(), b.clone());
            tokio::spawn(async move {
                r.register("m", &b, RegisterOptions::default())
                    .await
                    .unwrap()
                    .version
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    got.sort();
    assert_eq!(got, (1..=16).collect::<Vec<_>>());
}

#[tokio::test]
async fn idempotency_key_returns_the_same_version() {
    let (r, _dir) = registry();
    let b = sample_bundle();
    let opts = RegisterOptions {
        idempotency_key: Some("job-7".into()),
        registered_by: "t".into(),
    };
    let a = r.register("m", &b, opts.clone()).await.unwrap();
    let again = r.register("m", &b, opts).await.unwrap();
    assert_eq!(a.version, again.version);
    assert_eq!(r.versions("m").await.unwrap().len(), 1);
}

#[tokio::test]
async fn champion_needs_approval_and_rollback_walks_back() {
    let (r, _dir) = registry();
    let b = sample_bundle();
    for _ in 0..3 {
        r.register("m", &b, RegisterOptions::default())
            .await
            .unwrap();
    }
    let err = r
        .promote("m", CHAMPION, 1, "me", "first")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::CardNotApproved { version: 1, .. }
    ));
    for v in 1..=3 {
        fill_card(&r, v).await;
        r.approve_card("m", v, "lead", "ok").await.unwrap();
    }
    r.promote("m", CHAMPION, 1, "me", "a").await.unwrap();
    r.promote("m", CHAMPION, 2, "me", "b").await.unwrap();
    r.promote("m", CHAMPION, 3, "me", "c").await.unwrap();
    assert_eq!(
        r.rollback("m", CHAMPION, "me", "bad", None)
            .await
            .unwrap()
            .to,
        2
    );
    assert_eq!(
        r.rollback("m", CHAMPION, "me", "worse", None)
            .await
            .unwrap()
            .to,
        1
    );
    assert!(matches!(
        r.rollback("m", CHAMPION, "me", "no", None)
            .await
            .unwrap_err(),
        RegistryError::NothingToRollBack { .. }
    ));
    let state = r.aliases("m").await.unwrap();
    assert_eq!(state.aliases[CHAMPION], 1);
    assert_eq!(state.history.len(), 5);
    assert_eq!(state.revision, 5);
    assert!(matches!(
        r.promote("m", "x", 9, "me", "").await.unwrap_err(),
        RegistryError::NotFound(_)
    ));
}

/// Every alias change records the bundle of the version it now points at (serving then fetches
/// it without reading the record); an entry naming another version is never used.
#[tokio::test]
async fn an_alias_carries_its_versions_bundle() {
    let (r, _dir) = registry();
    let mut second = sample_bundle();
    second.manifest.model_name = "other".into();
    let second = mlops_domain::artifact::Bundle::new(second.manifest, second.files).unwrap();
    let v1 = r
        .register("m", &sample_bundle(), RegisterOptions::default())
        .await
        .unwrap();
    let v2 = r
        .register("m", &second, RegisterOptions::default())
        .await
        .unwrap();
    r.promote("m", "staging", 2, "me", "").await.unwrap();
    r.promote("m", "staging", 1, "me", "").await.unwrap();
    let state = r.aliases("m").await.unwrap();
    assert_eq!(state.bundle("staging"), Some(&v1.bundle_ref()));
    r.rollback("m", "staging", "me", "", None).await.unwrap();
    let mut state = r.aliases("m").await.unwrap();
    assert_eq!(state.bundle("staging"), Some(&v2.bundle_ref()));
    // An alias moved by an older writer, which kept the old entry: ignored.
    state.aliases.insert("staging".into(), 1);
    assert_eq!(state.bundle("staging"), None);
}

async fn fill_card(r: &Registry, version: u64) {
    let edit = CardEdit {
        intended_use: Some("tests".into()),
        limitations: Some("synthetic".into()),
        ..Default::default()
    };
    r.edit_card("m", version, edit).await.unwrap();
}

#[tokio::test]
async fn a_card_is_approved_only_with_intended_use_and_limitations() {
    let (r, _dir) = registry();
    r.register("m", &sample_bundle(), RegisterOptions::default())
        .await
        .unwrap();
    let e = r.approve_card("m", 1, "lead", "").await.unwrap_err();
    assert!(
        matches!(&e, RegistryError::CardIncomplete { missing, .. } if missing == &["intended_use", "limitations"]),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("intended_use and limitations are empty"),
        "{e}"
    );
    let edit = CardEdit {
        intended_use: Some("demo".into()),
        limitations: Some("   ".into()),
        ..Default::default()
    };
    r.edit_card("m", 1, edit).await.unwrap();
    let e = r.approve_card("m", 1, "lead", "").await.unwrap_err();
    assert!(e.to_string().contains("limitations is empty"), "{e}");
    assert!(r.card("m", 1).await.unwrap().approval.is_none());
    fill_card(&r, 1).await;
    assert!(
        r.approve_card("m", 1, "lead", "")
            .await
            .unwrap()
            .approval
            .is_some()
    );
}

#[tokio::test]
async fn editing_a_card_clears_its_approval() {
    let (r, _dir) = registry();
    r.register("m", &sample_bundle(), RegisterOptions::default())
        .await
        .unwrap();
    fill_card(&r, 1).await;
    r.approve_card("m", 1, "lead", "").await.unwrap();
    let card = r
        .edit_card(
            "m",
            1,
            CardEdit {
                limitations: Some("none known".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(card.approval.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_promotions_lose_no_update() {
    let (r, _dir) = registry();
    for _ in 0..4 {
        r.register("m", &sample_bundle(), RegisterOptions::default())
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                // Every promotion changes something (promoting an alias to the version it
                // already points at is a no-op), and all contend for the same alias state.
                r.promote("m", &format!("alias-{i}"), i % 4 + 1, &format!("p{i}"), "")
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let state = r.aliases("m").await.unwrap();
    assert_eq!(state.revision, 20);
    assert_eq!(state.history.len(), 20);
    let revisions: Vec<u64> = state.history.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stored_traffic_split_is_checked_when_read() {
    let (r, dir) = registry();
    r.register("m", &sample_bundle(), RegisterOptions::default())
        .await
        .unwrap();
    // Written by hand (or by an older build): no variants at all.
    let path = dir.path().join("models/m/traffic.json");
    std::fs::write(&path, r#"{"variants":[],"revision":3,"updated_by":"x"}"#).unwrap();
    let e = r.traffic("m").await.unwrap_err().to_string();
    assert!(e.contains("traffic.json") && e.contains("1 to"), "{e}");
}

#[test]
fn a_pipeline_index_out_of_range_is_refused_at_load() {
    let mut bundle = sample_bundle();
    let p = &mut bundle.manifest.pipeline;
    p.ratios.push(mlops_domain::features::FittedRatio {
        name: "x_per_nothing".into(),
        numerator: 0,
        denominator: 7,
        median: 1.0,
    });
    p.feature_names.push("x_per_nothing".into());
    bundle.manifest.feature_names = p.feature_names.clone();
    let manifest = bundle.manifest_bytes();
    let files = bundle.all_files();
    let e = mlops_domain::artifact::Bundle::from_parts("tampered", &manifest, |name| {
        Ok(files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone()))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("refers to input 7"), "{e}");
}
