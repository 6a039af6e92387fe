"""The feature store side by side with Feast's local offline store, on the same generated data.

Usage: feature_store_bench.py MLOPS_BIN WORKDIR [FEATURE_ROWS] [ENTITY_ROWS]
       (defaults 10,000,000 and 1,000,000; run with a Python that has `feast` installed)

Generates FEATURE_ROWS rows of a `customer_stats` view (customer_id, event_timestamp, three
float64 features and one int64 feature; 40 rows per customer at distinct whole seconds over 120
days) as one Parquet file, and an entity frame of ENTITY_ROWS rows (a row id, a customer id, 2%
unknown to the view, and a time in the same 120 days) as CSV. TTL 30 days.

Then, each step in its own process so its peak RSS is its own (`/usr/bin/time -v`):
  1. mlops: `features apply`, `features ingest` (Parquet into the store's snapshots), then
     `features retrieve` (the point-in-time join) into Parquet;
  2. feast: `apply`, then `get_historical_features(...).to_df()` on the same entity frame read
     from the same CSV, written to Parquet;
  3. materialization, where both tools have it: mlops `features materialize` into its local online
     store, feast `materialize` into its default SQLite online store, over the whole range;
and compares the two training sets value for value (matched on the row id). Prints one JSON
summary. Wall time and peak RSS come from /usr/bin/time.
"""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
import time

DAY = 86_400
START = int(dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp())
SPAN_DAYS = 120
ROWS_PER_CUSTOMER = 40


