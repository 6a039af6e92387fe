//! Multi-layer perceptrons trained with libtorch 2.13 through `tch` (cargo feature `torch`).
//!
//! Dense layers with ReLU or GELU on standardized features; AdamW with a linear warm-up then a
//! cosine decay of the learning rate per step; early stopping on the validation loss (the best
//! epoch's weights are kept); optional dropout; bf16 mixed precision on CUDA (f32 master weights,
//! bf16 matrix products). Regression targets are standardized for training and the scaling is
//! folded into the last layer afterwards, so the exported network predicts in the label's units.
//!
//! The model file is safetensors in the layout of the pure-Rust engine (`layers.{i}.weight`
//! `[out, in]`, `layers.{i}.bias`, metadata `activation` and `output`), so serving needs no
//! libtorch.

use serde::{Deserialize, Serialize};

use crate::{Params, TrainError};

/// Whether this build can train MLPs (the `torch` feature).
pub const AVAILABLE: bool = cfg!(feature = "torch");

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpActivation {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit (erf form).
    Gelu,
}

impl MlpActivation {
    /// Name in the model file's metadata.
    pub fn name(self) -> &'static str {
        match self {
            MlpActivation::Relu => "relu",
            MlpActivation::Gelu => "gelu",
        }
    }
}

/// MLP hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpParams {
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<usize>,
    /// Activation between layers.
    pub activation: MlpActivation,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Upper bound of epochs; the cosine schedule spans them.
    pub max_epochs: usize,
    /// Epochs of linear learning-rate warm-up.
    pub warmup_epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Dropout after each hidden layer while training.
    pub dropout: f64,
    /// `cpu` or `cuda`.
    pub device: String,
    /// `auto` (bf16 mixed precision on CUDA, f32 on CPU), `f32` or `bf16`.
    pub precision: String,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            hidden: vec![256, 128, 64],
            activation: MlpActivation::Gelu,
            learning_rate: 2e-3,
            weight_decay: 1e-4,
            batch_size: 256,
            max_epochs: 200,
            warmup_epochs: 3,
            patience: 20,
            dropout: 0.0,
            device: "cpu".into(),
            precision: "auto".into(),
        }
    }
}

