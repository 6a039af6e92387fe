//! Runs training on a blocking thread and records what it reports as it happens: progress to the
//! terminal, every search trial as a child run of the training run (MLflow or the local run
//! log), and NVML samples of the GPU as metrics of the training run and, when a namespace is
//! set, in CloudWatch.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mlops_aws::CloudWatchMetrics;
use mlops_domain::data::Dataset;
use mlops_domain::metrics::Metric;
use mlops_domain::schema::{Schema, Task};
use mlops_domain::tracking::{RunStatus, Tracker};
use mlops_gpu::{GpuSample, Telemetry};
use mlops_trainer::search::{SearchEvent, SearchRunner, Trial, TrialStatus};
use mlops_trainer::select::{Progress, TrainConfig, TrainingOutcome, train_and_select_with};
use tokio::sync::mpsc;

use crate::progress;

/// Where the monitor records. It owns its tracker client, so that recording runs as its own task
/// while training holds the current thread.
pub struct Monitor {
    /// The tracker.
    pub tracker: Box<dyn Tracker>,
    /// Experiment of the training run.
    pub experiment: String,
    /// The training run (parent of the trial runs).
    pub parent_run: String,
    /// Tags every child run carries.
    pub base_tags: Vec<(String, String)>,
    /// Sample the GPUs this often, if set (only when a learner uses a GPU).
    pub telemetry_interval: Option<Duration>,
    /// CloudWatch client and model name for the GPU samples, if a namespace is set.
    pub cloudwatch: Option<(Arc<CloudWatchMetrics>, String)>,
}

enum Event {
    Training(Progress),
    Gpu(GpuSample),
}