def iso(seconds):
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(work, feature_rows, entity_rows):
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    customers = max(1, feature_rows // ROWS_PER_CUSTOMER)
    features = os.path.join(work, "customer_stats.parquet")
    if not os.path.exists(features):
        writer = None
        step = 250_000  # customers per chunk
        for lo in range(0, customers, step):
            ids = np.arange(lo, min(customers, lo + step), dtype=np.int64)
            n = len(ids) * ROWS_PER_CUSTOMER
            # Distinct whole seconds per customer: stride a random offset through the span.
            slots = rng.permutation(SPAN_DAYS * DAY)[:ROWS_PER_CUSTOMER]
            offsets = (slots[None, :] + rng.integers(0, 97, size=(len(ids), 1)) * 7919) % (SPAN_DAYS * DAY)
            ts = START + offsets.reshape(-1)
            table = pa.table(
                {
                    "customer_id": np.repeat(ids, ROWS_PER_CUSTOMER),
                    "event_timestamp": pa.array((ts * 1_000_000).astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
                    "conv_rate": rng.random(n),
                    "acc_rate": rng.random(n),
                    "avg_spend": np.round(rng.gamma(2.0, 40.0, n), 2),
                    "trips": rng.integers(0, 500, n, dtype=np.int64),
                }
            )
            if writer is None:
                writer = pq.ParquetWriter(features, table.schema)
            writer.write_table(table)
        writer.close()
    entities = os.path.join(work, "entities.csv")
    if not os.path.exists(entities):
        ids = rng.integers(0, int(customers * 1.02) + 1, entity_rows)
        ts = START + rng.integers(0, SPAN_DAYS * DAY, entity_rows)
        frame = pd.DataFrame(
            {
                "row_id": np.arange(entity_rows),
                "customer_id": ids,
                "event_timestamp": pd.to_datetime(ts, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        frame.to_csv(entities, index=False)
    return features, entities, customers


DEFINITIONS = """
[[entity]]
name = "customer"
join_keys = ["customer_id"]
owner = "bench"
description = "A generated customer"

[[feature_view]]
name = "customer_stats"
entities = ["customer"]
event_time = "event_timestamp"
ttl = "30days"
owner = "bench"
description = "Generated customer statistics"
features = [
  { name = "conv_rate", type = "float64" },
  { name = "acc_rate", type = "float64" },
  { name = "avg_spend", type = "float64" },
  { name = "trips", type = "int64" },
]
"""

FEAST_REPO = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
source = FileSource(path={features!r}, timestamp_field="event_timestamp")
customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=timedelta(days=30),
    schema=[
        Field(name="conv_rate", dtype=Float64),
        Field(name="acc_rate", dtype=Float64),
        Field(name="avg_spend", dtype=Float64),
        Field(name="trips", dtype=Int64),
    ],
    source=source,
)
"""

FEAST_RETRIEVE = """
import sys, pandas as pd
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
entity_df = pd.read_csv(sys.argv[2])
entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
features = ["customer_stats:" + f for f in ("conv_rate", "acc_rate", "avg_spend", "trips")]
df = store.get_historical_features(entity_df=entity_df, features=features).to_df()
df.to_parquet(sys.argv[3])
print(len(df))
"""

FEAST_MATERIALIZE = """
import sys, datetime as dt
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
start = dt.datetime.fromtimestamp(int(sys.argv[2]), tz=dt.timezone.utc)
end = dt.datetime.fromtimestamp(int(sys.argv[3]), tz=dt.timezone.utc)
store.materialize(start_date=start, end_date=end, feature_views=["customer_stats"])
"""


def timed(cmd, cwd=None, timeout=7200):
    """Runs cmd under /usr/bin/time -v: (wall seconds, peak RSS MiB, stdout)."""
    started = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - started
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    return wall, rss, p.stdout


def compare(ours, feast):
    """Value-by-value equality on the row id. Feast's file offline store drops entity rows older
    than every feature row of their entity's data range; those must be all-null in ours."""
    import numpy as np
    import pandas as pd

    names = ("conv_rate", "acc_rate", "avg_spend", "trips")
    a = pd.read_parquet(ours).astype({"row_id": "int64"})
    b = pd.read_parquet(feast)
    dropped = a[~a["row_id"].isin(b["row_id"])]
    a = a[a["row_id"].isin(b["row_id"])].sort_values("row_id").reset_index(drop=True)
    b = b.sort_values("row_id").reset_index(drop=True)
    assert len(a) == len(b) and (a["row_id"].to_numpy() == b["row_id"].to_numpy()).all()
    out = {
        "rows_compared": len(a),
        "rows_feast_dropped": len(dropped),
        "dropped_rows_all_null_in_mlops": bool(dropped[list(names)].isna().all().all()),
    }
    for f in names:
        x = a[f].astype("float64").to_numpy()
        y = b[f].astype("float64").to_numpy()
        same = (np.isnan(x) & np.isnan(y)) | (x == y)
        out[f] = {"equal": int(same.sum()), "null_both": int((np.isnan(x) & np.isnan(y)).sum())}
    out["identical"] = all(out[f]["equal"] == len(a) for f in names) and out["dropped_rows_all_null_in_mlops"]
    return out


def main():
    mlops, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    feature_rows = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000_000
    entity_rows = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000_000
    os.makedirs(work, exist_ok=True)
    t = time.time()
    features, entities, customers = generate(work, feature_rows, entity_rows)
    result = {"feature_rows": feature_rows, "entity_rows": entity_rows, "customers": customers, "generate_s": round(time.time() - t, 1)}

    # mlops
    home = os.path.join(work, "mlops-home")
    subprocess.run(["rm", "-rf", home], check=True)
    defs = os.path.join(work, "features.toml")
    with open(defs, "w") as f:
        f.write(DEFINITIONS)
    base = [mlops, "--home", home]
    subprocess.run([*base, "features", "apply", defs], check=True, capture_output=True)
    wall, rss, _ = timed([*base, "features", "ingest", "customer_stats", "--input", features])
    result["mlops_ingest"] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
    ours = os.path.join(work, "mlops-training.parquet")
    wall, rss, out = timed([*base, "features", "retrieve", "--entities", entities, "--features", "customer_stats", "--out", ours])
    result["mlops_retrieve"] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1), "report": out.strip()}
    end = START + SPAN_DAYS * DAY + DAY
    if os.environ.get("BENCH_MATERIALIZE", "1") == "1":
        wall, rss, out = timed([*base, "features", "materialize", "customer_stats", "--start", iso(START - DAY), "--end", iso(end)])
        result["mlops_materialize"] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1), "report": out.strip()}

    # feast
    repo = os.path.join(work, "feast-repo")
    subprocess.run(["rm", "-rf", repo], check=True)
    os.makedirs(os.path.join(repo, "data"))
    with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
        f.write(textwrap.dedent("""\
            project: bench
            registry: data/registry.db
            provider: local
            online_store:
              type: sqlite
              path: data/online.db
            entity_key_serialization_version: 3
            """))
    with open(os.path.join(repo, "definitions.py"), "w") as f:
        f.write(FEAST_REPO.format(features=features))
    feast_bin = os.path.join(os.path.dirname(sys.executable), "feast")
    subprocess.run([feast_bin, "apply"], cwd=repo, check=True, capture_output=True)
    theirs = os.path.join(work, "feast-training.parquet")
    script = os.path.join(work, "feast_retrieve.py")
    with open(script, "w") as f:
        f.write(FEAST_RETRIEVE)
    try:
        wall, rss, _ = timed([sys.executable, script, repo, entities, theirs])
        result["feast_retrieve"] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
        result["same_values"] = compare(ours, theirs)
    except SystemExit as e:
        result["feast_retrieve"] = {"failed": str(e)[-1500:]}
    if os.environ.get("BENCH_MATERIALIZE", "1") == "1":
        script = os.path.join(work, "feast_materialize.py")
        with open(script, "w") as f:
            f.write(FEAST_MATERIALIZE)
        try:
            wall, rss, _ = timed([sys.executable, script, repo, str(START - DAY), str(end)])
            result["feast_materialize"] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
        except SystemExit as e:
            result["feast_materialize"] = {"failed": str(e)[-1500:]}
    for step in ("retrieve", "materialize"):
        a, b = result.get(f"mlops_{step}", {}), result.get(f"feast_{step}", {})
        if "wall_s" in a and "wall_s" in b:
            result[f"{step}_speedup"] = round(b["wall_s"] / a["wall_s"], 1)
            result[f"{step}_memory_ratio"] = round(a["peak_rss_mib"] / b["peak_rss_mib"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
