//! The predict function's binary (served over plain HTTP) under load: a promotion switches the
//! served version within the refresh interval with zero failed requests, and when S3 (moto) dies
//! it keeps serving the last good model and reports degraded health. Uses its own moto server,
//! since it stops it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlops_domain::store::ObjectStore;
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

/// A registry in a fresh bucket on the shared moto with a champion California Housing model;
/// returns the store and its URI.
async fn published_registry(dir: &Path, moto: &str) -> (mlops_store::S3Store, String) {
    let bucket = unique("serving");
    let s3 = mlops_store::S3Store::connect(mlops_store::S3Config {
        bucket: bucket.clone(),
        prefix: "registry".into(),
        endpoint: Some(moto.into()),
        region: Some("us-east-1".into()),
    })
    .await;
    s3.ensure_bucket().await.unwrap();
    let store = format!("s3://{bucket}/registry");
    publish_housing(&dir.join("home"), &store, moto, 42, true);
    (s3, store)
}

/// A TCP proxy to `upstream` that, once `hole` is set, stops answering: new connections are
/// accepted and held, and open ones stop forwarding (a blackholed S3: connections hang, they are
/// not refused).
async fn blackhole_proxy(upstream: String, hole: Arc<AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        hole: Arc<AtomicBool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if hole.load(Ordering::Relaxed) {
                let _held = (&from, &to);
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let hole = hole.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if hole.load(Ordering::Relaxed) {
                    let _held = &inbound;
                    std::future::pending::<()>().await;
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(pump(ri, wo, hole.clone()), pump(ro, wi, hole));
            });
        }
    });
    address
}

/// Latencies of `n` rounds of one predict and one model-info request, in milliseconds (sorted),
/// and how many failed.
async fn latencies(
    client: &reqwest::Client,
    base: &str,
    seconds: f64,
) -> (Vec<f64>, Vec<f64>, usize) {
    let record = json!({
        "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
        "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY"
    });
    let (mut predict, mut info, mut failed) = (Vec::new(), Vec::new(), 0);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        let t = Instant::now();
        let r = client
            .post(format!("{base}/v1/models/california_housing/predict"))
            .json(&record)
            .send()
            .await;
        predict.push(t.elapsed().as_secs_f64() * 1e3);
        failed += usize::from(!r.is_ok_and(|r| r.status() == 200));
        let t = Instant::now();
        let r = client
            .get(format!("{base}/v1/models/california_housing"))
            .send()
            .await;
        info.push(t.elapsed().as_secs_f64() * 1e3);
        failed += usize::from(!r.is_ok_and(|r| r.status() == 200));
    }
    predict.sort_by(f64::total_cmp);
    info.sort_by(f64::total_cmp);
    (predict, info, failed)
}

