#!/usr/bin/env bash
# mirrord on a real cluster, end to end: for a machine with Docker and kind.
#
#   ./scripts/kind-e2e.sh            # KEEP=1 keeps the cluster for a look
#
# Builds the images from docker/, creates a kind cluster, installs the
# injector (manifests/install), deploys the example app with 2 replicas, runs
# `mirrord-cli connect --target deployment/api` with a header filter, and
# checks from a pod inside the cluster that matching requests reach the
# local app and the others the pods; then tears everything down. Exits
# non-zero on the first failure. Needs: docker, kind, kubectl, cargo, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=mirrord-e2e
tag=e2e
work=$(mktemp -d)
pids=()

say() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local code=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP:-0} != 1 ]]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT

for tool in docker kind kubectl cargo curl; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is required"
done

say "building the images"
for image in proxy injector sample-app; do
  docker build -q -f "docker/$image.Dockerfile" -t "mirrord-$image:$tag" . >/dev/null
done

say "creating kind cluster $cluster"
kind create cluster --name "$cluster" --wait 120s >/dev/null
for image in proxy injector sample-app; do
  kind load docker-image --name "$cluster" "mirrord-$image:$tag" >/dev/null
done

say "installing the injector"
kubectl apply -k manifests/install >/dev/null
kubectl -n mirrord set image deploy/mirrord-injector "injector=mirrord-injector:$tag" >/dev/null
kubectl -n mirrord patch deploy/mirrord-injector --type=json -p \
  "[{\"op\": \"add\", \"path\": \"/spec/template/spec/containers/0/args/-\", \"value\": \"--image=mirrord-proxy:$tag\"}]" >/dev/null
kubectl -n mirrord rollout status deploy/mirrord-injector --timeout=180s >/dev/null

say "deploying the example app with 2 replicas"
sed -e "s|ghcr.io/metalbear-co/mirrord-sample-app:[^ ]*|mirrord-sample-app:$tag|" manifests/example/app.yaml |
  kubectl apply -f - >/dev/null
kubectl scale deploy/api --replicas=2 >/dev/null
kubectl rollout status deploy/api --timeout=180s >/dev/null
injected=$(kubectl get pods -l app=api -o jsonpath='{range .items[*]}{.metadata.annotations.mirrord\.dev/status}{"\n"}{end}' | grep -c . || true)
[[ $injected == 2 ]] || fail "expected 2 injected pods, found $injected"

say "starting the local app and the session"
cargo build --release -q -p mirrord-cli -p mirrord-tests --bins
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/release/sample-app --http "127.0.0.1:$port" --name local >"$work/local.log" 2>&1 &
pids+=($!)
cat >"$work/mirrord.json" <<JSON
{"feature": {"network": {"incoming": {"mode": "steal",
  "http_filter": {"header_filter": "x-e2e: yes"}, "port_mapping": [[$port, 8080]]}}}}
JSON
target/release/mirrord-cli connect --target deployment/api -n default -f "$work/mirrord.json" \
  --log-format json >"$work/events.json" 2>"$work/connect.log" &
pids+=($!)
for _ in $(seq 60); do
  grep -q '"event":"plan"' "$work/events.json" 2>/dev/null && break
  sleep 1
done
grep -q '"event":"plan"' "$work/events.json" || { cat "$work/connect.log" >&2; fail "no session opened"; }

say "sending requests from inside the cluster"
# Each answer names the app that gave it: "local" (stolen) or the pod's.
who() {
  kubectl run "probe-$RANDOM" --rm -i --restart=Never --quiet --image=curlimages/curl:8.10.1 -- \
    curl -s --max-time 10 "$@" http://api.default.svc/who
}
for i in 1 2 3 4 5 6; do
  stolen=$(who -H 'x-e2e: yes')
  [[ $stolen == *'"app":"local"'* ]] || fail "request $i with the header was not stolen: $stolen"
  kept=$(who)
  [[ $kept != *'"app":"local"'* ]] || fail "request $i without the header was stolen: $kept"
done

say "ending the session"
kill -INT "${pids[1]}"
wait "${pids[1]}" || fail "mirrord-cli connect exited with $?"
back=$(who -H 'x-e2e: yes')
[[ $back != *'"app":"local"'* ]] || fail "traffic still stolen after the session ended"
say "passed"
