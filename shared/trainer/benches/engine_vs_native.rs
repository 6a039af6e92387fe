//! The pure-Rust engine against the native libraries, same models, same rows, same run:
//! - XGBoost: 600 trees of depth 8 on California Housing (no early stopping);
//! - LightGBM: the model the default training produces on California Housing;
//! - with the feature `torch`, the default MLP (256-128-64, GELU; a few epochs: the weights' values
//!   do not change the work) on standardized California Housing features.
//!
//! Single-row latency (native: libxgboost with a DMatrix per call, LightGBM's single-row C API,
//! libtorch's forward pass) and batch throughput on 100,000 rows at one thread. With
//! `MLOPS_BENCH_EXPORT=DIR` the LightGBM model and rows are written out for
//! `scripts/lightgbm_peers.py` (lleaves, TL2cgen).

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlops_domain::data::{TargetPolicy, load_csv};
use mlops_domain::features::{FeatureMatrix, FeaturePipeline, PipelineOptions};
use mlops_domain::schema::{Schema, Task};
use mlops_domain::split::{permutation, train_test_split};
use mlops_engine::CompiledModel;
use mlops_trainer::lightgbm::{LgbmModel, LgbmParams};
use mlops_trainer::xgboost::{XgbModel, XgbParams};
use mlops_trainer::{Labelled, Model};

const BATCH_ROWS: usize = 100_000;

struct Fixture {
    xgb: XgbModel,
    lgbm: LgbmModel,
    test: FeatureMatrix,
    batch: FeatureMatrix,
}

/// California Housing's 80/20 seed-42 split through a pipeline fitted on the training part.
struct Split {
    task: Task,
    x_train: FeatureMatrix,
    y_train: Vec<f64>,
    x_test: FeatureMatrix,
    y_test: Vec<f64>,
}

fn split(options: PipelineOptions) -> Split {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = Schema::from_file(&repo.join("data/california_housing.schema.toml")).unwrap();
    let (data, _) = load_csv(
        &repo.join("../shared/data/california_housing.csv"),
        &schema,
        TargetPolicy::Required,
    )
    .unwrap();
    let split = train_test_split(data.len(), 0.2, 42);
    let (train, test) = (data.subset(&split.train), data.subset(&split.test));
    let pipeline = FeaturePipeline::fit(&schema, &train, options);
    Split {
        task: schema.task,
        x_train: pipeline.transform(&train).0,
        y_train: train.labels,
        x_test: pipeline.transform(&test).0,
        y_test: test.labels,
    }
}

/// `BATCH_ROWS` rows drawn (deterministically, with repetition) from `x`.
fn batch_of(x: &FeatureMatrix) -> FeatureMatrix {
    let mut values = Vec::with_capacity(BATCH_ROWS * x.cols);
    for i in permutation(BATCH_ROWS, 7) {
        values.extend_from_slice(x.row(i % x.rows));
    }
    FeatureMatrix {
        values,
        rows: BATCH_ROWS,
        cols: x.cols,
    }
}

fn fixture() -> Fixture {
    let s = split(PipelineOptions::default());
    let train_set = Labelled {
        x: &s.x_train,
        y: &s.y_train,
    };
    let valid_set = Labelled {
        x: &s.x_test,
        y: &s.y_test,
    };
    let xgb_params = XgbParams {
        max_rounds: 600,
        early_stopping_rounds: 600,
        max_depth: 8,
        ..XgbParams::default()
    };
    let mut xgb = XgbModel::train(s.task, &xgb_params, train_set, valid_set, 42).unwrap();
    xgb.set_threads(1).unwrap();
    let lgbm = LgbmModel::train(s.task, &LgbmParams::default(), train_set, valid_set, 42).unwrap();
    Fixture {
        xgb,
        lgbm,
        batch: batch_of(&s.x_test),
        test: s.x_test,
    }
}

fn one_row(m: &FeatureMatrix, i: usize) -> FeatureMatrix {
    FeatureMatrix {
        values: m.row(i % m.rows).to_vec(),
        rows: 1,
        cols: m.cols,
    }
}

