//! AWS adapters behind the domain's ports: the API-key set in Secrets Manager
//! ([`SecretsKeyStore`]), batch jobs on AWS Batch ([`BatchQueue`]) and metrics in CloudWatch
//! ([`CloudWatchMetrics`]). The standard AWS
//! configuration chain applies; `AWS_ENDPOINT_URL` (or an explicit endpoint) points them at moto.

pub mod batch;
pub mod cloudwatch;
pub mod secrets;

pub use aws_config::SdkConfig;
pub use batch::BatchQueue;
pub use cloudwatch::CloudWatchMetrics;
pub use secrets::SecretsKeyStore;

/// Loads the shared AWS configuration, with an optional endpoint override.
pub async fn sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// The service's message of an SDK error (not its debug dump).
pub(crate) fn describe<E>(e: &aws_sdk_secretsmanager::error::SdkError<E>) -> String
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::fmt::Debug,
{
    use aws_sdk_secretsmanager::error::SdkError;
    match e {
        SdkError::ServiceError(s) => format!(
            "{} ({})",
            s.err().message().unwrap_or("no message"),
            s.err().code().unwrap_or("no code")
        ),
        SdkError::DispatchFailure(d) => format!("cannot reach the service: {d:?}"),
        SdkError::TimeoutError(_) => "timed out".into(),
        other => format!("{other:?}"),
    }
}
