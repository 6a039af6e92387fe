//! The predict function's binary (served over plain HTTP) under load: a promotion switches the
//! served version within the refresh interval with zero failed requests, and when S3 (moto) dies
//! it keeps serving the last good model and reports degraded health. Uses its own moto server,
//! since it stops it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlops_e2e::{ProcessGroup, free_port, mlops_cli, publish_housing, python, target_bin, unique};
use serde_json::{Value, json};
use tokio::sync::Mutex;

async fn wait_ok(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mlops(home: &Path, store: &str, endpoint: &str, args: &[&str]) {
    mlops_cli(home, store, endpoint, args);
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    ok: bool,
    version: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotion_under_load_and_s3_outage() {
    let dir = tempfile::tempdir().unwrap();
    let venv_bin = Path::new(&python()).parent().unwrap().to_path_buf();
    let moto_port = free_port();
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let mut moto = {
        let mut c = Command::new(venv_bin.join("moto_server"));
        c.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()]);
        ProcessGroup::spawn(c, &dir.path().join("moto.log"))
    };
    let client = reqwest::Client::new();
    wait_ok(&client, &format!("{endpoint}/moto-api/")).await;
    let bucket = unique("resilience");
    let s3 = mlops_store::S3Store::connect(mlops_store::S3Config {
        bucket: bucket.clone(),
        prefix: "registry".into(),
        endpoint: Some(endpoint.clone()),
        region: Some("us-east-1".into()),
    })
    .await;
    s3.ensure_bucket().await.unwrap();
    let store = format!("s3://{bucket}/registry");
    let home = dir.path().join("home");
    publish_housing(&home, &store, &endpoint, 42, true);
    // v2 is registered now; only its promotion happens under load.
    publish_housing(&home, &store, &endpoint, 7, false);

    let port = free_port();
    let _server = {
        let mut c = Command::new(target_bin("predict"));
        c.env("MLOPS_LISTEN", format!("127.0.0.1:{port}"))
            .env("MLOPS_STORE", &store)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("MLOPS_REFRESH_SECONDS", "1")
            .env("RUST_LOG", "warn");
        ProcessGroup::spawn(c, &dir.path().join("predict.log"))
    };
    let base = format!("http://127.0.0.1:{port}");
    wait_ok(&client, &format!("{base}/health/ready")).await;

    let record = json!({
        "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
        "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY"
    });
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, samples, running, record) = (
            client.clone(),
            samples.clone(),
            running.clone(),
            record.clone(),
        );
        let url = format!("{base}/v1/models/california_housing/predict");
        workers.push(tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let sent = client.post(&url).json(&record).send().await;
                let sample = match sent {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        Sample {
                            at: Instant::now(),
                            ok: true,
                            version: body["version"].as_u64().unwrap_or(0),
                        }
                    }
                    _ => Sample {
                        at: Instant::now(),
                        ok: false,
                        version: 0,
                    },
                };
                samples.lock().await.push(sample);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    mlops(
        &home,
        &store,
        &endpoint,
        &["registry", "promote", "california_housing", "2"],
    );
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // S3 goes away mid-run.
    moto.kill();
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let samples = samples.lock().await.clone();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let first_v2 = samples
        .iter()
        .filter(|s| s.version == 2)
        .map(|s| s.at)
        .min()
        .expect("v2 never served");
    let switch = first_v2.saturating_duration_since(promoted);
    let late_v1 = samples
        .iter()
        .filter(|s| s.version == 1 && s.at > first_v2 + Duration::from_millis(100))
        .count();
    let during_outage = samples.iter().filter(|s| s.at > outage).count();
    let outage_ok = samples
        .iter()
        .filter(|s| s.at > outage && s.ok && s.version == 2)
        .count();
    println!(
        "requests {}, failed {failed}, switch to v2 {:.0} ms after promotion, v1 after switch {late_v1}, during S3 outage {outage_ok}/{during_outage} served by v2",
        samples.len(),
        switch.as_secs_f64() * 1e3
    );
    assert_eq!(failed, 0, "failed requests under load");
    assert!(
        switch <= Duration::from_millis(2_000),
        "switched after {switch:?} (refresh 1 s)"
    );
    assert_eq!(late_v1, 0, "v1 served after v2 took over");
    assert!(during_outage > 100 && outage_ok == during_outage);
    // Health turns degraded once the registry check fails (it still answers 200: it serves).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ready: Value = r.json().await.unwrap();
        if ready["status"] == "degraded" {
            println!(
                "degraded after {:.1} s of S3 outage: {}",
                outage.elapsed().as_secs_f64(),
                ready["error"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "still {ready}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = client
        .post(format!("{base}/v1/models/california_housing/predict"))
        .json(&record)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
