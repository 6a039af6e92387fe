"""Cold start of the predict function binary: process start → /health/ready answers 200, with the
model fetched from S3 (moto), over N runs. Prints one line per run and the median and max, and
the process's peak resident memory (VmHWM) when ready and after 1000 predictions, and its CPU time
per single-record request (what a Lambda environment needs: docs/benchmarks.md, cost of serving).

Usage: coldstart.py PREDICT_BINARY STORE_URI S3_ENDPOINT [RUNS]

The function is configured as template.yaml deploys it (MLOPS_MODELS names the served model, so
no bucket listing is needed at start).
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

binary, store, endpoint = sys.argv[1:4]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ready(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


RECORD = {
    "longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0,
    "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict(port, n):
    body = json.dumps(RECORD).encode()
    for _ in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/california_housing/predict",
                                     data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()


external, internal, rss_ready, rss_served, cpu_per_request = [], [], [], [], []
for i in range(runs):
    port = free_port()
    env = dict(os.environ, MLOPS_LISTEN=f"127.0.0.1:{port}", MLOPS_STORE=store,
               AWS_ENDPOINT_URL=endpoint, RUST_LOG="info", MLOPS_MODELS="california_housing")
    started = time.perf_counter()
    # The log goes to a file: a pipe read only at the end fills up (one line a request) and
    # blocks the binary.
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/health/ready"
    while not ready(url):
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"the binary exited: {log.read()}")
        time.sleep(0.0005)
    elapsed = (time.perf_counter() - started) * 1e3
    rss_ready.append(peak_rss_mib(proc.pid))
    cpu_before = cpu_seconds(proc.pid)
    predict(port, 1000)
    cpu_per_request.append((cpu_seconds(proc.pid) - cpu_before) / 1000 * 1e3)
    rss_served.append(peak_rss_mib(proc.pid))
    proc.terminate()
    proc.wait(timeout=10)
    log.seek(0)
    out = log.read()
    logged = next((json.loads(l)["cold_start_ms"] for l in out.splitlines() if "cold_start_ms" in l), float("nan"))
    external.append(elapsed)
    internal.append(logged)
    print(f"run {i + 1:2d}: ready after {elapsed:6.1f} ms (init logged by the binary: {logged:6.1f} ms)")
print(f"process start → ready over {runs} runs: median {statistics.median(external):.1f} ms, max {max(external):.1f} ms")
print(f"init inside the binary:               median {statistics.median(internal):.1f} ms, max {max(internal):.1f} ms")
print(f"peak RSS: {max(rss_ready):.1f} MiB when ready, {max(rss_served):.1f} MiB after 1000 predictions")
print(f"CPU time per single-record request (HTTP included): median {statistics.median(cpu_per_request):.3f} ms")
