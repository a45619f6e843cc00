#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain.
# Installs what the tests need (iptables, iproute2, curl, Python clients),
# builds every binary, and runs every test. The pod-simulation tests need root;
# as another user they skip with a message (under CI=true they fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in iptables:iptables ip:iproute2 curl:curl python3:python3; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]} (install them, or run as root to have them installed)" >&2
  fi
fi
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt

cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# One total over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
