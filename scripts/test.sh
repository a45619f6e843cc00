#!/usr/bin/env bash
# The whole test suite. Run it as yourself (it asks sudo for what needs root)
# or as root (CI):
#
#   ./scripts/test.sh [cargo test arguments…]
#
# - installs the system tools the tests drive (iptables, iproute2, curl,
#   openssl, python3-venv) with apt when they are missing, and unpacks
#   Debian's prometheus package (Prometheus and promtool) under target/;
# - installs the pinned Python clients (tests/requirements.txt) into a virtual
#   environment under target/, reused while the pins do not change, and puts
#   it first on PATH so the tests' `python3` is that one;
# - builds and runs every test binary as you; only the pod simulation
#   (package mirrord-tests: network namespaces, iptables, cgroups) runs as
#   root, through scripts/as-root.sh with your toolchain's environment;
# - fails when the run leaves a process, network namespace, cgroup or host
#   iptables rule behind (scripts/leftovers.sh).
#
# Without root and without sudo the pod simulation skips with a message; under
# CI=true it fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '==> %s\n' "$*" >&2; }

# A person's PATH on Debian lacks the sbin directories where iptables and ip
# live; root's has them. The pod simulation runs them as root.
for dir in /usr/local/sbin /usr/sbin /sbin; do
  case ":$PATH:" in *":$dir:"*) ;; *) PATH="$PATH:$dir" ;; esac
done
export PATH

# Root for the few steps that need it: directly as root, else through sudo
# (which asks at most once per run: credentials are cached).
if [ "$(id -u)" = 0 ]; then
  as_root() { "$@"; }
  have_root=1
elif command -v sudo >/dev/null 2>&1; then
  as_root() { sudo "$@"; }
  have_root=1
else
  as_root() { return 1; }
  have_root=0
fi

for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "$tool not found on PATH: install a Rust toolchain (https://rustup.rs) and run this script as yourself, not through sudo" >&2
    exit 1
  }
done

# System tools: command -> Debian package.
need_apt=()
# openssl makes a short-lived certificate for the monitoring test's expiry
# alert; shellcheck checks the scripts (scripts/kind-e2e.sh cannot run here).
for tool in iptables:iptables ip:iproute2 curl:curl nsenter:util-linux python3:python3 openssl:openssl nghttpd:nghttp2-server \
  dpkg-deb:dpkg shellcheck:shellcheck; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
# Debian splits venv and ensurepip out of python3.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
if ((${#need_apt[@]})); then
  say "installing ${need_apt[*]} (apt)"
  if ((have_root)); then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]}; install them (apt-get install ${need_apt[*]}) or run with sudo available" >&2
    exit 1
  fi
fi

# Prometheus and promtool for the monitoring tests, unpacked from Debian's
# package into target/ rather than installed (installing it would also start
# a Prometheus service on this machine).
prom_dir="$root/target/tools/prometheus"
if ! [[ -x $prom_dir/usr/bin/prometheus && -x $prom_dir/usr/bin/promtool ]]; then
  say "unpacking Debian's prometheus package into target/tools"
  mkdir -p "$root/target/tools"
  (
    cd "$root/target/tools"
    rm -rf prometheus prometheus_*.deb
    apt-get download prometheus >/dev/null 2>&1 || { as_root apt-get update -qq && apt-get download prometheus >/dev/null; }
    dpkg-deb -x prometheus_*.deb prometheus
    rm -f prometheus_*.deb
  )
fi
export PATH="$prom_dir/usr/bin:$PATH"

# The Python clients, in a venv of their own: never a system-wide pip (PEP 668).
venv="$root/target/test-venv"
stamp="$venv/.requirements"
want="$(python3 -c 'import sys; print(sys.version)' | head -n1) $(sha256sum tests/requirements.txt | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python3" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating the test venv at target/test-venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  printf '%s\n' "$want" >"$stamp"
fi
export PATH="$venv/bin:$PATH"

say "building"
cargo build --workspace --bins
cargo test --workspace --no-run "$@"

# Test binaries of the pod simulation run as root, all others as the caller.
host=$(rustc -vV | sed -n 's/^host: //p')
runner_var="CARGO_TARGET_$(printf '%s' "$host" | tr 'a-z-' 'A-Z_')_RUNNER"
export "$runner_var=$root/scripts/as-root.sh"
# Marks every process the suite starts (and only those), so that what
# survives it is found.
marker="$(date +%s)-$$"
if ((have_root)) && [ "$(id -u)" != 0 ]; then
  say "the pod simulation runs as root: sudo may ask for your password"
  sudo -v
fi
before=$(mktemp)
log=$(mktemp)
trap 'rm -f "$before" "$log"' EXIT
if ((have_root)); then as_root "$root/scripts/leftovers.sh" snapshot >"$before"; fi

say "testing"
status=0
MIRRORD_TEST_RUN="$marker" cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One total over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

if ((have_root)); then
  as_root "$root/scripts/leftovers.sh" check "$marker" <"$before" || status=1
fi
exit "$status"
