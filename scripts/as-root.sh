#!/usr/bin/env bash
# Cargo's runner for the test binaries (set by scripts/test.sh): the pod
# simulation (package mirrord-tests) needs root for network namespaces,
# iptables and cgroups and runs through sudo; every other test binary runs as
# the caller. sudo resets PATH and the environment, so the toolchain's and the
# test venv's PATH and the variables cargo and the suite set are passed on.
set -euo pipefail
if [ "$(id -u)" = 0 ] || [ "${CARGO_PKG_NAME:-}" != mirrord-tests ] || ! command -v sudo >/dev/null 2>&1; then
  exec "$@"
fi
vars=()
while IFS= read -r name; do
  case "$name" in
    PATH | TMPDIR | CI | RUST_* | CARGO* | MIRRORD_* | UPDATE_GOLDEN) vars+=("$name=${!name}") ;;
  esac
done < <(compgen -e)
exec sudo -- env "${vars[@]}" "$@"
