# Sourced by the batch-prediction benchmarks (batchbench.sh, shardbench.sh), after ROOT is set.
# `bench_moto_setup NAME BUCKET COPIES` builds the release `mlops` (BIN), makes a run directory
# (RUN, removed on exit with the process groups in `pids`), starts moto on a free port (PORT,
# with test credentials exported), and uploads California Housing (DATA) repeated COPIES times
# to s3://BUCKET/input.csv. Needs the test venv (scripts/setup.sh --test).
bench_moto_setup() {
  local name="$1" bucket="$2" copies="$3"
  eval "$("$ROOT/scripts/setup.sh" --test)"
  cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops >&2
  BIN="$CARGO_TARGET_DIR/release/mlops"
  RUN="$(mktemp -d "${TMPDIR:-/tmp}/mlops-$name.XXXXXX")"
  pids=()
  trap 'for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; rm -rf "$RUN"' EXIT
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  setsid "$MLOPS_VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$RUN/moto.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/moto-api/" && break; sleep 0.2; done
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  DATA="$ROOT/../shared/data/california_housing.csv"
  { head -1 "$DATA"; for _ in $(seq 1 "$copies"); do tail -n +2 "$DATA"; done; } >"$RUN/input.csv"
  "$MLOPS_VENV/bin/python" - "$PORT" "$RUN/input.csv" "$bucket" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
s3.create_bucket(Bucket=sys.argv[3])
s3.upload_file(sys.argv[2], sys.argv[3], "input.csv")
PY
  echo "input: $(($(wc -l <"$RUN/input.csv") - 1)) rows, $(du -m "$RUN/input.csv" | cut -f1) MB on moto S3"
  rm "$RUN/input.csv"
}