impl MlpParams {
    /// Checks the values, naming the field that is wrong.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, why: String| Err(TrainError::Config(format!("mlp.{field}: {why}")));
        if self.hidden.iter().any(|&w| w == 0 || w > 8192) {
            return bad(
                "hidden",
                format!("widths must be 1..=8192, got {:?}", self.hidden),
            );
        }
        if self.hidden.len() > 16 {
            return bad(
                "hidden",
                format!("at most 16 layers, got {}", self.hidden.len()),
            );
        }
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(
                "learning_rate",
                format!("must be in (0, 1), got {}", self.learning_rate),
            );
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay < 1.0) {
            return bad(
                "weight_decay",
                format!("must be in [0, 1), got {}", self.weight_decay),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.max_epochs == 0 || self.max_epochs > 100_000 {
            return bad(
                "max_epochs",
                format!("must be 1..=100000, got {}", self.max_epochs),
            );
        }
        if self.patience == 0 {
            return bad("patience", "must be at least 1".into());
        }
        if !(0.0..0.9).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 0.9), got {}", self.dropout),
            );
        }
        if !matches!(self.device.as_str(), "cpu" | "cuda") {
            return bad(
                "device",
                format!("must be cpu or cuda, got '{}'", self.device),
            );
        }
        if !matches!(self.precision.as_str(), "auto" | "f32" | "bf16") {
            return bad(
                "precision",
                format!("must be auto, f32 or bf16, got '{}'", self.precision),
            );
        }
        Ok(())
    }

    /// Parameters as logged.
    pub fn params(&self) -> Params {
        let mut out = Params::new();
        let hidden = self
            .hidden
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("x");
        out.insert("hidden".into(), hidden.into());
        out.insert("activation".into(), self.activation.name().into());
        out.insert("learning_rate".into(), self.learning_rate.into());
        out.insert("weight_decay".into(), self.weight_decay.into());
        out.insert("batch_size".into(), self.batch_size.into());
        out.insert("max_epochs".into(), self.max_epochs.into());
        out.insert("warmup_epochs".into(), self.warmup_epochs.into());
        out.insert("patience".into(), self.patience.into());
        out.insert("dropout".into(), self.dropout.into());
        out.insert("device".into(), self.device.clone().into());
        out.insert("precision".into(), self.precision.clone().into());
        out
    }

    /// The learning rate at optimizer step `step` of `total`: linear warm-up over `warmup`
    /// steps, then a cosine decay to 1 % of the peak.
    pub fn learning_rate_at(&self, step: usize, warmup: usize, total: usize) -> f64 {
        let peak = self.learning_rate;
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        let floor = 0.01 * peak;
        floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The error for a build without libtorch.
pub fn unavailable() -> TrainError {
    TrainError::Config(
        "the mlp candidate needs a build with the `torch` feature (libtorch 2.13 from the PyPI \
         torch==2.13.0 wheel); this binary was built without it"
            .into(),
    )
}

/// Whether libtorch in this build can use a CUDA GPU: `Ok` or why not.
pub fn cuda_status() -> Result<(), String> {
    #[cfg(feature = "torch")]
    {
        torch::cuda_status()
    }
    #[cfg(not(feature = "torch"))]
    {
        Err("built without the `torch` feature".into())
    }
}

#[cfg(feature = "torch")]
pub use torch::MlpModel;

#[cfg(feature = "torch")]
mod torch {
    use std::sync::OnceLock;

    use mlops_domain::artifact::ModelKind;
    use mlops_domain::features::FeatureMatrix;
    use mlops_domain::schema::Task;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha8Rng;
    use safetensors::{Dtype, SafeTensors};
    use tch::nn::{self, OptimizerConfig};
    use tch::{Device, Kind, Reduction, Tensor};

    use super::{MlpActivation, MlpParams};
    use crate::{Labelled, Model, TrainError};

    fn torch_err(e: impl std::fmt::Display) -> TrainError {
        TrainError::Config(format!("libtorch: {e}"))
    }

    fn file_err(message: impl Into<String>) -> TrainError {
        TrainError::ModelFile {
            kind: ModelKind::Mlp,
            message: message.into(),
        }
    }

    /// libtorch's CUDA kernels live in libtorch_cuda.so, which the linker drops (nothing in
    /// the binary names its symbols); loading it registers them. Loaded once, kept for the
    /// process's life.
    pub(super) fn cuda_status() -> Result<(), String> {
        static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
        STATUS
            .get_or_init(|| {
                // SAFETY: loading libtorch_cuda runs its static initializers, which register
                // CUDA kernels with the libtorch already loaded in this process; that is the
                // library's intended use. The handle is leaked so the code is never unloaded.
                let library = unsafe { libloading::Library::new("libtorch_cuda.so") }
                    .map_err(|e| format!("libtorch_cuda.so could not be loaded: {e}"))?;
                std::mem::forget(library);
                if tch::Cuda::is_available() {
                    Ok(())
                } else {
                    Err("libtorch sees no CUDA device".into())
                }
            })
            .clone()
    }

    /// Runs one piece of libtorch work at a time in the process: libtorch's generator
    /// (initialization, dropout) is process-wide, so a seed reproduces its model only if no other
    /// caller draws from it in between. tch's infallible methods panic on libtorch errors (CUDA
    /// out of memory, a libtorch of another version): contained here and reported as an error.
    pub(super) fn guarded<T>(
        what: &str,
        f: impl FnOnce() -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        static LIBTORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = LIBTORCH.lock().unwrap_or_else(|e| e.into_inner());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(result) => result,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown failure".into());
                Err(TrainError::Config(format!(
                    "libtorch failed while {what}: {message}"
                )))
            }
        }
    }

    fn device_of(params: &MlpParams) -> Result<Device, TrainError> {
        match params.device.as_str() {
            "cuda" => {
                cuda_status()
                    .map_err(|why| TrainError::Config(format!("mlp.device = \"cuda\": {why}")))?;
                Ok(Device::Cuda(0))
            }
            _ => Ok(Device::Cpu),
        }
    }

    /// A trained or loaded MLP on a libtorch device.
    pub struct MlpModel {
        // Keeps the variables alive; `layers` hold references to them.
        _store: nn::VarStore,
        layers: Vec<nn::Linear>,
        activation: MlpActivation,
        task: Task,
        device: Device,
        best_epoch: Option<usize>,
    }

    impl std::fmt::Debug for MlpModel {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MlpModel")
                .field("layers", &self.layers.len())
                .field("activation", &self.activation)
                .field("task", &self.task)
                .field("device", &self.device)
                .finish()
        }
    }

    fn features(x: &FeatureMatrix, device: Device) -> Result<Tensor, TrainError> {
        if x.values.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Config(
                "the MLP needs finite features (the pipeline imputes missing values)".into(),
            ));
        }
        Tensor::f_from_slice(&x.to_f32())
            .and_then(|t| t.f_view([x.rows as i64, x.cols as i64]))
            .and_then(|t| t.f_to_device(device))
            .map_err(torch_err)
    }

    fn forward(
        layers: &[nn::Linear],
        activation: MlpActivation,
        x: &Tensor,
        kind: Kind,
        dropout: f64,
        train: bool,
    ) -> Tensor {
        let last = layers.len() - 1;
        let mut h = x.to_kind(kind);
        for (i, layer) in layers.iter().enumerate() {
            let w = layer.ws.to_kind(kind);
            let b = layer.bs.as_ref().map(|b| b.to_kind(kind));
            h = h.linear(&w, b.as_ref());
            if i != last {
                h = match activation {
                    MlpActivation::Relu => h.relu(),
                    MlpActivation::Gelu => h.gelu("none"),
                };
                if train && dropout > 0.0 {
                    h = h.dropout(dropout, true);
                }
            }
        }
        // bf16 outputs are widened to f32 for the loss; an f64 evaluation stays f64.
        let out_kind = if kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        h.to_kind(out_kind).squeeze_dim(-1)
    }

    fn loss(task: Task, output: &Tensor, y: &Tensor) -> Tensor {
        match task {
            Task::Regression => output.mse_loss(y, Reduction::Mean),
            Task::BinaryClassification => {
                output.binary_cross_entropy_with_logits::<Tensor>(y, None, None, Reduction::Mean)
            }
        }
    }

    impl MlpModel {
        /// Trains with early stopping on `valid` when given, else for exactly `max_epochs`.
        pub fn train(
            task: Task,
            params: &MlpParams,
            train: Labelled<'_>,
            valid: Option<Labelled<'_>>,
            seed: u64,
        ) -> Result<Self, TrainError> {
            params.validate()?;
            guarded("training the MLP", || {
                Self::train_guarded(task, params, train, valid, seed)
            })
        }

        fn train_guarded(
            task: Task,
            params: &MlpParams,
            train: Labelled<'_>,
            valid: Option<Labelled<'_>>,
            seed: u64,
        ) -> Result<Self, TrainError> {
            if train.x.rows == 0 || train.x.cols == 0 {
                return Err(TrainError::Config("the MLP got no training rows".into()));
            }
            let device = device_of(params)?;
            let kind = match (params.precision.as_str(), device) {
                ("bf16", _) | ("auto", Device::Cuda(_)) => Kind::BFloat16,
                _ => Kind::Float,
            };
            tch::manual_seed(seed as i64);
            if let Device::Cuda(_) = device {
                tch::Cuda::manual_seed_all(seed);
            }
            // Regression targets are standardized for training; folded back in at the end.
            let (y_mean, y_scale) = match task {
                Task::Regression => {
                    let n = train.y.len() as f64;
                    let mean = train.y.iter().sum::<f64>() / n;
                    let var = train.y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    (mean, if var > 0.0 { var.sqrt() } else { 1.0 })
                }
                Task::BinaryClassification => (0.0, 1.0),
            };
            let target = |y: &[f64]| {
                let scaled: Vec<f32> = y.iter().map(|v| ((v - y_mean) / y_scale) as f32).collect();
                Tensor::from_slice(&scaled).to_device(device)
            };
            let x_train = features(train.x, device)?;
            let y_train = target(train.y);
            let validation = match valid {
                Some(v) if v.x.rows > 0 => Some((features(v.x, device)?, target(v.y))),
                _ => None,
            };

            let store = nn::VarStore::new(device);
            let root = store.root() / "layers";
            let mut widths = vec![train.x.cols];
            widths.extend(&params.hidden);
            widths.push(1);
            let layers: Vec<nn::Linear> = widths
                .windows(2)
                .enumerate()
                .map(|(i, w)| nn::linear(&root / i, w[0] as i64, w[1] as i64, Default::default()))
                .collect();
            let mut optimizer = nn::AdamW {
                wd: params.weight_decay,
                ..Default::default()
            }
            .build(&store, params.learning_rate)
            .map_err(torch_err)?;

            let n = train.x.rows;
            let batch = params.batch_size.min(n);
            let steps_per_epoch = n.div_ceil(batch);
            let total_steps = steps_per_epoch * params.max_epochs;
            let warmup_steps = steps_per_epoch * params.warmup_epochs;
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x31f7);
            let mut order: Vec<i64> = (0..n as i64).collect();
            let variables: Vec<Tensor> = store.trainable_variables();
            let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
            let mut step = 0;
            for epoch in 0..params.max_epochs {
                order.shuffle(&mut rng);
                let permutation = Tensor::from_slice(&order).to_device(device);
                for start in (0..n).step_by(batch) {
                    let end = (start + batch).min(n);
                    let rows = permutation.narrow(0, start as i64, (end - start) as i64);
                    let xb = x_train.index_select(0, &rows);
                    let yb = y_train.index_select(0, &rows);
                    let out = forward(&layers, params.activation, &xb, kind, params.dropout, true);
                    let l = loss(task, &out, &yb);
                    optimizer.set_lr(params.learning_rate_at(step, warmup_steps, total_steps));
                    optimizer.backward_step(&l);
                    step += 1;
                }
                let Some((xv, yv)) = &validation else {
                    continue;
                };
                let valid_loss = tch::no_grad(|| {
                    let out = forward(&layers, params.activation, xv, Kind::Float, 0.0, false);
                    loss(task, &out, yv).double_value(&[])
                });
                if !valid_loss.is_finite() {
                    return Err(TrainError::Config(format!(
                        "the MLP diverged at epoch {} (validation loss {valid_loss}); lower \
                         mlp.learning_rate",
                        epoch + 1
                    )));
                }
                let improved = best.as_ref().is_none_or(|(b, _, _)| valid_loss < *b);
                if improved {
                    let snapshot = variables.iter().map(|v| v.detach().copy()).collect();
                    best = Some((valid_loss, epoch + 1, snapshot));
                } else if best
                    .as_ref()
                    .is_some_and(|(_, e, _)| epoch + 1 - e >= params.patience)
                {
                    break;
                }
            }
            let best_epoch = match best {
                Some((_, epoch, snapshot)) => {
                    tch::no_grad(|| {
                        for (v, s) in variables.iter().zip(&snapshot) {
                            v.shallow_clone().copy_(s);
                        }
                    });
                    Some(epoch)
                }
                None => None,
            };
            // Fold the target scaling into the last layer: ŷ = σ·(Wh + b) + μ.
            if task == Task::Regression {
                let last = layers.last().expect("at least one layer");
                tch::no_grad(|| {
                    let _ = last.ws.shallow_clone().g_mul_scalar_(y_scale);
                    if let Some(b) = &last.bs {
                        let _ = b
                            .shallow_clone()
                            .g_mul_scalar_(y_scale)
                            .g_add_scalar_(y_mean);
                    }
                });
            }
            Ok(Self {
                _store: store,
                layers,
                activation: params.activation,
                task,
                device,
                best_epoch,
            })
        }

        /// Loads a safetensors model file onto the CPU.
        pub fn from_bytes(bytes: &[u8], task: Task) -> Result<Self, TrainError> {
            guarded("loading the MLP", || Self::from_bytes_guarded(bytes, task))
        }

        fn from_bytes_guarded(bytes: &[u8], task: Task) -> Result<Self, TrainError> {
            let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(e.to_string()))?;
            let (_, metadata) =
                SafeTensors::read_metadata(bytes).map_err(|e| file_err(e.to_string()))?;
            let meta = metadata.metadata().clone().unwrap_or_default();
            let activation = match meta.get("activation").map(String::as_str) {
                Some("relu") => MlpActivation::Relu,
                Some("gelu") | None => MlpActivation::Gelu,
                Some(other) => return Err(file_err(format!("unknown activation '{other}'"))),
            };
            let store = nn::VarStore::new(Device::Cpu);
            let root = store.root() / "layers";
            let mut layers = Vec::new();
            while let Ok(w) = st.tensor(&format!("layers.{}.weight", layers.len())) {
                let i = layers.len();
                let b = st
                    .tensor(&format!("layers.{i}.bias"))
                    .map_err(|e| file_err(format!("layers.{i}.bias: {e}")))?;
                let (ws, bs) = (w.shape(), b.shape());
                if w.dtype() != Dtype::F32
                    || b.dtype() != Dtype::F32
                    || ws.len() != 2
                    || bs != [ws[0]]
                {
                    return Err(file_err(format!(
                        "layer {i}: {:?} {ws:?} and {:?} {bs:?} are not an f32 dense layer",
                        w.dtype(),
                        b.dtype()
                    )));
                }
                // Zero-initialized, then overwritten: loading must not draw from libtorch's
                // process-wide generator, which a training elsewhere may have just seeded.
                let zeros = nn::LinearConfig {
                    ws_init: nn::Init::Const(0.0),
                    bs_init: Some(nn::Init::Const(0.0)),
                    bias: true,
                };
                let linear = nn::linear(&root / i, ws[1] as i64, ws[0] as i64, zeros);
                tch::no_grad(|| {
                    linear.ws.shallow_clone().copy_(&tensor_of(w.data(), ws));
                    if let Some(bias) = &linear.bs {
                        bias.shallow_clone().copy_(&tensor_of(b.data(), bs));
                    }
                });
                layers.push(linear);
            }
            if layers.is_empty() {
                return Err(file_err("no tensor 'layers.0.weight'"));
            }
            Ok(Self {
                _store: store,
                layers,
                activation,
                task,
                device: Device::Cpu,
                best_epoch: None,
            })
        }

        /// Network outputs before the sigmoid: the f32 weights evaluated in f64 on the model's
        /// device — the function the engine serves, so metrics computed from these predictions
        /// describe exactly what is served (an f32 pass differs by f32 rounding, ~1e-6).
        pub fn margins(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
            guarded("predicting with the MLP", || {
                self.margins_guarded(x, Kind::Double)
            })
        }

        /// Network outputs before the sigmoid from an f32 pass, the precision training
        /// validates with.
        pub fn margins_f32(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
            guarded("predicting with the MLP", || {
                self.margins_guarded(x, Kind::Float)
            })
        }

        fn margins_guarded(&self, x: &FeatureMatrix, kind: Kind) -> Result<Vec<f64>, TrainError> {
            let inputs = self.layers[0].ws.size()[1] as usize;
            if x.cols != inputs {
                return Err(TrainError::Shape {
                    expected: inputs,
                    found: x.cols,
                });
            }
            let xt = features(x, self.device)?;
            let out =
                tch::no_grad(|| forward(&self.layers, self.activation, &xt, kind, 0.0, false));
            let out = out.to_device(Device::Cpu).to_kind(Kind::Double);
            Vec::<f64>::try_from(&out).map_err(torch_err)
        }

        fn host_f32(t: &Tensor) -> Result<Vec<f32>, TrainError> {
            let t = t
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view(-1);
            Vec::<f32>::try_from(&t).map_err(torch_err)
        }
    }

    fn tensor_of(data: &[u8], shape: &[usize]) -> Tensor {
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Tensor::from_slice(&values).view(shape.as_slice())
    }

    impl Model for MlpModel {
        fn kind(&self) -> ModelKind {
            ModelKind::Mlp
        }

        fn predict(&self, x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
            let margins = self.margins(x)?;
            Ok(match self.task {
                Task::Regression => margins,
                Task::BinaryClassification => margins
                    .into_iter()
                    .map(|m| 1.0 / (1.0 + (-m).exp()))
                    .collect(),
            })
        }

        fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
            guarded("exporting the MLP", || self.export())
        }

        /// The importance of each input: the L2 norm of its first-layer weights (inputs are
        /// standardized, so the norms are comparable): a cheap ranking, not an attribution.
        fn feature_importance(&self) -> Result<Vec<f64>, TrainError> {
            guarded("reading the MLP's weights", || {
                let norms = self.layers[0]
                    .ws
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Double)
                    .square()
                    .sum_dim_intlist(0, false, Kind::Double)
                    .sqrt();
                Vec::<f64>::try_from(&norms).map_err(torch_err)
            })
        }

        fn contributions(&self, _x: &FeatureMatrix) -> Result<Vec<f64>, TrainError> {
            Err(TrainError::Config(
                "feature contributions are not defined for MLP models".into(),
            ))
        }

        fn best_iteration(&self) -> Option<usize> {
            self.best_epoch
        }
    }

    impl MlpModel {
        /// The safetensors file of the engine's layout.
        fn export(&self) -> Result<Vec<u8>, TrainError> {
            let mut tensors = Vec::new();
            for (i, layer) in self.layers.iter().enumerate() {
                let weight = Self::host_f32(&layer.ws)?;
                let bias = match &layer.bs {
                    Some(b) => Self::host_f32(b)?,
                    None => vec![0.0; layer.ws.size()[0] as usize],
                };
                let shape: Vec<usize> = layer.ws.size().iter().map(|&d| d as usize).collect();
                tensors.push((format!("layers.{i}.weight"), shape, weight));
                tensors.push((format!("layers.{i}.bias"), vec![bias.len()], bias));
            }
            let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
                .into_iter()
                .map(|(name, shape, values)| {
                    (
                        name,
                        shape,
                        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )
                })
                .collect();
            let views = bytes
                .iter()
                .map(|(name, shape, data)| {
                    safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                        .map(|view| (name.clone(), view))
                        .map_err(|e| file_err(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let output = match self.task {
                Task::Regression => "identity",
                Task::BinaryClassification => "sigmoid",
            };
            let metadata = std::collections::HashMap::from([
                ("activation".to_string(), self.activation.name().to_string()),
                ("output".to_string(), output.to_string()),
            ]);
            let bytes = safetensors::serialize(views, &Some(metadata))
                .map_err(|e| file_err(e.to_string()))?;
            canonical_header(&bytes)
        }
    }

    /// The same safetensors file with its JSON header's keys sorted: `safetensors` writes the
    /// metadata map in hash order, which would make two identical models differ byte for byte.
    /// Data offsets are relative to the data section, so the data is copied unchanged.
    fn canonical_header(bytes: &[u8]) -> Result<Vec<u8>, TrainError> {
        let malformed = || file_err("the serialized safetensors header is malformed");
        let length: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        let end = usize::try_from(u64::from_le_bytes(length))
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(malformed)?;
        // serde_json's map is ordered (no `preserve_order`): keys come out sorted.
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[8..end]).map_err(|e| file_err(e.to_string()))?;
        let mut text = serde_json::to_vec(&header).map_err(|e| file_err(e.to_string()))?;
        // The data section starts 8-byte aligned, as `safetensors` writes it.
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(&text);
        out.extend_from_slice(&bytes[end..]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "torch")]
    #[test]
    fn a_libtorch_panic_becomes_an_error() {
        use super::torch::guarded;
        let e = guarded::<()>("testing", || panic!("CUDA out of memory")).unwrap_err();
        assert!(
            e.to_string()
                .contains("libtorch failed while testing: CUDA out of memory")
        );
        assert_eq!(guarded("testing", || Ok(3)).unwrap(), 3);
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_one_percent() {
        let p = super::MlpParams::default();
        let lr = |step| p.learning_rate_at(step, 10, 110);
        assert!((lr(0) - p.learning_rate / 10.0).abs() < 1e-12);
        assert!((lr(9) - p.learning_rate).abs() < 1e-12);
        assert!(lr(60) < lr(20) && lr(100) < lr(60));
        assert!((lr(110) - 0.01 * p.learning_rate).abs() < 1e-12);
        assert!((lr(500) - 0.01 * p.learning_rate).abs() < 1e-12);
    }
}
