#!/usr/bin/env bash
# Dependency audit: known vulnerabilities (RustSec advisories, cargo audit)
# and licenses and banned or duplicated crates (cargo deny, deny.toml). Any
# finding fails.
#
# The advisory database: $MIRRORD_ADVISORY_DB or an advisory-db snapshot
# beside the checkout (../shared/advisory-db) is used offline when present;
# otherwise cargo audit fetches the current database (and, when the network
# refuses, falls back to the copy it fetched last time, saying so).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installed once into ~/.cargo/bin, at versions known to work with this lock file.
for tool in cargo-audit@0.22.2 cargo-deny@0.20.2; do
  command -v "${tool%@*}" >/dev/null 2>&1 || cargo install --locked --quiet "$tool"
done

db=
for candidate in "${MIRRORD_ADVISORY_DB:-}" ../shared/advisory-db; do
  if [ -n "$candidate" ] && [ -d "$candidate/crates" ]; then
    db=$candidate
    break
  fi
done
if [ -n "$db" ]; then
  echo "advisories: offline snapshot at $db ($(head -n1 "$db/SNAPSHOT" 2>/dev/null || echo 'no SNAPSHOT file'))"
  cargo audit --db "$db" --no-fetch --deny warnings
elif ! cargo audit --deny warnings; then
  cached="${CARGO_HOME:-$HOME/.cargo}/advisory-db"
  [ -d "$cached/crates" ] || exit 1
  echo "advisories: fetching failed or found something; checking again against the last fetched copy ($cached)" >&2
  cargo audit --db "$cached" --no-fetch --deny warnings
fi
cargo deny --all-features check licenses bans
