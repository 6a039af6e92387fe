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

/// Σ w·x in f64, in eight independent partial sums (vectorized by the compiler).
fn dot(w: &[f64], x: &[f64]) -> f64 {
    const LANES: usize = 8;
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
        let mut x: Vec<f64> = row.iter().map(|&v| f64::from(v as f32)).collect();
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            let mut y = layer.bias.clone();
            for (o, out) in y.iter_mut().enumerate() {
                *out += dot(&layer.weight[o * layer.inputs..(o + 1) * layer.inputs], &x);
            }
            if k != last {
                for v in &mut y {
                    *v = match self.activation {
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
