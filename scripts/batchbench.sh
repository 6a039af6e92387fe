#!/usr/bin/env bash
# Throughput of `mlops batch-predict` (release build) on ~1M rows (California Housing repeated 49
# times) with input and output on moto S3, for a linear model and for the quickstart's selected
# model (LightGBM). Needs the test venv (scripts/setup.sh --test).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$ROOT/scripts/setup.sh" --test)"
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops >&2
BIN="$CARGO_TARGET_DIR/release/mlops"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/mlops-batch.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
setsid "$MLOPS_VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$RUN/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/moto-api/" && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
DATA="$ROOT/../shared/data/california_housing.csv"
{ head -1 "$DATA"; for _ in $(seq 1 49); do tail -n +2 "$DATA"; done; } >"$RUN/input.csv"
"$MLOPS_VENV/bin/python" - "$PORT" "$RUN/input.csv" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
s3.create_bucket(Bucket="batchbench")
s3.upload_file(sys.argv[2], "batchbench", "input.csv")
PY
echo "input: $(($(wc -l <"$RUN/input.csv") - 1)) rows, $(du -m "$RUN/input.csv" | cut -f1) MB on moto S3"
S3=(--store s3://batchbench/registry --s3-endpoint "http://127.0.0.1:$PORT")
"$BIN" --home "$RUN/home" "${S3[@]}" train california_housing --data "$DATA" --candidates linear --model-name housing_linear >"$RUN/train.log" 2>&1
"$BIN" --home "$RUN/home" "${S3[@]}" quickstart --data "$DATA" >"$RUN/quickstart.log" 2>&1
for model in "housing_linear 1" "california_housing champion"; do
  set -- $model
  echo "== $1 ($2), parts of 100,000 rows"
  "$BIN" --home "$RUN/home" "${S3[@]}" batch-predict --model "$1" --version "$2" \
    --input s3://batchbench/input.csv --output "s3://batchbench/out-$1" 2>&1 | tail -1
done
