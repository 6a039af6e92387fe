//! The training job (`mlops job`) SIGKILLed at random points of its registration on moto S3 and
//! rerun with the same `AWS_BATCH_JOB_ID`, as AWS Batch's next attempt would: every rerun
//! finishes, and each job id ends with exactly one version whose bundle and card load.
//!
//! The kill is aimed by watching the bucket: the job is killed as soon as the k-th new object of
//! its registration (bundle files, the key's claim, the version record, its card) appears, k
//! drawn at random, so the kill lands between two writes of the sequence.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mlops_domain::registry::Registry;
use mlops_domain::store::ObjectStore;
use mlops_e2e::{mlops_bin, moto_endpoint, s3_store, shared_data};
use rand::Rng;

const TRIALS: usize = 10;
const MODEL: &str = "california_housing";

fn job(home: &std::path::Path, store: &str, spec: &std::path::Path, job_id: &str) -> Command {
    let mut c = Command::new(mlops_bin());
    c.args(["--home", home.to_str().unwrap(), "--store", store])
        .args(["--s3-endpoint", &moto_endpoint()])
        .args(["job", "--spec", spec.to_str().unwrap()])
        .env("AWS_BATCH_JOB_ID", job_id)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", moto_endpoint())
        .env_remove("MLOPS_TRACKING_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_registration_and_rerun_makes_one_version_per_job() {
    let store = s3_store("registry").await;
    let uri = store.uri("");
    let uri = uri.trim_end_matches('/').to_owned();
    let home = tempfile::tempdir().unwrap();
    let spec = home.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "dataset = \"{MODEL}\"\ndata = \"{}\"\ncandidates = [\"linear\"]\n[promotion]\ngate_margin = 0.0\n",
            shared_data("california_housing.csv").display()
        ),
    )
    .unwrap();
    let registry = Registry::new(store.clone());
    let mut rng = rand::thread_rng();
    let mut kills = Vec::new();
    for trial in 0..TRIALS {
        let job_id = format!("batch-job-{trial}");
        let before: BTreeSet<String> = store.list("models/").await.unwrap().into_iter().collect();
        let k = rng.gen_range(1..=5);
        let mut child = job(home.path(), &uri, &spec, &job_id).spawn().unwrap();
        let started = Instant::now();
        let mut killed_after = None;
        while started.elapsed() < Duration::from_secs(120) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let new = store
                .list("models/")
                .await
                .unwrap()
                .into_iter()
                .filter(|key| !before.contains(key))
                .count();
            if new >= k {
                child.kill().unwrap(); // SIGKILL
                killed_after = Some(new);
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let status = child.wait().unwrap();
        kills.push((k, killed_after, status.success()));
        // AWS Batch's next attempt: the same job id, to completion.
        let rerun = job(home.path(), &uri, &spec, &job_id).output().unwrap();
        assert!(
            rerun.status.success(),
            "trial {trial}: the rerun after a kill at {k} new objects failed:\n{}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        let versions = registry.versions(MODEL).await.unwrap();
        let mine: Vec<_> = versions
            .iter()
            .filter(|v| v.idempotency_key.as_deref() == Some(&job_id))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "trial {trial}: {} versions for {job_id}",
            mine.len()
        );
        registry.load_bundle(mine[0]).await.unwrap();
        registry.card(MODEL, mine[0].version).await.unwrap();
        assert_eq!(
            versions.len(),
            trial + 1,
            "trial {trial}: {} versions",
            versions.len()
        );
    }
    let killed = kills.iter().filter(|(_, at, _)| at.is_some()).count();
    println!(
        "{TRIALS} jobs, {killed} SIGKILLed during registration (target, objects seen, exited ok): {kills:?}; every rerun finished; one version per job id"
    );
    assert!(killed >= TRIALS / 2, "too few kills landed: {kills:?}");
}
