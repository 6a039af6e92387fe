//! Crash safety of the registry and the batch-job state machines on the real local store (the
//! same scenarios run on moto S3 in `tests/e2e/crash_safety_s3.rs`). Each test prints the crash
//! points it enumerated (`cargo test -- --nocapture`).

#[path = "scenarios/crash.rs"]
mod crash;

use std::sync::Arc;

use crash::*;
use mlops_domain::batch_jobs::{BatchJobs, NewJob};
use mlops_domain::faults::FaultPlan;
use mlops_domain::jobs::{JobQueue, JobState};
use mlops_domain::registry::{RegisterOptions, Registry};
use mlops_domain::store::PutCondition;
use mlops_domain::testing::sample_bundle;
use mlops_store::LocalStore;

/// A local store in a temporary directory.
async fn fresh_store() -> Disk {
    let dir = tempfile::tempdir().unwrap();
    Disk {
        store: Arc::new(LocalStore::new(dir.path())),
        _guard: Box::new(dir),
    }
}

#[tokio::test]
async fn registration_converges_at_every_crash_point() {
    explore_and_print("register", &Register).await;
}

#[tokio::test]
async fn gate_converges_at_every_crash_point() {
    explore_and_print("gate (promotes)", &Gate { promote: true }).await;
    explore_and_print("gate (keeps the champion)", &Gate { promote: false }).await;
}

#[tokio::test]
async fn promote_rollback_and_approval_converge_at_every_crash_point() {
    explore_and_print("promote", &Promote).await;
    explore_and_print("rollback", &Rollback).await;
    explore_and_print("card approval", &ApproveCard).await;
    explore_and_print("engine image added by registry compile", &AddImage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_with_one_key_make_one_version() {
    let d = disk().await;
    let r = Registry::new(Arc::clone(&d.store));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move {
                // Half retry the same job; half are other registrations racing for numbers.
                let options = if i % 2 == 0 {
                    keyed("same-job")
                } else {
                    RegisterOptions::default()
                };
                r.register(MODEL, &sample_bundle(), options).await.unwrap()
            })
        })
        .collect();
    let mut keyed_versions = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let v = t.await.unwrap();
        if i % 2 == 0 {
            keyed_versions.push(v.version);
        }
    }
    keyed_versions.dedup();
    assert_eq!(keyed_versions.len(), 1, "{keyed_versions:?}");
    let versions = registry_invariants(&r).await.unwrap();
    assert_eq!(versions.len(), 5);
}

#[tokio::test]
async fn a_claim_from_before_reservations_is_recovered_from_the_version_record() {
    // The old code claimed the key, wrote the version, and died before completing the claim.
    let d = disk().await;
    let r = Registry::new(Arc::clone(&d.store));
    let v1 = r
        .register(MODEL, &sample_bundle(), keyed("old-job"))
        .await
        .unwrap();
    let claim_key = format!(
        "models/{MODEL}/registrations/{}.json",
        &mlops_domain::hashing::sha256_hex(b"old-job")[..32]
    );
    let legacy = serde_json::json!({"bundle_digest": v1.bundle_digest, "version": null});
    d.store
        .put(
            &claim_key,
            serde_json::to_vec(&legacy).unwrap(),
            PutCondition::None,
        )
        .await
        .unwrap();
    let again = r
        .register(MODEL, &sample_bundle(), keyed("old-job"))
        .await
        .unwrap();
    assert_eq!(again.version, 1);
    assert_eq!(r.versions(MODEL).await.unwrap().len(), 1);
}

#[tokio::test]
async fn batch_job_create_and_start_converge_at_every_crash_point() {
    explore_and_print("batch-job create (Idempotency-Key)", &CreateWithKey).await;
    explore_and_print("batch-job create (no key)", &CreateWithoutKey).await;
    explore_and_print("batch-job start", &Start).await;
}

#[tokio::test]
async fn inputs_outside_the_allowed_prefixes_are_refused_before_anything_is_written() {
    let w = jobs_world().await;
    let queue: Arc<dyn JobQueue> = w.queue.clone();
    let jobs = BatchJobs::new(Arc::clone(&w.disk.store), Some(queue))
        .with_input_prefixes(vec!["s3://data/in".into()]);
    for uri in [
        "s3://data-other/in/x.csv",
        "s3://data/elsewhere.csv",
        "/etc/passwd",
    ] {
        let job = NewJob {
            input_uri: Some(uri.into()),
            ..new_job()
        };
        let e = jobs.create(job, None).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("outside the allowed inputs (s3://data/in/)"),
            "{e}"
        );
    }
    assert!(w.disk.store.list("batch-jobs/").await.unwrap().is_empty());
    let job = NewJob {
        input_uri: Some("s3://data/in/x.csv".into()),
        ..new_job()
    };
    assert!(jobs.create(job, None).await.is_ok());
    // Without a list, the registry's own location is the only one allowed.
    let default = BatchJobs::new(Arc::clone(&w.disk.store), Some(w.queue.clone()));
    assert_eq!(
        default.input_prefixes(),
        [format!("{}/", w.disk.store.uri("").trim_end_matches('/'))]
    );
}

