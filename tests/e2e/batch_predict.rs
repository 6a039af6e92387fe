//! The batch-prediction job against moto S3: bad rows go to the errors file without stopping it;
//! killed (SIGKILL) at 5 random points and restarted each time, it produces output
//! byte-identical to an uninterrupted run; the batch function's job records drive it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use mlops_domain::jobs::{BatchJob, Checkpoint, JobState};
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_e2e::{mlops_bin, moto_endpoint, publish_housing, s3_store, shared_data, unique};

/// Rows of the housing data repeated `copies` times, with malformed rows inserted; returns the
/// CSV and the number of bad rows.
fn input(copies: usize) -> (String, u64) {
    let text = std::fs::read_to_string(shared_data("california_housing.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let mut out = vec![header.to_string()];
    for _ in 0..copies {
        out.extend(rows.iter().map(|r| r.to_string()));
    }
    let width = header.split(',').count();
    let bad = [
        (17, vec!["oops"; width].join(",")),
        (25_001, "1,2".to_string()),
        (77_777, rows[0].replace("NEAR BAY", "ON MARS")),
        (150_000, rows[1].replacen(',', ",1e999,", 1)),
    ];
    for (at, line) in &bad {
        out.insert((*at).min(out.len()), line.clone());
    }
    (out.join("\n") + "\n", bad.len() as u64)
}

fn batch_predict(args: &[&str]) -> Command {
    let mut c = Command::new(mlops_bin());
    c.args(["--s3-endpoint", &moto_endpoint(), "batch-predict"])
        .args(args)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Runs a job to its end; `status` is the exit status it must end with (3: finished with
/// rejected rows, which the inputs here have; 0 with `--job`, whose checkpoint reports them).
fn run_to_end(mut command: Command, status: i32) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "batch-predict: {stderr}");
    stderr
}

async fn objects(store: &dyn ObjectStore, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for key in store.list(prefix).await.unwrap() {
        let bytes = store.get(&key).await.unwrap().unwrap().bytes;
        out.insert(key[prefix.len()..].to_string(), bytes);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_five_times_the_output_equals_an_uninterrupted_run() {
    let bucket = s3_store("").await;
    let b = bucket.bucket().to_string();
    let home = tempfile::tempdir().unwrap();
    let store = format!("s3://{b}/registry");
    publish_housing(home.path(), &store, &moto_endpoint(), 42, true);
    let (csv, bad_rows) = input(10);
    let total_rows = csv.lines().count() as u64 - 1;
    bucket
        .put("inputs/houses.csv", csv.into_bytes(), PutCondition::None)
        .await
        .unwrap();
    let input_uri = format!("s3://{b}/inputs/houses.csv");
    let common = |out: &str| {
        let mut c = batch_predict(&[
            "--model",
            "california_housing",
            "--input",
            &input_uri,
            "--output",
            out,
            "--part-rows",
            "20000",
        ]);
        c.args(["--home", &home.path().to_string_lossy(), "--store", &store]);
        c
    };

    // Uninterrupted.
    let started = Instant::now();
    let log = run_to_end(common(&format!("s3://{b}/out-a")), 3);
    assert!(log.contains("finished with 4 rejected rows"), "{log}");
    let uninterrupted = started.elapsed();
    let per_part = uninterrupted / 11;

    // Killed 5 times while it runs, resumed each time, then run to the end. Each kill is aimed
    // by watching the checkpoint: once the run has committed a part, it is killed after a random
    // share of a part's time, so kills land between a part's writes and its checkpoint too.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = Vec::new();
    let mut attempts = 0;
    let rows_done = || async {
        match bucket.get("out-b/_checkpoint.json").await.unwrap() {
            Some(o) => {
                serde_json::from_slice::<Checkpoint>(&o.bytes)
                    .unwrap()
                    .rows_done
            }
            None => 0,
        }
    };
    while kills.len() < 5 && attempts < 30 {
        attempts += 1;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let fraction = (seed % 1000) as f64 / 1000.0;
        let before = rows_done().await;
        let mut child = common(&format!("s3://{b}/out-b")).spawn().unwrap();
        let started = Instant::now();
        while rows_done().await == before
            && child.try_wait().unwrap().is_none()
            && started.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(per_part.mul_f64(fraction));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills.push(started.elapsed());
        }
        let _ = child.wait();
    }
    assert_eq!(
        kills.len(),
        5,
        "could not kill the job mid-run 5 times in {attempts} attempts"
    );
    let log = run_to_end(common(&format!("s3://{b}/out-b")), 3);
    println!(
        "uninterrupted {uninterrupted:?}; killed after {kills:?} ({attempts} runs); last run: {log}"
    );

    let a = objects(&*bucket, "out-a/").await;
    let b_out = objects(&*bucket, "out-b/").await;
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b_out.keys().collect::<Vec<_>>()
    );
    for (key, bytes) in a.iter().filter(|(k, _)| *k != "_checkpoint.json") {
        assert!(b_out[key] == *bytes, "{key} differs after the kills");
    }
    // The checkpoints differ only in the fencing generation: one per run.
    let checkpoint: Checkpoint = serde_json::from_slice(&a["_checkpoint.json"]).unwrap();
    let resumed: Checkpoint = serde_json::from_slice(&b_out["_checkpoint.json"]).unwrap();
    // One generation per run that took the checkpoint: every killed run had committed a part.
    assert_eq!(checkpoint.generation, 1);
    assert!(
        (kills.len() as u64 + 1..=attempts + 1).contains(&resumed.generation),
        "{}",
        resumed.generation
    );
    assert_eq!(
        Checkpoint {
            generation: 0,
            ..checkpoint.clone()
        },
        Checkpoint {
            generation: 0,
            ..resumed
        }
    );
    assert!(checkpoint.complete);
    assert_eq!(checkpoint.rows_total, Some(total_rows));
    assert_eq!(checkpoint.rows_done, total_rows);
    assert_eq!(checkpoint.rows_rejected, bad_rows);
    let predicted: usize = a
        .iter()
        .filter(|(k, _)| k.starts_with("part-"))
        .map(|(_, v)| v.iter().filter(|&&c| c == b'\n').count() - 1)
        .sum();
    assert_eq!(
        predicted as u64,
        total_rows - bad_rows,
        "no row lost or duplicated"
    );
    let errors = String::from_utf8(a["errors-00000.csv"].clone()).unwrap();
    assert!(
        errors.contains("17,") && errors.contains("expected a number"),
        "{errors}"
    );
    let all_errors: String = a
        .iter()
        .filter(|(k, _)| k.starts_with("errors-"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        all_errors.contains("ON MARS") && all_errors.contains("fields"),
        "{all_errors}"
    );

    // A rerun of a complete job does nothing; another job cannot reuse the output.
    assert!(run_to_end(common(&format!("s3://{b}/out-a")), 3).contains("already complete"));
    let mut other = batch_predict(&[
        "--model",
        "california_housing",
        "--input",
        &input_uri,
        "--output",
        &format!("s3://{b}/out-a"),
        "--part-rows",
        "999",
    ]);
    other.args(["--home", &home.path().to_string_lossy(), "--store", &store]);
    let out = other.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to another job"));
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_a_job_record_of_the_batch_function() {
    let bucket = s3_store("registry").await;
    let b = bucket.bucket().to_string();
    let home = tempfile::tempdir().unwrap();
    let store = format!("s3://{b}/registry");
    publish_housing(home.path(), &store, &moto_endpoint(), 42, true);
    let (csv, _) = input(1);
    let root = s3_store("").await;
    root.put("in.csv", csv.into_bytes(), PutCondition::None)
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = chrono::Utc::now();
    let job = BatchJob {
        id: id.clone(),
        model: "california_housing".into(),
        version: 1,
        alias: Some("champion".into()),
        input_uri: format!("s3://{}/in.csv", root.bucket()),
        input_version: None,
        output_uri: format!("{store}/batch-jobs/{id}/output/"),
        shards: None,
        state: JobState::Queued,
        queue_job_id: Some(unique("batch")),
        reason: None,
        request_sha256: "x".into(),
        created_at: now,
        updated_at: now,
    };
    bucket
        .put(
            &format!("batch-jobs/{id}/job.json"),
            serde_json::to_vec(&job).unwrap(),
            PutCondition::IfAbsent,
        )
        .await
        .unwrap();
    let mut c = batch_predict(&["--job", &format!("{store}/batch-jobs/{id}/job.json")]);
    c.args(["--home", &home.path().to_string_lossy(), "--store", &store]);
    run_to_end(c, 0);
    let checkpoint: Checkpoint = serde_json::from_slice(
        &bucket
            .get(&format!("batch-jobs/{id}/output/_checkpoint.json"))
            .await
            .unwrap()
            .unwrap()
            .bytes,
    )
    .unwrap();
    assert!(
        checkpoint.complete && checkpoint.rows_rejected == 4,
        "{checkpoint:?}"
    );
    // A job URI outside the configured store is refused.
    let mut wrong = batch_predict(&["--job", "s3://elsewhere/batch-jobs/x/job.json"]);
    wrong.args(["--home", &home.path().to_string_lossy(), "--store", &store]);
    let out = wrong.output().unwrap();
    assert!(!out.status.success());
}
