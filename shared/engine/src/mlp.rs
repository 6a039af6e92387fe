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
/// Rows a batch evaluates together, laid out value by value for [`Kernel::block_layer`].
const BLOCK_ROWS: usize = 8;

/// How dot products and activations are computed: each kernel gives every row the same bits,
/// alone or in a block.
trait Kernel {
    /// Σ w·x of one weight row with one row's inputs (of the same width).
    fn dot(w: &[f64], x: &[f64]) -> f64;

    /// Applies `activation` to a layer's outputs.
    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        activate(activation, values);
    }

    /// A layer's outputs for a block of [`BLOCK_ROWS`] rows: `x[i]` holds input `i` of every
    /// row, and `y[o]` gets output `o` of every row, before the activation.
    fn block_layer(layer: &Dense, x: &[Rows], y: &mut [Rows]);
}

/// One value of each of a block's [`BLOCK_ROWS`] rows.
type Rows = [f64; BLOCK_ROWS];

/// What [`block_layer`] computes with: one value of each of [`RowVector::ROWS`] rows of a block,
/// held in vector registers. The methods are `unsafe` because a vector type may need CPU
/// features that only its kernel's caller checks.
trait RowVector: Copy {
    /// Rows a vector holds, a divisor of [`BLOCK_ROWS`]: a block is computed that many rows at
    /// a time, so that its partial sums fit in the registers.
    const ROWS: usize;
    unsafe fn splat(v: f64) -> Self;
    /// Rows `first..first + ROWS` of `rows`.
    unsafe fn load(rows: &Rows, first: usize) -> Self;
    unsafe fn store(self, rows: &mut Rows, first: usize);
    unsafe fn add(self, other: Self) -> Self;
    unsafe fn mul(self, other: Self) -> Self;
}

/// A layer for a block of rows, `T` outputs and [`RowVector::ROWS`] rows at a time, then one
/// output at a time. Each output of each row is computed with the operations of [`Kernel::dot`]
/// and [`finish`], in their order: eight partial sums over the input chunks (lane `l` of chunk
/// `c` is input `8c + l`), summed in lane order, then the rest of the inputs, then the bias.
/// Here the vectors run across rows instead of across a row's inputs, so no horizontal sum is
/// needed, and each weight is read once for a vector's rows.
///
/// # Safety
/// `V`'s CPU features must be present.
#[inline(always)]
unsafe fn block_layer<V: RowVector, const T: usize>(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
    let outputs = layer.bias.len();
    let mut o = 0;
    while o + T <= outputs {
        unsafe { block_outputs::<V, T>(layer, o, x, y) };
        o += T;
    }
    while o < outputs {
        unsafe { block_outputs::<V, 1>(layer, o, x, y) };
        o += 1;
    }
}

/// Outputs `first..first + T` of [`block_layer`].
///
/// # Safety
/// As [`block_layer`].
#[inline(always)]
unsafe fn block_outputs<V: RowVector, const T: usize>(
    layer: &Dense,
    first: usize,
    x: &[Rows],
    y: &mut [Rows],
) {
    let inputs = layer.inputs;
    let weights: [&[f64]; T] =
        std::array::from_fn(|t| &layer.weight[(first + t) * inputs..(first + t + 1) * inputs]);
    let (x_chunks, x_rest) = x[..inputs].as_chunks::<LANES>();
    let w_chunks: [&[[f64; LANES]]; T] = weights.map(|w| w.as_chunks::<LANES>().0);
    // The neutral element `Iterator::sum` starts from, as `finish` sums.
    let zero: f64 = std::iter::empty::<f64>().sum();
    for rows in (0..BLOCK_ROWS).step_by(V::ROWS) {
        let mut partial = [[unsafe { V::splat(0.0) }; LANES]; T];
        for (c, x) in x_chunks.iter().enumerate() {
            for lane in 0..LANES {
                let x = unsafe { V::load(&x[lane], rows) };
                for t in 0..T {
                    let w = unsafe { V::splat(w_chunks[t][c][lane]) };
                    partial[t][lane] = unsafe { partial[t][lane].add(w.mul(x)) };
                }
            }
        }
        for t in 0..T {
            let mut sum = unsafe { V::splat(zero) };
            for lane in partial[t] {
                sum = unsafe { sum.add(lane) };
            }
            let mut rest = unsafe { V::splat(zero) };
            let w_rest = &weights[t][x_chunks.len() * LANES..];
            for (&w, x) in w_rest.iter().zip(x_rest) {
                rest = unsafe { rest.add(V::splat(w).mul(V::load(x, rows))) };
            }
            let out = unsafe { V::splat(layer.bias[first + t]).add(sum.add(rest)) };
            unsafe { out.store(&mut y[first + t], rows) };
        }
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

/// Finishes a dot product. Every kernel computes it in eight independent partial sums over the
/// same chunks, in the same order; here the partial sums are added in lane order, then the rest
/// of the row. Rust never fuses a multiply and an add, so the result has the same bits whatever
/// the vector width, and [`block_outputs`] computes the same for a block of rows.
#[inline(always)]
fn finish(partial: [f64; LANES], w_rest: &[f64], x_rest: &[f64]) -> f64 {
    let rest: f64 = w_rest.iter().zip(x_rest).map(|(w, x)| w * x).sum();
    partial.iter().sum::<f64>() + rest
}

/// The compiler's vectors for the target (SSE2 on baseline x86-64).
struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    fn dot(w: &[f64], x: &[f64]) -> f64 {
        let (w_chunks, w_rest) = w.as_chunks::<LANES>();
        let (x_chunks, x_rest) = x.as_chunks::<LANES>();
        let mut partial = [0.0f64; LANES];
        for (w, x) in w_chunks.iter().zip(x_chunks) {
            for lane in 0..LANES {
                partial[lane] += w[lane] * x[lane];
            }
        }
        finish(partial, w_rest, x_rest)
    }

    #[inline(always)]
    fn block_layer(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
        // SAFETY: plain arrays need no CPU feature.
        unsafe { block_layer::<[f64; 4], 1>(layer, x, y) }
    }
}

/// The compiler's vectors: plain arrays of four rows (eight lane sums of them take 16 of
/// aarch64's 32 vector registers).
impl RowVector for [f64; 4] {
    const ROWS: usize = 4;
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        [v; 4]
    }
    #[inline(always)]
    unsafe fn load(rows: &Rows, first: usize) -> Self {
        std::array::from_fn(|r| rows[first + r])
    }
    #[inline(always)]
    unsafe fn store(self, rows: &mut Rows, first: usize) {
        rows[first..first + 4].copy_from_slice(&self);
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        std::array::from_fn(|r| self[r] + other[r])
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        std::array::from_fn(|r| self[r] * other[r])
    }
}

