"""Prediction-log format: gzip JSON lines (what serving writes) against Parquet, on the same
records, measured in one run with the same reader library (Apache Arrow C++ through pyarrow:
its JSON reader and its Parquet reader both produce Arrow tables).

Usage: logformat_bench.py [RECORDS]   (default 1,000,000)

Records are logged predictions as `mlops serve` writes them: California Housing rows (cycled)
as the input object, request id, version, variant, output, latency. Objects hold 1,000 records
(serving's batch) or 100,000 (a compacted hour). Prints JSON: bytes per record and records read
per second for each format and object size, and the time to write them.
"""

import csv
import gzip
import io
import json
import os
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "california_housing.csv")


def records(n):
    with open(DATA) as f:
        rows = list(csv.DictReader(f))
    for i in range(n):
        r = rows[i % len(rows)]
        inputs = {
            k: (None if v == "" else (v if k == "ocean_proximity" else float(v)))
            for k, v in r.items()
            if k != "median_house_value"
        }
        yield {
            "at": f"2026-12-01T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
            "request_id": str(uuid.UUID(int=i)),
            "record": 1,
            "model": "california_housing",
            "version": 1,
            "variant": "champion",
            "input": inputs,
            "output": 2.0 + (i % 100) / 100,
            "latency_us": 300 + i % 50,
        }


def objects(recs, per):
    for start in range(0, len(recs), per):
        yield recs[start : start + per]


def jsonl_gz(batch):
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in batch).encode()
    return gzip.compress(lines, compresslevel=1)  # serving's fast level


def parquet(batch, compression):
    table = pa.Table.from_pylist(batch)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression)
    return sink.getvalue()


def read_jsonl_gz(body):
    return pj.read_json(pa.input_stream(pa.py_buffer(body), compression="gzip")).num_rows


def read_parquet(body):
    return pq.read_table(pa.py_buffer(body)).num_rows


def measure(name, bodies, reader, n):
    started = time.perf_counter()
    rows = sum(reader(b) for b in bodies)
    seconds = time.perf_counter() - started
    assert rows == n, (name, rows, n)
    size = sum(len(b) for b in bodies)
    return {
        "format": name,
        "bytes_per_record": round(size / n, 1),
        "total_mb": round(size / 1e6, 1),
        "read_records_per_s": round(n / seconds),
        "read_s": round(seconds, 2),
    }


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    recs = list(records(n))
    out = {"records": n, "pyarrow": pa.__version__, "results": []}
    for per in (1_000, 100_000):
        batches = list(objects(recs, per))
        for name, write, reader in [
            ("jsonl.gz (level 1)", jsonl_gz, read_jsonl_gz),
            ("parquet (snappy)", lambda b: parquet(b, "snappy"), read_parquet),
            ("parquet (zstd)", lambda b: parquet(b, "zstd"), read_parquet),
        ]:
            started = time.perf_counter()
            bodies = [write(b) for b in batches]
            written = time.perf_counter() - started
            result = measure(name, bodies, reader, n)
            result["records_per_object"] = per
            result["write_s"] = round(written, 2)
            out["results"].append(result)
            print(json.dumps(result), file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
