#![no_main]
//! Fuzzes the engine image loader: any bytes give an ensemble or an error, never a panic, hang or
//! unbounded allocation; a loaded ensemble evaluates without panicking on rows built from the
//! input (its cut layout and its nodes may disagree in a forged image: the image's integrity
//! comes from the bundle's hashes, the loader's job is memory safety and bounded work).
use libfuzzer_sys::fuzz_target;
use mlops_engine::CompiledModel;
use mlops_engine::image::{self, Integrity};

fuzz_target!(|data: &[u8]| {
    let source = image::source_sha256(data).unwrap_or_default();
    let Ok(ensemble) = image::load(data, &source, Integrity::Verified) else {
        return;
    };
    let model = CompiledModel::Trees(ensemble);
    let width = model.n_features();
    if width > 4096 {
        return;
    }
    let specials = [0.0, -0.0, 1.0, -1.0, f64::NAN, 1e-36, -1e300, 1e300, 0.5, 2.0];
    let row: Vec<f64> = (0..width)
        .map(|i| specials[data.get(data.len() - 1 - i.min(data.len() - 1)).map_or(0, |b| *b as usize) % specials.len()])
        .collect();
    let _ = model.transform(model.margin(&row));
    assert_eq!(model.predict_batch(&[row.clone(), row.clone()].concat()).len(), 2);
    let _ = model.contributions(&row);
});
