//! The registry and batch-job crash scenarios of `shared/store/tests/crash_safety.rs` on the S3
//! adapter against moto (conditional writes enforced): every crash point of every operation, a
//! fresh bucket per run, the same invariants after the retry.

#[path = "../../shared/store/tests/scenarios/crash.rs"]
mod crash;

use crash::*;

/// A fresh bucket on moto.
async fn fresh_store() -> Disk {
    Disk {
        store: mlops_e2e::s3_store("registry").await,
        _guard: Box::new(()),
    }
}

#[tokio::test]
async fn registry_operations_converge_at_every_crash_point_on_s3() {
    explore_and_print("register (S3)", &Register).await;
    explore_and_print("gate (S3)", &Gate { promote: true }).await;
    explore_and_print("promote (S3)", &Promote).await;
    explore_and_print("rollback (S3)", &Rollback).await;
    explore_and_print("card approval (S3)", &ApproveCard).await;
    explore_and_print("engine image added by registry compile (S3)", &AddImage).await;
}

#[tokio::test]
async fn batch_job_operations_converge_at_every_crash_point_on_s3() {
    explore_and_print("batch-job create with a key (S3)", &CreateWithKey).await;
    explore_and_print("batch-job create without a key (S3)", &CreateWithoutKey).await;
    explore_and_print("batch-job start (S3)", &Start).await;
    explore_and_print("retrain (S3)", &Retrain).await;
}
