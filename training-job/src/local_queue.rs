//! The embedded default's job queue: `mlops serve` runs each submitted batch job as a child
//! `mlops` process on this machine (on AWS the same submissions go to AWS Batch). The job's
//! command and environment are the ones a Batch container would get, with this invocation's
//! global flags (`--home`, `--store`, …) in front.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mlops_domain::jobs::{JobQueue, JobState, JobSubmission, QueueError, QueueStatus};

/// One job this process started.
struct LocalJob {
    name: String,
    state: JobState,
    reason: Option<String>,
}

/// Runs jobs as child processes of `exe`.
pub struct LocalQueue {
    exe: PathBuf,
    global_args: Vec<String>,
    jobs: Arc<Mutex<HashMap<String, LocalJob>>>,
    submitted: std::sync::atomic::AtomicU64,
}

impl LocalQueue {
    /// Jobs run `exe GLOBAL_ARGS COMMAND[1..]`.
    pub fn new(exe: PathBuf, global_args: Vec<String>) -> Self {
        Self {
            exe,
            global_args,
            jobs: Arc::default(),
            submitted: Default::default(),
        }
    }
}

fn finish(
    jobs: &Mutex<HashMap<String, LocalJob>>,
    id: &str,
    state: JobState,
    reason: Option<String>,
) {
    if let Some(job) = jobs.lock().expect("queue lock").get_mut(id) {
        job.state = state;
        job.reason = reason;
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn submit(&self, job: &JobSubmission) -> Result<String, QueueError> {
        let id = format!(
            "local-{}-{}",
            std::process::id(),
            self.submitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1
        );
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .args(&self.global_args)
            .args(job.command.iter().skip(1))
            .envs(job.environment.iter().cloned())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|e| QueueError {
            operation: "submit",
            message: format!("cannot start {}: {e}", self.exe.display()),
        })?;
        self.jobs.lock().expect("queue lock").insert(
            id.clone(),
            LocalJob {
                name: job.name.clone(),
                state: JobState::Running,
                reason: None,
            },
        );
        let (jobs, job_id) = (Arc::clone(&self.jobs), id.clone());
        tokio::spawn(async move {
            match child.wait().await {
                Ok(status) if status.success() => finish(&jobs, &job_id, JobState::Succeeded, None),
                Ok(status) => finish(
                    &jobs,
                    &job_id,
                    JobState::Failed,
                    Some(format!("exited with {status}")),
                ),
                Err(e) => finish(&jobs, &job_id, JobState::Failed, Some(e.to_string())),
            }
        });
        Ok(id)
    }

    async fn find(&self, name: &str) -> Result<Option<String>, QueueError> {
        Ok(self
            .jobs
            .lock()
            .expect("queue lock")
            .iter()
            .find(|(_, j)| j.name == name)
            .map(|(id, _)| id.clone()))
    }

    async fn status(&self, queue_job_id: &str) -> Result<Option<QueueStatus>, QueueError> {
        Ok(self
            .jobs
            .lock()
            .expect("queue lock")
            .get(queue_job_id)
            .map(|j| QueueStatus {
                state: j.state,
                raw: format!("{:?}", j.state).to_uppercase(),
                reason: j.reason.clone(),
            }))
    }

    fn describe(&self) -> String {
        format!("local processes ({})", self.exe.display())
    }
}
