//! Automatic rollback: when the version an alias was last promoted to is significantly worse
//! live than its predecessor, the alias goes back to the predecessor.
//!
//! The new version's labelled rows since its promotion (up to `window`) are compared with the
//! predecessor's over the same length before it, per-row loss against per-row loss, with the
//! sequential test of the A/B verdicts ([`mlops_domain::ab`]), so checking every hour stays
//! valid. The rollback is one conditional registry change whose request id names the promotion
//! it undoes: a retry after a crash finds it done, and a later check sees the last change was a
//! rollback and does nothing.

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use mlops_domain::ab::{Arm, Decision, SequentialTest, Verdict};
use mlops_domain::alerts::{Alert, AlertRule, alert_id};
use mlops_domain::drift::DriftRule;
use mlops_domain::registry::{AliasAction, Registry};
use serde::{Deserialize, Serialize};

use crate::{Window, monitor};

/// What to check.
#[derive(Debug, Clone)]
pub struct RollbackCheck {
    /// The alias (and served variant) to watch.
    pub alias: String,
    /// Longest stretch compared on each side of the promotion.
    pub window: Duration,
    /// Longest a label may arrive after its prediction and still count.
    pub label_delay: Duration,
    /// The test.
    pub test: SequentialTest,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RollbackOutcome {
    /// Nothing to compare (why).
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The new version stays (not significantly worse, or not yet known).
    Kept {
        /// The version under watch and its predecessor.
        version: u64,
        /// Predecessor.
        previous: u64,
        /// The comparison (challenger = the new version).
        verdict: Verdict,
    },
    /// The alias went back to the predecessor.
    RolledBack {
        /// The version rolled back.
        version: u64,
        /// When it had been promoted.
        promoted_at: DateTime<Utc>,
        /// The version the alias points at again.
        previous: u64,
        /// The comparison.
        verdict: Verdict,
    },
}

/// Checks the alias's last promotion and rolls it back when the new version is significantly
/// worse than its predecessor.
pub async fn check_rollback(
    registry: &Registry,
    model: &str,
    check: &RollbackCheck,
    now: DateTime<Utc>,
) -> Result<RollbackOutcome> {
    let not = |reason: &str| {
        Ok(RollbackOutcome::NotApplicable {
            reason: reason.into(),
        })
    };
    let state = registry.aliases(model).await?;
    let Some(last) = state.history.iter().rev().find(|e| e.alias == check.alias) else {
        return not("the alias was never promoted");
    };
    if last.action != AliasAction::Promote {
        return not("the alias's last change was a rollback");
    }
    let Some(previous) = last.from else {
        return not("the alias had no version before its last promotion");
    };
    let (version, promoted_at) = (last.to, last.at);
    let new = arm(
        registry,
        model,
        check,
        version,
        promoted_at,
        (promoted_at + check.window).min(now),
    )
    .await?;
    let old = arm(
        registry,
        model,
        check,
        previous,
        promoted_at - check.window,
        promoted_at,
    )
    .await?;
    let (Some(old), Some(new)) = (old, new) else {
        return not("no labelled predictions on one side of the promotion yet");
    };
    let verdict = check.test.verdict(old, new);
    if verdict.decision != Decision::Keep {
        return Ok(RollbackOutcome::Kept {
            version,
            previous,
            verdict,
        });
    }
    let reason = format!(
        "automatic rollback: v{version} mean loss {:.4} vs v{previous} {:.4} (always-valid p {:.4}, {} and {} labelled rows)",
        new.mean, old.mean, verdict.p_value, new.rows, old.rows
    );
    let request_id = format!("rollback-of-revision-{}", last.revision);
    registry
        .rollback(model, &check.alias, "monitor", &reason, Some(&request_id))
        .await?;
    Ok(RollbackOutcome::RolledBack {
        version,
        promoted_at,
        previous,
        verdict,
    })
}

/// The alert of a rollback (delivered once: its id names the version and promotion window).
pub fn rollback_alert(model: &str, outcome: &RollbackOutcome, now: DateTime<Utc>) -> Option<Alert> {
    let RollbackOutcome::RolledBack {
        version,
        promoted_at,
        previous,
        verdict,
    } = outcome
    else {
        return None;
    };
    let rule = AlertRule::Rollback;
    Some(Alert {
        id: alert_id(model, *version, rule, *promoted_at, *promoted_at),
        rule,
        model: model.into(),
        version: *version,
        from: *promoted_at,
        until: now,
        summary: format!(
            "{model}: champion rolled back from v{version} to v{previous}: mean loss {:+.4} against it (always-valid p {:.4})",
            verdict.difference, verdict.p_value
        ),
        features: Vec::new(),
        metrics: Vec::new(),
    })
}

/// The labelled rows `version` served as the alias in `[from, until)`.
async fn arm(
    registry: &Registry,
    model: &str,
    check: &RollbackCheck,
    version: u64,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<Arm>> {
    if from >= until {
        return Ok(None);
    }
    let window = Window {
        from,
        until,
        label_delay: check.label_delay,
        champion: check.alias.clone(),
        ab_test: check.test,
    };
    let report = monitor(registry, model, window, &DriftRule::default()).await?;
    Ok(report
        .quality_sketch(version, &check.alias)
        .and_then(|s| s.loss_moments())
        .map(|(rows, mean, variance)| Arm {
            rows,
            mean,
            variance,
        }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mlops_domain::feedback::{self, Feedback};
    use mlops_domain::predlog;
    use mlops_domain::registry::{CardEdit, RegisterOptions};
    use mlops_domain::store::{ObjectStore, PutCondition};
    use mlops_domain::testing::sample_bundle;
    use mlops_store::LocalStore;

    use super::*;

    /// Logs `n` predictions of 0.0 by `version` as champion from `at`, one a second, with
    /// labels `actual` received a minute later.
    async fn served(
        store: &dyn ObjectStore,
        version: u64,
        at: DateTime<Utc>,
        n: usize,
        actual: f64,
    ) {
        let ids: Vec<String> = (0..n).map(|i| format!("v{version}-{i}")).collect();
        let lines: String = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let at = at + Duration::seconds(i as i64);
                format!(
                    "{}\n",
                    serde_json::json!({"at": at, "request_id": id, "record": 1, "model": "m",
                        "version": version, "variant": "champion", "input": {"x": 1.0}, "output": 0.0})
                )
            })
            .collect();
        let written = at + Duration::seconds(n as i64);
        let key = predlog::object_key("m", written, &format!("v{version}"));
        store
            .put(&key, predlog::encode(lines.as_bytes()), PutCondition::None)
            .await
            .unwrap();
        // Errors around `actual`, so the loss has a spread.
        let labels: Vec<Feedback> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let y = actual * (0.5 + (i % 10) as f64 / 10.0);
                Feedback {
                    request_id: id.clone(),
                    record: 1,
                    sent: y.into(),
                    actual: y,
                    observed_at: written,
                }
            })
            .collect();
        let key = predlog::object_key_under(
            feedback::PREFIX,
            "m",
            written + Duration::minutes(1),
            &format!("v{version}"),
        );
        store
            .put(
                &key,
                predlog::encode(&feedback::to_lines(&labels)),
                PutCondition::None,
            )
            .await
            .unwrap();
    }

