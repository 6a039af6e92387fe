//! The embedded default's job queue: `mlops serve` runs each submitted batch job as a child
//! `mlops` process on this machine (on AWS the same submissions go to AWS Batch). The job's
//! command and environment are the ones a Batch container would get, with this invocation's
//! global flags (`--home`, `--store`, …) in front. An array job's children run side by side,
//! each with its `AWS_BATCH_JOB_ARRAY_INDEX`; the job succeeds once they all have.

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
        let indices: Vec<Option<u32>> = match job.array_size {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        };
        let mut children = Vec::with_capacity(indices.len());
        for index in indices {
            let mut command = tokio::process::Command::new(&self.exe);
            command
                .args(&self.global_args)
                .args(job.command.iter().skip(1))
                .envs(job.environment.iter().cloned())
                .stdin(std::process::Stdio::null())
                .kill_on_drop(false);
            if let Some(i) = index {
                command.env("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string());
            }
            children.push(command.spawn().map_err(|e| QueueError {
                operation: "submit",
                message: format!("cannot start {}: {e}", self.exe.display()),
            })?);
        }
        self.jobs.lock().expect("queue lock").insert(
            id.clone(),
            LocalJob {
                name: job.name.clone(),
                state: JobState::Running,
                reason: None,
            },
        );
        let (jobs, job_id) = (Arc::clone(&self.jobs), id.clone());
        let array = children.len() > 1;
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for (index, mut child) in children.into_iter().enumerate() {
                let child_name = if array {
                    format!("child {index} ")
                } else {
                    String::new()
                };
                match child.wait().await {
                    Ok(status) if status.success() => {}
                    Ok(status) => failures.push(format!("{child_name}exited with {status}")),
                    Err(e) => failures.push(format!("{child_name}{e}")),
                }
            }
            if failures.is_empty() {
                finish(&jobs, &job_id, JobState::Succeeded, None);
            } else {
                finish(&jobs, &job_id, JobState::Failed, Some(failures.join("; ")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_array_job_runs_each_child_with_its_index_and_ends_with_the_last() {
        let dir = tempfile::tempdir().unwrap();
        // Each child writes a file named by its index; child 1 fails.
        let script = format!(
            "touch '{}'/$AWS_BATCH_JOB_ARRAY_INDEX; [ $AWS_BATCH_JOB_ARRAY_INDEX != 1 ]",
            dir.path().display()
        );
        let queue = LocalQueue::new("/bin/sh".into(), vec!["-c".into(), script]);
        let submission = JobSubmission {
            name: "shards".into(),
            command: vec!["mlops".into()],
            environment: Vec::new(),
            array_size: Some(3),
        };
        let id = queue.submit(&submission).await.unwrap();
        let status = loop {
            let s = queue.status(&id).await.unwrap().unwrap();
            if s.state != JobState::Running {
                break s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let mut written: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        written.sort();
        assert_eq!(written, ["0", "1", "2"]);
        assert_eq!(status.state, JobState::Failed);
        assert_eq!(
            status.reason.as_deref(),
            Some("child 1 exited with exit status: 1")
        );
        assert_eq!(queue.find("shards").await.unwrap(), Some(id));
    }
}
