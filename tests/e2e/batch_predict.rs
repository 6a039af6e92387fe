//! The batch-prediction job against moto S3: bad rows go to the errors file without stopping it;
//! killed (SIGKILL) at 5 random points and restarted each time, it produces output
//! byte-identical to an uninterrupted run; the batch function's job records drive it; spread
//! over a moto AWS Batch array job (`--shards N`, children run here with the command and array
//! index the job holds), it writes the same output for N = 1, 2, 4 and 8, and with two children
//! killed (SIGKILL) and retried.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use mlops_domain::jobs::{BatchJob, Checkpoint, JobState};
use mlops_domain::store::{ObjectStore, PutCondition};
use mlops_e2e::{
    batch_queue, boto3, mlops_bin, moto_endpoint, publish_housing, s3_store, shared_data, unique,
};
use mlops_store::S3Store;
use rand::{Rng, SeedableRng};

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

/// A bucket with the housing model published to its registry and `input(10)` uploaded to
/// `inputs/houses.csv`: the bucket, the CLI's home, the registry store URI, the input URI, and
/// the input's rows and bad rows.
async fn housing_job() -> (Arc<S3Store>, tempfile::TempDir, String, String, u64, u64) {
    let bucket = s3_store("").await;
    let b = bucket.bucket().to_string();
    let home = tempfile::tempdir().unwrap();
    let store = format!("s3://{b}/registry");
    publish_housing(home.path(), &store, &moto_endpoint(), 42, true);
    let (csv, bad_rows) = input(10);
    let rows = csv.lines().count() as u64 - 1;
    bucket
        .put("inputs/houses.csv", csv.into_bytes(), PutCondition::None)
        .await
        .unwrap();
    let input_uri = format!("s3://{b}/inputs/houses.csv");
    (bucket, home, store, input_uri, rows, bad_rows)
}

