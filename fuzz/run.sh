#!/usr/bin/env bash
# Runs every engine fuzz target for SECONDS (default 60) each, seeded from fuzz/seeds, and prints
# libFuzzer's final statistics. Needs `cargo install cargo-fuzz`; on a stable toolchain
# RUSTC_BOOTSTRAP=1 enables the sanitizer flags cargo-fuzz uses.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
for target in ${FUZZ_TARGETS:-xgboost_json lightgbm_text linear_json mlp_safetensors engine_image}; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  cp -n fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  echo "== $target ($seconds s)"
  cargo fuzz run "$target" "$corpus" -- -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added|ERROR|panicked|Done|SUMMARY" || true
done
