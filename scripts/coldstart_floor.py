"""The floor an S3 endpoint puts under a cold start: the fetches the predict function needs to
serve a model (the alias and traffic files together, then the bundle's manifest and engine image
together), signed by boto3 on fresh connections from an already-running process, N times. No
process start, no SDK set-up, no hashing or loading: what the endpoint alone takes.

Usage: coldstart_floor.py S3_ENDPOINT STORE_URI MODEL [RUNS]   (STORE_URI: s3://bucket/prefix)
"""
import json
import statistics
import sys
import threading
import time

import boto3
import botocore

endpoint, store, model = sys.argv[1:4]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 20
bucket, _, prefix = store.removeprefix("s3://").partition("/")
root = f"{prefix}/" if prefix else ""
base = f"{root}models/{model}"
s3 = boto3.client("s3", endpoint_url=endpoint)
aliases = json.loads(s3.get_object(Bucket=bucket, Key=f"{base}/aliases.json")["Body"].read())
bundle = root + aliases["bundles"]["champion"]["bundle_prefix"]
manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{bundle}/manifest.json")["Body"].read())
image = next(name for name in manifest["files"] if name.startswith("engine-"))


def get(client, key, out, i):
    try:
        out[i] = len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except botocore.exceptions.ClientError as e:
        out[i] = e.response["Error"]["Code"]


def together(client, keys):
    out = [None] * len(keys)
    threads = [threading.Thread(target=get, args=(client, k, out, i)) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


first, second, both = [], [], []
for _ in range(runs):
    client = boto3.client("s3", endpoint_url=endpoint)  # fresh connections, made off the clock
    t0 = time.perf_counter()
    got = together(client, [f"{base}/aliases.json", f"{base}/traffic.json"])
    t1 = time.perf_counter()
    got += together(client, [f"{bundle}/manifest.json", f"{bundle}/{image}"])
    t2 = time.perf_counter()
    first.append((t1 - t0) * 1e3)
    second.append((t2 - t1) * 1e3)
    both.append((t2 - t0) * 1e3)
median = statistics.median
print(f"responses (bytes or error): alias {got[0]}, traffic {got[1]}, manifest {got[2]}, image {got[3]}")
print(f"alias ‖ traffic {median(first):.1f} ms, manifest ‖ image {median(second):.1f} ms, "
      f"both {median(both):.1f} ms median (min {min(both):.1f}, max {max(both):.1f}) over {runs} runs")
