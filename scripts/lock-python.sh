#!/usr/bin/env bash
# Regenerates the hash-pinned Python lock files in scripts/requirements/ from their .in files.
# setup.sh installs only from the locks, with `pip --require-hashes`, so a changed or substituted
# package on the index fails the install instead of running in CI. Run this after editing a .in file.
set -euo pipefail
here="$(cd "$(dirname "$0")/requirements" && pwd)"
tool="$(mktemp -d)"
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool" && "$tool/bin/pip" install -q "uv==0.13.9"
cd "$here"
compile() { # INPUT OUTPUT PYTHON
  "$tool/bin/uv" pip compile -q --generate-hashes --no-emit-index-url --no-header \
    --python-version "$3" --python-platform x86_64-manylinux_2_28 "$1" -o "$2"
}
compile build.in build.txt 3.11
compile test.in test.txt 3.11
compile torch.in torch.txt 3.11
# Only the shared library is taken from this wheel (no dependencies); it declares Python >= 3.12.
echo 'xgboost-cpu==3.4.1' >"$tool/xgb.in"
"$tool/bin/uv" pip compile -q --generate-hashes --no-emit-index-url --no-header --no-deps \
  --python-version 3.12 --python-platform x86_64-manylinux_2_28 "$tool/xgb.in" -o "$tool/xgb.txt"
grep -v '^ *#' "$tool/xgb.txt" >xgboost-cpu.txt
echo "lock-python: wrote $here/{build,test,torch,xgboost-cpu}.txt" >&2