/// Tree depths (min, median, max) and the most distinct thresholds any feature has.
fn depth_summary(e: &mlops_engine::tree::Ensemble) -> String {
    let mut depths = e.tree_depths.clone();
    depths.sort_unstable();
    let mut thresholds = vec![Vec::new(); e.trees.n_features];
    for n in e.trees.nodes.iter().filter(|n| !n.is_leaf()) {
        thresholds[n.feature as usize].push(n.value);
    }
    let distinct = thresholds
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t.dedup();
            t.len()
        })
        .max()
        .unwrap_or(0);
    format!(
        "depth min {} median {} max {}, at most {distinct} distinct thresholds per feature",
        depths[0],
        depths[depths.len() / 2],
        depths[depths.len() - 1]
    )
}

/// Loading each model: compiling its native file against loading its engine image (with the
/// image's body hash checked, as for an image added after registration, and without, as for one
/// the bundle manifest lists and so verifies).
fn load(c: &mut Criterion, f: &Fixture) {
    use mlops_domain::artifact::ModelKind;
    use mlops_engine::image::{self, Integrity};
    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    for (name, kind, bytes) in [
        ("xgboost", ModelKind::Xgboost, f.xgb.to_bytes().unwrap()),
        ("lightgbm", ModelKind::Lightgbm, f.lgbm.to_bytes().unwrap()),
    ] {
        let compiled = CompiledModel::load(kind, &bytes).unwrap();
        let image_bytes = compiled.image(&bytes).unwrap();
        let source = mlops_domain::hashing::sha256_hex(&bytes);
        eprintln!(
            "{name}: model file {} bytes, engine image {} bytes",
            bytes.len(),
            image_bytes.len()
        );
        group.bench_function(BenchmarkId::new(name, "native file"), |b| {
            b.iter(|| CompiledModel::load(kind, &bytes).unwrap().n_features())
        });
        for (label, integrity) in [
            ("image", Integrity::Verified),
            ("image + body hash", Integrity::CheckBody),
        ] {
            group.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| {
                    image::load(&image_bytes, &source, integrity)
                        .unwrap()
                        .n_trees()
                })
            });
        }
    }
    group.finish();
}

/// With `MLOPS_BENCH_EXPORT=DIR`, writes the LightGBM model file and the batch rows this bench
/// times (`lightgbm.txt`, `rows.f64`: little-endian f64, row-major), so that
/// `scripts/lightgbm_peers.py` times lleaves and TL2cgen on the same file and rows.
fn export_for_peers(f: &Fixture) {
    let Some(dir) = std::env::var_os("MLOPS_BENCH_EXPORT").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lightgbm.txt"), f.lgbm.to_bytes().unwrap()).unwrap();
    let rows: Vec<u8> = f
        .batch
        .values
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.join("rows.f64"), rows).unwrap();
    eprintln!(
        "exported the LightGBM model and the batch rows to {}",
        dir.display()
    );
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    export_for_peers(&f);
    let xgb_engine = CompiledModel::load(
        mlops_domain::artifact::ModelKind::Xgboost,
        &f.xgb.to_bytes().unwrap(),
    )
    .unwrap();
    let lgbm_engine = CompiledModel::load(
        mlops_domain::artifact::ModelKind::Lightgbm,
        &f.lgbm.to_bytes().unwrap(),
    )
    .unwrap();
    if let CompiledModel::Trees(e) = &xgb_engine {
        eprintln!(
            "xgboost: {} trees, {} nodes, {}",
            e.n_trees(),
            e.trees.nodes.len(),
            depth_summary(e)
        );
    }
    if let CompiledModel::Trees(e) = &lgbm_engine {
        eprintln!(
            "lightgbm: {} trees, {} nodes, {}",
            e.n_trees(),
            e.trees.nodes.len(),
            depth_summary(e)
        );
    }
    load(c, &f);
    let rows: Vec<FeatureMatrix> = (0..256).map(|i| one_row(&f.test, i * 13)).collect();

    let mut single = c.benchmark_group("single_row");
    let mut k = 0usize;
    single.bench_function(BenchmarkId::new("xgboost", "native"), |b| {
        b.iter(|| {
            k += 1;
            f.xgb.predict(&rows[k % rows.len()]).unwrap()[0]
        })
    });
    single.bench_function(BenchmarkId::new("lightgbm", "native"), |b| {
        b.iter(|| {
            k += 1;
            f.lgbm
                .predict_with(&rows[k % rows.len()], "num_threads=1")
                .unwrap()[0]
        })
    });
    for (name, model) in [("xgboost", &xgb_engine), ("lightgbm", &lgbm_engine)] {
        single.bench_function(BenchmarkId::new(name, "engine"), |b| {
            b.iter(|| {
                k += 1;
                let r = &rows[k % rows.len()].values;
                model.transform(model.margin(r))
            })
        });
    }
    single.finish();

    let mut batch = c.benchmark_group("batch_100k_rows_1_thread");
    batch
        .sample_size(10)
        .throughput(Throughput::Elements(BATCH_ROWS as u64));
    batch.bench_function(BenchmarkId::new("xgboost", "native"), |b| {
        b.iter(|| f.xgb.predict(&f.batch).unwrap().len())
    });
    batch.bench_function(BenchmarkId::new("xgboost", "engine"), |b| {
        b.iter(|| xgb_engine.predict_batch(&f.batch.values).len())
    });
    batch.bench_function(BenchmarkId::new("lightgbm", "native"), |b| {
        b.iter(|| {
            f.lgbm
                .predict_with(&f.batch, "num_threads=1")
                .unwrap()
                .len()
        })
    });
    batch.bench_function(BenchmarkId::new("lightgbm", "engine"), |b| {
        b.iter(|| lgbm_engine.predict_batch(&f.batch.values).len())
    });
    batch.finish();
}

