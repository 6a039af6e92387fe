//! Serving loads a tree model from its bundle's engine image when the image is usable, and
//! compiles the model file otherwise: an image altered in the store, or one written later by
//! `mlops registry compile` and then damaged, never stops the model from being served, and every
//! path predicts the same bits.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use mlops_domain::artifact::{Bundle, ModelKind};
use mlops_domain::registry::Registry;
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_engine::Predictor;
use mlops_engine::image;
use mlops_serving::AppState;
use mlops_store::LocalStore;
use support::*;

/// A LightGBM model of two trees over the California Housing pipeline's features.
fn lightgbm_text(n_features: usize) -> String {
    let tree = |t: usize, f: usize, threshold: f64, a: f64, b: f64| {
        format!(
            "Tree={t}\nnum_leaves=2\nnum_cat=0\nsplit_feature={f}\nsplit_gain=1\nthreshold={threshold}\n\
             decision_type=2\nleft_child=-1\nright_child=-2\nleaf_value={a} {b}\nleaf_weight=1 1\n\
             leaf_count=4 6\ninternal_value=0\ninternal_weight=2\ninternal_count=10\nis_linear=0\n\
             shrinkage=1\n\n"
        )
    };
    let names: Vec<String> = (0..n_features).map(|i| format!("f{i}")).collect();
    format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx={}\n\
         objective=regression\nfeature_names={}\n\n{}{}end of trees\n",
        n_features - 1,
        names.join(" "),
        tree(0, 0, 0.25, 1.5, 2.5),
        tree(1, n_features - 1, 0.5, -0.125, 0.375),
    )
}

/// The housing bundle with a LightGBM model, with or without its engine image.
fn tree_bundle(with_image: bool) -> Bundle {
    let linear = bundle("california_housing", 0.1);
    let mut manifest = linear.manifest;
    manifest.model_kind = ModelKind::Lightgbm;
    manifest.model_file = "model.txt".into();
    let text = lightgbm_text(manifest.feature_names.len());
    let mut files = BTreeMap::from([("model.txt".to_string(), text.into_bytes())]);
    let native = Bundle::new(manifest.clone(), files.clone()).unwrap();
    if with_image {
        let predictor = Predictor::from_bundle_native(&native).unwrap();
        let image = predictor.model.image(native.model_bytes()).unwrap();
        files.insert(image::file_name().into(), image);
    }
    Bundle::new(manifest, files).unwrap()
}

async fn registry_with(bundle: &Bundle) -> (tempfile::TempDir, Registry, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("store")));
    let registry = Registry::new(Arc::clone(&store));
    publish_bundle(&registry, "california_housing", bundle, "champion").await;
    (dir, registry, store)
}

/// Serves the champion; returns whether it came from the image and its prediction.
async fn serve(registry: &Registry) -> (bool, f64) {
    let state = AppState::start(registry.clone(), config(), None).await;
    let routes = state.models.routes("california_housing").expect("served");
    let model = &routes.by_alias["champion"];
    let app = mlops_serving::router(state.clone(), mlops_serving::RouteSet::ALL);
    let (status, _, body) = call(
        &app,
        post(
            "/v1/models/california_housing/predict",
            housing_record().to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (
        model.from_image,
        body["predictions"][0]["prediction"].as_f64().unwrap(),
    )
}

async fn image_key(registry: &Registry) -> String {
    let record = registry.version("california_housing", 1).await.unwrap();
    format!("{}/{}", record.bundle_prefix, image::file_name())
}

#[tokio::test]
async fn a_listed_image_is_served_and_a_damaged_one_falls_back_to_the_model_file() {
    let (_dir, registry, store) = registry_with(&tree_bundle(true)).await;
    let (from_image, want) = serve(&registry).await;
    assert!(from_image, "the bundle's image is loaded");
    // The manifest's hash no longer matches: the model file is compiled instead.
    let key = image_key(&registry).await;
    let mut bytes = store.get(&key).await.unwrap().unwrap().bytes;
    let last = bytes.len() - 9;
    bytes[last] ^= 0x40;
    store.put(&key, bytes, PutCondition::None).await.unwrap();
    let (from_image, got) = serve(&registry).await;
    assert!(!from_image, "a damaged image is not loaded");
    assert_eq!(got.to_bits(), want.to_bits());
}

#[tokio::test]
async fn an_image_added_later_is_checked_by_its_own_hashes() {
    let (_dir, registry, store) = registry_with(&tree_bundle(false)).await;
    let (from_image, want) = serve(&registry).await;
    assert!(!from_image, "no image yet: the model file is compiled");
    // What `mlops registry compile` does: the image beside the bundle, create-only.
    let record = registry.version("california_housing", 1).await.unwrap();
    let bundle = registry.load_bundle(&record).await.unwrap();
    let image = Predictor::from_bundle_native(&bundle)
        .unwrap()
        .model
        .image(bundle.model_bytes())
        .unwrap();
    assert!(
        registry
            .add_image(&record.bundle_ref(), image::file_name(), image.clone())
            .await
            .unwrap()
    );
    assert!(
        !registry
            .add_image(&record.bundle_ref(), image::file_name(), image.clone())
            .await
            .unwrap(),
        "create-only"
    );
    let (from_image, got) = serve(&registry).await;
    assert!(from_image, "the added image is loaded");
    assert_eq!(got.to_bits(), want.to_bits());
    // Damaged after it was added: its body no longer matches the hash it carries.
    let key = image_key(&registry).await;
    let mut damaged = image;
    let last = damaged.len() - 9;
    damaged[last] ^= 0x40;
    store.put(&key, damaged, PutCondition::None).await.unwrap();
    let (from_image, got) = serve(&registry).await;
    assert!(!from_image);
    assert_eq!(got.to_bits(), want.to_bits());
}

#[tokio::test]
async fn an_image_of_another_model_is_refused() {
    // The image of one bundle copied into another bundle of the same shape.
    let (_dir, registry, store) = registry_with(&tree_bundle(false)).await;
    let mut other = tree_bundle(true);
    let text = String::from_utf8(other.files["model.txt"].clone()).unwrap();
    other.files.insert(
        "model.txt".into(),
        text.replace("1.5 2.5", "1.5 3.5").into_bytes(),
    );
    let other = Bundle::new(other.manifest, other.files).unwrap();
    let record = registry.version("california_housing", 1).await.unwrap();
    let foreign = Predictor::from_bundle_native(&other)
        .unwrap()
        .model
        .image(other.model_bytes())
        .unwrap();
    store
        .put(
            &format!("{}/{}", record.bundle_prefix, image::file_name()),
            foreign,
            PutCondition::IfAbsent,
        )
        .await
        .unwrap();
    let (from_image, _) = serve(&registry).await;
    assert!(!from_image, "an image compiled from another model file");
}