/// The checkpoint stored at `key`, if one is.
async fn checkpoint_at(store: &dyn ObjectStore, key: &str) -> Option<Checkpoint> {
    let object = store.get(key).await.unwrap()?;
    Some(serde_json::from_slice(&object.bytes).unwrap())
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
    let (bucket, home, store, input_uri, total_rows, bad_rows) = housing_job().await;
    let b = bucket.bucket().to_string();
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
        checkpoint_at(bucket.as_ref(), "out-b/_checkpoint.json")
            .await
            .map_or(0, |c| c.rows_done)
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
    let checkpoint = checkpoint_at(
        bucket.as_ref(),
        &format!("batch-jobs/{id}/output/_checkpoint.json"),
    )
    .await
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

/// The command and array size moto's Batch holds for a submitted job (`describe_jobs`).
fn submitted(queue_job_id: &str) -> (Vec<String>, Option<u32>) {
    let job = boto3(
        "import boto3, json, sys; print(json.dumps(boto3.client('batch', endpoint_url=sys.argv[1], region_name='us-east-1').describe_jobs(jobs=[sys.argv[2]])['jobs'][0], default=str))",
        &[queue_job_id],
    );
    let command = job["container"]["command"]
        .as_array()
        .expect("a container command")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let size = job["arrayProperties"]["size"].as_u64().map(|n| n as u32);
    (command, size)
}

/// The child that runs array index `index` of a submitted command, as AWS Batch would start it.
fn child(command: &[String], index: Option<u32>) -> Command {
    let mut c = Command::new(mlops_bin());
    c.args(&command[1..])
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(i) = index {
        c.env("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string());
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn sharded_over_an_array_job_the_output_equals_one_container() {
    let (bucket, home, store, input_uri, _, _) = housing_job().await;
    let b = bucket.bucket().to_string();
    let batch = batch_queue("shards");
    let (queue, definition) = (
        batch["queue"].as_str().unwrap().to_string(),
        batch["definition"].as_str().unwrap().to_string(),
    );
    let predict = |out: &str, extra: &[&str]| {
        let mut c = batch_predict(&[
            "--model",
            "california_housing",
            "--input",
            &input_uri,
            "--output",
            &format!("s3://{b}/{out}"),
            "--part-rows",
            "5000",
        ]);
        c.args(extra)
            .args(["--home", &home.path().to_string_lossy(), "--store", &store]);
        c
    };
    run_to_end(predict("one", &[]), 3);
    let want = data_files(&objects(bucket.as_ref(), "one/").await);
    let one = checkpoint_at(bucket.as_ref(), "one/_checkpoint.json")
        .await
        .unwrap();
    assert_eq!(want.keys().filter(|k| k.starts_with("part-")).count(), 42);

    let mut seed = rand::random::<u64>();
    if let Ok(s) = std::env::var("MLOPS_TEST_SEED") {
        seed = s.parse().unwrap();
    }
    println!("kill seed {seed} (MLOPS_TEST_SEED={seed} replays it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for shards in [1u32, 2, 4, 8] {
        let out = format!("sharded-{shards}");
        let mut submit = predict(&out, &["--shards", &shards.to_string()]);
        submit
            .args(["--queue", &queue, "--job-definition", &definition])
            .stdout(Stdio::piped());
        let output = submit.output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{said} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let queue_job = said
            .split("queue job ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no queue job id in: {said}"));
        let (command, size) = submitted(queue_job);
        assert_eq!(size, (shards > 1).then_some(shards), "{command:?}");
        assert!(
            command.contains(&"--array-child".to_string()),
            "{command:?}"
        );
        let indices: Vec<Option<u32>> = match size {
            Some(n) => (0..n).map(Some).collect(),
            None => vec![None],
        };
        // All children at once; with four, two are killed at random points and retried.
        let started = Instant::now();
        let mut running: Vec<_> = indices
            .iter()
            .map(|i| child(&command, *i).spawn().unwrap())
            .collect();
        let mut killed = Vec::new();
        if shards == 4 {
            // Two victims, watched together: each is killed once its shard has committed a part,
            // after a random share of a part's time, so a kill lands between a part's writes and
            // its checkpoint too.
            let mut victims: Vec<usize> = (0..4).collect();
            let victims: Vec<usize> = (0..2)
                .map(|_| victims.remove(rng.gen_range(0..victims.len())))
                .collect();
            let mut due: Vec<Option<Instant>> = vec![None; victims.len()];
            let mut left: Vec<usize> = (0..victims.len()).collect();
            while !left.is_empty() {
                let mut still = Vec::new();
                for k in left {
                    let v = victims[k];
                    if running[v].try_wait().unwrap().is_some() {
                        continue;
                    }
                    match due[k] {
                        Some(at) if Instant::now() >= at => {
                            running[v].kill().unwrap();
                            killed.push(v);
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            let key = format!("{out}/_checkpoint-{v:05}.json");
                            let committed = checkpoint_at(bucket.as_ref(), &key)
                                .await
                                .is_some_and(|c| !c.parts.is_empty());
                            if committed {
                                let wait = std::time::Duration::from_millis(rng.gen_range(0..150));
                                due[k] = Some(Instant::now() + wait);
                            }
                        }
                    }
                    still.push(k);
                }
                left = still;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(killed.len(), 2, "children still running to be killed");
        }
        for (i, c) in running.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            if !killed.contains(&i) {
                assert!(
                    out.status.success(),
                    "child {i}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let mut retries = Vec::new();
        for &v in &killed {
            let out = child(&command, indices[v]).output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "retried child {v}: {log}");
            let resumed = log
                .lines()
                .find(|l| l.starts_with("resuming"))
                .unwrap_or("from the start");
            retries.push(format!("child {v}: {resumed}"));
        }
        let seconds = started.elapsed().as_secs_f64();
        let got = data_files(&objects(bucket.as_ref(), &format!("{out}/")).await);
        let differing: Vec<&String> = want
            .keys()
            .filter(|k| got.get(*k) != want.get(*k))
            .collect();
        assert!(
            got.len() == want.len() && differing.is_empty(),
            "{shards} shards: {differing:?} differ from one container's output"
        );
        let whole = checkpoint_at(bucket.as_ref(), &format!("{out}/_checkpoint.json"))
            .await
            .unwrap();
        assert!(whole.complete);
        assert_eq!(
            (whole.rows_done, whole.rows_rejected, &whole.parts),
            (one.rows_done, one.rows_rejected, &one.parts)
        );
        println!(
            "{shards} shards: {} rows, output identical, {seconds:.1} s; killed and retried: {retries:?}",
            whole.rows_done
        );
    }
}

/// The parts and errors files of an output, by name.
fn data_files(all: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    all.iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(name, bytes)| (name.clone(), bytes.clone()))
        .collect()
}
