//! AWS adapters behind the domain's ports: the API-key set in Secrets Manager
//! ([`SecretsKeyStore`]), batch jobs on AWS Batch ([`BatchQueue`]), metrics in CloudWatch
//! ([`CloudWatchMetrics`]), alerts to SNS ([`SnsAlerts`]) and the online feature store in DynamoDB
//! ([`DynamoOnline`]). The standard AWS
//! configuration chain applies; `AWS_ENDPOINT_URL` (or an explicit endpoint) points them at moto.

pub mod batch;
pub mod cloudwatch;
pub mod dynamodb;
pub mod secrets;
pub mod sns;

pub use aws_config::SdkConfig;
pub use batch::BatchQueue;
pub use cloudwatch::CloudWatchMetrics;
pub use dynamodb::DynamoOnline;
pub use secrets::SecretsKeyStore;
pub use sns::SnsAlerts;

/// Loads the shared AWS configuration, with an optional endpoint override. Every call has a
/// deadline under the Lambda timeouts (connect 2 s, attempt 4 s, 8 s in all with retries), so a
/// service that hangs (not refuses) fails the call instead of the invocation.
pub async fn sdk_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .operation_attempt_timeout(std::time::Duration::from_secs(4))
        .operation_timeout(std::time::Duration::from_secs(8))
        .build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
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