    async fn two_versions() -> (tempfile::TempDir, Registry, DateTime<Utc>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let registry = Registry::new(Arc::clone(&store));
        let mut promoted_at = Utc::now();
        for v in 1..=2 {
            registry
                .register("m", &sample_bundle(), RegisterOptions::default())
                .await
                .unwrap();
            let edit = CardEdit {
                intended_use: Some("tests".into()),
                limitations: Some("none".into()),
                ..CardEdit::default()
            };
            registry.edit_card("m", v, edit).await.unwrap();
            registry.approve_card("m", v, "t", "ok").await.unwrap();
            promoted_at = registry
                .promote("m", "champion", v, "t", "test")
                .await
                .unwrap()
                .at;
        }
        (dir, registry, promoted_at)
    }

    fn check() -> RollbackCheck {
        RollbackCheck {
            alias: "champion".into(),
            window: Duration::hours(6),
            label_delay: Duration::hours(1),
            test: SequentialTest::default(),
        }
    }

    #[tokio::test]
    async fn a_worse_new_champion_is_rolled_back_once_and_an_equal_one_kept() {
        let (_dir, registry, promoted) = two_versions().await;
        let store = Arc::clone(registry.store());
        served(store.as_ref(), 1, promoted - Duration::hours(1), 300, 0.1).await;
        // v2 errs ten times as much.
        served(store.as_ref(), 2, promoted + Duration::seconds(1), 300, 1.0).await;
        let now = promoted + Duration::minutes(30);
        let outcome = check_rollback(&registry, "m", &check(), now).await.unwrap();
        let RollbackOutcome::RolledBack {
            version: 2,
            previous: 1,
            verdict,
            ..
        } = &outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(verdict.decision, Decision::Keep);
        let alert = rollback_alert("m", &outcome, now).unwrap();
        assert_eq!(
            alert.id,
            rollback_alert("m", &outcome, now + Duration::hours(1))
                .unwrap()
                .id
        );
        assert_eq!(registry.resolve("m", "champion").await.unwrap(), 1);
        let again = check_rollback(&registry, "m", &check(), now).await.unwrap();
        assert!(
            matches!(again, RollbackOutcome::NotApplicable { .. }),
            "{again:?}"
        );
        assert_eq!(registry.resolve("m", "champion").await.unwrap(), 1);
        let audit = registry.aliases("m").await.unwrap().history;
        assert!(
            audit
                .last()
                .unwrap()
                .reason
                .starts_with("automatic rollback: v2"),
            "{audit:?}"
        );

        let (_dir, registry, promoted) = two_versions().await;
        let store = Arc::clone(registry.store());
        served(store.as_ref(), 1, promoted - Duration::hours(1), 300, 0.5).await;
        served(store.as_ref(), 2, promoted + Duration::seconds(1), 300, 0.5).await;
        let outcome = check_rollback(&registry, "m", &check(), promoted + Duration::minutes(30))
            .await
            .unwrap();
        assert!(
            matches!(outcome, RollbackOutcome::Kept { version: 2, .. }),
            "{outcome:?}"
        );
        assert_eq!(registry.resolve("m", "champion").await.unwrap(), 2);
    }
}
