#!/usr/bin/env bash
# Dependency audit with cargo-deny (deny.toml): RustSec advisories, banned crates, licenses and
# sources (errors are printed, then a count per check; duplicate versions are counted as warnings).
# Needs cargo-deny on PATH (scripts/setup.sh --test builds it).
#
# The advisory database is a git repository on github.com, cached in ~/.cache/mlops/advisory-dbs:
# - github.com reachable: cargo-deny fetches the latest database, then checks everything;
# - not reachable but cached (or MLOPS_ADVISORY_DB names a clone or mirror to seed the cache
#   from): everything is checked against the cached copy, and its date is printed;
# - neither: bans, licenses and sources are checked, and advisories are reported NOT checked.
set -euo pipefail
cd "$(dirname "$0")/.."
URL=https://github.com/RustSec/advisory-db
# cargo-deny's directory for that URL inside db-path (XxHash64 of the lowercased URL).
DB="$HOME/.cache/mlops/advisory-dbs/advisory-db-3157b0e258782691"
log() { echo "audit: $*" >&2; }

# cargo-deny reads the metadata of every target in deny.toml: have their crates on disk.
cargo fetch --locked >/dev/null

if timeout 20 git ls-remote --exit-code "$URL" HEAD >/dev/null 2>&1; then
  cargo deny --locked -L error check --hide-inclusion-graph --show-stats
  exit 0
fi
if [ ! -d "$DB/crates" ] && [ -n "${MLOPS_ADVISORY_DB:-}" ]; then
  log "seeding the advisory database from $MLOPS_ADVISORY_DB"
  rm -rf "$DB" && mkdir -p "$(dirname "$DB")"
  git clone -q "$MLOPS_ADVISORY_DB" "$DB"
fi
if [ -d "$DB/crates" ]; then
  log "github.com unreachable: advisories from the cached database of $(git -C "$DB" log -1 --format=%cs)"
  cargo deny --offline --locked -L error check --hide-inclusion-graph --show-stats
else
  cargo deny --offline --locked -L error check --hide-inclusion-graph --show-stats bans licenses sources
  log "WARNING: advisories NOT checked: github.com is unreachable and no database is cached in $DB" \
    "(set MLOPS_ADVISORY_DB to a clone of $URL)"
fi
