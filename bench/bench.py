#!/usr/bin/env python3
"""Benchmark of the mirrord sidecar against a direct connection, nginx and
haproxy, measured in one run and interleaved (every round visits every
target), so that machine noise hits all of them alike.

Topology: the app and every proxy are pinned to CPU 0, the load generator to
CPU 1 (the cores part shares both CPUs among all). The sidecar runs in explicit mode on loopback with one worker thread;
nginx with one worker; haproxy with one thread. Prints each figure as a ratio
to direct and to the best peer, plus the sidecar's RSS and CPU per 1000
requests. Usage: bench.py [--rounds N] [--seconds S]."""
import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

import admission
import instructions

from load import (
    grpc_message, grpc_stream, grpc_unary, h2load, h2load_one, iperf, oha_latency, wrk, wrk_close, wrk_cores,
)
from peers import haproxy_conf, nghttpx_args, nginx_conf, nginx_config, PROXY_TO, row
from procs import BOTH_CPUS, children, cpu_ns, free_port, proc_stat, Procs, RELEASE, start_sidecar, wait_port
from idle import idle_bench, idle_protocols, idle_tcp_targets, idle_wakeups, unread_bench
from pressure import pressure_bench
from sessions import session_bench


def cores_bench(procs, tmp, seconds, rounds, baseline=None):
    """HTTP/1.1 keep-alive with two workers each: the sidecar with 1 and 2
    threads, nginx with 2 workers, haproxy with 2 threads, in front of an
    app that uses both CPUs (nginx, 2 workers, answering itself). On a
    machine with two CPUs the load generator cannot have a core of its own:
    everything, wrk -t2 included, shares CPUs 0 and 1, so the ratios compare
    the proxies under the same contention, and "x… 1 thread" is what the
    second thread buys there."""
    ports = {k: free_port() for k in ("app", "sidecar_1", "sidecar", "nginx", "haproxy", "baseline")}
    app = nginx_config(tmp, "cores-app", {}, f"""    listen 127.0.0.1:{ports['app']};
    location / {{ return 200 "hello\\n"; }}""", workers=2)
    peer = nginx_config(tmp, "cores-nginx", {"app": ports["app"]}, f"""    listen 127.0.0.1:{ports['nginx']};
    location / {{ proxy_pass http://app; {PROXY_TO} }}""", workers=2)
    hap = os.path.join(tmp, "cores-haproxy.cfg")
    open(hap, "w").write(f"""
global
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen h1
  bind 127.0.0.1:{ports['haproxy']}
  http-reuse always
  server app 127.0.0.1:{ports['app']}
""")
    procs.start(["nginx", "-c", app], cpu=BOTH_CPUS)
    start_sidecar(procs, ports["sidecar_1"], ports["app"], cpu=BOTH_CPUS)
    start_sidecar(procs, ports["sidecar"], ports["app"], threads=2, cpu=BOTH_CPUS)
    procs.start(["nginx", "-c", peer], cpu=BOTH_CPUS)
    procs.start(["haproxy", "-f", hap], cpu=BOTH_CPUS)
    targets = {k: ports[k] for k in ("app", "sidecar_1", "sidecar", "nginx", "haproxy")}
    if baseline:
        start_sidecar(procs, ports["baseline"], ports["app"], threads=2, binary=baseline, cpu=BOTH_CPUS)
        targets["baseline"] = ports["baseline"]
    for port in targets.values():
        wait_port(port)
    targets["direct"] = targets.pop("app")
    kinds = {"keep-alive": (), "new connection per request": ("-H", "Connection: close")}
    results = {kind: {k: [] for k in targets} for kind in kinds}
    for r in range(rounds):
        print(f"cores round {r + 1}/{rounds}", file=sys.stderr)
        for kind, headers in kinds.items():
            for k, port in targets.items():
                results[kind][k].append(wrk_cores(port, seconds, *headers))
    print(f"\n== two workers ({rounds} rounds x {seconds}s, interleaved; the app, every proxy and wrk -t2 -c64 "
          "share CPUs 0 and 1)")
    for kind in kinds:
        row(f"HTTP/1.1 {kind}, req/s (sidecar: --threads 2; sidecar_1: --threads 1)", results[kind])
        one = statistics.median(results[kind]["sidecar_1"])
        print(f"  sidecar --threads 2 vs --threads 1: x{statistics.median(results[kind]['sidecar']) / one:.2f}")


