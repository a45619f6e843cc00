#!/usr/bin/env bash
# The sidecar in explicit mode on loopback, in front of the sample app: no
# root, no iptables, no cluster. Sends HTTP/1.1, HTTP/2 and a bad request
# through it and shows the sidecar's metrics. Ports: DEMO_PORT (sidecar),
# DEMO_PORT+1 (app), DEMO_PORT+2 (admin).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${DEMO_PORT:-18080}
app=$((port + 1)) admin=$((port + 2))

cargo build --release -q -p mirrord-proxy -p mirrord-tests --bins
target/release/sample-app --http "127.0.0.1:$app" 2>/dev/null &
app_pid=$!
target/release/mirrord-proxy run --listen "127.0.0.1:$port" --upstream "127.0.0.1:$app" --admin "127.0.0.1:$admin" --tunnel 127.0.0.1:0 &
proxy_pid=$!
trap 'kill $app_pid $proxy_pid 2>/dev/null; wait 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$admin/ready" >/dev/null; do sleep 0.05; done

echo; echo "== HTTP/1.1 through the sidecar (the app echoes what it received)"
curl -s --noproxy '*' -H 'X-Demo: 1' "http://127.0.0.1:$port/hello?x=1"; echo
echo; echo "== HTTP/2 (prior knowledge) through the sidecar"
curl -s --noproxy '*' --http2-prior-knowledge "http://127.0.0.1:$port/h2"; echo
echo; echo "== An ambiguous request (Content-Length twice) never reaches the app"
printf 'POST / HTTP/1.1\r\nHost: demo\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx' \
  | curl -s --noproxy '*' telnet://127.0.0.1:$port --max-time 2 || true
echo; echo "== The sidecar's metrics"
curl -s "http://127.0.0.1:$admin/metrics" | grep -v '^#'
