//! Batch-prediction jobs on AWS Batch.

use async_trait::async_trait;
use aws_sdk_batch::Client;
use aws_sdk_batch::types::{
    ArrayProperties, ContainerOverrides, JobStatus, KeyValuePair, KeyValuesPair,
};
use mlops_domain::jobs::{JobQueue, JobState, JobSubmission, QueueError, QueueStatus};

use crate::describe;

/// A Batch job queue and the job definition its jobs use.
pub struct BatchQueue {
    client: Client,
    queue: String,
    definition: String,
}

impl BatchQueue {
    /// Jobs go to `queue` with `definition` (name, name:revision or ARN).
    pub fn new(config: &aws_config::SdkConfig, queue: &str, definition: &str) -> Self {
        Self {
            client: Client::new(config),
            queue: queue.into(),
            definition: definition.into(),
        }
    }

    /// The SDK client (tests create queues with it).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn map_state(status: &JobStatus) -> JobState {
    match status {
        JobStatus::Running => JobState::Running,
        JobStatus::Succeeded => JobState::Succeeded,
        JobStatus::Failed => JobState::Failed,
        _ => JobState::Queued,
    }
}

#[async_trait]
impl JobQueue for BatchQueue {
    async fn submit(&self, job: &JobSubmission) -> Result<String, QueueError> {
        let environment = job
            .environment
            .iter()
            .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
            .collect();
        let overrides = ContainerOverrides::builder()
            .set_command(Some(job.command.clone()))
            .set_environment(Some(environment))
            .build();
        let out = self
            .client
            .submit_job()
            .job_name(&job.name)
            .job_queue(&self.queue)
            .job_definition(&self.definition)
            .container_overrides(overrides)
            .set_array_properties(
                job.array_size
                    .map(|n| ArrayProperties::builder().size(n as i32).build()),
            )
            .send()
            .await
            .map_err(|e| QueueError {
                operation: "submit",
                message: format!("queue {}: {}", self.queue, describe(&e)),
            })?;
        out.job_id().map(str::to_owned).ok_or_else(|| QueueError {
            operation: "submit",
            message: "the response has no job id".into(),
        })
    }

    async fn find(&self, name: &str) -> Result<Option<String>, QueueError> {
        // A JOB_NAME filter lists jobs of every status (newest first), not only RUNNING ones.
        let filter = KeyValuesPair::builder()
            .name("JOB_NAME")
            .values(name)
            .build();
        let out = self
            .client
            .list_jobs()
            .job_queue(&self.queue)
            .filters(filter)
            .send()
            .await
            .map_err(|e| QueueError {
                operation: "find",
                message: format!("queue {}: {}", self.queue, describe(&e)),
            })?;
        Ok(out
            .job_summary_list()
            .iter()
            .find(|j| j.job_name() == Some(name))
            .and_then(|j| j.job_id().map(str::to_owned)))
    }

    async fn status(&self, queue_job_id: &str) -> Result<Option<QueueStatus>, QueueError> {
        let out = self
            .client
            .describe_jobs()
            .jobs(queue_job_id)
            .send()
            .await
            .map_err(|e| QueueError {
                operation: "describe",
                message: describe(&e),
            })?;
        Ok(out.jobs().first().map(|j| QueueStatus {
            state: j.status().map_or(JobState::Queued, map_state),
            raw: j.status().map_or("UNKNOWN", JobStatus::as_str).to_owned(),
            reason: j.status_reason().map(str::to_owned),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "AWS Batch queue {} (definition {})",
            self.queue, self.definition
        )
    }
}
