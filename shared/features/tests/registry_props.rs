//! Property tests of the definition registry's five promises, on the real local store:
//! 1. a new definition gets a unique id and version 1;
//! 2. queries return the latest version unless one is named;
//! 3. updates keep every earlier version readable;
//! 4. reading a version returns exactly what was written;
//! 5. every stored definition carries complete metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mlops_features::definition::{
    Definitions, Entity, Feature, FeatureType, FeatureView, Ttl, ViewRef,
};
use mlops_features::registry::FeatureRegistry;
use mlops_store::LocalStore;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn entity() -> Entity {
    Entity {
        name: "customer".into(),
        join_keys: vec!["customer_id".into()],
        owner: "churn-team".into(),
        description: "A customer".into(),
        tags: BTreeMap::new(),
    }
}

fn feature_type() -> impl Strategy<Value = FeatureType> {
    prop_oneof![
        Just(FeatureType::Float64),
        Just(FeatureType::Int64),
        Just(FeatureType::String),
        Just(FeatureType::Bool)
    ]
}

/// A valid view named `name` with random features, TTL, tags and text.
fn view(name: &'static str) -> impl Strategy<Value = FeatureView> {
    (
        prop::collection::btree_map("[a-z][a-z0-9_]{0,6}", (feature_type(), "[ -~]{0,12}"), 1..6),
        prop::option::of(0u64..10_000_000),
        prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..3),
        "[a-z]{1,8}",
        "[A-Za-z ]{1,20}",
    )
        .prop_map(
            move |(features, ttl, tags, owner, description)| FeatureView {
                name: name.into(),
                entities: vec!["customer".into()],
                event_time: "event_time".into(),
                ttl: ttl.map(|s| Ttl(Duration::from_secs(s))),
                source: String::new(),
                owner,
                description: format!("d {description}"),
                tags,
                features: features
                    .into_iter()
                    .filter(|(n, _)| n != "event_time" && n != "customer_id")
                    .map(|(name, (dtype, description))| Feature {
                        name,
                        dtype,
                        description,
                    })
                    .collect(),
            },
        )
        .prop_filter("at least one feature", |v| !v.features.is_empty())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn defs(views: Vec<FeatureView>) -> Definitions {
    Definitions {
        entities: vec![entity()],
        feature_views: views,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Promise 1: distinct new names each get version 1 and ids no other definition has.
    #[test]
    fn new_definitions_get_unique_ids_and_version_1(a in view("alpha"), b in view("beta"), c in view("gamma")) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let r = FeatureRegistry::new(Arc::new(LocalStore::new(dir.path())));
            let applied = r.apply(&defs(vec![a, b, c]), "prop").await.unwrap();
            let ids: BTreeSet<_> = applied.iter().map(|x| x.id.clone()).collect();
            prop_assert_eq!(ids.len(), applied.len());
            prop_assert!(applied.iter().all(|x| x.version == 1 && x.created));
            Ok(())
        })?;
    }

    /// Promises 2–5 over a random history of updates of one view (repeats included).
    #[test]
    fn versions_are_kept_exact_and_complete(history in prop::collection::vec(view("billing"), 1..7), pick in any::<prop::sample::Index>()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let r = FeatureRegistry::new(Arc::new(LocalStore::new(dir.path())));
            let started = chrono::Utc::now();
            // What each version should hold: consecutive repeats make no new version.
            let mut written: Vec<FeatureView> = Vec::new();
            let mut id = None;
            for v in &history {
                let applied = r.apply(&defs(vec![v.clone()]), "prop").await.unwrap();
                let a = applied.iter().find(|a| a.kind == "feature_view").unwrap();
                let changed = written.last() != Some(v);
                prop_assert_eq!(a.created, changed);
                if changed { written.push(v.clone()); }
                prop_assert_eq!(a.version as usize, written.len());
                prop_assert_eq!(id.get_or_insert_with(|| a.id.clone()), &a.id, "one id across versions");
                // 2: the unnamed query is the latest.
                let latest = r.view(&"billing".parse::<ViewRef>().unwrap()).await.unwrap();
                prop_assert_eq!(&latest.definition.view, v);
            }
            // 3 + 4: every version stays readable and equals what was written.
            for (i, expected) in written.iter().enumerate() {
                let at = ViewRef { name: "billing".into(), version: Some(i as u32 + 1) };
                let got = r.view(&at).await.unwrap();
                prop_assert_eq!(&got.definition.view, expected);
                prop_assert_eq!(got.definition.join_keys.clone(), vec!["customer_id".to_string()]);
            }
            let all = r.view_versions("billing").await.unwrap();
            prop_assert_eq!(all.len(), written.len());
            // 5: complete metadata on a random version.
            let m = &all[pick.index(all.len())];
            prop_assert!(uuid::Uuid::parse_str(&m.id).is_ok());
            prop_assert!(m.registered_at >= started && m.registered_at <= chrono::Utc::now());
            prop_assert_eq!(&m.registered_by, "prop");
            let sha = hex::encode(Sha256::digest(serde_json::to_vec(&m.definition).unwrap()));
            prop_assert_eq!(&m.sha256, &sha);
            prop_assert!(!m.definition.view.owner.is_empty() && !m.definition.view.description.is_empty());
            prop_assert!(m.definition.view.features.iter().all(|f| !f.name.is_empty()));
            // A version past the last is refused, naming what exists.
            let missing = r.view(&ViewRef { name: "billing".into(), version: Some(all.len() as u32 + 1) }).await.unwrap_err().to_string();
            let exists = if all.len() == 1 { "only version 1 is".to_string() } else { format!("versions 1 to {} are", all.len()) };
            prop_assert!(missing.contains(&exists), "{}", missing);
            Ok(())
        })?;
    }
}