/// The MLP: libtorch's forward pass (the trainer's prediction: f32 weights in f64) against the
/// engine, one thread.
#[cfg(feature = "torch")]
fn mlp_benches(c: &mut Criterion) {
    use mlops_trainer::mlp::{MlpModel, MlpParams};

    let s = split(PipelineOptions { standardize: true });
    tch::set_num_threads(1);
    let params = MlpParams {
        max_epochs: 3,
        ..MlpParams::default()
    };
    let set = |x, y| Labelled { x, y };
    let model = MlpModel::train(
        s.task,
        &params,
        set(&s.x_train, &s.y_train),
        Some(set(&s.x_test, &s.y_test)),
        42,
    )
    .unwrap();
    let engine = CompiledModel::load(
        mlops_domain::artifact::ModelKind::Mlp,
        &model.to_bytes().unwrap(),
    )
    .unwrap();
    let x_test = s.x_test;
    let rows: Vec<FeatureMatrix> = (0..256).map(|i| one_row(&x_test, i * 13)).collect();
    let mut single = c.benchmark_group("single_row");
    let mut k = 0usize;
    single.bench_function(BenchmarkId::new("mlp", "native"), |b| {
        b.iter(|| {
            k += 1;
            model.predict(&rows[k % rows.len()]).unwrap()[0]
        })
    });
    single.bench_function(BenchmarkId::new("mlp", "engine"), |b| {
        b.iter(|| {
            k += 1;
            let r = &rows[k % rows.len()].values;
            engine.transform(engine.margin(r))
        })
    });
    single.finish();

    let batch_rows = batch_of(&x_test);
    let mut batch = c.benchmark_group("batch_100k_rows_1_thread");
    batch
        .sample_size(10)
        .throughput(Throughput::Elements(BATCH_ROWS as u64));
    batch.bench_function(BenchmarkId::new("mlp", "native"), |b| {
        b.iter(|| model.predict(&batch_rows).unwrap().len())
    });
    batch.bench_function(BenchmarkId::new("mlp", "engine"), |b| {
        b.iter(|| engine.predict_batch(&batch_rows.values).len())
    });
    batch.finish();
}

#[cfg(not(feature = "torch"))]
fn mlp_benches(_: &mut Criterion) {}

criterion_group!(engine_vs_native, benches, mlp_benches);
criterion_main!(engine_vs_native);
