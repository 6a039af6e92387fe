#![no_main]
//! Fuzzes the safetensors MLP loader: any bytes give a model or an error, never a panic, hang or
//! unbounded allocation; a loaded model evaluates without panicking.
use libfuzzer_sys::fuzz_target;
use mlops_domain::artifact::ModelKind;
use mlops_engine::CompiledModel;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = CompiledModel::load(ModelKind::Mlp, data) {
        common::exercise(&model, data);
    }
});