def first_byte_ms(port, n=20):
    """Median time from connect to the server's first byte (a greeting)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            if not s.recv(1):
                raise RuntimeError(f"{port}: closed before its greeting")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def detection_wait(procs):
    """A server-first protocol (the server speaks first, as MySQL and SMTP
    do): the sidecar waits for client bytes until --detect-timeout before it
    treats the connection as raw TCP, unless the port is opaque."""
    ports = {k: free_port() for k in ("greeting", "detect", "opaque")}
    procs.start([f"{RELEASE}/sample-app", "--greeting", f"127.0.0.1:{ports['greeting']}"])
    start_sidecar(procs, ports["detect"], ports["greeting"])
    start_sidecar(procs, ports["opaque"], ports["greeting"], "--opaque-ports", str(ports["greeting"]))
    for k in ("greeting", "detect", "opaque"):
        wait_port(ports[k])
    direct, detect, opaque = (first_byte_ms(ports[k]) for k in ("greeting", "detect", "opaque"))
    print("server-first protocol, connect to first greeting byte, median of 20 (ms): "
          f"direct={direct:.3f}, sidecar={detect:.3f} (the detection timeout), "
          f"sidecar with the port opaque={opaque:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", choices=["proxy", "sessions", "idle", "admission", "cores", "instructions", "pressure"],
                    help="run one part only")
    ap.add_argument("--idle", type=int, default=10000, metavar="N", help="idle connections per target (idle part)")
    ap.add_argument("--idle-other", type=int, default=2000, metavar="N",
                    help="idle HTTP/2 and raw TCP connections per target (idle part)")
    ap.add_argument("--baseline", metavar="BIN",
                    help="another mirrord-proxy binary (e.g. built from an earlier commit), measured as 'baseline' "
                         "in the same interleaved rounds")
    ap.add_argument("--baseline-injector", metavar="BIN",
                    help="another mirrord-injector binary, measured in the admission part's rounds")
    args = ap.parse_args()
    # SIGTERM (timeout, kill) ends the run as Ctrl-C does: through the
    # cleanup that stops every process it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    for tool in ("wrk", "oha", "h2load", "iperf3", "nginx", "haproxy", "nghttpx", "nghttpd", "taskset", "valgrind",
                 "tcpdump"):
        if not shutil.which(tool):
            sys.exit(f"bench needs {tool}: run scripts/bench.sh, which installs it")

    if args.only == "admission":
        admission.bench(rounds=args.rounds, baseline=args.baseline_injector)
        return
    if args.only == "instructions":
        instructions.bench(args.baseline)
        return
    if args.only == "pressure":
        tmp = tempfile.mkdtemp()
        try:
            pressure_bench(tmp, args.baseline)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp = tempfile.mkdtemp()
    procs = Procs()
    if args.only in ("sessions", "cores"):
        try:
            if args.only == "sessions":
                session_bench(procs, tmp, args.seconds, args.rounds, args.baseline)
            else:
                cores_bench(procs, tmp, args.seconds, args.rounds, args.baseline)
        finally:
            procs.stop()
            shutil.rmtree(tmp, ignore_errors=True)
        return
    ports = {k: free_port() for k in ("app", "iperf", "grpc", "sidecar", "sidecar_tcp", "sidecar_grpc", "nginx",
                                       "nginx_h2", "nginx_grpc", "haproxy", "haproxy_h2", "haproxy_tcp", "haproxy_grpc",
                                       "nghttpx_h2", "nghttpx_grpc", "baseline", "baseline_tcp", "baseline_grpc")}
    try:
        procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['app']}"])
        procs.start(["iperf3", "-s", "-p", str(ports["iperf"])])
        procs.start([f"{RELEASE}/sample-app", "--grpc", f"127.0.0.1:{ports['grpc']}"])
        sidecar = start_sidecar(procs, ports["sidecar"], ports["app"])
        start_sidecar(procs, ports["sidecar_tcp"], ports["iperf"])
        sidecar_grpc = start_sidecar(procs, ports["sidecar_grpc"], ports["grpc"])
        baseline = baseline_grpc = None
        if args.baseline:
            baseline = start_sidecar(procs, ports["baseline"], ports["app"], binary=args.baseline)
            start_sidecar(procs, ports["baseline_tcp"], ports["iperf"], binary=args.baseline)
            baseline_grpc = start_sidecar(procs, ports["baseline_grpc"], ports["grpc"], binary=args.baseline)
        nginx = procs.start(["nginx", "-c", nginx_conf(tmp, ports["nginx"], ports["nginx_h2"], ports["nginx_grpc"],
                                                       ports["app"], ports["grpc"])])
        haproxy = procs.start(["haproxy", "-f", haproxy_conf(tmp, ports["haproxy"], ports["haproxy_h2"], ports["haproxy_tcp"],
                                                  ports["haproxy_grpc"], ports["app"], ports["iperf"], ports["grpc"])])
        nghttpx_h2 = procs.start(nghttpx_args(ports["nghttpx_h2"], ports["app"]))
        nghttpx_grpc = procs.start(nghttpx_args(ports["nghttpx_grpc"], ports["grpc"]))
        for k in ("app", "iperf", "grpc", "sidecar", "sidecar_tcp", "sidecar_grpc", "nginx", "nginx_h2", "nginx_grpc",
                  "haproxy", "haproxy_h2", "haproxy_tcp", "haproxy_grpc", "nghttpx_h2", "nghttpx_grpc"):
            try:
                wait_port(ports[k])
            except RuntimeError as e:
                raise RuntimeError(f"{k}: {e}")
        time.sleep(0.5)
        idle_rss, _, _ = proc_stat(sidecar.pid)

        h1 = {"direct": ports["app"], "sidecar": ports["sidecar"], "nginx": ports["nginx"], "haproxy": ports["haproxy"]}
        h2 = {"direct": ports["app"], "sidecar": ports["sidecar"], "nginx": ports["nginx_h2"],
              "haproxy": ports["haproxy_h2"], "nghttpx": ports["nghttpx_h2"]}
        grpc = {"direct": ports["grpc"], "sidecar": ports["sidecar_grpc"], "nginx": ports["nginx_grpc"],
                "haproxy": ports["haproxy_grpc"], "nghttpx": ports["nghttpx_grpc"]}
        unary_message = grpc_message(tmp, "unary.bin", 100, 1)
        stream_messages = grpc_message(tmp, "stream.bin", 1024, 1024)
        tcp = {"direct": ports["iperf"], "sidecar": ports["sidecar_tcp"], "haproxy": ports["haproxy_tcp"]}
        if args.baseline:
            wait_port(ports["baseline"])
            wait_port(ports["baseline_tcp"])
            wait_port(ports["baseline_grpc"])
            grpc["baseline"] = ports["baseline_grpc"]
            h1["baseline"] = h2["baseline"] = ports["baseline"]
            tcp["baseline"] = ports["baseline_tcp"]
        if args.only == "idle":
            targets = {"sidecar": (ports["sidecar"], [sidecar.pid]), "nginx": (ports["nginx"], children(nginx.pid)),
                       "haproxy": (ports["haproxy"], [haproxy.pid])}
            if args.baseline:
                targets["baseline"] = (ports["baseline"], [baseline.pid])
            # The pause guard (a container of its own in pods that may be
            # paused), watching a sidecar, none of the app's processes stopped.
            guards = {"guard": procs.start([f"{RELEASE}/mirrord-proxy", "guard"])}
            if args.baseline:
                guards["baseline guard"] = procs.start([args.baseline, "guard"])
            idle_wakeups(targets | {"nghttpx": (ports["nghttpx_h2"], [nghttpx_h2.pid] + children(nghttpx_h2.pid))}
                         | {name: (None, [p.pid]) for name, p in guards.items()})
            idle_bench(targets, args.idle, args.seconds)
            others = {"h2": {"sidecar": (ports["sidecar"], [sidecar.pid]),
                             "nghttpx": (ports["nghttpx_h2"], [nghttpx_h2.pid] + children(nghttpx_h2.pid)),
                             "haproxy": (ports["haproxy_h2"], [haproxy.pid])},
                      "tcp": idle_tcp_targets(procs, tmp, args.baseline)}
            if args.baseline:
                others["h2"]["baseline"] = (ports["baseline"], [baseline.pid])
            idle_protocols(others, args.idle_other)
            unread_bench(tmp, args.baseline)
            return
        results = {m: {k: [] for k in targets} for m, targets in
                   (("h1_rps", h1), ("new_conn", h1), ("lat", h1), ("h2_rps", h2), ("h2_one", h2), ("grpc_unary", grpc),
                    ("grpc_stream", grpc), ("tcp", tcp))}
        sidecar_cpu, sidecar_reqs = 0.0, 0
        cpu_pids = {"sidecar": [sidecar.pid], "nginx": children(nginx.pid), "haproxy": [haproxy.pid]}
        if args.baseline:
            cpu_pids["baseline"] = [baseline.pid]
        results["cpu"] = {k: [] for k in cpu_pids}
        # CPU per HTTP/2 request and per gRPC call: every process and thread
        # of each proxy (nginx's and nghttpx's workers) over its h2load phase.
        h2_pids = {"sidecar": [sidecar.pid], "nginx": children(nginx.pid), "haproxy": [haproxy.pid],
                   "nghttpx": [nghttpx_h2.pid] + children(nghttpx_h2.pid)}
        grpc_pids = {"sidecar": [sidecar_grpc.pid], "nginx": children(nginx.pid), "haproxy": [haproxy.pid],
                     "nghttpx": [nghttpx_grpc.pid] + children(nghttpx_grpc.pid)}
        if args.baseline:
            h2_pids["baseline"], grpc_pids["baseline"] = [baseline.pid], [baseline_grpc.pid]
        results["h2_cpu"] = {k: [] for k in h2_pids}
        results["h2_one_cpu"] = {k: [] for k in h2_pids}
        results["grpc_cpu"] = {k: [] for k in grpc_pids}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for k, port in h1.items():
                before = proc_stat(sidecar.pid)[2]
                rps = wrk(port, args.seconds)
                results["h1_rps"][k].append(rps)
                if k == "sidecar":
                    sidecar_cpu += proc_stat(sidecar.pid)[2] - before
                    sidecar_reqs += rps * args.seconds
            for k, port in h1.items():
                results["new_conn"][k].append(wrk_close(port, args.seconds))
            for k, port in h1.items():
                before = cpu_ns(cpu_pids[k]) if k in cpu_pids else 0
                results["lat"][k].append(oha_latency(port, args.seconds, 2000))
                if k in cpu_pids:
                    # ms of CPU per 1000 requests at the fixed rate.
                    results["cpu"][k].append((cpu_ns(cpu_pids[k]) - before) / 1e6 / (2000 * args.seconds / 1000))
            for rate, cpu, targets, pids, run in (
                    ("h2_rps", "h2_cpu", h2, h2_pids, lambda port: h2load(port, args.seconds)),
                    ("h2_one", "h2_one_cpu", h2, h2_pids, lambda port: h2load_one(port, args.seconds)),
                    ("grpc_unary", "grpc_cpu", grpc, grpc_pids,
                     lambda port: grpc_unary(port, args.seconds, unary_message))):
                for k, port in targets.items():
                    before = cpu_ns(pids[k]) if k in pids else 0
                    rps = run(port)
                    results[rate][k].append(rps)
                    if k in pids:
                        # µs of CPU per request over the phase.
                        results[cpu][k].append((cpu_ns(pids[k]) - before) / 1e3 / (rps * args.seconds))
            for k, port in grpc.items():
                results["grpc_stream"][k].append(grpc_stream(port, args.seconds, stream_messages))
            for k, port in tcp.items():
                results["tcp"][k].append(iperf(port, args.seconds))
        _, loaded_rss, _ = proc_stat(sidecar.pid)

        med = lambda xs: statistics.median(xs)
        print(f"\n== mirrord sidecar benchmark ({args.rounds} rounds x {args.seconds}s, interleaved; app+proxies on CPU 0, load on CPU 1)")
        row("HTTP/1.1 keep-alive throughput, req/s (wrk -c32)", results["h1_rps"])
        row("HTTP/1.1 new connection per request, req/s (wrk -c16, Connection: close)",
            results["new_conn"])
        for pct in ("p50", "p99"):
            row(f"HTTP/1.1 latency at 2000 req/s, {pct} ms (oha)",
                {k: [x[pct] for x in v] for k, v in results["lat"].items()}, higher_better=False)
        added = {k: med([x["p50"] for x in v]) - med([x["p50"] for x in results["lat"]["direct"]])
                 for k, v in results["lat"].items() if k != "direct"}
        print("  added p50 latency vs direct, ms: " + ", ".join(f"{k}={v:.3f}" for k, v in added.items()))
        errors = {k: sum(x["errors"] for x in v) for k, v in results["lat"].items()}
        print(f"  errors: {errors}")
        row("HTTP/2 throughput, req/s (h2load -c8 -m16; nginx speaks HTTP/1.1 to the app, the others HTTP/2)",
            results["h2_rps"])
        row("CPU per HTTP/2 request, us (the h2load phase; all threads of each proxy)", results["h2_cpu"],
            higher_better=False)
        row("HTTP/2 throughput over one client connection, req/s (h2load -c1 -m128: one app connection for every proxy)",
            results["h2_one"])
        row("CPU per HTTP/2 request over one client connection, us (the h2load -c1 phase)", results["h2_one_cpu"],
            higher_better=False)
        row("gRPC unary calls/s (h2load -c8 -m16, 100-byte message, echoed)", results["grpc_unary"])
        row("CPU per gRPC unary call, us (the h2load phase; all threads of each proxy)", results["grpc_cpu"],
            higher_better=False)
        row("gRPC bidirectional streaming, MB/s echoed (h2load -c4 -m1, 1024 messages of 1 KiB per call)",
            results["grpc_stream"])
        row("raw TCP throughput, Gbit/s (iperf3; haproxy mode tcp)", results["tcp"])
        print(f"sidecar memory: idle RSS {idle_rss:.1f} MiB, peak RSS under load {loaded_rss:.1f} MiB")
        print(f"sidecar CPU: {1000 * sidecar_cpu / max(sidecar_reqs, 1) * 1000:.1f} ms per 1000 requests (wrk phase)")
        row("CPU per 1000 requests at 2000 req/s, ms (the oha phase; all threads of each proxy)", results["cpu"],
            higher_better=False)
        detection_wait(procs)
        if args.only != "proxy":
            session_bench(procs, tmp, args.seconds, args.rounds, args.baseline)
            cores_bench(procs, tmp, args.seconds, args.rounds, args.baseline)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.only is None:
        admission.bench(rounds=args.rounds, baseline=args.baseline_injector)
        instructions.bench(args.baseline)
        tmp = tempfile.mkdtemp()
        try:
            pressure_bench(tmp, args.baseline)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
