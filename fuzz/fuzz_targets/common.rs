// Shared by the fuzz targets: a model that loads must evaluate without panicking on rows built
// from the input bytes, including NaN, infinities and extreme values.
use mlops_engine::CompiledModel;

pub fn exercise(model: &CompiledModel, data: &[u8]) {
    let width = model.n_features();
    if width > 4096 {
        return;
    }
    let specials = [0.0, -0.0, 1.0, -1.0, f64::NAN, 1e-36, -1e300, 1e300, 0.5, 2.0];
    let row: Vec<f64> = (0..width).map(|i| specials[data.get(i).map_or(0, |b| *b as usize) % specials.len()]).collect();
    if model.check_row(&row, &[]).is_ok() {
        let m = model.margin(&row);
        let p = model.transform(m);
        let batch = model.predict_batch(&[row.clone(), row.clone()].concat());
        assert_eq!(batch.len(), 2);
        assert!(batch[0].to_bits() == p.to_bits() || (batch[0].is_nan() && p.is_nan()), "batch and single-row paths disagree");
        // The cut-index fast path must decide exactly like the node-by-node walk.
        if let CompiledModel::Trees(e) = model {
            if e.cut_forest.is_some() {
                let mut node_walk = e.clone();
                node_walk.cut_forest = None;
                assert_eq!(node_walk.margin(&row).to_bits(), m.to_bits(), "cut path and node walk disagree");
            }
        }
        if let Some(phi) = model.contributions(&row) {
            assert_eq!(phi.len(), width + 1);
        }
    }
}