impl Monitor {
    /// Trains `data` with `config` on this thread while a task records what it reports;
    /// returns the outcome and the GPU samples taken. Needs the multi-threaded runtime.
    pub async fn train(
        self,
        schema: &Schema,
        data: &Dataset,
        config: &TrainConfig,
        search: &mut (dyn SearchRunner + Send),
    ) -> Result<(TrainingOutcome, Vec<GpuSample>)> {
        let (tx, rx) = mpsc::unbounded_channel::<Event>();
        let telemetry = match self.telemetry_interval {
            Some(interval) => {
                let tx = tx.clone();
                match Telemetry::start(interval, move |s| {
                    let _ = tx.send(Event::Gpu(s.clone()));
                }) {
                    Ok(t) => {
                        eprintln!(
                            "GPU telemetry: sampling {} every {:.0?}",
                            t.devices.join(", "),
                            interval
                        );
                        Some(t)
                    }
                    Err(e) => {
                        eprintln!("GPU telemetry off: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let families: Vec<String> = config
            .candidates
            .iter()
            .map(|c| c.model_kind(schema.task).name().to_string())
            .collect();
        let bar = progress::steps(config.candidates.len() as u64, "training");
        let recorder = tokio::spawn(self.record_all(rx, families, schema.task, bar));
        let outcome = tokio::task::block_in_place(|| {
            train_and_select_with(schema, data, config, search, |event| {
                let _ = tx.send(Event::Training(event));
            })
        });
        let samples = telemetry.map(Telemetry::stop).unwrap_or_default();
        drop(tx);
        recorder.await.context("the recording task failed")??;
        Ok((outcome?, samples))
    }

    async fn record_all(
        self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        families: Vec<String>,
        task: Task,
        bar: indicatif::ProgressBar,
    ) -> Result<()> {
        let mut gpu_samples = 0i64;
        let metric = Metric::primary(task).name();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Training(Progress::CandidateStarted(_, _, name)) => {
                    bar.set_message(format!("training {name}"))
                }
                Event::Training(Progress::FoldFinished(name, fold, score)) => {
                    bar.set_message(format!("{name}: fold {} scored {score:.4}", fold + 1))
                }
                Event::Training(Progress::CandidateFinished(name, score, secs)) => {
                    bar.inc(1);
                    progress::line(
                        &bar,
                        format!("  {name:<10} validation {score:.4}  ({secs:.1} s)"),
                    );
                }
                Event::Training(Progress::Search(SearchEvent::TrialEnded {
                    trial,
                    best,
                    elapsed,
                })) => {
                    let family = &families[trial.family];
                    progress::line(
                        &bar,
                        format!(
                            "  trial {:>3} {family:<8} {:<13} cv {metric} {:.4} on {} folds  best {}  {:>4.0} s",
                            trial.id,
                            trial.status.name(),
                            trial.mean_score(),
                            trial.fold_scores.len(),
                            best.map_or("-".into(), |b| format!("{b:.4}")),
                            elapsed
                        ),
                    );
                    self.record_trial(&trial, family, task, metric).await?;
                    let mut search_metrics = vec![("search_elapsed_seconds".to_string(), elapsed)];
                    if let Some(b) = best {
                        search_metrics.push((format!("search_best_{metric}"), b));
                    }
                    self.tracker
                        .log_metrics(&self.parent_run, &search_metrics, trial.id as i64)
                        .await?;
                }
                Event::Gpu(sample) => {
                    let metrics = sample.metrics();
                    self.tracker
                        .log_metrics(&self.parent_run, &metrics, gpu_samples)
                        .await?;
                    gpu_samples += 1;
                    if let Some((cloudwatch, model)) = &self.cloudwatch {
                        let gpu = sample.gpu.to_string();
                        cloudwatch
                            .put(
                                &metrics,
                                &[("Model", model.as_str()), ("Gpu", gpu.as_str())],
                            )
                            .await
                            .map_err(anyhow::Error::msg)?;
                    }
                }
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// One child run per trial: its parameters, fold scores, mean and status.
    async fn record_trial(
        &self,
        trial: &Trial,
        family: &str,
        task: Task,
        metric: &str,
    ) -> Result<()> {
        let mut tags = self.base_tags.to_vec();
        tags.extend([
            ("mlops.model_kind".to_string(), family.to_string()),
            ("mlops.trial".to_string(), trial.id.to_string()),
            ("mlops.trial.status".to_string(), trial.status.name().into()),
            ("mlops.trial.bracket".to_string(), trial.bracket.to_string()),
        ]);
        let run = self
            .tracker
            .start_run(
                &self.experiment,
                &format!("trial-{:03}-{family}", trial.id),
                &tags,
                Some(&self.parent_run),
            )
            .await?;
        let params: Vec<(String, String)> = trial
            .spec
            .params(task)
            .into_iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k, v)
            })
            .collect();
        self.tracker.log_params(&run.run_id, &params).await?;
        for (fold, score) in trial.fold_scores.iter().enumerate() {
            self.tracker
                .log_metrics(
                    &run.run_id,
                    &[(format!("cv_{metric}"), *score)],
                    fold as i64,
                )
                .await?;
        }
        self.tracker
            .log_metrics(
                &run.run_id,
                &[
                    (format!("cv_{metric}_mean"), trial.mean_score()),
                    ("cv_folds_scored".into(), trial.fold_scores.len() as f64),
                    ("trial_seconds".into(), trial.seconds),
                ],
                0,
            )
            .await?;
        let status = match trial.status {
            TrialStatus::Complete => RunStatus::Finished,
            TrialStatus::Pruned | TrialStatus::OutOfBudget => RunStatus::Killed,
        };
        self.tracker.end_run(&run.run_id, status).await?;
        Ok(())
    }
}

/// A one-line summary of GPU samples for the log.
pub fn summarize(samples: &[GpuSample]) -> Option<String> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as f64;
    let mean_util = samples
        .iter()
        .map(|s| f64::from(s.utilization_percent))
        .sum::<f64>()
        / n;
    let max_util = samples.iter().map(|s| s.utilization_percent).max()?;
    let peak_mib = samples.iter().map(|s| s.memory_used_bytes).max()? as f64 / 1048576.0;
    let max_power = samples.iter().map(|s| s.power_watts).fold(0.0, f64::max);
    let max_temp = samples.iter().map(|s| s.temperature_celsius).max()?;
    Some(format!(
        "{} samples: utilization mean {mean_util:.0}% max {max_util}%, memory peak {peak_mib:.0} MiB, power max {max_power:.0} W, temperature max {max_temp} °C",
        samples.len()
    ))
}
