//! Alerts published to an SNS topic: the alert as JSON in the message, its summary as the
//! subject, and its id, rule and model as message attributes (subscribers filter on them and
//! drop duplicates by id).

use async_trait::async_trait;
use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;
use mlops_domain::alerts::{Alert, AlertSink};

/// Longest SNS subject.
const MAX_SUBJECT: usize = 100;

/// Publishes alerts to a topic.
pub struct SnsAlerts {
    client: Client,
    topic_arn: String,
}

impl SnsAlerts {
    /// A sink for the topic `topic_arn`.
    pub fn new(config: &aws_config::SdkConfig, topic_arn: &str) -> Self {
        Self {
            client: Client::new(config),
            topic_arn: topic_arn.into(),
        }
    }
}

/// An SNS subject: ASCII printable, at most 100 characters.
fn subject(summary: &str) -> String {
    let printable: String = summary
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if printable.len() <= MAX_SUBJECT {
        printable
    } else {
        format!("{}...", &printable[..MAX_SUBJECT - 3])
    }
}

fn attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

#[async_trait]
impl AlertSink for SnsAlerts {
    async fn send(&self, alert: &Alert) -> Result<(), String> {
        let message = serde_json::to_string(alert).map_err(|e| e.to_string())?;
        let rule = serde_json::to_value(alert.rule)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(subject(&alert.summary))
            .message(message)
            .message_attributes("alert_id", attribute(&alert.id))
            .message_attributes("rule", attribute(&rule))
            .message_attributes("model", attribute(&alert.model))
            .send()
            .await
            .map_err(|e| format!("SNS publish to {}: {}", self.topic_arn, crate::describe(&e)))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("SNS topic {}", self.topic_arn)
    }
}

#[cfg(test)]
mod tests {
    use super::subject;

    #[test]
    fn subjects_are_short_printable_ascii() {
        assert_eq!(subject("m v1: drift — 2 of 9"), "m v1: drift ? 2 of 9");
        let long = subject(&"x".repeat(300));
        assert_eq!(long.len(), 100);
        assert!(long.ends_with("..."));
    }
}
