//! Run-time GPU discovery and telemetry for the training job.
//!
//! Nothing here links CUDA at build time: cudarc opens the CUDA driver (`libcuda.so.1`) and
//! nvml-wrapper opens NVML (`libnvidia-ml.so.1`) when asked, so the binary builds and runs on
//! machines without either, and says why no GPU is used.

mod telemetry;

pub use telemetry::{GpuSample, Telemetry};

use serde::Serialize;

/// GPU discovery and telemetry failures.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// NVML could not be opened or queried.
    #[error("NVML: {0}")]
    Nvml(String),
}

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CudaDevice {
    /// Driver ordinal.
    pub ordinal: u32,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Device memory in bytes.
    pub memory_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

impl std::fmt::Display for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{} {} ({:.1} GiB, compute capability {}.{})",
            self.ordinal,
            self.name,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.compute_capability.0,
            self.compute_capability.1
        )
    }
}

/// What [`detect_cuda`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Detection {
    /// Usable CUDA devices (at least one).
    Cuda(Vec<CudaDevice>),
    /// No usable device, and why.
    Unavailable(String),
}

/// Looks for usable CUDA devices through the driver API, loaded at run time. Never panics
/// for a missing driver: the library is probed before cudarc touches it.
pub fn detect_cuda() -> Detection {
    use cudarc::driver::{result, sys};

    // SAFETY: only tries to open the library with libloading; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Detection::Unavailable(
            "the CUDA driver library (libcuda.so.1) is not installed".into(),
        );
    }
    if let Err(e) = result::init() {
        return Detection::Unavailable(format!("the CUDA driver did not initialize: {e:?}"));
    }
    let count = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => return Detection::Unavailable(format!("cannot count CUDA devices: {e:?}")),
    };
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let described = (|| {
            let dev = result::device::get(ordinal)?;
            let name = result::device::get_name(dev)?;
            // SAFETY: `dev` came from cuDeviceGet.
            let memory = unsafe { result::device::total_mem(dev)? };
            let attribute = |a| unsafe { result::device::get_attribute(dev, a) };
            let major =
                attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor =
                attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            Ok::<_, cudarc::driver::DriverError>(CudaDevice {
                ordinal: ordinal as u32,
                name,
                memory_bytes: memory as u64,
                compute_capability: (major, minor),
            })
        })();
        match described {
            Ok(d) => devices.push(d),
            Err(e) => tracing::warn!(ordinal, "cannot describe CUDA device: {e:?}"),
        }
    }
    if devices.is_empty() {
        Detection::Unavailable(format!("the CUDA driver reports {count} usable devices"))
    } else {
        Detection::Cuda(devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the CUDA driver (CI), detection says so instead of panicking; on
    /// one with a GPU it lists it.
    #[test]
    fn detection_never_panics_and_explains_itself() {
        match detect_cuda() {
            Detection::Cuda(devices) => {
                assert!(!devices.is_empty());
                assert!(
                    devices
                        .iter()
                        .all(|d| d.memory_bytes > 0 && !d.name.is_empty())
                );
            }
            Detection::Unavailable(reason) => assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn devices_display_their_name_memory_and_capability() {
        let d = CudaDevice {
            ordinal: 0,
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 85_520_809_984,
            compute_capability: (9, 0),
        };
        assert_eq!(
            d.to_string(),
            "cuda:0 NVIDIA H100 80GB HBM3 (79.6 GiB, compute capability 9.0)"
        );
    }
}
