//! The S3 adapter and the registry on a real moto server: atomic writes, S3 conditional writes,
//! and a 20-way promotion race that loses no update.

use mlops_domain::registry::{CHAMPION, CardEdit, RegisterOptions, Registry, RegistryError};
use mlops_domain::store::{ETag, ObjectStore, PutCondition, StoreError};
use mlops_e2e::s3_store;

#[tokio::test]
async fn create_only_and_compare_and_swap_are_enforced() {
    let s = s3_store("p/q").await;
    let t1 = s
        .put("a/x.json", b"1".to_vec(), PutCondition::IfAbsent)
        .await
        .unwrap();
    let err = s
        .put("a/x.json", b"2".to_vec(), PutCondition::IfAbsent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    let t2 = s
        .put("a/x.json", b"2".to_vec(), PutCondition::IfMatch(t1.clone()))
        .await
        .unwrap();
    assert_ne!(t1, t2);
    let err = s
        .put("a/x.json", b"3".to_vec(), PutCondition::IfMatch(t1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    let got = s.get("a/x.json").await.unwrap().unwrap();
    assert_eq!((got.bytes, got.etag), (b"2".to_vec(), t2));
    assert!(s.get("a/none.json").await.unwrap().is_none());
    let err = s
        .put(
            "a/none.json",
            b"x".to_vec(),
            PutCondition::IfMatch(ETag("\"nope\"".into())),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::PreconditionFailed { .. }),
        "{err}"
    );
    // Keys live under the prefix in the bucket and are listed relative to it.
    s.put("a/y.json", b"y".to_vec(), PutCondition::None)
        .await
        .unwrap();
    assert_eq!(s.list("a/").await.unwrap(), vec!["a/x.json", "a/y.json"]);
    let raw = s
        .client()
        .list_objects_v2()
        .bucket(s.bucket())
        .send()
        .await
        .unwrap();
    assert!(
        raw.contents()
            .iter()
            .all(|o| o.key().unwrap().starts_with("p/q/a/"))
    );
    assert!(s.uri("a/x.json").ends_with("/p/q/a/x.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_have_exactly_one_winner() {
    let s = s3_store("race").await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put("claim", vec![i], PutCondition::IfAbsent)
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as usize;
    }
    assert_eq!(winners, 1);
}

fn bundle() -> mlops_domain::artifact::Bundle {
    mlops_domain::testing::sample_bundle()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_on_s3_numbers_versions_uniquely_under_concurrency() {
    let registry = Registry::new(s3_store("registry").await);
    let b = bundle();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (r, b) = (registry.clone(), b.clone());
            tokio::spawn(async move {
                r.register(
                    "housing",
                    &b,
                    RegisterOptions {
                        registered_by: format!("trainer-{i}"),
                        ..Default::default()
                    },
                )
                .await
                .unwrap()
                .version
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
    let record = registry.version("housing", 3).await.unwrap();
    assert_eq!(registry.load_bundle(&record).await.unwrap(), b);

    // Idempotent retry with a key returns the first registration.
    let opts = RegisterOptions {
        idempotency_key: Some("job-1".into()),
        registered_by: "job".into(),
    };
    let first = registry
        .register("housing", &b, opts.clone())
        .await
        .unwrap();
    let again = registry.register("housing", &b, opts).await.unwrap();
    assert_eq!((first.version, again.version), (9, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_promotions_lose_no_update() {
    let registry = Registry::new(s3_store("promote").await);
    for _ in 0..4 {
        registry
            .register("m", &bundle(), RegisterOptions::default())
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let r = registry.clone();
            tokio::spawn(async move {
                // Each promotion changes something (a promotion to the version an alias already
                // points at is a no-op); all of them contend for the one alias state.
                r.promote(
                    "m",
                    &format!("alias-{i}"),
                    i % 4 + 1,
                    &format!("promoter-{i}"),
                    "race",
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let state = registry.aliases("m").await.unwrap();
    assert_eq!(state.revision, 20);
    assert_eq!(state.history.len(), 20);
    let revisions: Vec<u64> = state.history.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=20).collect::<Vec<_>>());
    let mut actors: Vec<&str> = state.history.iter().map(|e| e.actor.as_str()).collect();
    actors.sort();
    actors.dedup();
    assert_eq!(actors.len(), 20, "every promotion is in the audit log once");
    // Every alias is its event's target.
    for e in &state.history {
        assert_eq!(state.aliases[&e.alias], e.to);
    }
}

#[tokio::test]
async fn champion_rules_rollback_and_tamper_detection_on_s3() {
    let store = s3_store("rules").await;
    let registry = Registry::new(store.clone());
    for _ in 0..2 {
        registry
            .register("m", &bundle(), RegisterOptions::default())
            .await
            .unwrap();
    }
    let err = registry
        .promote("m", CHAMPION, 1, "me", "")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::CardNotApproved { .. }),
        "{err}"
    );
    for v in [1, 2] {
        let filled = CardEdit {
            intended_use: Some("tests".into()),
            limitations: Some("test data".into()),
            ..CardEdit::default()
        };
        registry.edit_card("m", v, filled).await.unwrap();
        registry.approve_card("m", v, "lead", "").await.unwrap();
    }
    registry.promote("m", CHAMPION, 1, "me", "").await.unwrap();
    registry.promote("m", CHAMPION, 2, "me", "").await.unwrap();
    assert_eq!(
        registry
            .rollback("m", CHAMPION, "me", "regression", None)
            .await
            .unwrap()
            .to,
        1
    );

    // Overwrite the model file behind the registry's back: loading must refuse it.
    let record = registry.version("m", 1).await.unwrap();
    let key = format!("{}/model.json", record.bundle_prefix);
    store
        .put(&key, b"{\"tampered\": true}".to_vec(), PutCondition::None)
        .await
        .unwrap();
    let err = registry.load_bundle(&record).await.unwrap_err().to_string();
    assert!(
        err.contains("model.json") && err.contains("corrupt or truncated"),
        "{err}"
    );
}
