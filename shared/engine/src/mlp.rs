//! Multi-layer perceptrons stored as safetensors.
//!
//! Layout: tensors `layers.{i}.weight` (f32, shape `[out, in]`) and `layers.{i}.bias` (f32,
//! `[out]`) for i = 0, 1, …; metadata `activation` (`relu` or `gelu`, applied between layers) and
//! `output` (`identity` or `sigmoid`). Inputs are the pipeline's standardized features.

use safetensors::{Dtype, SafeTensors};

use crate::EngineError;

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit, erf form: x · Φ(x).
    Gelu,
}

/// One dense layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Row-major `[out, in]`: the file's f32 values, widened to f64 (exactly) once at load.
    pub weight: Vec<f64>,
    /// `[out]`, widened to f64 at load like the weights.
    pub bias: Vec<f64>,
    /// Inputs.
    pub inputs: usize,
}

/// A loaded MLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Layers in order.
    pub layers: Vec<Dense>,
    /// Activation between layers.
    pub activation: Activation,
    /// Sigmoid on the output (classification).
    pub sigmoid_output: bool,
}

/// Largest accepted layer (weights), a guard against absurd files.
const MAX_LAYER_WEIGHTS: usize = 64 << 20;

fn bad(m: impl Into<String>) -> EngineError {
    EngineError::InvalidModel(m.into())
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<f32>, Vec<usize>), EngineError> {
    let t = st
        .tensor(name)
        .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(bad(format!(
            "tensor '{name}' is {:?}, expected F32",
            t.dtype()
        )));
    }
    let values: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!("tensor '{name}' has non-finite values")));
    }
    Ok((values, t.shape().to_vec()))
}

/// Lanes of a dot product's partial sums.
const LANES: usize = 8;
/// Rows a batch evaluates together: each weight row is read once for all of them.
const BLOCK_ROWS: usize = 8;

/// A block of `R` rows as a layer reads them: chunk `i` of every row side by side (one slice,
/// walked without bounds checks), then what is left of each row past its whole chunks.
struct BlockInputs<const R: usize> {
    chunks: Vec<[[f64; LANES]; R]>,
    rest: [Vec<f64>; R],
}

impl<const R: usize> BlockInputs<R> {
    /// `rows` all have the layer's width.
    #[inline(always)]
    fn new(rows: &[Vec<f64>; R]) -> Self {
        let whole = rows[0].len() / LANES;
        let chunks = (0..whole)
            .map(|i| std::array::from_fn(|r| rows[r].as_chunks::<LANES>().0[i]))
            .collect();
        Self {
            chunks,
            rest: std::array::from_fn(|r| rows[r][whole * LANES..].to_vec()),
        }
    }
}

/// How a block's dot products and activations are computed: each kernel gives every row the
/// same bits.
trait Kernel {
    /// Σ w·x of one weight row with each of the block's rows.
    fn dots<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R];

    /// Applies `activation` to a layer's outputs.
    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        activate(activation, values);
    }
}

/// Applies `activation` to each value; GELU with [`crate::erf::gelu`], whose loops vectorize
/// and whose values have `libm::erf`'s bits.
#[inline(always)]
fn activate(activation: Activation, values: &mut [f64]) {
    // Plain loops: an iterator adapter's closure may be left out of line, compiled without the
    // caller's vector features.
    match activation {
        Activation::Relu => {
            for v in values {
                *v = v.max(0.0);
            }
        }
        Activation::Gelu => crate::erf::gelu(values),
    }
}

/// Finishes a weight row's dot products. Every kernel computes each row's in eight independent
/// partial sums over the same chunks, in the same order; here the partial sums are added in lane
/// order, then the rest of the row. Rust never fuses a multiply and an add, so a row's result
/// has the same bits whatever the block size and the vector width.
#[inline(always)]
fn finish<const R: usize>(
    partial: [[f64; LANES]; R],
    w_rest: &[f64],
    x: &BlockInputs<R>,
) -> [f64; R] {
    std::array::from_fn(|r| {
        let rest: f64 = w_rest.iter().zip(&x.rest[r]).map(|(w, x)| w * x).sum();
        partial[r].iter().sum::<f64>() + rest
    })
}

