"""Prediction history at scale: the console's history routes over N logged predictions.

Usage: history_bench.py MLOPS_BIN WORKDIR [RECORDS]   (default 1,000,000)

Trains a linear California Housing model into WORKDIR/home (as monitorbench.py does), writes
RECORDS prediction-log lines for the 24 hours ending two hours ago, in the layout `mlops serve`
writes (gzip objects of 1,000 JSON lines, hour partitions), starts `mlops serve` on the local
store and times, through HTTP with an admin key:
  1. the first page (50 rows, newest first) of the whole window: the first request, then the
     median of 5;
  2. a page whose filter selects few rows (median_income at least 14): how long a sparse filter
     takes to fill a page, or to hit the scan budget;
  3. the CSV and JSON-lines exports of the first 100,000 predictions of the window;
  4. the CSV export of the whole window;
and the server's peak RSS. Prints a JSON summary.
"""

import datetime as dt
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import monitorbench as mb  # noqa: E402  (the log generator and the model)

HOURS = 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_get(base, key, path):
    started = time.monotonic()
    request = urllib.request.Request(base + path, headers={"x-api-key": key})
    with urllib.request.urlopen(request, timeout=600) as response:
        body = response.read()
    return time.monotonic() - started, body


def generate(binary, work, total):
    home = os.path.join(work, "home")
    store = os.path.join(home, "store")
    if not os.path.exists(os.path.join(store, "models", mb.MODEL)):
        mb.mlops(binary, home, "train", mb.MODEL, "--data", mb.DATA, "--candidates", "linear")
        mb.mlops(binary, home, "registry", "card", mb.MODEL, "1", "--intended-use", "bench",
                 "--limitations", "bench", "--approve", "--by", "bench")
        mb.mlops(binary, home, "registry", "promote", mb.MODEL, "1")
    marker = os.path.join(work, f"history-{total}")
    if os.path.exists(marker):
        with open(marker) as f:
            return home, dt.datetime.fromisoformat(f.read().strip())
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    first = now - dt.timedelta(hours=HOURS + 2)
    data, rng = mb.rows(), random.Random(7)
    started = time.monotonic()
    for h in range(HOURS):
        mb.write_hour(store, first + dt.timedelta(hours=h), total // HOURS, data, rng, shifted=False)
    print(f"generated {total // HOURS * HOURS} records in {time.monotonic() - started:.0f} s", file=sys.stderr)
    with open(marker, "w") as f:
        f.write(first.isoformat())
    return home, first


def main():
    binary, work = sys.argv[1], sys.argv[2]
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    os.makedirs(work, exist_ok=True)
    home, first = generate(binary, work, total)
    end = first + dt.timedelta(hours=HOURS)
    key = mb.mlops(binary, home, "keys", "create", "--name", "bench", "--scope", "admin").stdout.strip()
    port = free_port()
    server = subprocess.Popen([binary, "--home", home, "serve", "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/health/live", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        stamp = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
        history = f"/v1/models/{mb.MODEL}/predictions"
        window = urllib.parse.urlencode({"from": stamp(first), "until": stamp(end)})
        page = f"{history}?{window}&limit=50"
        cold, body = timed_get(base, key, page)
        rows = len(json.loads(body)["predictions"])
        warm = statistics.median(timed_get(base, key, page)[0] for _ in range(5))
        sparse_s, body = timed_get(base, key, f"{history}?{window}&limit=50&field=median_income&min=14")
        sparse = json.loads(body)
        # The first 100,000 predictions of the window (records are evenly spaced in time).
        span = dt.timedelta(seconds=100_000 * HOURS * 3600 / (total // HOURS * HOURS))
        first_100k = urllib.parse.urlencode({"from": stamp(first), "until": stamp(first + span)})
        exports = {}
        for name, query in [("csv_100k", f"{first_100k}&format=csv"), ("jsonl_100k", f"{first_100k}&format=jsonl"),
                            ("csv_all", f"{window}&format=csv")]:
            seconds, body = timed_get(base, key, f"{history}/export?{query}")
            lines = body.count(b"\n") - (1 if name.startswith("csv") else 0)
            exports[name] = {"rows": lines, "seconds": round(seconds, 2), "rows_per_s": round(lines / seconds),
                             "mib": round(len(body) / 2**20, 1)}
        with open(f"/proc/{server.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    finally:
        os.killpg(server.pid, 15)
        server.wait()
    print(json.dumps({
        "records": total // HOURS * HOURS,
        "first_page": {"rows": rows, "first_request_ms": round(cold * 1e3, 1), "median_of_5_ms": round(warm * 1e3, 1)},
        "sparse_page": {"rows": len(sparse["predictions"]), "scanned": sparse["scanned"],
                        "seconds": round(sparse_s, 2), "has_next_cursor": "next_cursor" in sparse},
        "exports": exports,
        "server_peak_rss_mb": round(rss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
