//! Which device each learner trains on: `--device auto` (the default) uses a CUDA GPU when the
//! driver reports one and the learner's library can use it, and says why not otherwise;
//! `--device cuda` insists; `--device cpu` never looks.

use anyhow::{Result, bail};
use mlops_gpu::{CudaDevice, Detection, detect_cuda};

/// The devices chosen for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// XGBoost's `device` parameter: `cpu` or `cuda`.
    pub xgboost: String,
    /// LightGBM's `device_type`: `cpu` or `cuda`.
    pub lightgbm: String,
    /// The MLP's libtorch device: `cpu` or `cuda`.
    pub mlp: String,
    /// The GPUs the driver reported (empty when none is usable).
    pub gpus: Vec<CudaDevice>,
    /// One line for the log and the run's tags.
    pub summary: String,
}

impl DevicePlan {
    /// Whether any learner trains on a GPU.
    pub fn uses_gpu(&self) -> bool {
        [&self.xgboost, &self.lightgbm, &self.mlp]
            .iter()
            .any(|d| d.as_str() == "cuda")
    }

    /// The run tag `mlops.device`: `cuda` when a learner uses the GPU, else `cpu`.
    pub fn tag(&self) -> &'static str {
        if self.uses_gpu() { "cuda" } else { "cpu" }
    }
}

/// Whether this binary's LightGBM was built with its CUDA tree learner.
const LIGHTGBM_CUDA: bool = cfg!(feature = "cuda");

/// Resolves `requested` (`auto`, `cpu` or `cuda`) against what this machine and this build have.
pub fn plan(requested: &str) -> Result<DevicePlan> {
    plan_with(
        requested,
        detect_cuda(),
        || mlops_trainer::xgboost::library_has_cuda().map_err(anyhow::Error::from),
        mlops_trainer::mlp::cuda_status,
    )
}

fn plan_with(
    requested: &str,
    detection: Detection,
    xgboost_has_cuda: impl FnOnce() -> Result<bool>,
    torch_cuda: impl FnOnce() -> Result<(), String>,
) -> Result<DevicePlan> {
    let cpu = |why: String| DevicePlan {
        xgboost: "cpu".into(),
        lightgbm: "cpu".into(),
        mlp: "cpu".into(),
        gpus: Vec::new(),
        summary: format!("cpu ({why})"),
    };
    match requested {
        "cpu" => return Ok(cpu("--device cpu".into())),
        "auto" | "cuda" => {}
        other => bail!("--device must be auto, cpu or cuda, got '{other}'"),
    }
    let gpus = match detection {
        Detection::Cuda(gpus) => gpus,
        Detection::Unavailable(why) if requested == "cuda" => {
            bail!("--device cuda: no usable GPU: {why}")
        }
        Detection::Unavailable(why) => return Ok(cpu(why)),
    };
    let xgboost_cuda = xgboost_has_cuda()?;
    let torch = torch_cuda();
    if requested == "cuda" && !xgboost_cuda && !LIGHTGBM_CUDA && torch.is_err() {
        bail!(
            "--device cuda: {} is present, but libxgboost was built without CUDA (the \
             `xgboost-cpu` wheel; use the `xgboost` wheel), this binary's LightGBM has no \
             CUDA (build with --features cuda) and libtorch cannot use it ({})",
            gpus[0],
            torch.as_ref().err().map_or("", String::as_str)
        );
    }
    let mlp = if torch.is_ok() { "cuda" } else { "cpu" };
    let xgboost = if xgboost_cuda { "cuda" } else { "cpu" };
    let lightgbm = if LIGHTGBM_CUDA { "cuda" } else { "cpu" };
    let why = |on_gpu: bool, no: &str| {
        if on_gpu {
            String::new()
        } else {
            format!(" ({no})")
        }
    };
    Ok(DevicePlan {
        summary: format!(
            "{}; XGBoost on {xgboost}{}, LightGBM on {lightgbm}{}, MLP on {mlp}{}, linear on cpu",
            gpus[0],
            why(xgboost_cuda, "libxgboost built without CUDA"),
            why(LIGHTGBM_CUDA, "LightGBM built without CUDA"),
            why(
                torch.is_ok(),
                &format!(
                    "libtorch: {}",
                    torch.as_ref().err().map_or("", String::as_str)
                )
            ),
        ),
        xgboost: xgboost.into(),
        lightgbm: lightgbm.into(),
        mlp: mlp.into(),
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> Detection {
        Detection::Cuda(vec![CudaDevice {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 85_520_809_984,
            compute_capability: (9, 0),
        }])
    }

    fn no_torch() -> Result<(), String> {
        Err("built without the `torch` feature".into())
    }

    fn none() -> Detection {
        Detection::Unavailable("the CUDA driver library (libcuda.so.1) is not installed".into())
    }

    #[test]
    fn auto_falls_back_to_cpu_and_says_why() {
        let p = plan_with("auto", none(), || Ok(true), no_torch).unwrap();
        assert_eq!((p.xgboost.as_str(), p.tag()), ("cpu", "cpu"));
        assert!(p.summary.contains("libcuda.so.1"), "{}", p.summary);
    }

    #[test]
    fn auto_uses_the_gpu_where_the_library_can() {
        let p = plan_with("auto", h100(), || Ok(true), no_torch).unwrap();
        assert_eq!(
            (p.xgboost.as_str(), p.mlp.as_str(), p.tag()),
            ("cuda", "cpu", "cuda")
        );
        assert!(p.summary.contains("H100"), "{}", p.summary);
        assert!(
            p.summary.contains("MLP on cpu (libtorch: "),
            "{}",
            p.summary
        );
        let p = plan_with("auto", h100(), || Ok(false), no_torch).unwrap();
        assert_eq!(p.xgboost, "cpu");
        assert!(p.summary.contains("built without CUDA"), "{}", p.summary);
        // libtorch alone is enough to use the GPU.
        let p = plan_with("cuda", h100(), || Ok(false), || Ok(())).unwrap();
        assert_eq!(
            (p.xgboost.as_str(), p.mlp.as_str(), p.tag()),
            ("cpu", "cuda", "cuda")
        );
    }

    #[test]
    fn cuda_insists_and_cpu_never_looks() {
        let e = plan_with("cuda", none(), || Ok(true), no_torch).unwrap_err();
        assert!(e.to_string().contains("no usable GPU"), "{e}");
        if !LIGHTGBM_CUDA {
            let e = plan_with("cuda", h100(), || Ok(false), no_torch).unwrap_err();
            assert!(e.to_string().contains("xgboost-cpu"), "{e}");
            assert!(e.to_string().contains("libtorch cannot"), "{e}");
        }
        let p = plan_with(
            "cpu",
            h100(),
            || panic!("not consulted"),
            || panic!("not consulted"),
        )
        .unwrap();
        assert_eq!(p.tag(), "cpu");
        assert!(plan_with("tpu", none(), || Ok(true), no_torch).is_err());
    }

    /// On this machine (no GPU in CI) the real detection picks a device without panicking.
    #[test]
    fn the_real_machine_gets_a_plan() {
        let p = plan("auto").unwrap();
        assert!(!p.summary.is_empty());
    }
}
