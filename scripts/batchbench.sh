#!/usr/bin/env bash
# Throughput and peak memory of `mlops batch-predict` (release build) with input and output on moto
# S3: California Housing repeated BATCHBENCH_COPIES times (default 49, ~1M rows / 67 MB; 1430 makes
# ~2 GB), for a linear model, an XGBoost model and the quickstart's selected model (LightGBM; the
# tree models are skipped with BATCHBENCH_LINEAR_ONLY=1). Then two concurrent runs of the linear
# job into one output, checked byte for byte against the single run's parts. Needs the test venv
# (scripts/setup.sh --test). With BATCHBENCH_BASELINE=PATH (another build of `mlops`), each model
# is also run by that binary and this one in turn, twice (A B A B), and their outputs compared.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/bench_moto.sh"
bench_moto_setup batch batchbench "${BATCHBENCH_COPIES:-49}"
CHUNK_MIB="${BATCHBENCH_READ_CHUNK_MIB:-8}"
# moto reads a whole object for every ranged GET: bigger ranges keep the concurrency check short.
CONCURRENT_CHUNK_MIB="${BATCHBENCH_CONCURRENT_CHUNK_MIB:-$CHUNK_MIB}"
# Runs a command and prints its peak resident set size (the child's ru_maxrss).
peak_rss() {
  "$MLOPS_VENV/bin/python" -c 'import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(f"peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f} MiB", file=sys.stderr)
sys.exit(rc)' "$@"
}
S3=(--store s3://batchbench/registry --s3-endpoint "http://127.0.0.1:$PORT")
"$BIN" --home "$RUN/home" "${S3[@]}" train california_housing --data "$DATA" --candidates linear --model-name housing_linear >"$RUN/train.log" 2>&1
models=("housing_linear 1")
if [ "${BATCHBENCH_LINEAR_ONLY:-0}" != 1 ]; then
  "$BIN" --home "$RUN/home" "${S3[@]}" train california_housing --data "$DATA" --candidates xgboost --model-name housing_xgboost >"$RUN/train-xgboost.log" 2>&1
  "$BIN" --home "$RUN/home" "${S3[@]}" quickstart --data "$DATA" >"$RUN/quickstart.log" 2>&1
  models+=("housing_xgboost 1" "california_housing champion")
fi
for model in "${models[@]}"; do
  set -- $model
  echo "== $1 ($2), parts of 100,000 rows, ranged GETs of $CHUNK_MIB MiB"
  peak_rss "$BIN" --home "$RUN/home" "${S3[@]}" batch-predict --model "$1" --version "$2" \
    --input s3://batchbench/input.csv --output "s3://batchbench/out-$1" --read-chunk-mib "$CHUNK_MIB" 2>&1 | tail -2
done
if [ -n "${BATCHBENCH_BASELINE:-}" ]; then
  for model in "${models[@]}"; do
    set -- $model
    for round in 1 2; do
      for side in baseline this; do
        bin="$BIN"; [ "$side" = baseline ] && bin="$BATCHBENCH_BASELINE"
        printf '%s, %s build, round %s: ' "$1" "$side" "$round"
        "$bin" --home "$RUN/home" "${S3[@]}" batch-predict --model "$1" --version "$2" \
          --input s3://batchbench/input.csv --output "s3://batchbench/ab-$1-$side-$round" \
          --read-chunk-mib "$CHUNK_MIB" 2>&1 | tail -1
      done
    done
  done
fi
echo "== two concurrent runs of the linear job into one output (ranged GETs of $CONCURRENT_CHUNK_MIB MiB)"
for run in a b; do
  "$BIN" --home "$RUN/home" "${S3[@]}" batch-predict --model housing_linear --version 1 \
    --input s3://batchbench/input.csv --output s3://batchbench/out-concurrent --read-chunk-mib "$CONCURRENT_CHUNK_MIB" \
    >"$RUN/concurrent-$run.log" 2>&1 &
  pids_runs+=($!)
done
for p in "${pids_runs[@]}"; do wait "$p" || true; done
tail -n 1 "$RUN/concurrent-a.log" "$RUN/concurrent-b.log"
ab_models=()
if [ -n "${BATCHBENCH_BASELINE:-}" ]; then
  for model in "${models[@]}"; do ab_models+=("${model%% *}"); done
fi
"$MLOPS_VENV/bin/python" - "$PORT" "${ab_models[@]}" <<'PY'
import sys, hashlib, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
def parts(prefix):
    out, token = {}, None
    while True:
        kw = {"Bucket": "batchbench", "Prefix": prefix}
        if token: kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        for o in page.get("Contents", []):
            name = o["Key"][len(prefix):]
            if name != "_checkpoint.json":
                out[name] = hashlib.sha256(s3.get_object(Bucket="batchbench", Key=o["Key"])["Body"].read()).hexdigest()
        if not page.get("IsTruncated"): break
        token = page["NextContinuationToken"]
    return out
one, two = parts("out-housing_linear/"), parts("out-concurrent/")
same = one == two
print(f"concurrent runs: {len(two)} files, {'byte-identical to' if same else 'DIFFERENT from'} the single run's {len(one)}")
for model in sys.argv[2:]:
    runs = {f"{side}-{r}": parts(f"ab-{model}-{side}-{r}/") for side in ("baseline", "this") for r in (1, 2)}
    alike = all(p == parts(f"out-{model}/") for p in runs.values())
    print(f"{model}: both builds' outputs {'byte-identical to' if alike else 'DIFFERENT from'} the first run's")
    same = same and alike
sys.exit(0 if same else 1)
PY
