//! Small, valid fixtures for tests of this crate and of the adapters (feature `test-support`).

use std::collections::BTreeMap;

use crate::artifact::{BUNDLE_FORMAT, Bundle, Lineage, Manifest, ModelKind};
use crate::data::{TargetPolicy, read_csv};
use crate::features::{FeaturePipeline, PipelineOptions};
use crate::schema::{Schema, Task};

/// A one-feature regression bundle with a linear model file; `created_at` is fixed, so two calls
/// give the same bundle (and digest).
pub fn sample_bundle() -> Bundle {
    let schema = Schema::from_toml(
        "name = \"s\"\ntask = \"regression\"\n[target]\ncolumn = \"y\"\n[[columns]]\nname = \"x\"\ntype = \"float\"\n[[columns]]\nname = \"y\"\ntype = \"float\"\nrole = \"target\"\n",
        "s.toml",
    )
    .expect("valid schema");
    let (data, report) = read_csv(
        &b"x,y\n1,2\n3,4\n"[..],
        "s.csv",
        &schema,
        TargetPolicy::Required,
    )
    .expect("valid data");
    let pipeline = FeaturePipeline::fit(&schema, &data, PipelineOptions::default());
    let manifest = Manifest {
        format_version: BUNDLE_FORMAT,
        model_name: "s".into(),
        task: Task::Regression,
        model_kind: ModelKind::Linear,
        model_file: "model.json".into(),
        feature_names: pipeline.feature_names.clone(),
        schema,
        pipeline,
        metrics: BTreeMap::from([("rmse".into(), 0.5)]),
        validation_metrics: BTreeMap::new(),
        cv_score: None,
        params: BTreeMap::new(),
        lineage: Lineage {
            data_sha256: report.sha256,
            ..Default::default()
        },
        created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid timestamp"),
        reference_profile: crate::profile::profile(&data),
        prediction_profile: None,
        calibration: None,
        attribution_profile: None,
        feature_views: Vec::new(),
        files: BTreeMap::new(),
    };
    Bundle::new(
        manifest,
        BTreeMap::from([(
            "model.json".into(),
            br#"{"link":"identity","intercept":0.0,"coefficients":[1.0],"l2":0.0}"#.to_vec(),
        )]),
    )
    .expect("valid bundle")
}
