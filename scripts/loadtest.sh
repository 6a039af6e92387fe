#!/usr/bin/env bash
# Load test of the serving API and cold start of the predict function, on this machine:
# - single-row predict against `mlops serve` (release build, API keys on) with wrk at 1, 8 and 64
#   concurrent connections (requests/s, p50, p99);
# - cold start of the predict function binary over 20 runs (process start → ready, model fetched
#   from moto S3).
# The model is the quickstart's (California Housing, the selected candidate). Needs the test venv
# (scripts/setup.sh --test) and wrk (apt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$ROOT/scripts/setup.sh" --test)"
command -v wrk >/dev/null || { sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd=sudo; $sudo_cmd apt-get install -y -qq wrk >&2; }
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops -p mlops-fn-predict >&2
BIN="$CARGO_TARGET_DIR/release"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/mlops-load.XXXXXX")"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; rm -rf "$RUN"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
DURATION="${LOAD_SECONDS:-10}"

"$BIN/mlops" --home "$RUN/home" quickstart --data "$ROOT/../shared/data/california_housing.csv" >"$RUN/quickstart.log" 2>&1
grep -E "selected|test rmse|RMSE" "$RUN/quickstart.log" | head -3 || true
KEY="$("$BIN/mlops" --home "$RUN/home" keys create --name load --scope predict 2>/dev/null)"
PORT="$(free_port)"
setsid "$BIN/mlops" --home "$RUN/home" serve --listen "127.0.0.1:$PORT" >"$RUN/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS -o /dev/null -H "x-api-key: $KEY" "http://127.0.0.1:$PORT/health/ready" && break; sleep 0.1; done
cat >"$RUN/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-api-key"] = "$KEY"
wrk.body = '{"longitude": -122.23, "latitude": 37.88, "housing_median_age": 41.0, "total_rooms": 880.0, "total_bedrooms": 129.0, "population": 322.0, "households": 126.0, "median_income": 8.3252, "ocean_proximity": "NEAR BAY"}'
LUA
curl -fsS -H "x-api-key: $KEY" -H 'content-type: application/json' -d "$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" "$RUN/post.lua")" \
  "http://127.0.0.1:$PORT/v1/models/california_housing/predict"; echo
# wrk runs one thread: on a 2-core machine it then takes one core and leaves the other to the
# server (WRK_THREADS=2 lets both compete for both cores).
echo "== single-row predict, ${DURATION}s each ($(nproc) cores; wrk threads: ${WRK_THREADS:-1})"
for c in 1 8 64; do
  out="$(wrk -t"${WRK_THREADS:-1}" -c"$c" -d"${DURATION}s" --latency -s "$RUN/post.lua" "http://127.0.0.1:$PORT/v1/models/california_housing/predict")"
  rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  p50="$(echo "$out" | awk '$1=="50%" {print $2}')"
  p99="$(echo "$out" | awk '$1=="99%" {print $2}')"
  errors="$(echo "$out" | grep -E "Non-2xx|Socket errors" || echo "no errors")"
  printf "%3d clients: %10s req/s  p50 %8s  p99 %8s  (%s)\n" "$c" "$rps" "$p50" "$p99" "$errors"
done

echo "== cold start of the predict function (model from moto S3)"
MOTO_PORT="$(free_port)"
setsid "$MLOPS_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$RUN/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" && break; sleep 0.2; done
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
"$MLOPS_VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$MOTO_PORT').create_bucket(Bucket='coldstart')"
STORE="s3://coldstart/registry"
S3=(--store "$STORE" --s3-endpoint "http://127.0.0.1:$MOTO_PORT")
"$BIN/mlops" --home "$RUN/s3home" "${S3[@]}" quickstart --data "$ROOT/../shared/data/california_housing.csv" >"$RUN/quickstart-s3.log" 2>&1
"$MLOPS_VENV/bin/python" "$ROOT/scripts/coldstart.py" "$BIN/predict" "$STORE" "http://127.0.0.1:$MOTO_PORT" "${COLD_RUNS:-20}"