#[tokio::test]
async fn nothing_is_claimed_without_a_queue() {
    let w = jobs_world().await;
    let jobs = BatchJobs::new(Arc::clone(&w.disk.store), None).with_input_prefixes(inputs());
    let e = jobs.create(new_job(), Some("k")).await.unwrap_err();
    assert!(e.to_string().contains("MLOPS_BATCH_QUEUE"), "{e}");
    assert!(w.disk.store.list("batch-jobs/").await.unwrap().is_empty());
    // Once a queue is configured, the same key works.
    let created = plain(&w).create(new_job(), Some("k")).await.unwrap();
    assert_eq!(created.job.state, JobState::Queued);
}

#[tokio::test]
async fn a_fresh_submitting_record_is_not_taken_over() {
    // A request still inside the takeover window owns its record: a concurrent retry reports it.
    let w = jobs_world().await;
    let queue: Arc<dyn JobQueue> = w.queue.clone();
    let crashed = FaultPlan::at(2, mlops_domain::faults::Fault::Crash);
    let _ = BatchJobs::new(
        crashed.store(Arc::clone(&w.disk.store)),
        Some(crashed.queue(queue.clone())),
    )
    .with_input_prefixes(inputs())
    .create(new_job(), Some("k"))
    .await
    .unwrap_err();
    let patient =
        BatchJobs::new(Arc::clone(&w.disk.store), Some(queue)).with_input_prefixes(inputs());
    let again = patient.create(new_job(), Some("k")).await.unwrap();
    assert_eq!(again.job.state, JobState::Submitting);
    assert!(w.queue.submissions().is_empty());
    // After the window, the next reader settles it.
    let settled = plain(&w).create(new_job(), Some("k")).await.unwrap();
    assert_eq!(settled.job.state, JobState::Queued);
    jobs_invariants(&w, 1).await.unwrap();
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let w = jobs_world().await;
    plain(&w).create(new_job(), Some("k")).await.unwrap();
    let other = NewJob {
        request_sha256: "r2".into(),
        ..new_job()
    };
    let e = plain(&w).create(other, Some("k")).await.unwrap_err();
    assert!(e.to_string().contains("different request"), "{e}");
}

#[tokio::test]
async fn a_key_claimed_by_an_older_build_finds_its_job() {
    // The old layout: a claim naming a random job id, and that job already queued.
    let w = jobs_world().await;
    let first = plain(&w).create(new_job(), None).await.unwrap().job;
    let claim = serde_json::json!({"job_id": first.id, "request_sha256": "r1"});
    let claim_key =
        mlops_domain::jobs::idempotency_key(&mlops_domain::hashing::sha256_hex(b"old-key"));
    w.disk
        .store
        .put(
            &claim_key,
            serde_json::to_vec(&claim).unwrap(),
            PutCondition::IfAbsent,
        )
        .await
        .unwrap();
    let again = plain(&w).create(new_job(), Some("old-key")).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.job.id, first.id);
    assert_eq!(w.queue.submissions().len(), 1);
}

#[tokio::test]
async fn retraining_submits_one_job_per_window_at_every_crash_point() {
    explore_and_print("retrain", &Retrain).await;
}

#[tokio::test]
async fn a_sharded_job_is_one_array_job_and_its_progress_sums_the_shards() {
    use mlops_domain::jobs::{
        Checkpoint, PartStart, SHARD_PLAN, ShardPlan, output_prefix, shard_checkpoint_name,
    };
    let w = jobs_world().await;
    let job = NewJob {
        shards: Some(4),
        ..new_job()
    };
    let created = plain(&w).create(job, None).await.unwrap().job;
    let submissions = w.queue.submissions();
    assert_eq!(submissions.len(), 1, "one array job, not four jobs");
    assert_eq!(submissions[0].1.array_size, Some(4));
    assert_eq!(created.shards, Some(4));
    // Before a child writes the plan there is no progress; then it is the sum over the shards.
    assert!(
        plain(&w)
            .get(&created.id)
            .await
            .unwrap()
            .checkpoint
            .is_none()
    );
    let prefix = output_prefix(&created.id);
    let part = |p: u64| PartStart {
        part: p,
        rows_before: p * 100,
        offset: 10 + p * 1000,
        lines: 1 + p * 100,
    };
    let parts: Vec<PartStart> = (0..8).map(part).collect();
    let plan = ShardPlan::new("f".into(), &parts, part(8), 8010, 4);
    let put = |key: String, bytes: Vec<u8>| {
        let store = Arc::clone(&w.disk.store);
        async move { store.put(&key, bytes, PutCondition::None).await.unwrap() }
    };
    put(
        format!("{prefix}{SHARD_PLAN}"),
        serde_json::to_vec(&plan).unwrap(),
    )
    .await;
    for (index, rows) in [(0, 200), (2, 50)] {
        let shard = Checkpoint {
            rows_done: rows,
            rows_rejected: 1,
            complete: rows == 200,
            ..Checkpoint::default()
        };
        put(
            format!("{prefix}{}", shard_checkpoint_name(index)),
            serde_json::to_vec(&shard).unwrap(),
        )
        .await;
    }
    let progress = plain(&w)
        .get(&created.id)
        .await
        .unwrap()
        .checkpoint
        .unwrap();
    assert_eq!(
        (
            progress.rows_done,
            progress.rows_total,
            progress.rows_rejected
        ),
        (250, Some(800), 2)
    );
    assert!(!progress.complete);
}
