#!/usr/bin/env python3
"""Admission latency and throughput of mirrord-injector for a ~20 KiB pod,
over HTTPS with keep-alive (as the API server calls webhooks), driven by oha.
Baseline in the same run: the same review for a pod that is not opted in
(parsed and answered, not mutated), so the difference is the mutation and
patch. A closed-loop phase measures throughput at saturation; a fixed-rate
phase measures latency under load short of saturation, which is what an API
server sees. Usage: bench/admission.py [--requests N] [--connections C] [--rate R]."""
import argparse
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "mirrord-injector")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_pod(annotations):
    env = [{"name": f"SETTING_{i}", "value": "x" * 40} for i in range(90)]
    containers = [{"name": f"c{i}", "image": "ghcr.io/acme/app:1.0", "env": env,
                   "ports": [{"containerPort": 8080 + i, "protocol": "TCP"}]} for i in range(3)]
    return {"metadata": {"generateName": "api-", "namespace": "shop", "annotations": annotations,
                         "labels": {f"label-{i}": "v" for i in range(20)}},
            "spec": {"containers": containers}}


def review(annotations):
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                   "operation": "CREATE", "namespace": "shop", "object": big_pod(annotations)}}).encode()


def run(port, path, n, connections, rate=None):
    cmd = ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json", "-n", str(n), "-c", str(connections),
           "-m", "POST", "-D", path, "-T", "application/json", "--insecure", f"https://127.0.0.1:{port}/mutate"]
    if rate:
        cmd[5:5] = ["-q", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    p = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    assert list(codes) == ["200"], codes
    return p["p50"] * 1000, p["p99"] * 1000, data["summary"]["requestsPerSec"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rate", type=int, default=500, help="admissions per second of the fixed-rate phase")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(["taskset", "-c", "0", BIN, "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
                             "--cert-file", cert, "--key-file", key], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("injector did not start")
                time.sleep(0.05)
        bodies = {}
        for name, annotations in (("injected", {"mirrord.dev/inject": "enabled"}), ("not opted in (baseline)", {})):
            bodies[name] = os.path.join(tmp, f"{len(bodies)}.json")
            open(bodies[name], "wb").write(review(annotations))
        size = os.path.getsize(bodies["injected"]) / 1024
        print(f"pod review size: {size:.1f} KiB, {args.requests} requests, {args.connections} keep-alive connections; injector on CPU 0, oha on CPU 1")
        print("closed loop (saturation):")
        for name in ("not opted in (baseline)", "injected", "not opted in (baseline)", "injected"):
            p50, p99, rps = run(port, bodies[name], args.requests, args.connections)
            print(f"  {name:24s} p50={p50:.3f} ms p99={p99:.3f} ms throughput={rps:.0f}/s")
        n = args.rate * 10
        print(f"fixed rate ({args.rate}/s for 10 s, as an API server under a burst of pod creations):")
        p99s = {}
        for name in ("not opted in (baseline)", "injected", "not opted in (baseline)", "injected"):
            p50, p99, _ = run(port, bodies[name], n, args.connections, args.rate)
            p99s.setdefault(name, []).append(p99)
            print(f"  {name:24s} p50={p50:.3f} ms p99={p99:.3f} ms")
        inj, base = min(p99s["injected"]), min(p99s["not opted in (baseline)"])
        print(f"fixed-rate p99: injected {inj:.3f} ms = {inj / base:.2f}x the baseline (target <= 5 ms)")
    finally:
        proc.kill()
        proc.wait()


main()
