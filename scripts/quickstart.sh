#!/usr/bin/env bash
# Quickstart on the embedded local default: builds `mlops` (installing the build prerequisites
# with scripts/setup.sh on first use), then trains on California Housing, registers the best
# model, approves its card, promotes it to champion and predicts held-out rows.
# State goes to ./.mlops (override with MLOPS_HOME).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$ROOT/scripts/setup.sh")"
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops >&2
exec "$CARGO_TARGET_DIR/release/mlops" quickstart "$@"
