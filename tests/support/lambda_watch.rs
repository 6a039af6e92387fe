//! The Lambda runtime emulator for tests: `cargo lambda watch` in its own process group, the
//! functions invoked with the API Gateway v2 events of `tests/events/`. Shared by
//! `tests/e2e/functions.rs` and `tests/e2e/stack.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mlops_e2e::{ProcessGroup, free_port, repo, unique};
use serde_json::Value;

/// `cargo lambda watch` in its own process group, stopped with the group.
pub struct Watch {
    _group: ProcessGroup,
    port: u16,
    /// The emulator's log (the functions' output).
    pub log: PathBuf,
}

impl Watch {
    /// Starts the emulator with the functions' environment in `env_file`; its log goes to `dir`.
    pub fn start(env_file: &Path, dir: &Path) -> Self {
        let port = free_port();
        // The log lives outside the crates: `watch` would otherwise see it change.
        let log = dir.join("watch.log");
        let mut command = Command::new("cargo");
        command
            .args(["lambda", "watch", "--ignore-changes", "-A", "127.0.0.1"])
            .args(["-P", &port.to_string()])
            .arg("--env-file")
            .arg(env_file)
            .current_dir(repo());
        let group = ProcessGroup::spawn(command, &log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "watch did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Watch {
            _group: group,
            port,
            log,
        }
    }

    /// `cargo lambda invoke FUNCTION --data-file EVENT`, parsed.
    pub fn invoke(&self, function: &str, event: &Path) -> Value {
        let out = Command::new("cargo")
            .args([
                "lambda",
                "invoke",
                function,
                "-A",
                "127.0.0.1",
                "-o",
                "json",
            ])
            .args(["-P", &self.port.to_string()])
            .arg("--data-file")
            .arg(event)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "invoke {function} {}: {}\n{}\nwatch log:\n{}",
            event.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The function URL of `function` at `path`.
    pub fn url(&self, function: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}/lambda-url/{function}{path}", self.port)
    }
}

/// The last 40 lines of a file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// An event file from `tests/events/` with its `${NAME}` variables substituted.
pub fn event(dir: &Path, name: &str, vars: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("tests/events").join(name)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let path = dir.join(format!("{}-{name}", unique("ev")));
    std::fs::write(&path, text).unwrap();
    path
}

/// The HTTP response inside an API Gateway v2 proxy result: status and JSON body.
pub fn http(result: &Value) -> (u64, Value) {
    let body = result["body"].as_str().unwrap_or("null");
    (
        result["statusCode"].as_u64().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}
