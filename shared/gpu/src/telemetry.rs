//! NVML sampling on a background thread while a job trains.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::Serialize;

use crate::GpuError;

/// One reading of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    /// NVML device index.
    pub gpu: u32,
    /// Seconds since sampling started.
    pub elapsed_seconds: f64,
    /// Share of the last sample period with a kernel running, in percent.
    pub utilization_percent: u32,
    /// Share of the last sample period with device memory being read or written, in percent.
    pub memory_utilization_percent: u32,
    /// Device memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// Device memory installed, in bytes.
    pub memory_total_bytes: u64,
    /// GPU temperature in °C.
    pub temperature_celsius: u32,
    /// Board power draw in watts.
    pub power_watts: f64,
}

impl GpuSample {
    /// The sample as named metrics (`gpu0_utilization_percent`, …), as logged to MLflow and
    /// CloudWatch.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let g = self.gpu;
        vec![
            (
                format!("gpu{g}_utilization_percent"),
                f64::from(self.utilization_percent),
            ),
            (
                format!("gpu{g}_memory_utilization_percent"),
                f64::from(self.memory_utilization_percent),
            ),
            (
                format!("gpu{g}_memory_used_mib"),
                self.memory_used_bytes as f64 / (1u64 << 20) as f64,
            ),
            (
                format!("gpu{g}_temperature_celsius"),
                f64::from(self.temperature_celsius),
            ),
            (format!("gpu{g}_power_watts"), self.power_watts),
        ]
    }
}

/// A running NVML sampler: every `interval` it reads each GPU and hands the samples to a
/// callback; [`Telemetry::stop`] ends it and returns every sample taken.
pub struct Telemetry {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Vec<GpuSample>>,
    /// Names of the sampled devices, in NVML order.
    pub devices: Vec<String>,
}

fn nvml_err(e: impl std::fmt::Display) -> GpuError {
    GpuError::Nvml(e.to_string())
}

fn read(nvml: &Nvml, gpu: u32, elapsed_seconds: f64) -> Result<GpuSample, GpuError> {
    let device = nvml.device_by_index(gpu).map_err(nvml_err)?;
    let utilization = device.utilization_rates().map_err(nvml_err)?;
    let memory = device.memory_info().map_err(nvml_err)?;
    Ok(GpuSample {
        gpu,
        elapsed_seconds,
        utilization_percent: utilization.gpu,
        memory_utilization_percent: utilization.memory,
        memory_used_bytes: memory.used,
        memory_total_bytes: memory.total,
        temperature_celsius: device
            .temperature(TemperatureSensor::Gpu)
            .map_err(nvml_err)?,
        power_watts: f64::from(device.power_usage().map_err(nvml_err)?) / 1000.0,
    })
}

impl Telemetry {
    /// Opens NVML and starts sampling every `interval` (the first sample at once). Fails with
    /// a reason when NVML is missing or sees no GPU.
    pub fn start(
        interval: Duration,
        mut on_sample: impl FnMut(&GpuSample) + Send + 'static,
    ) -> Result<Self, GpuError> {
        let nvml = Nvml::init().map_err(nvml_err)?;
        let count = nvml.device_count().map_err(nvml_err)?;
        if count == 0 {
            return Err(GpuError::Nvml("no GPU visible".into()));
        }
        let devices = (0..count)
            .map(|i| {
                nvml.device_by_index(i)
                    .and_then(|d| d.name())
                    .map_err(nvml_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Fail now, not in the thread, if the counters cannot be read.
        read(&nvml, 0, 0.0)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nvml-telemetry".into())
            .spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                loop {
                    let elapsed = started.elapsed().as_secs_f64();
                    for gpu in 0..count {
                        match read(&nvml, gpu, elapsed) {
                            Ok(s) => {
                                on_sample(&s);
                                samples.push(s);
                            }
                            Err(e) => tracing::warn!(gpu, "NVML sample failed: {e}"),
                        }
                    }
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                samples
            })
            .map_err(|e| GpuError::Nvml(format!("cannot start the sampling thread: {e}")))?;
        Ok(Self {
            stop,
            thread,
            devices,
        })
    }

    /// Stops sampling and returns every sample taken.
    pub fn stop(self) -> Vec<GpuSample> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without NVML (CI) starting fails with a reason; with a GPU it samples.
    #[test]
    fn start_reports_a_reason_or_samples() {
        match Telemetry::start(Duration::from_millis(50), |_| {}) {
            Ok(t) => {
                std::thread::sleep(Duration::from_millis(120));
                let samples = t.stop();
                assert!(!samples.is_empty());
                assert!(samples.iter().all(|s| s.memory_total_bytes > 0));
            }
            Err(e) => assert!(e.to_string().starts_with("NVML: "), "{e}"),
        }
    }

    #[test]
    fn samples_become_named_metrics() {
        let s = GpuSample {
            gpu: 0,
            elapsed_seconds: 1.0,
            utilization_percent: 97,
            memory_utilization_percent: 40,
            memory_used_bytes: 3 << 30,
            memory_total_bytes: 80 << 30,
            temperature_celsius: 51,
            power_watts: 312.5,
        };
        let m = s.metrics();
        assert_eq!(m[0], ("gpu0_utilization_percent".to_string(), 97.0));
        assert_eq!(m[2], ("gpu0_memory_used_mib".to_string(), 3072.0));
        assert_eq!(m[4], ("gpu0_power_watts".to_string(), 312.5));
    }
}
