//! The webhook alert sink: each alert POSTed as JSON, signed with HMAC-SHA256, retried with
//! backoff.
//!
//! Headers: `X-Mlops-Alert-Id` (the same for the same window and rule: receivers drop
//! duplicates by it) and `X-Mlops-Signature: sha256=HEX`, the HMAC-SHA256 of the exact body
//! under the shared secret (`MLOPS_ALERT_WEBHOOK_SECRET`). Network errors, 429 and 5xx are
//! retried after 0.5, 1, 2 and 4 s; another 4xx is final.

use std::time::Duration;

use anyhow::{Result, bail};
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use mlops_domain::alerts::{Alert, AlertSink};
use sha2::Sha256;

/// Waits before the retries.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// POSTs alerts to a URL.
pub struct WebhookSink {
    url: String,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl WebhookSink {
    /// A sink for `url` signing with `secret`.
    pub fn new(url: &str, secret: &str) -> Result<Self> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("--alert-webhook {url}: expected an http(s) URL");
        }
        if secret.len() < 16 {
            bail!("MLOPS_ALERT_WEBHOOK_SECRET must hold at least 16 characters");
        }
        Ok(Self {
            url: url.into(),
            secret: secret.as_bytes().to_vec(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }
}

/// `sha256=HEX` of the body under the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[async_trait]
impl AlertSink for WebhookSink {
    async fn send(&self, alert: &Alert) -> Result<(), String> {
        let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
        let signed = signature(&self.secret, &body);
        let mut last = String::new();
        for wait in std::iter::once(Duration::ZERO).chain(BACKOFF) {
            tokio::time::sleep(wait).await;
            let sent = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-mlops-alert-id", &alert.id)
                .header("x-mlops-signature", &signed)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    last = format!("answered {}", r.status());
                }
                Ok(r) => return Err(format!("{} answered {}", self.url, r.status())),
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(url = %self.url, alert = %alert.id, error = %last, "alert delivery failed; retrying");
        }
        Err(format!(
            "{}: {} attempts, last {last}",
            self.url,
            BACKOFF.len() + 1
        ))
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::Utc;
    use mlops_domain::alerts::{Delivery, QualityLimits, alerts, deliver};
    use mlops_domain::drift::{DatasetDrift, DriftTest, FeatureDrift};
    use mlops_store::LocalStore;

    use super::*;

    fn drifted_report() -> DatasetDrift {
        let feature = FeatureDrift {
            feature: "a".into(),
            test: DriftTest::Wasserstein,
            score: Some(0.3),
            threshold: 0.1,
            drifted: true,
            psi: Some(0.4),
            psi_band: None,
            reference_rows: 5000,
            current_rows: 100,
            missing_share: 0.3,
            reference_missing_share: 0.0,
            out_of_range_share: Some(0.0),
            unseen_share: None,
        };
        DatasetDrift {
            rows: 100,
            features: vec![feature],
            drifted_features: 1,
            drifted_share: 1.0,
            drift_share: 0.5,
            drifted: true,
            prediction: None,
        }
    }

    /// Fails its first `failures` sends, then records the alerts it got.
    struct Flaky {
        failures: Mutex<u32>,
        got: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl AlertSink for Flaky {
        async fn send(&self, alert: &Alert) -> Result<(), String> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err("unreachable".into());
            }
            self.got.lock().unwrap().push(alert.id.clone());
            Ok(())
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[tokio::test]
    async fn each_alert_is_delivered_once_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let t = Utc::now();
        let raised = alerts("m", 1, t, t, &drifted_report(), &QualityLimits::default());
        assert_eq!(raised.len(), 2, "drift and data quality");
        let sink = Flaky {
            failures: Mutex::new(1),
            got: Mutex::new(Vec::new()),
        };
        let first = deliver(&store, &sink, &raised).await.unwrap();
        assert!(matches!(first[0], Delivery::Failed { .. }), "{first:?}");
        assert!(matches!(first[1], Delivery::Sent { .. }), "{first:?}");
        let second = deliver(&store, &sink, &raised).await.unwrap();
        assert!(matches!(second[0], Delivery::Sent { .. }), "{second:?}");
        assert!(
            matches!(second[1], Delivery::AlreadySent { .. }),
            "{second:?}"
        );
        let third = deliver(&store, &sink, &raised).await.unwrap();
        assert!(
            third
                .iter()
                .all(|d| matches!(d, Delivery::AlreadySent { .. }))
        );
        let mut got = sink.got.into_inner().unwrap();
        got.sort();
        let mut ids: Vec<String> = raised.iter().map(|a| a.id.clone()).collect();
        ids.sort();
        assert_eq!(got, ids, "each alert delivered exactly once");
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
