//! Helpers for the end-to-end tests. `scripts/test.sh` starts the real services and exports:
//! - `MLOPS_TEST_S3_ENDPOINT`: a moto server (S3 with conditional writes),
//! - `MLOPS_TEST_MLFLOW_URI`: an MLflow tracking server with `--artifacts-destination`,
//! - `MLOPS_TEST_PYTHON`: a Python with xgboost and lightgbm.
//!
//! A missing variable fails the test with a message saying how to run it: these tests never
//! pass vacuously.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlops_store::{S3Config, S3Store};

/// Reads a required environment variable set by `scripts/test.sh`.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which starts moto, MLflow and the Python venv")
    })
}

/// The moto endpoint.
pub fn moto_endpoint() -> String {
    required_env("MLOPS_TEST_S3_ENDPOINT")
}

/// The MLflow server.
pub fn mlflow_uri() -> String {
    required_env("MLOPS_TEST_MLFLOW_URI")
}

/// The Python interpreter of the test venv.
pub fn python() -> String {
    required_env("MLOPS_TEST_PYTHON")
}

/// A unique name for buckets, models and experiments.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// An S3 store on moto in a fresh bucket, under `prefix`.
pub async fn s3_store(prefix: &str) -> Arc<S3Store> {
    let store = S3Store::connect(S3Config {
        bucket: unique("mlops-test"),
        prefix: prefix.into(),
        endpoint: Some(moto_endpoint()),
        region: Some("us-east-1".into()),
    })
    .await;
    store
        .ensure_bucket()
        .await
        .expect("create the bucket on moto");
    Arc::new(store)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the shared data sets beside the repository.
pub fn shared_data(file: &str) -> PathBuf {
    let p = repo().join("../shared/data").join(file);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// The `mlops` binary built by the same `cargo test` run.
pub fn mlops_bin() -> PathBuf {
    target_bin("mlops")
}

/// A binary of the workspace (e.g. the `predict` function) built by `cargo build --workspace`.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/mlops
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} was not built; run `cargo build --workspace` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process in its own process group (servers that start workers, `cargo lambda watch`
/// and the functions it runs); the whole group is killed on drop.
pub struct ProcessGroup {
    child: std::process::Child,
    killed: bool,
}

impl ProcessGroup {
    /// Spawns `command` with stdout and stderr to `log`.
    pub fn spawn(mut command: std::process::Command, log: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).expect("create the log file");
        let child = command
            .stdout(out.try_clone().expect("clone the log file"))
            .stderr(out)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self {
            child,
            killed: false,
        }
    }

    /// Kills the group (SIGTERM, then SIGKILL) and reaps the child; idempotent.
    pub fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-TERM", "--", &group])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `mlops --home HOME --store STORE --s3-endpoint ENDPOINT ARGS…` (AWS clients pointed at
/// the same endpoint) and returns its stdout; fails the test on a non-zero exit.
pub fn mlops_cli(home: &Path, store: &str, endpoint: &str, args: &[&str]) -> String {
    let out = mlops_cli_output(home, store, endpoint, args);
    assert!(
        out.status.success(),
        "mlops {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mlops` as [`mlops_cli`] runs it, whatever its exit status.
pub fn mlops_cli_output(
    home: &Path,
    store: &str,
    endpoint: &str,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(mlops_bin())
        .args([
            "--home",
            &home.to_string_lossy(),
            "--store",
            store,
            "--s3-endpoint",
            endpoint,
        ])
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_REGION", "us-east-1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mlops")
}

/// Trains a linear California Housing model with `seed` into the registry on `store`, approves
/// its card and, with `promote`, makes it `champion`. Returns the registered version.
pub fn publish_housing(home: &Path, store: &str, endpoint: &str, seed: u64, promote: bool) -> u64 {
    let data = shared_data("california_housing.csv");
    let seed = seed.to_string();
    let out = mlops_cli(
        home,
        store,
        endpoint,
        &[
            "train",
            "california_housing",
            "--data",
            &data.to_string_lossy(),
            "--candidates",
            "linear",
            "--seed",
            &seed,
        ],
    );
    let version: u64 = out
        .split("registered california_housing version ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no registered version in: {out}"));
    let v = version.to_string();
    mlops_cli(
        home,
        store,
        endpoint,
        &[
            "registry",
            "card",
            "california_housing",
            &v,
            "--intended-use",
            "end-to-end tests",
            "--limitations",
            "test data only",
            "--approve",
            "--by",
            "e2e",
        ],
    );
    if promote {
        mlops_cli(
            home,
            store,
            endpoint,
            &["registry", "promote", "california_housing", &v],
        );
    }
    version
}

/// Runs a Python snippet with boto3 against moto (`sys.argv[1]` is the endpoint, then `args`),
/// parsing its JSON output.
pub fn boto3(script: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(python())
        .args(["-c", script, &moto_endpoint()])
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the snippet")
}

/// An AWS Batch job queue and job definition on moto (`tests/python/batch_setup.py`), named
/// after `name`: `{"queue": …, "definition": …}`.
pub fn batch_queue(name: &str) -> serde_json::Value {
    python_script_json("batch_setup.py", &[moto_endpoint(), unique(name)])
}

/// The JSON a script in `tests/python/` prints (run with the test venv's Python).
pub fn python_script_json(script: &str, args: &[String]) -> serde_json::Value {
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The stack of `template.yaml` created in moto's CloudFormation with parameter `overrides`
/// (`tests/python/stack_in_moto.py`): status, outputs, roles, function environments, and what
/// moto did not create. Asserts CREATE_COMPLETE.
pub fn stack_in_moto(overrides: &[&str]) -> serde_json::Value {
    let args: Vec<String> = std::iter::once(moto_endpoint())
        .chain(overrides.iter().map(|o| o.to_string()))
        .collect();
    let stack = python_script_json("stack_in_moto.py", &args);
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{}", stack["reason"]);
    stack
}
