#!/usr/bin/env bash
# The native-free batch-prediction build (`mlops` without the `train` feature, the binary of
# infra/docker/batch.Dockerfile) beside the default build: size stripped and gzipped, the shared
# libraries each needs, and the same batch-predict run with both (a linear, an XGBoost and the
# quickstart's LightGBM model on California Housing repeated BATCH_IMAGE_COPIES times, default 10),
# output compared byte for byte and timed; the image's size estimated by
# scripts/distroless_rootfs.sh. The lean build goes to its own target directory, so the
# default release binary is not replaced. Needs the test venv (scripts/setup.sh --test).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
eval "$("$ROOT/scripts/setup.sh" --test)"
LEAN_TARGET="$CARGO_TARGET_DIR/batch-image"
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops >&2
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p mlops --no-default-features \
  --target-dir "$LEAN_TARGET" >&2
FULL="$CARGO_TARGET_DIR/release/mlops"
LEAN="$LEAN_TARGET/release/mlops"
RUN="$(mktemp -d "${TMPDIR:-/tmp}/mlops-batch-image.XXXXXX")"
trap 'rm -rf "$RUN"' EXIT

# Sizes and shared libraries.
mib() { awk -v b="$(stat -L -c %s "$1")" 'BEGIN {print b / 1048576}'; }
for build in full lean; do
  bin=$([ "$build" = full ] && echo "$FULL" || echo "$LEAN")
  strip -o "$RUN/mlops-$build" "$bin"
  gzip -9 -c "$RUN/mlops-$build" >"$RUN/mlops-$build.gz"
  needed="$(readelf -d "$bin" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  printf '%-4s stripped %6.1f MiB, gzip -9 %5.1f MiB; needs: %s\n' "$build" \
    "$(mib "$RUN/mlops-$build")" \
    "$(mib "$RUN/mlops-$build.gz")" "$needed"
done
# What the default build loads besides glibc (libxgboost, and libtorch with the feature).
ldd "$FULL" | awk '$3 ~ /^\// && $1 !~ /^(libc|libm|libgcc_s|ld-linux|libpthread|libdl|librt)[.-]/ {print $3}' |
  while read -r lib; do
    printf 'full loads %s (%.1f MiB)\n' "$lib" "$(mib "$lib")"
  done

# The same jobs with both builds.
DATA="$ROOT/../shared/data/california_housing.csv"
COPIES="${BATCH_IMAGE_COPIES:-10}"
{ head -1 "$DATA"; for _ in $(seq 1 "$COPIES"); do tail -n +2 "$DATA"; done; } >"$RUN/input.csv"
echo "input: $(($(wc -l <"$RUN/input.csv") - 1)) rows"
HOME_DIR="$RUN/home"
"$FULL" --home "$HOME_DIR" train california_housing --data "$DATA" --candidates linear --model-name housing_linear >"$RUN/train.log" 2>&1
"$FULL" --home "$HOME_DIR" train california_housing --data "$DATA" --candidates xgboost --model-name housing_xgboost >>"$RUN/train.log" 2>&1
"$FULL" --home "$HOME_DIR" quickstart --data "$DATA" >>"$RUN/train.log" 2>&1
status=0
for model in "housing_linear 1" "housing_xgboost 1" "california_housing champion"; do
  set -- $model
  for build in full lean; do
    bin=$([ "$build" = full ] && echo "$FULL" || echo "$LEAN")
    start=$(date +%s%N)
    "$bin" --home "$HOME_DIR" batch-predict --model "$1" --version "$2" --input "$RUN/input.csv" \
      --output "$RUN/out-$1-$build" >"$RUN/$1-$build.log" 2>&1
    printf '%s (%s) %s: %.2f s\n' "$1" "$2" "$build" "$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN {print (b - a) / 1e9}')"
  done
  if diff -r -x _checkpoint.json "$RUN/out-$1-full" "$RUN/out-$1-lean" >/dev/null; then
    echo "$1: outputs byte-identical ($(ls "$RUN/out-$1-lean" | grep -c '^part-') parts)"
  else
    echo "$1: outputs DIFFER" && status=1
  fi
done
# The image's size, estimated from distroless's Debian packages (no container engine here).
if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  "$ROOT/scripts/distroless_rootfs.sh" "$LEAN"
fi
# A training command in the lean build names the image to use instead.
set +e
"$LEAN" --home "$HOME_DIR" train california_housing --data "$DATA" 2>"$RUN/train-lean.err"
echo "lean 'train': exit $?, $(cat "$RUN/train-lean.err")"
exit $status
