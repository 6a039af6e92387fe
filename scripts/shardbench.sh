#!/usr/bin/env bash
# Sharded batch prediction (`mlops batch-predict --shards N`, release build) against moto S3 and
# moto AWS Batch: California Housing repeated SHARDBENCH_COPIES times (default 485: 10,010,400
# rows), a linear model. One container's run is the reference; then for N = 1, 2, 4, 8 the array
# job is submitted to moto Batch and its children are run here, side by side, with the command
# and array index moto holds (moto does not run containers). Every N's parts and errors files
# must hash the same as the reference's; the reference's row numbers must run 1..rows once each.
# Then the kill test: N = 4 again, two children SIGKILLed at random points and retried.
# SHARDBENCH_SEED fixes the kill points. Needs the test venv (scripts/setup.sh --test).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/bench_moto.sh"
bench_moto_setup shards shardbench "${SHARDBENCH_COPIES:-485}"
S3=(--store s3://shardbench/registry --s3-endpoint "http://127.0.0.1:$PORT")
"$BIN" --home "$RUN/home" "${S3[@]}" train california_housing --data "$DATA" --candidates linear \
  --model-name housing_linear >"$RUN/train.log" 2>&1
BATCH="$("$MLOPS_VENV/bin/python" "$ROOT/tests/python/batch_setup.py" "http://127.0.0.1:$PORT" shardbench)"
"$MLOPS_VENV/bin/python" - "$PORT" "$BIN" "$RUN" "$BATCH" "${SHARDBENCH_SEED:-$RANDOM}" <<'PY'
import hashlib, json, os, random, signal, subprocess, sys, time
import boto3

port, binary, run, batch, seed = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
endpoint = f"http://127.0.0.1:{port}"
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
aws_batch = boto3.client("batch", endpoint_url=endpoint, region_name="us-east-1")
common = [binary, "--home", f"{run}/home", "--store", "s3://shardbench/registry", "--s3-endpoint", endpoint,
          "batch-predict", "--model", "housing_linear", "--version", "1",
          "--input", "s3://shardbench/input.csv", "--read-chunk-mib", "64"]

def files(prefix):
    """sha256 of each part and errors file under prefix."""
    out, token = {}, None
    while True:
        kw = {"Bucket": "shardbench", "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kw)
        for o in page.get("Contents", []):
            name = o["Key"][len(prefix):]
            if not name.startswith("_"):
                body = s3.get_object(Bucket="shardbench", Key=o["Key"])["Body"].read()
                out[name] = hashlib.sha256(body).hexdigest()
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]

def checkpoint(prefix):
    return json.loads(s3.get_object(Bucket="shardbench", Key=f"{prefix}_checkpoint.json")["Body"].read())

started = time.monotonic()
one = subprocess.run(common + ["--output", "s3://shardbench/one/"], capture_output=True, text=True)
single = time.monotonic() - started
assert one.returncode == 0, one.stderr
reference = files("one/")
rows = checkpoint("one/")["rows_done"]
# Row numbers: 1..rows, each once, in order across the parts.
expected = 1
for name in sorted(n for n in reference if n.startswith("part-")):
    body = s3.get_object(Bucket="shardbench", Key=f"one/{name}")["Body"].read().decode()
    for line in body.splitlines()[1:]:
        number = int(line.split(",", 1)[0])
        assert number == expected, f"{name}: row {number} where {expected} was due"
        expected += 1
assert expected - 1 == rows, (expected, rows)
print(f"one container: {rows} rows in {single:.1f} s ({rows / single:,.0f} rows/s), "
      f"{len(reference)} files; row numbers 1..{rows} each once")

def sharded(shards, out, kills=0, rng=None):
    submit = subprocess.run(common + ["--output", f"s3://shardbench/{out}/", "--shards", str(shards),
                                      "--queue", batch["queue"], "--job-definition", batch["definition"]],
                            capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.split("queue job ")[1].split()[0]
    job = aws_batch.describe_jobs(jobs=[job_id])["jobs"][0]
    command = job["container"]["command"]
    size = job.get("arrayProperties", {}).get("size")
    assert size == (shards if shards > 1 else None), (size, shards)
    indices = list(range(size)) if size else [None]
    def start(index):
        env = dict(os.environ)
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        return subprocess.Popen([binary] + command[1:], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    began = time.monotonic()
    children = [start(i) for i in indices]
    killed = []
    for victim in (rng.sample(range(len(children)), kills) if kills else []):
        time.sleep(rng.uniform(0.5, single * 0.8))
        if children[victim].poll() is None:
            children[victim].send_signal(signal.SIGKILL)
            killed.append((victim, round(time.monotonic() - began, 1)))
    logs = {}
    for i, c in enumerate(children):
        _, err = c.communicate()
        logs[i] = err
        if i not in [v for v, _ in killed]:
            assert c.returncode == 0, err
    retries = []
    for victim, _ in killed:
        retry = start(indices[victim])
        _, err = retry.communicate()
        assert retry.returncode == 0, err
        resumed = [l for l in err.splitlines() if l.startswith("resuming")]
        retries.append(f"child {victim}: {resumed[0] if resumed else 'started over (nothing committed)'}")
    seconds = time.monotonic() - began
    got = files(f"{out}/")
    whole = checkpoint(f"{out}/")
    same = got == reference and whole["rows_done"] == rows and whole["complete"]
    planned = next((l for log in logs.values() for l in log.splitlines() if l.startswith("planned")), "")
    print(f"{shards} shards: {seconds:.1f} s wall for all children on this machine, "
          f"output {'byte-identical' if same else 'DIFFERENT'} ({len(got)} files, {whole['rows_done']} rows, "
          f"{whole['rows_rejected']} rejected); {planned}")
    for k in killed:
        print(f"  SIGKILL child {k[0]} at {k[1]} s")
    for r in retries:
        print(f"  retried {r}")
    return same

ok = all(sharded(n, f"shards-{n}") for n in (1, 2, 4, 8))
rng = random.Random(seed)
print(f"kill test (seed {seed}):")
ok = sharded(4, "shards-4-killed", kills=2, rng=rng) and ok
sys.exit(0 if ok else 1)
PY
