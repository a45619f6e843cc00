#!/usr/bin/env python3
"""Admission latency and throughput of mirrord-injector for a ~20 KiB pod,
over HTTPS with keep-alive (as the API server calls webhooks), driven by oha.

Three targets, visited in interleaved rounds:
- "minimal": the least a webhook can do (injector/examples/allow_all.rs: the
  injector's TLS, HTTP server and allocator; reads the review, answers
  "allowed" without parsing it). Its cost is the machine's.
- "not opted in": the injector, for a pod without the annotation (parsed
  and answered, not mutated).
- "injected": the injector, for an opted-in pod (mutated, patch computed).

A closed-loop phase measures throughput at saturation; fixed-rate phases
measure latency under load short of saturation, which is what an API
server sees. Medians over the rounds are printed, with ratios to "minimal".

With --baseline BIN, another build of mirrord-injector (e.g. from an earlier
commit) is measured in the same rounds, for both pods ("baseline skip" for
the pod that is not opted in, "baseline inj." for the injected one).

--instructions counts instead the instructions each target executes per
admission under valgrind's callgrind (user space only; unlike the
latencies, the same build gives the same count whatever else the machine
does), with --baseline too.

Usage: bench/admission.py [--rounds N] [--seconds S] [--rates 200,500,2000] [--baseline BIN] [--instructions]
Needs release builds: cargo build --release -p mirrord-injector --bins --examples
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from procs import APP_CPU as SERVER_CPU, free_port, LOAD_CPU, Procs, RELEASE, wait_port


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


def oha(port, path, n, connections, rate=None):
    cmd = ["taskset", "-c", LOAD_CPU, "oha", "--no-tui", "--output-format", "json", "-n", str(n),
           "-c", str(connections), "-m", "POST", "-D", path, "-T", "application/json", "--insecure",
           f"https://127.0.0.1:{port}/mutate"]
    if rate:
        cmd[5:5] = ["-q", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    p = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    if list(codes) != ["200"]:
        sys.exit(f"admission bench: answers other than 200: {codes}")
    return p["p50"] * 1000, p["p99"] * 1000, data["summary"]["requestsPerSec"]


def report(title, results, unit):
    """results: {target: [values over rounds]}; ratios to 'minimal'."""
    med = {k: statistics.median(v) for k, v in results.items()}
    base = med.get("minimal")
    print(f"{title}:")
    for k, v in med.items():
        spread = f"{min(results[k]):.3f}-{max(results[k]):.3f}"
        ratio = f" (x{v / base:.2f} minimal)" if base else ""
        print(f"  {k:14s} {v:9.3f}{unit}{ratio}  [rounds: {spread}]")
    return med


def certificate(tmp):
    """A self-signed P-256 certificate and key in `tmp`: their paths."""
    cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def write_bodies(tmp):
    """The two reviews, as files in `tmp`: {"injected": path, "not opted in": path}."""
    bodies = {}
    for name, annotations in (("injected", {"mirrord.dev/inject": "enabled"}), ("not opted in", {})):
        bodies[name] = os.path.join(tmp, f"{len(bodies)}.json")
        open(bodies[name], "wb").write(review(annotations))
    return bodies


def injector_args(binary, port, cert, key):
    """The command line of an injector serving on `port`."""
    return [binary, "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0", "--cert-file", cert, "--key-file", key]


def minimal_args(port, cert, key):
    """The command line of the minimal webhook serving on `port`."""
    return [os.path.join(RELEASE, "examples", "allow_all"), f"127.0.0.1:{port}", cert, key]


def server(args):
    return subprocess.Popen(["taskset", "-c", SERVER_CPU, *args], stderr=subprocess.DEVNULL)


def bench(rounds=3, seconds=10, rates=(200, 500, 2000), connections=4, baseline=None):
    tmp = tempfile.mkdtemp()
    cert, key = certificate(tmp)
    port, minimal_port, baseline_port = free_port(), free_port(), free_port()
    procs = [
        server(injector_args(os.path.join(RELEASE, "mirrord-injector"), port, cert, key)),
        server(minimal_args(minimal_port, cert, key)),
    ]
    if baseline:
        procs.append(server(injector_args(baseline, baseline_port, cert, key)))
    try:
        for p in (port, minimal_port) + ((baseline_port,) if baseline else ()):
            wait_port(p)
        bodies = write_bodies(tmp)
        targets = {"minimal": (minimal_port, bodies["injected"]), "not opted in": (port, bodies["not opted in"]),
                   "injected": (port, bodies["injected"])}
        if baseline:
            targets["baseline skip"] = (baseline_port, bodies["not opted in"])
            targets["baseline inj."] = (baseline_port, bodies["injected"])
        size = os.path.getsize(bodies["injected"]) / 1024
        print(f"== admission: pod review {size:.1f} KiB, {connections} keep-alive connections, {rounds} interleaved "
              f"rounds; servers on CPU {SERVER_CPU}, oha on CPU {LOAD_CPU}")
        saturation = {k: [] for k in targets}
        fixed = {r: ({k: [] for k in targets}, {k: [] for k in targets}) for r in rates}
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            for name, (p, body) in targets.items():
                saturation[name].append(oha(p, body, 5000, connections)[2])
            for rate in rates:
                for name, (p, body) in targets.items():
                    p50, p99, _ = oha(p, body, rate * seconds, connections, rate)
                    fixed[rate][0][name].append(p50)
                    fixed[rate][1][name].append(p99)
        report("closed loop, admissions/s (higher is better)", saturation, "/s")
        summary = []
        for rate in rates:
            report(f"fixed rate {rate}/s for {seconds} s, p50 ms", fixed[rate][0], " ms")
            med = report(f"fixed rate {rate}/s for {seconds} s, p99 ms", fixed[rate][1], " ms")
            was = f", baseline {med['baseline inj.']:.3f} ms" if baseline else ""
            summary.append(f"{rate}/s: {med['injected']:.3f} ms ({med['injected'] / med['minimal']:.2f}x minimal{was})")
        print("injected p99 (target <= 5 ms): " + "; ".join(summary))
    finally:
        for p in procs:
            p.kill()
            p.wait()


def instructions(baseline=None, reviews=1000):
    """Instructions per admission of each target and pod under callgrind:
    200 reviews to warm up, counters zeroed, `reviews` more, dumped."""
    import instructions as ins
    print(f"\n== admission: instructions per review (valgrind --tool=callgrind, user space only; {reviews} "
          "reviews after 200 to warm up; lower is better)")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = certificate(tmp)
        bodies = write_bodies(tmp)
        binaries = {"injector": os.path.join(RELEASE, "mirrord-injector")}
        if baseline:
            binaries["baseline"] = baseline
        results = {}
        for name in ["minimal", *binaries]:
            port = free_port()
            if name == "minimal":
                args = minimal_args(port, cert, key)
            else:
                args = injector_args(binaries[name], port, cert, key)
            run = Procs()
            try:
                ins.callgrind(run, tmp, name, args)
                wait_port(port, timeout=60)
                for pod in ("injected",) if name == "minimal" else ("not opted in", "injected"):
                    oha(port, bodies[pod], 200, 4)
                    ins.control(tmp, name, "-z")
                    oha(port, bodies[pod], reviews, 4)
                    results[f"{name}, {pod}"] = ins.control(tmp, name, "-d") / reviews
            finally:
                run.stop()
    base = results["minimal, injected"]
    for k, v in results.items():
        print(f"  {k:24s} {v / 1000:8.0f}k (x{v / base:.2f} minimal)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="length of each fixed-rate run")
    ap.add_argument("--rates", default="200,500,2000", help="fixed rates, admissions per second")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--baseline", metavar="BIN", help="another mirrord-injector binary, measured in the same rounds")
    ap.add_argument("--instructions", action="store_true", help="count instructions per admission instead")
    args = ap.parse_args()
    if args.instructions:
        instructions(args.baseline)
        return
    rates = tuple(int(r) for r in args.rates.split(",") if r)
    bench(args.rounds, args.seconds, rates, args.connections, args.baseline)


if __name__ == "__main__":
    main()