fn p99(sorted: &[f64]) -> f64 {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_blackholed_requests_stay_fast_and_init_gives_up_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let moto = mlops_e2e::moto_endpoint();
    let (_, store) = published_registry(dir.path(), &moto).await;
    let hole = Arc::new(AtomicBool::new(false));
    let proxy = blackhole_proxy(moto.trim_start_matches("http://").to_owned(), hole.clone()).await;
    let predict = |name: &str| {
        let port = free_port();
        let mut c = Command::new(target_bin("predict"));
        c.env("MLOPS_LISTEN", format!("127.0.0.1:{port}"))
            .env("MLOPS_STORE", &store)
            .env("AWS_ENDPOINT_URL", &proxy)
            .env("AWS_REGION", "us-east-1")
            .env("MLOPS_REFRESH_SECONDS", "0.5")
            .env("MLOPS_REGISTRY_DEADLINE_SECONDS", "1")
            .env("RUST_LOG", "warn");
        (
            ProcessGroup::spawn(c, &dir.path().join(format!("{name}.log"))),
            format!("http://127.0.0.1:{port}"),
        )
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (_server, base) = predict("predict");
    wait_ok(&client, &format!("{base}/health/ready")).await;
    let (p_before, i_before, failed_before) = latencies(&client, &base, 3.0).await;
    hole.store(true, Ordering::Relaxed);
    let blackholed = Instant::now();
    let (p_during, i_during, failed_during) = latencies(&client, &base, 5.0).await;
    let worst = p_during.last().unwrap().max(*i_during.last().unwrap());
    println!(
        "S3 blackholed: predict p99 {:.2} ms before, {:.2} ms during ({} requests); model info p99 {:.2} ms before, {:.2} ms during; slowest request during {worst:.1} ms; failed {failed_before} + {failed_during}",
        p99(&p_before),
        p99(&p_during),
        p_during.len(),
        p99(&i_before),
        p99(&i_during),
    );
    assert_eq!(failed_before + failed_during, 0);
    assert!(worst < 1_000.0, "a request took {worst} ms");
    assert!(
        p99(&p_during) <= 2.0 * p99(&p_before) + 2.0,
        "predict p99 {} ms vs {} ms",
        p99(&p_during),
        p99(&p_before)
    );
    let ready: Value = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    println!(
        "degraded {:.1} s into the blackhole: {}",
        blackholed.elapsed().as_secs_f64(),
        ready["error"]
    );
    // A cold start while S3 hangs: the init gives up at its deadline and reports not ready.
    let started = Instant::now();
    let (_cold, cold_base) = predict("cold");
    wait_live(&client, &format!("{cold_base}/health/live")).await;
    let live_after = started.elapsed();
    let r = client
        .get(format!("{cold_base}/health/ready"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let ready: Value = r.json().await.unwrap();
    println!(
        "cold start with S3 blackholed: live after {:.2} s, ready {status}: {ready}",
        live_after.as_secs_f64()
    );
    assert_eq!(status, 503);
    assert_eq!(ready["status"], "not_ready");
    assert!(
        ready["error"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer within"),
        "{ready}"
    );
    assert!(live_after < Duration::from_secs(3), "{live_after:?}");
}

async fn wait_live(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prediction_logs_survive_a_shutdown_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let moto = mlops_e2e::moto_endpoint();
    let (s3, store) = published_registry(dir.path(), &moto).await;
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("predict.log")).unwrap();
    // Nothing is written before the shutdown: one batch of a million, flushed hourly.
    let mut server = Command::new(target_bin("predict"))
        .env("MLOPS_LISTEN", format!("127.0.0.1:{port}"))
        .env("MLOPS_STORE", &store)
        .env("AWS_ENDPOINT_URL", &moto)
        .env("AWS_REGION", "us-east-1")
        .env("MLOPS_PREDICTION_LOG_BATCH", "1000000")
        .env("MLOPS_PREDICTION_LOG_FLUSH_SECONDS", "3600")
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ok(&client, &format!("{base}/health/ready")).await;
    let record = json!({
        "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
        "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY"
    });
    let body = json!(vec![record; 10]);
    let predicted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, body, predicted) = (client.clone(), body.clone(), predicted.clone());
        let url = format!("{base}/v1/models/california_housing/predict");
        workers.push(tokio::spawn(async move {
            // Until the server goes away: every answered request's records count as sent.
            while let Ok(r) = client.post(&url).json(&body).send().await {
                if r.status() == 200 {
                    predicted.fetch_add(10, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let sent = predicted.load(Ordering::Relaxed);
    let mut stored = 0u64;
    for key in s3.list("prediction-logs/").await.unwrap() {
        let object = s3.get(&key).await.unwrap().unwrap();
        stored += mlops_domain::predlog::decode(&key, object.bytes)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
    }
    println!(
        "prediction log across a SIGTERM mid-stream: {sent} records predicted, {stored} in the store (exit {status})"
    );
    assert!(status.success(), "{status}");
    assert!(sent > 100, "only {sent} records sent");
    assert_eq!(stored, sent);
}