/// One 512-bit vector per chunk (x86-64 CPUs with AVX-512F; chosen only on them).
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn dot(w: &[f64], x: &[f64]) -> f64 {
        // SAFETY: `Avx512` is chosen only on CPUs with AVX-512F (`Mlp::margins_of`).
        unsafe { dot_avx512(w, x) }
    }

    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        // SAFETY: as above.
        unsafe { activate_avx512(activation, values) }
    }

    #[inline(always)]
    fn block_layer(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
        // SAFETY: as above.
        unsafe { block_layer_avx512(layer, x, y) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn block_layer_avx512(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
    // Three outputs: 24 partial sums in the 32 vector registers.
    // SAFETY: this function's caller has checked AVX-512F.
    unsafe { block_layer::<std::arch::x86_64::__m512d, 3>(layer, x, y) }
}

/// A block's eight rows in one 512-bit vector.
#[cfg(target_arch = "x86_64")]
impl RowVector for std::arch::x86_64::__m512d {
    const ROWS: usize = BLOCK_ROWS;
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        unsafe { std::arch::x86_64::_mm512_set1_pd(v) }
    }
    #[inline(always)]
    unsafe fn load(rows: &Rows, _first: usize) -> Self {
        // SAFETY: reads the eight values of `rows` (`first` is 0).
        unsafe { std::arch::x86_64::_mm512_loadu_pd(rows.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store(self, rows: &mut Rows, _first: usize) {
        // SAFETY: writes the eight values of `rows` (`first` is 0).
        unsafe { std::arch::x86_64::_mm512_storeu_pd(rows.as_mut_ptr(), self) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_add_pd(self, other) }
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        unsafe { std::arch::x86_64::_mm512_mul_pd(self, other) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn activate_avx512(activation: Activation, values: &mut [f64]) {
    activate(activation, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_avx512(w: &[f64], x: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let (w_chunks, w_rest) = w.as_chunks::<LANES>();
    let (x_chunks, x_rest) = x.as_chunks::<LANES>();
    let mut acc = _mm512_setzero_pd();
    for (w, x) in w_chunks.iter().zip(x_chunks) {
        // SAFETY: each load reads one whole `[f64; 8]`, 64 bytes in bounds.
        let (w, x) = unsafe { (_mm512_loadu_pd(w.as_ptr()), _mm512_loadu_pd(x.as_ptr())) };
        acc = _mm512_add_pd(acc, _mm512_mul_pd(w, x));
    }
    let mut partial = [0.0f64; LANES];
    // SAFETY: writes one whole `[f64; 8]`.
    unsafe { _mm512_storeu_pd(partial.as_mut_ptr(), acc) };
    finish(partial, w_rest, x_rest)
}

/// Two 256-bit vectors per chunk (x86-64 CPUs with AVX; chosen only on them).
#[cfg(target_arch = "x86_64")]
struct Avx;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx {
    #[inline(always)]
    fn dot(w: &[f64], x: &[f64]) -> f64 {
        // SAFETY: `Avx` is chosen only on CPUs with AVX (`Mlp::margins_of`).
        unsafe { dot_avx(w, x) }
    }

    #[inline(always)]
    fn activate(activation: Activation, values: &mut [f64]) {
        // SAFETY: as above.
        unsafe { activate_avx(activation, values) }
    }

    #[inline(always)]
    fn block_layer(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
        // SAFETY: as above.
        unsafe { block_layer_avx(layer, x, y) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn block_layer_avx(layer: &Dense, x: &[Rows], y: &mut [Rows]) {
    // One output, four rows: 8 partial sums in the 16 vector registers.
    // SAFETY: this function's caller has checked AVX.
    unsafe { block_layer::<std::arch::x86_64::__m256d, 1>(layer, x, y) }
}

/// Four of a block's rows in one 256-bit vector.
#[cfg(target_arch = "x86_64")]
impl RowVector for std::arch::x86_64::__m256d {
    const ROWS: usize = 4;
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        unsafe { std::arch::x86_64::_mm256_set1_pd(v) }
    }
    #[inline(always)]
    unsafe fn load(rows: &Rows, first: usize) -> Self {
        let rows = &rows[first..first + 4];
        // SAFETY: reads the four values of `rows`.
        unsafe { std::arch::x86_64::_mm256_loadu_pd(rows.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store(self, rows: &mut Rows, first: usize) {
        let rows = &mut rows[first..first + 4];
        // SAFETY: writes the four values of `rows`.
        unsafe { std::arch::x86_64::_mm256_storeu_pd(rows.as_mut_ptr(), self) }
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_add_pd(self, other) }
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        unsafe { std::arch::x86_64::_mm256_mul_pd(self, other) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn activate_avx(activation: Activation, values: &mut [f64]) {
    activate(activation, values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dot_avx(w: &[f64], x: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let (w_chunks, w_rest) = w.as_chunks::<LANES>();
    let (x_chunks, x_rest) = x.as_chunks::<LANES>();
    let mut acc = [_mm256_setzero_pd(); 2];
    for (w, x) in w_chunks.iter().zip(x_chunks) {
        for half in 0..2 {
            // SAFETY: each load reads four of a whole `[f64; 8]`'s values, in bounds.
            let (w, x) = unsafe {
                (
                    _mm256_loadu_pd(w[4 * half..].as_ptr()),
                    _mm256_loadu_pd(x[4 * half..].as_ptr()),
                )
            };
            acc[half] = _mm256_add_pd(acc[half], _mm256_mul_pd(w, x));
        }
    }
    let mut partial = [0.0f64; LANES];
    // SAFETY: each store writes four of `partial`'s eight values.
    unsafe {
        _mm256_storeu_pd(partial.as_mut_ptr(), acc[0]);
        _mm256_storeu_pd(partial[4..].as_mut_ptr(), acc[1]);
    }
    finish(partial, w_rest, x_rest)
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
        if blocks.len() > 0 {
            // Scratch for the widest layer, allocated only for a batch: a single row skips it.
            let widest = self.layers.iter().map(|l| l.inputs.max(l.bias.len()));
            let widest = widest.max().unwrap_or(0);
            let (mut x, mut y) = (
                vec![[0.0; BLOCK_ROWS]; widest],
                vec![[0.0; BLOCK_ROWS]; widest],
            );
            for block in &mut blocks {
                out.extend(self.forward_block::<K>(block, &mut x, &mut y));
            }
        }
        for &row in blocks.remainder() {
            out.push(self.forward::<K>(row));
        }
        out
    }

    /// The margins of [`BLOCK_ROWS`] rows, each layer's values laid out value by value (eight
    /// rows side by side) in `x` and `y`, which hold the widest layer.
    #[inline(always)]
    fn forward_block<K: Kernel>(
        &self,
        rows: &[&[f64]],
        x: &mut Vec<Rows>,
        y: &mut Vec<Rows>,
    ) -> Rows {
        // Callers check a row's width; a short one reads as zeros past its end, never a panic.
        for (i, x) in x[..self.inputs()].iter_mut().enumerate() {
            *x = std::array::from_fn(|r| rows[r].get(i).map_or(0.0, |&v| f64::from(v as f32)));
        }
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            let outputs = &mut y[..layer.bias.len()];
            K::block_layer(layer, &x[..layer.inputs], outputs);
            if k != last {
                K::activate(self.activation, outputs.as_flattened_mut());
            }
            std::mem::swap(x, y);
        }
        x[0]
    }

    /// The margin of one row.
    #[inline(always)]
    fn forward<K: Kernel>(&self, row: &[f64]) -> f64 {
        // Callers check a row's width; a short one reads as zeros past its end, never a panic.
        let width = self.inputs();
        let mut x: Vec<f64> = row
            .iter()
            .take(width)
            .map(|&v| f64::from(v as f32))
            .collect();
        x.resize(width, 0.0);
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            let mut y = layer.bias.clone();
            for (y, w) in y.iter_mut().zip(layer.weight.chunks_exact(layer.inputs)) {
                *y += K::dot(w, &x);
            }
            if k != last {
                K::activate(self.activation, &mut y);
            }
            x = y;
        }
        x[0]
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
