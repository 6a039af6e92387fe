#!/usr/bin/env python3
"""Smoke test of a serving API: the gate of a deploy (.github/workflows/deploy.yml runs it against
the staging stack before production, and against production after it), and run by the test
command against `mlops serve`, so it is known to work before it guards a deploy.

Usage: smoke_test.py URL [--model NAME] [--key KEY] [--requests N] [--p99-ms MS]
       (the key may come from MLOPS_SMOKE_KEY instead; a predict-scope key is enough)

Checks, each printed with its outcome; the exit status is 1 if any fails:
  1. GET /health/live and /health/ready answer 200 without a key;
  2. a request without a key, and one with a wrong key, are refused (401/403), never served;
  3. GET /v1/models/NAME describes the served model (versions, aliases, input schema);
  4. POST /v1/models/NAME/predict with a record built from that schema answers 200 with a
     finite prediction and the served version, and an invalid record answers 400 naming the
     field;
  5. N more predictions (default 20): every one answers 200, and the p99 latency seen from
     here is under --p99-ms (default 2000; it includes the network and any cold start).
Only the standard library is used, so it runs on any runner with Python 3.
"""

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request

FAILURES = []


def request(method, url, key=None, body=None):
    """(status, parsed JSON or text, seconds)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if key is not None:
        req.add_header("x-api-key", key)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    elapsed = time.perf_counter() - start
    try:
        return status, json.loads(raw or b"null"), elapsed
    except ValueError:
        return status, raw.decode(errors="replace"), elapsed


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        FAILURES.append(name)
    return ok


def record_from(schema):
    """A valid record: the middle of each numeric range (or 1), the first category."""
    record = {}
    for column in schema["columns"]:
        if column.get("role", "feature") != "feature":
            continue
        kind = column["type"]
        if kind == "categorical":
            record[column["name"]] = column["categories"][0]
        elif kind in ("float", "integer"):
            low, high = column.get("min"), column.get("max")
            value = (low + high) / 2 if low is not None and high is not None else low or high or 1.0
            record[column["name"]] = round(value) if kind == "integer" else value
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--model", default="california_housing")
    parser.add_argument("--key", default=os.environ.get("MLOPS_SMOKE_KEY"))
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--p99-ms", type=float, default=2000.0)
    args = parser.parse_args()
    if not args.key:
        parser.error("a key is needed: --key or MLOPS_SMOKE_KEY")
    base = args.url.rstrip("/")
    model = f"{base}/v1/models/{args.model}"

    for probe in ("live", "ready"):
        status, body, _ = request("GET", f"{base}/health/{probe}")
        check(f"GET /health/{probe} without a key", status == 200, f"{status} {body}")

    status, _, _ = request("GET", model)
    check("no key is refused", status in (401, 403), str(status))
    status, _, _ = request("GET", model, key="mlk_000000000000_wrong")
    check("a wrong key is refused", status in (401, 403), str(status))

    status, info, _ = request("GET", model, key=args.key)
    if not check(f"GET /v1/models/{args.model}", status == 200 and isinstance(info, dict), f"{status}"):
        return finish()
    served = sorted(info.get("aliases", {}).items())
    check("the model has versions and aliases", bool(info.get("versions")) and bool(served), f"aliases {served}")

    record = record_from(info["input_schema"])
    status, body, _ = request("POST", f"{model}/predict", key=args.key, body=record)
    ok = status == 200 and isinstance(body, dict)
    prediction = body["predictions"][0]["prediction"] if ok else None
    check(
        "predict a record built from the schema",
        ok and isinstance(prediction, (int, float)) and math.isfinite(prediction),
        f"{status} version {body.get('version') if ok else body} prediction {prediction}",
    )
    broken_field = next(iter(record))
    status, body, _ = request("POST", f"{model}/predict", key=args.key, body={**record, broken_field: "not a value"})
    check(
        "an invalid record is refused naming its field",
        status == 400 and broken_field in json.dumps(body),
        f"{status}",
    )

    seconds = []
    statuses = []
    for _ in range(args.requests):
        status, _, elapsed = request("POST", f"{model}/predict", key=args.key, body=record)
        statuses.append(status)
        seconds.append(elapsed)
    if seconds:
        seconds.sort()
        p50 = seconds[len(seconds) // 2] * 1000
        p99 = seconds[min(len(seconds) - 1, math.ceil(0.99 * len(seconds)) - 1)] * 1000
        check(f"{args.requests} predictions all answered 200", all(s == 200 for s in statuses), str(sorted(set(statuses))))
        check(f"p99 under {args.p99_ms:.0f} ms", p99 < args.p99_ms, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    return finish()


def finish():
    if FAILURES:
        print(f"smoke test FAILED: {', '.join(FAILURES)}")
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
