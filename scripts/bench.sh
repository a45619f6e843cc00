#!/usr/bin/env bash
# Benchmark: the sidecar vs a direct connection, nginx and haproxy (see bench/bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in wrk:wrk h2load:nghttp2-client nghttpx:nghttp2-proxy nghttpd:nghttp2-server iperf3:iperf3 nginx:nginx-light haproxy:haproxy taskset:util-linux valgrind:valgrind tcpdump:tcpdump; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v oha >/dev/null 2>&1 || cargo install oha --locked
cargo build --release -q -p mirrord-tests -p mirrord-injector -p mirrord-cli --bins
# The sidecar on its own, as its image builds it: built with the others, it
# would get the features they turn on in shared dependencies (tracing's `log`,
# for one) and not be the binary that ships.
cargo build --release -q -p mirrord-proxy --bin mirrord-proxy
cargo build --release -q -p mirrord-injector --example allow_all
# Filter cost per request (plain vs look-around regexes), in-process.
cargo run --release -q -p mirrord-config --example filter_cost
# The framing table through the sidecar, nginx and haproxy (what reaches the app).
cargo test -q -p mirrord-tests --test framing_table -- --ignored --nocapture framing_table_through 2>&1 \
  | grep -E '^(==|  )' || true
exec python3 bench/bench.py "$@"
