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
compile lint.in lint.txt 3.11
compile deploy.in deploy.txt 3.11
compile browser.in browser.txt 3.11
# The training image (infra/docker/Dockerfile): Ubuntu 24.04's Python 3.12.
compile image.in image.txt 3.12
# Only the shared library is taken from these wheels (no dependencies); they declare Python >= 3.12.
wheel() { # REQUIREMENT OUTPUT
  echo "$1" >"$tool/wheel.in"
  "$tool/bin/uv" pip compile -q --generate-hashes --no-emit-index-url --no-header --no-deps \
    --python-version 3.12 --python-platform x86_64-manylinux_2_28 "$tool/wheel.in" -o "$tool/wheel.txt"
  grep -v '^ *#' "$tool/wheel.txt" >"$2"
}
wheel 'xgboost-cpu==3.4.1' xgboost-cpu.txt
wheel 'xgboost==3.4.1' xgboost-cuda.txt
echo "lock-python: wrote $here/{build,test,torch,lint,deploy,browser,image,xgboost-cpu,xgboost-cuda}.txt" >&2
