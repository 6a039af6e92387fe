"""Scale of `mlops monitor`: N logged predictions spread over 30 days, analysed on this machine.

Usage: monitorbench.py MLOPS_BIN WORKDIR [RECORDS [generate]]   (default 10,000,000; `generate`
only writes the model and the logs)

Trains a linear California Housing model into WORKDIR/home (approved, champion), writes RECORDS
prediction-log lines (real California Housing rows, cycled, with a slight shift in the second
half of the month) as `mlops serve` writes them — gzip objects of 1,000 JSON lines under
prediction-logs/model=MODEL/date=…/hour=…/ — for the 720 hours ending two hours ago, then runs:
  1. `mlops monitor` over the whole month (every hour read from its logs and its sketch kept);
  2. the same month again (every hour merged from its kept sketch);
  3. the month plus one new hour of logs (one hour read, the rest merged);
each under /usr/bin/time -v: wall time and peak RSS. Prints a JSON summary.
"""

import csv
import datetime as dt
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "california_housing.csv")
MODEL = "california_housing"
HOURS = 720
SIZES = [0]  # JSON bytes written (before gzip)


def mlops(binary, home, *args, timed=False):
    cmd = [binary, "--home", home, *args]
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def measured(binary, home, *args):
    started = time.monotonic()
    out = mlops(binary, home, *args, timed=True)
    wall = time.monotonic() - started
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    report = json.loads(out.stdout)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "records": report["records"],
        "hours_sketched": report["hours_sketched"],
        "hours_from_cache": report["hours_from_cache"],
        "drifted_features": [f["feature"] for v in report["versions"] for f in v["drift"]["features"] if f["drifted"]],
    }


def rows():
    with open(DATA, newline="") as f:
        out = []
        for r in csv.DictReader(f):
            r.pop("median_house_value")
            rec = {}
            for k, v in r.items():
                try:
                    rec[k] = float(v)
                except ValueError:
                    rec[k] = v if v else None
            out.append(rec)
    return out


def write_hour(store, hour, records, data, rng, shifted):
    hour_dir = os.path.join(store, "prediction-logs", f"model={MODEL}", f"date={hour:%Y-%m-%d}", f"hour={hour:%H}")
    os.makedirs(hour_dir, exist_ok=True)
    for start in range(0, records, 1000):
        n = min(1000, records - start)
        written = hour + dt.timedelta(seconds=int(3600 * (start + n) / max(records, 1)) - 1)
        lines = []
        for i in range(n):
            rec = dict(data[rng.randrange(len(data))])
            if shifted:
                rec["median_income"] = rec["median_income"] * 1.3
            at = hour + dt.timedelta(seconds=3600 * (start + i) / max(records, 1))
            lines.append(
                json.dumps(
                    {
                        "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "request_id": uuid.uuid4().hex,
                        "model": MODEL,
                        "version": 1,
                        "variant": "champion",
                        "input": rec,
                        "output": 2.0,
                        "latency_us": 350,
                    },
                    separators=(",", ":"),
                )
            )
        name = f"{written:%H%M%S}-{uuid.uuid4().hex}.jsonl.gz"
        body = ("\n".join(lines) + "\n").encode()
        with open(os.path.join(hour_dir, name), "wb") as f:
            f.write(gzip.compress(body, compresslevel=1))  # serving writes with the fast level
        SIZES[0] += len(body)


def main():
    binary, work = sys.argv[1], sys.argv[2]
    total = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000_000
    home = os.path.join(work, "home")
    store = os.path.join(home, "store")
    if not os.path.exists(os.path.join(store, "models", MODEL)):
        mlops(binary, home, "train", MODEL, "--data", DATA, "--candidates", "linear")
        mlops(binary, home, "registry", "card", MODEL, "1", "--intended-use", "bench",
              "--limitations", "bench", "--approve", "--by", "bench")
        mlops(binary, home, "registry", "promote", MODEL, "1")
    data, rng = rows(), random.Random(7)
    per_hour = total // HOURS
    # The month generated once, and measured later on the same hours.
    marker = os.path.join(work, f"generated-{total}")
    if os.path.exists(marker):
        with open(marker) as f:
            first = dt.datetime.fromisoformat(f.read().strip())
        end = first + dt.timedelta(hours=HOURS)
    else:
        now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
        end = now - dt.timedelta(hours=2)
        first = end - dt.timedelta(hours=HOURS)
        started = time.monotonic()
        for h in range(HOURS):
            write_hour(store, first + dt.timedelta(hours=h), per_hour, data, rng, shifted=h >= HOURS // 2)
        with open(marker, "w") as f:
            f.write(first.isoformat())
        print(f"generated {per_hour * HOURS} records in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if sys.argv[4:] == ["generate"]:
        if SIZES[0]:
            print(f"JSON {SIZES[0] / 2**20:.1f} MiB", file=sys.stderr)
        return
    window = ["monitor", "--model", MODEL, "--json", "--since", f"{first:%Y-%m-%dT%H:%M:%SZ}"]
    month = [*window, "--until", f"{end:%Y-%m-%dT%H:%M:%SZ}"]
    log_dir = os.path.join(store, "prediction-logs")
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(log_dir) for f in fs)
    summary = {"records_per_hour": per_hour, "hours": HOURS, "stored_mb": round(stored / 2**20, 1)}
    if SIZES[0]:
        summary["json_mb"] = round(SIZES[0] / 2**20, 1)
    summary["first_run"] = measured(binary, home, *month)
    summary["again"] = measured(binary, home, *month)
    write_hour(store, end, per_hour, data, rng, shifted=True)
    summary["plus_one_hour"] = measured(binary, home, *window, "--until", f"{end + dt.timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