/// The compiler's vectors for the target (SSE2 on baseline x86-64).
struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn dots<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R] {
        let (w_chunks, w_rest) = w.as_chunks::<LANES>();
        let mut partial = [[0.0f64; LANES]; R];
        for (w, rows) in w_chunks.iter().zip(&x.chunks) {
            for (partial, x) in partial.iter_mut().zip(rows) {
                for lane in 0..LANES {
                    partial[lane] += w[lane] * x[lane];
                }
            }
        }
        finish(partial, w_rest, x)
    }
}

/// One 512-bit vector per chunk (x86-64 CPUs with AVX-512F; chosen only on them).
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn dots<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R] {
        // SAFETY: `Avx512` is chosen only on CPUs with AVX-512F (`Mlp::margins_of`).
        unsafe { dots_avx512(w, x) }
    }

    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        // SAFETY: as above.
        unsafe { activate_avx512(activation, values) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn activate_avx512(activation: Activation, values: &mut [f64]) {
    activate(activation, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dots_avx512<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R] {
    use std::arch::x86_64::*;
    let (w_chunks, w_rest) = w.as_chunks::<LANES>();
    let mut acc = [_mm512_setzero_pd(); R];
    for (w, rows) in w_chunks.iter().zip(&x.chunks) {
        // SAFETY: each load reads one whole `[f64; 8]`, 64 bytes in bounds.
        let w = unsafe { _mm512_loadu_pd(w.as_ptr()) };
        for (acc, x) in acc.iter_mut().zip(rows) {
            let x = unsafe { _mm512_loadu_pd(x.as_ptr()) };
            *acc = _mm512_add_pd(*acc, _mm512_mul_pd(w, x));
        }
    }
    let partial = acc.map(|v| {
        let mut lanes = [0.0f64; LANES];
        // SAFETY: writes one whole `[f64; 8]`.
        unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), v) };
        lanes
    });
    finish(partial, w_rest, x)
}

