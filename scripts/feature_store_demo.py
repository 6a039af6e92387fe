#!/usr/bin/env python3
"""The feature store on real data: Telco churn trained from feature views, served by customerID.

Usage: feature_store_demo.py MLOPS_BIN WORKDIR [--data telco_churn.csv]

Splits Telco churn's columns into two feature views with simulated event times:
  - customer_profile: the services and contract, one row per customer at sign-up;
  - customer_billing: monthly snapshots, one per month of tenure, where tenure counts up and
    TotalCharges accumulates, ending at the month the label was observed; customers who stayed
    get three more monthly snapshots after it (the future, which training must never see).
The entity frame (labels.csv) holds customerID, the label time and Churn. Then it runs:
  1. `mlops features apply` and `ingest` of both views;
  2. `mlops train telco_churn --features customer_profile,customer_billing --entities labels.csv`,
     and checks that every training row equals the original data set's row (the snapshots at
     the label time, not the later ones);
  3. `mlops features materialize` up to now, `registry promote`, `mlops serve`;
  4. predictions by customerID alone equal predictions sent every feature of the customer's
     latest snapshot; an unknown customerID is a 400 naming the key.
Prints what it checked; exits 1 on the first failure. Standard library only.
"""

import argparse
import csv
import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

PROFILE = [
    "gender", "SeniorCitizen", "Partner", "Dependents", "PhoneService", "MultipleLines",
    "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport",
    "StreamingTV", "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod",
]
BILLING = ["tenure", "MonthlyCharges", "TotalCharges"]
MONTH = dt.timedelta(days=30)
# Labels are observed 100 to 90 days ago, so the three later snapshots of customers who stayed
# are recent (within the billing view's 45-day TTL) and those of customers who left are not.
LABEL_START = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=100)