/// Two 256-bit vectors per chunk (x86-64 CPUs with AVX; chosen only on them).
#[cfg(target_arch = "x86_64")]
struct Avx;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx {
    #[inline(always)]
    fn dots<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R] {
        // SAFETY: `Avx` is chosen only on CPUs with AVX (`Mlp::margins_of`).
        unsafe { dots_avx(w, x) }
    }

    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        // SAFETY: as above.
        unsafe { activate_avx(activation, values) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn activate_avx(activation: Activation, values: &mut [f64]) {
    activate(activation, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dots_avx<const R: usize>(w: &[f64], x: &BlockInputs<R>) -> [f64; R] {
    use std::arch::x86_64::*;
    let (w_chunks, w_rest) = w.as_chunks::<LANES>();
    let mut acc = [[_mm256_setzero_pd(); 2]; R];
    for (w, rows) in w_chunks.iter().zip(&x.chunks) {
        // SAFETY: each load reads four of a whole `[f64; 8]`'s values, in bounds.
        let w = unsafe {
            [
                _mm256_loadu_pd(w.as_ptr()),
                _mm256_loadu_pd(w[4..].as_ptr()),
            ]
        };
        for (acc, x) in acc.iter_mut().zip(rows) {
            let x = unsafe {
                [
                    _mm256_loadu_pd(x.as_ptr()),
                    _mm256_loadu_pd(x[4..].as_ptr()),
                ]
            };
            for half in 0..2 {
                acc[half] = _mm256_add_pd(acc[half], _mm256_mul_pd(w[half], x[half]));
            }
        }
    }
    let partial = acc.map(|[low, high]| {
        let mut lanes = [0.0f64; LANES];
        // SAFETY: each store writes four of `lanes`' eight values.
        unsafe {
            _mm256_storeu_pd(lanes.as_mut_ptr(), low);
            _mm256_storeu_pd(lanes[4..].as_mut_ptr(), high);
        }
        lanes
    });
    finish(partial, w_rest, x)
}

impl Mlp {
    /// Loads and checks a safetensors file.
    pub fn load(bytes: &[u8]) -> Result<Self, EngineError> {
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| EngineError::Parse {
            format: "safetensors",
            message: e.to_string(),
        })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| EngineError::Parse {
            format: "safetensors",
            message: e.to_string(),
        })?;
        let meta = metadata.metadata().clone().unwrap_or_default();
        let activation = match meta.get("activation").map(String::as_str).unwrap_or("relu") {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            other => return Err(EngineError::Unsupported(format!("activation '{other}'"))),
        };
        let sigmoid_output = match meta.get("output").map(String::as_str).unwrap_or("identity") {
            "identity" => false,
            "sigmoid" => true,
            other => return Err(EngineError::Unsupported(format!("output '{other}'"))),
        };
        let mut layers = Vec::new();
        let n_tensors = st.names().len();
        for i in 0..n_tensors / 2 + 1 {
            let wname = format!("layers.{i}.weight");
            if st.tensor(&wname).is_err() {
                break;
            }
            let (weight, wshape) = f32s(&st, &wname)?;
            let (bias, bshape) = f32s(&st, &format!("layers.{i}.bias"))?;
            if wshape.len() != 2
                || bshape.len() != 1
                || bshape[0] != wshape[0]
                || wshape.contains(&0)
                || weight.len() > MAX_LAYER_WEIGHTS
            {
                return Err(bad(format!(
                    "layer {i}: shapes {wshape:?} and {bshape:?} do not form a dense layer"
                )));
            }
            if let Some(prev) = layers.last().map(|l: &Dense| l.bias.len())
                && prev != wshape[1]
            {
                return Err(bad(format!(
                    "layer {i} takes {} inputs but the previous layer gives {prev}",
                    wshape[1]
                )));
            }
            layers.push(Dense {
                weight: weight.into_iter().map(f64::from).collect(),
                bias: bias.into_iter().map(f64::from).collect(),
                inputs: wshape[1],
            });
        }
        if layers.is_empty() {
            return Err(bad("no tensor 'layers.0.weight'"));
        }
        if layers.last().is_some_and(|l| l.bias.len() != 1) {
            return Err(bad("the last layer must have one output"));
        }
        Ok(Self {
            layers,
            activation,
            sigmoid_output,
        })
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// The output before the sigmoid: the f32 weights as trained, evaluated in f64 (the
    /// function libtorch computes on them in f64, to f64 rounding; an f32 pass is ~1e-6 off).
    pub fn margin(&self, row: &[f64]) -> f64 {
        self.margins_of(&[row])[0]
    }

    /// Margins of many rows (row-major, [`Mlp::inputs`] values each); each has the bits
    /// [`Mlp::margin`] gives its row alone.
    pub fn margins(&self, values: &[f64]) -> Vec<f64> {
        let rows: Vec<&[f64]> = values.chunks(self.inputs()).collect();
        self.margins_of(&rows)
    }

    /// Rows [`BLOCK_ROWS`] at a time, with the widest vectors the CPU has (AVX-512, AVX, else
    /// the compiler's): with no fused multiply-add, the width changes the speed, not the bits.
    fn margins_of(&self, rows: &[&[f64]]) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return self.margins_with::<Avx512>(rows);
            }
            if std::is_x86_feature_detected!("avx") {
                return self.margins_with::<Avx>(rows);
            }
        }
        self.margins_with::<Portable>(rows)
    }

    fn margins_with<K: Kernel>(&self, rows: &[&[f64]]) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows.len());
        let mut blocks = rows.chunks_exact(BLOCK_ROWS);
        for block in &mut blocks {
            let block: [&[f64]; BLOCK_ROWS] = std::array::from_fn(|r| block[r]);
            out.extend(self.forward::<K, BLOCK_ROWS>(block));
        }
        for &row in blocks.remainder() {
            out.extend(self.forward::<K, 1>([row]));
        }
        out
    }

    /// The margins of `R` rows: every layer's weights are read once for the block.
    #[inline(always)]
    fn forward<K: Kernel, const R: usize>(&self, rows: [&[f64]; R]) -> [f64; R] {
        // Callers check a row's width; a short one reads as zeros past its end, never a panic.
        let width = self.inputs();
        let mut x: [Vec<f64>; R] = rows.map(|row| {
            let mut x: Vec<f64> = row
                .iter()
                .take(width)
                .map(|&v| f64::from(v as f32))
                .collect();
            x.resize(width, 0.0);
            x
        });
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            let mut y: [Vec<f64>; R] = std::array::from_fn(|_| layer.bias.clone());
            let inputs = BlockInputs::new(&x);
            for (o, w) in layer.weight.chunks_exact(layer.inputs).enumerate() {
                for (y, d) in y.iter_mut().zip(K::dots(w, &inputs)) {
                    y[o] += d;
                }
            }
            if k != last {
                for y in &mut y {
                    K::activate(self.activation, y);
                }
            }
            x = y;
        }
        x.map(|x| x[0])
    }

    /// The prediction for a margin.
    pub fn transform(&self, margin: f64) -> f64 {
        if self.sigmoid_output {
            1.0 / (1.0 + (-margin).exp())
        } else {
            margin
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tensor(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// An MLP of the given widths with pseudo-random weights (xorshift), f32 as trained.
    fn random_mlp(widths: &[usize], activation: &str, seed: u64) -> Mlp {
        let mut state = seed;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..widths.len() - 1)
            .flat_map(|i| {
                let (inputs, outputs) = (widths[i], widths[i + 1]);
                let w: Vec<f32> = (0..inputs * outputs).map(|_| next()).collect();
                let b: Vec<f32> = (0..outputs).map(|_| next()).collect();
                [
                    (
                        format!("layers.{i}.weight"),
                        vec![outputs, inputs],
                        tensor(&w),
                    ),
                    (format!("layers.{i}.bias"), vec![outputs], tensor(&b)),
                ]
            })
            .collect();
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                let view =
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
                (name.as_str(), view)
            })
            .collect();
        let meta = HashMap::from([("activation".to_string(), activation.to_string())]);
        Mlp::load(&safetensors::serialize(views, &Some(meta)).unwrap()).unwrap()
    }

    /// The engine's forward pass before batches were blocked: one row, one output at a time.
    fn reference_margin(m: &Mlp, row: &[f64]) -> f64 {
        let dot = |w: &[f64], x: &[f64]| {
            let (w_blocks, w_rest) = w.as_chunks::<LANES>();
            let (x_blocks, x_rest) = x.as_chunks::<LANES>();
            let mut partial = [0.0f64; LANES];
            for (w, x) in w_blocks.iter().zip(x_blocks) {
                for lane in 0..LANES {
                    partial[lane] += w[lane] * x[lane];
                }
            }
            let rest: f64 = w_rest.iter().zip(x_rest).map(|(w, x)| w * x).sum();
            partial.iter().sum::<f64>() + rest
        };
        let mut x: Vec<f64> = row.iter().map(|&v| f64::from(v as f32)).collect();
        for (k, layer) in m.layers.iter().enumerate() {
            let mut y = layer.bias.clone();
            for (o, out) in y.iter_mut().enumerate() {
                *out += dot(&layer.weight[o * layer.inputs..(o + 1) * layer.inputs], &x);
            }
            if k + 1 != m.layers.len() {
                for v in &mut y {
                    *v = match m.activation {
                        Activation::Relu => v.max(0.0),
                        Activation::Gelu => {
                            0.5 * *v * (1.0 + libm::erf(*v / std::f64::consts::SQRT_2))
                        }
                    };
                }
            }
            x = y;
        }
        x[0]
    }

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn batches_give_each_row_the_bits_it_gets_alone() {
        // Widths off the eight-lane chunks, and batches off the row blocks.
        for (widths, activation) in [
            (vec![11, 37, 9, 1], "gelu"),
            (vec![8, 64, 16, 1], "relu"),
            (vec![3, 1], "gelu"),
        ] {
            let m = random_mlp(&widths, activation, 42);
            for rows in [1, 7, 8, 9, 21] {
                let values: Vec<f64> = (0..rows * widths[0])
                    .map(|i| ((i * 7919) % 1000) as f64 / 125.0 - 4.0)
                    .collect();
                let batch = m.margins(&values);
                let row_slices: Vec<&[f64]> = values.chunks(widths[0]).collect();
                let portable = m.margins_with::<Portable>(&row_slices);
                // The AVX kernel too, where the CPU would pick AVX-512 for `margins`.
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx") {
                    assert_eq!(
                        bits(&m.margins_with::<Avx>(&row_slices)),
                        bits(&batch),
                        "AVX kernel"
                    );
                }
                assert_eq!(batch.len(), rows);
                for (i, row) in values.chunks(widths[0]).enumerate() {
                    let alone = m.margin(row).to_bits();
                    assert_eq!(batch[i].to_bits(), alone, "{widths:?}, row {i} of {rows}");
                    assert_eq!(portable[i].to_bits(), alone, "{widths:?}, portable walk");
                    assert_eq!(reference_margin(&m, row).to_bits(), alone, "{widths:?}");
                }
            }
        }
    }

    #[test]
    fn a_layer_without_inputs_or_outputs_is_refused() {
        for shape in [[0usize, 3], [3, 0]] {
            let w = tensor(&vec![1.0; shape[0] * shape[1]]);
            let b = tensor(&vec![0.0; shape[0]]);
            let views = vec![
                (
                    "layers.0.weight",
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.to_vec(), &w).unwrap(),
                ),
                (
                    "layers.0.bias",
                    safetensors::tensor::TensorView::new(Dtype::F32, vec![shape[0]], &b).unwrap(),
                ),
            ];
            let bytes = safetensors::serialize(views, &None).unwrap();
            let e = Mlp::load(&bytes).unwrap_err().to_string();
            assert!(e.contains("do not form a dense layer"), "{e}");
        }
    }

    #[test]
    fn forward_matches_hand_computation() {
        let w0 = tensor(&[1.0, -1.0, 0.5, 2.0]);
        let b0 = tensor(&[0.0, -1.0]);
        let w1 = tensor(&[1.0, 1.0]);
        let b1 = tensor(&[0.5]);
        let views = vec![
            (
                "layers.0.weight",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 2], &w0).unwrap(),
            ),
            (
                "layers.0.bias",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &b0).unwrap(),
            ),
            (
                "layers.1.weight",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![1, 2], &w1).unwrap(),
            ),
            (
                "layers.1.bias",
                safetensors::tensor::TensorView::new(Dtype::F32, vec![1], &b1).unwrap(),
            ),
        ];
        let meta = HashMap::from([("activation".to_string(), "relu".to_string())]);
        let bytes = safetensors::serialize(views, &Some(meta)).unwrap();
        let m = Mlp::load(&bytes).unwrap();
        // hidden = relu([1-2, 0.5+4-1]) = [0, 3.5]; out = 3.5 + 0.5
        assert_eq!(m.margin(&[1.0, 2.0]), 4.0);
        assert!(Mlp::load(&bytes[..bytes.len() - 3]).is_err());
    }
}