DEFINITIONS = """
[[entity]]
name = "customer"
join_keys = ["customerID"]
owner = "churn-team"
description = "A customer of the Telco sample"

[[feature_view]]
name = "customer_profile"
entities = ["customer"]
event_time = "signed_up_at"
owner = "churn-team"
description = "Services and contract, recorded at sign-up"
tags = {{ source = "crm" }}
features = [
{profile}
]

[[feature_view]]
name = "customer_billing"
entities = ["customer"]
event_time = "snapshot_at"
ttl = "45days"
owner = "billing-team"
description = "Monthly billing snapshot"
tags = {{ source = "billing", cadence = "monthly" }}
features = [
  {{ name = "tenure", type = "int64", description = "Months with the company" }},
  {{ name = "MonthlyCharges", type = "float64" }},
  {{ name = "TotalCharges", type = "float64" }},
]
"""


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def run(*args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        fail(f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def split(data, work):
    """Writes profile.csv, billing.csv, labels.csv; returns the original rows and latest
    billing snapshot per customer."""
    rng = random.Random(7)
    with open(data, newline="") as f:
        rows = list(csv.DictReader(f))
    profile, billing, labels, latest = [], [], [], {}
    for r in rows:
        label_at = LABEL_START + dt.timedelta(days=rng.randrange(10), seconds=rng.randrange(86_400))
        tenure = int(r["tenure"])
        signed_up = label_at - tenure * MONTH
        profile.append([r["customerID"], iso(signed_up), *(r[c] for c in PROFILE)])
        monthly = float(r["MonthlyCharges"])
        total = r["TotalCharges"].strip()
        months = tenure + (3 if r["Churn"] == "No" else 0)
        for m in range(0, months + 1):
            if m == tenure:
                snap = [tenure, r["MonthlyCharges"], total]
            else:
                # Before the label: a plausible history; after it: the customer stays on.
                snap = [m, r["MonthlyCharges"], f"{round(monthly * m, 2)}" if m else ""]
            billing.append([r["customerID"], iso(signed_up + m * MONTH), *snap])
            latest[r["customerID"]] = (signed_up + m * MONTH, snap)
        labels.append([r["customerID"], iso(label_at), r["Churn"]])
    write_csv(os.path.join(work, "profile.csv"), ["customerID", "signed_up_at", *PROFILE], profile)
    write_csv(os.path.join(work, "billing.csv"), ["customerID", "snapshot_at", *BILLING], billing)
    write_csv(os.path.join(work, "labels.csv"), ["customerID", "event_timestamp", "Churn"], labels)
    return {r["customerID"]: r for r in rows}, latest, len(billing)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, key, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method="POST" if body is not None else "GET")
    req.add_header("x-api-key", key)
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def latency(url, key, customers, full, n):
    """Single-record requests by customerID and with every feature, interleaved; p50/p99 of each
    as this client sees them (the same HTTP path, so the difference is the online-store read)."""
    import statistics

    by_key, by_features = [], []
    for i in range(n):
        j = i % len(customers)
        for body, into in (({"customerID": customers[j]}, by_key), (full[j], by_features)):
            t = time.perf_counter()
            status, _ = call(url, key, body)
            into.append((time.perf_counter() - t) * 1e3)
            if status != 200:
                fail(f"latency request answered {status}")

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    out = {
        "requests_each": n,
        "by_key_ms": {"p50": round(statistics.median(by_key), 3), "p99": round(pct(by_key, 0.99), 3)},
        "all_features_ms": {"p50": round(statistics.median(by_features), 3), "p99": round(pct(by_features, 0.99), 3)},
    }
    out["added_ms"] = {q: round(out["by_key_ms"][q] - out["all_features_ms"][q], 3) for q in ("p50", "p99")}
    print("latency " + json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mlops")
    ap.add_argument("work")
    ap.add_argument("--online-store", help="e.g. dynamodb://TABLE (AWS_ENDPOINT_URL for moto); default: on the store")
    ap.add_argument("--latency", type=int, default=0, help="then time N single-record requests of each kind")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "telco_churn.csv"))
    args = ap.parse_args()
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    home = os.path.join(work, "home")
    mlops = [os.path.abspath(args.mlops), "--home", home]
    if args.online_store:
        mlops += ["--online-store", args.online_store]
        print(run(*mlops, "features", "init-online").strip())

    original, latest, billing_rows = split(args.data, work)
    print(f"split {len(original)} customers into profile.csv and billing.csv ({billing_rows} monthly snapshots), labels.csv")
    profile_fields = ",\n".join(
        f'  {{ name = "{c}", type = "{"int64" if c == "SeniorCitizen" else "string"}" }}' for c in PROFILE
    )
    with open(os.path.join(work, "features.toml"), "w") as f:
        f.write(DEFINITIONS.format(profile=profile_fields))

    print(run(*mlops, "features", "apply", os.path.join(work, "features.toml")).strip())
    print(run(*mlops, "features", "ingest", "customer_profile", "--input", os.path.join(work, "profile.csv")).strip())
    print(run(*mlops, "features", "ingest", "customer_billing", "--input", os.path.join(work, "billing.csv")).strip())

    started = time.time()
    out = run(*mlops, "train", "telco_churn", "--features", "customer_profile,customer_billing",
              "--entities", os.path.join(work, "labels.csv"), "--candidates", "linear,xgboost",
              "--intended-use", "feature store demo", "--limitations", "simulated event times")
    lines = out.splitlines()
    training = next(l for l in lines if l.startswith("training set: ")).split(": ", 1)[1].split(" (")[0]
    version = int(next(l for l in lines if l.startswith("registered telco_churn version ")).rsplit(" ", 1)[1])
    bundle = next(l for l in lines if l.startswith("bundle and report: ")).split(": ", 1)[1]
    print(f"trained from the store in {time.time() - started:.1f} s: v{version}")
    with open(os.path.join(bundle, "bundle", "manifest.json")) as f:
        manifest_views = json.load(f).get("feature_views", [])
    if [(v["name"], v["version"]) for v in manifest_views] != [("customer_profile", 1), ("customer_billing", 1)]:
        fail(f"the bundle does not record its feature views: {manifest_views}")
    print(f"the bundle records its feature views: {[(v['name'], v['version'], v['join_keys']) for v in manifest_views]}")

    # The training set is the original data set: the snapshot at each label time, not later.
    with open(training, newline="") as f:
        built = {r["customerID"]: r for r in csv.DictReader(f)}
    if len(built) != len(original):
        fail(f"training set has {len(built)} customers, the data set {len(original)}")
    for cid, r in original.items():
        b = built[cid]
        for c in BILLING + PROFILE + ["Churn"]:
            a, x = r[c].strip(), b[c].strip()
            if a != x and not (a and x and float(a) == float(x)):
                fail(f"{cid} {c}: training set has '{x}', the data set '{a}' (a leak or a miss)")
    print(f"point-in-time training set equals the original data set: {len(built)} rows × {len(BILLING + PROFILE)} features, no value from after a label time")

    end = iso(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400))
    for view in ("customer_profile", "customer_billing"):
        print(run(*mlops, "features", "materialize", view, "--start", "2000-01-01", "--end", end).strip())
    run(*mlops, "registry", "card", "telco_churn", str(version), "--approve", "--by", "demo")
    run(*mlops, "registry", "promote", "telco_churn", str(version), "--alias", "champion", "--by", "demo", "--reason", "feature store demo")

    key = run(*mlops, "keys", "create", "--name", "demo", "--scope", "predict").strip()
    port = free_port()
    server = subprocess.Popen([*mlops, "serve", "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if urllib.request.urlopen(base + "/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        predict = base + "/v1/models/telco_churn/predict"
        stayed = sorted(c for c in original if original[c]["Churn"] == "No")
        sample = random.Random(3).sample(stayed, 50)
        status, by_key = call(predict, key, [{"customerID": c} for c in sample])
        if status != 200:
            fail(f"predict by customerID answered {status}: {by_key}")
        full = []
        for c in sample:
            _, snap = latest[c]
            rec = {k: original[c][k] for k in PROFILE}
            rec["SeniorCitizen"] = int(rec["SeniorCitizen"])
            rec.update({"customerID": c, "tenure": int(snap[0]), "MonthlyCharges": float(snap[1])})
            rec["TotalCharges"] = float(snap[2]) if snap[2] else None
            full.append(rec)
        status, by_features = call(predict, key, full)
        if status != 200:
            fail(f"predict with every feature answered {status}: {by_features}")
        a = [p["prediction"] for p in by_key["predictions"]]
        b = [p["prediction"] for p in by_features["predictions"]]
        if a != b:
            fail(f"predictions by customerID differ from those with every feature: {a[:3]} vs {b[:3]}")
        print(f"50 predictions by customerID alone equal the predictions sent every feature of the latest snapshot (e.g. {sample[0]}: {a[0]})")
        status, unknown = call(predict, key, {"customerID": "0000-NOBODY"})
        message = unknown.get("error", {}).get("message", "")
        if status != 400 or "unknown entity '0000-NOBODY'" not in message:
            fail(f"unknown customer answered {status}: {unknown}")
        print(f"unknown customerID: 400, {message}")
        left = next(c for c in sorted(original) if original[c]["Churn"] == "Yes")
        status, stale = call(predict, key, {"customerID": left})
        message = stale.get("error", {}).get("message", "")
        if status != 400 or "older than its TTL" not in message:
            fail(f"a customer without a billing snapshot in 45 days answered {status}: {stale}")
        print(f"customer who left ~95 days ago: 400, {message}")
        if args.latency:
            latency(predict, key, sample, full, args.latency)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("feature store demo: all checks passed")


if __name__ == "__main__":
    main()
