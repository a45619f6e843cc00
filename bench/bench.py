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
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import admission
import instructions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
APP_CPU, LOAD_CPU, BOTH_CPUS = "0", "1", "0,1"
PEERS = ("nginx", "haproxy", "nghttpx")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, cpu=APP_CPU, **kw):
        # Each in its own process group, so that stopping it also stops what
        # it started (nginx's workers).
        p = subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def start_sidecar(procs, listen, upstream, *extra, tunnel=0, binary=None, threads=1, cpu=APP_CPU):
    """The sidecar (this build's, or `binary`) in explicit mode with `threads`
    worker threads, listening on `listen` for `upstream`; its admin server on
    a port the kernel picks (nothing reads it)."""
    return procs.start([binary or f"{RELEASE}/mirrord-proxy", "run", "--threads", str(threads), "--listen",
                        f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{upstream}", "--admin", "127.0.0.1:0",
                        "--tunnel", f"127.0.0.1:{tunnel}", *extra], cpu=cpu)


def nginx_config(tmp, name, upstreams, server, workers=1):
    """nginx with `workers` workers (one unless told) as a plain reverse
    proxy; `upstreams` maps names to ports."""
    blocks = "\n".join(f"  upstream {n} {{ server 127.0.0.1:{p}; keepalive 64; }}" for n, p in upstreams.items())
    conf = f"""
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log /dev/null crit;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
{blocks}
  server {{
{server}
  }}
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
}}
"""
    path = os.path.join(tmp, f"{name}.conf")
    open(path, "w").write(conf)
    return path


PROXY_TO = 'proxy_http_version 1.1; proxy_set_header Connection "";'


def nginx_conf(tmp, port, h2_port, grpc_port, app, grpc_app):
    # The gRPC server is a second server block: grpc_pass speaks HTTP/2 to
    # the app, proxy_pass only HTTP/1.1.
    return nginx_config(tmp, "nginx", {"app": app, "grpcapp": grpc_app}, f"""    listen 127.0.0.1:{port};
    listen 127.0.0.1:{h2_port} http2;
    location / {{ proxy_pass http://app; {PROXY_TO} }}
  }}
  server {{
    listen 127.0.0.1:{grpc_port} http2;
    client_max_body_size 0;
    location / {{ grpc_pass grpc://grpcapp; }}""")


def nghttpx_args(port, app):
    """nghttpx (nghttp2's proxy) with one worker thread, HTTP/2 to the app,
    adding and rewriting nothing."""
    return ["nghttpx", "--conf=/dev/null", "--single-thread", "-n1", f"-f127.0.0.1,{port};no-tls",
            f"-b127.0.0.1,{app};;proto=h2", "--errorlog-file=/dev/null", "--no-via", "--no-server-rewrite",
            "--no-add-x-forwarded-proto", "--no-strip-incoming-x-forwarded-proto", "--no-ocsp"]


def haproxy_conf(tmp, port, h2_port, tcp_port, grpc_port, app, app_tcp, grpc_app):
    conf = f"""
global
  nbthread 1
  # Two descriptors per connection within the open-files hard limit (often
  # 20000 in containers; haproxy refuses to start beyond it).
  maxconn 9900
defaults
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend h1
  mode http
  bind 127.0.0.1:{port}
  default_backend app
frontend h2
  mode http
  bind 127.0.0.1:{h2_port} proto h2
  default_backend app_h2
backend app
  mode http
  http-reuse always
  server app 127.0.0.1:{app}
backend app_h2
  mode http
  server app 127.0.0.1:{app} proto h2
frontend grpc
  mode http
  bind 127.0.0.1:{grpc_port} proto h2
  default_backend grpc
backend grpc
  mode http
  server grpc 127.0.0.1:{grpc_app} proto h2
listen tcp
  mode tcp
  bind 127.0.0.1:{tcp_port}
  server iperf 127.0.0.1:{app_tcp}
"""
    path = os.path.join(tmp, "haproxy.cfg")
    open(path, "w").write(conf)
    return path


def load(args, cpu=LOAD_CPU):
    out = subprocess.run(["taskset", "-c", cpu] + args, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {out.stderr[-500:]}")
    return out.stdout


def wrk(port, seconds):
    out = load(["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"])
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk_cores(port, seconds, *headers):
    """Load from two threads sharing both CPUs (cores part): keep-alive, or
    with `-H 'Connection: close'` a new connection per request."""
    out = load(["wrk", "-t2", "-c64", f"-d{seconds}s", *headers, f"http://127.0.0.1:{port}/"], cpu=BOTH_CPUS)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk_close(port, seconds):
    """Closed loop, each request on a new connection (Connection: close)."""
    out = load(["wrk", "-t1", "-c16", f"-d{seconds}s", "-H", "Connection: close", f"http://127.0.0.1:{port}/"])
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk_errors(out):
    """Socket errors plus non-2xx/3xx answers in a wrk report."""
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return errors


def oha_latency(port, seconds, rate):
    out = load(["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "-c", "16",
                "--latency-correction", f"http://127.0.0.1:{port}/"])
    data = json.loads(out)
    p = data["latencyPercentiles"]
    # oha cuts the requests in flight when its duration ends: not the target's.
    errors = sum(n for e, n in data.get("errorDistribution", {}).items() if e != "aborted due to deadline")
    return {"p50": p["p50"] * 1000, "p99": p["p99"] * 1000, "errors": errors}


def h2load_run(args):
    """Runs h2load; returns (req/s, MB/s received). Any request that failed
    or was not answered 2xx fails the bench: a rate of errors is no rate."""
    out = load(["h2load", *args])
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored", out)
    if not failed or failed.group(1) != "0" or failed.group(2) != "0":
        raise RuntimeError(f"h2load {' '.join(args)}: requests failed:\n{out[-800:]}")
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s, ([\d.]+)([KMG]?)B/s", out)
    scale = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}[m.group(3)]
    return float(m.group(1)), float(m.group(2)) * scale


def h2load(port, seconds):
    return h2load_run(["-D", str(seconds), "-c", "8", "-m", "16", "-t", "1", f"http://127.0.0.1:{port}/"])[0]


def h2load_one(port, seconds):
    """One client connection with 128 streams: every proxy then has one
    connection to the app, whether it gives each client its own (the
    sidecar) or multiplexes clients onto shared ones (nghttpx)."""
    return h2load_run(["-D", str(seconds), "-c", "1", "-m", "128", "-t", "1", f"http://127.0.0.1:{port}/"])[0]


def grpc_message(tmp, name, size, count):
    """A file of `count` gRPC messages (uncompressed, `size` bytes each)."""
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write((b"\0" + size.to_bytes(4, "big") + b"m" * size) * count)
    return path


GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def grpc_unary(port, seconds, message):
    """Unary calls of one 100-byte message each, 8 connections x 16 streams."""
    return h2load_run(["-D", str(seconds), "-c", "8", "-m", "16", "-t", "1", "-d", message, *GRPC_HEADERS,
                       f"http://127.0.0.1:{port}/bench.Echo/Unary"])[0]


def grpc_stream(port, seconds, messages):
    """Bidirectional streams of 1024 messages of 1 KiB, echoed as they come;
    4 connections with one stream each. MB/s received (the echo)."""
    return h2load_run(["-D", str(seconds), "-c", "4", "-m", "1", "-t", "1", "-d", messages, *GRPC_HEADERS,
                       f"http://127.0.0.1:{port}/bench.Echo/Bidi"])[1]


def iperf(port, seconds):
    out = load(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"])
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def proc_stat(pid):
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, hwm, cpu


def cpu_ns(pids):
    """CPU time of every thread of `pids`, in ns (schedstat: exact, unlike
    the clock ticks of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def children(pid):
    """Direct children of a process (nginx's worker under its master)."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(k) for k in f.read().split()]
    return kids


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return total


def switches(pids):
    """Context switches so far of every thread of `pids`: each time one
    went to sleep or was preempted, so an idle process's count is the times
    it woke."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    total += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", f.read()))
            except FileNotFoundError:
                pass
    return total


def idle_wakeups(targets, seconds=10):
    """Wake-ups per second of each proxy with no connection at all: a sidecar
    sits in every opted-in pod, most of them idle most of the time."""
    time.sleep(2)  # the start-up's port checks settle
    before = {name: (switches(pids), cpu_ns(pids)) for name, (_, pids) in targets.items()}
    time.sleep(seconds)
    print(f"\n== idle, no connection, {seconds} s: wake-ups per second (context switches, every thread), CPU")
    for name, (_, pids) in targets.items():
        woke, used = switches(pids) - before[name][0], cpu_ns(pids) - before[name][1]
        print(f"  {name}: {woke / seconds:.1f} wake-ups/s, {used / 1e3 / seconds:.1f} us CPU/s")


def idle_bench(targets, count, seconds):
    """`count` idle keep-alive connections (each has had one request answered)
    per target, RSS per connection, wrk -c64 meanwhile, RSS after they close."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"\n== {count} idle keep-alive connections per target (each after one answered request), "
          f"then wrk -c64 for {seconds}s beside them")
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for name, (port, pids) in targets.items():
        time.sleep(1.5)
        before = rss_kib(pids)
        conns, failed = [], 0
        # haproxy's maxconn (above) leaves room for wrk's 64.
        n = min(count, 9900 - 100) if name == "haproxy" else count
        for _ in range(n):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(request)
                if not s.recv(65536):
                    failed += 1
                conns.append(s)
            except OSError:
                failed += 1
        time.sleep(2)  # pooled app connections expire, buffers settle
        held = rss_kib(pids)
        out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{seconds}s",
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=300).stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        errors = wrk_errors(out)
        alive = 0
        for s in conns:
            try:
                s.sendall(request)
                alive += bool(s.recv(65536))
            except OSError:
                pass
            s.close()
        time.sleep(2)
        after = rss_kib(pids)
        per = (held - before) * 1024 / max(n - failed, 1)
        print(f"  {name}: {n} connections, {per:,.0f} bytes per idle connection (RSS {before / 1024:.1f} -> {held / 1024:.1f} MiB, "
              f"{after / 1024:.1f} MiB after they closed); {failed} not opened; wrk -c64 {rps:,.0f} req/s with "
              f"{errors} errors; {alive} of {len(conns)} idle connections answered again")


SINK = """
import asyncio, sys
async def hold(reader, writer):
    while await reader.read(65536):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
"""


def idle_open(kind, port):
    """One idle connection of `kind`: "h2", a client that has done the
    HTTP/2 handshake (preface, SETTINGS both ways and acknowledged) and
    opened no stream, as a gRPC channel between calls; "tcp", a client of a
    client-first protocol that sent its first bytes (a PostgreSQL SSLRequest)
    and waits."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "tcp":
        s.sendall(bytes.fromhex("0000000804d2162f"))
        return s
    s.sendall(H2_PREFACE + h2_frame(4, 0, 0, b""))
    got = b""
    while len(got) < 9:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed during the HTTP/2 handshake")
        got += chunk
    # The server's SETTINGS comes first (RFC 9113 §3.4): acknowledge it.
    s.sendall(h2_frame(4, 1, 0, b""))
    return s


def idle_tcp_targets(procs, tmp, baseline=None):
    """A server that holds every connection and reads (the app of the raw TCP
    idle part), the sidecar and haproxy (mode tcp) in front of it."""
    ports = {k: free_port() for k in ("sink", "sidecar", "haproxy", "baseline")}
    sink = os.path.join(tmp, "sink.py")
    open(sink, "w").write(SINK)
    procs.start([sys.executable, sink, str(ports["sink"])])
    targets = {"sidecar": (ports["sidecar"], [start_sidecar(procs, ports["sidecar"], ports["sink"]).pid])}
    if baseline:
        targets["baseline"] = (ports["baseline"], [start_sidecar(procs, ports["baseline"], ports["sink"], binary=baseline).pid])
    hap = os.path.join(tmp, "idle-tcp-haproxy.cfg")
    open(hap, "w").write(f"""
global
  nbthread 1
  maxconn 9900
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen tcp
  bind 127.0.0.1:{ports['haproxy']}
  server sink 127.0.0.1:{ports['sink']}
""")
    targets["haproxy"] = (ports["haproxy"], [procs.start(["haproxy", "-f", hap]).pid])
    for port, _ in targets.values():
        wait_port(port)
    wait_port(ports["sink"])
    return targets


def idle_protocols(targets, count):
    """RSS per idle connection of the other protocols: `targets` maps a kind
    ("h2", "tcp") to {name: (port, pids)}. Each target gets `count`
    connections, held for 2 s, then how many the target kept open."""
    for kind, named in targets.items():
        what = {"h2": "HTTP/2 connections after the handshake, no stream open",
                "tcp": "raw TCP connections of a client-first protocol"}[kind]
        print(f"\n== {count} idle {what}, per target")
        for name, (port, pids) in named.items():
            time.sleep(1.5)
            before = rss_kib(pids)
            conns, failed = [], 0
            for _ in range(count):
                try:
                    conns.append(idle_open(kind, port))
                except OSError:
                    failed += 1
            time.sleep(2)
            held = rss_kib(pids)
            open_still = 0
            for c in conns:
                c.setblocking(False)
                try:
                    open_still += c.recv(65536, socket.MSG_PEEK) != b""
                except BlockingIOError:
                    open_still += 1
                except OSError:
                    pass
                c.close()
            per = (held - before) * 1024 / max(count - failed, 1)
            print(f"  {name}: {per:,.0f} bytes per idle connection (RSS {before / 1024:.1f} -> {held / 1024:.1f} MiB); "
                  f"{failed} not opened; {open_still} of {len(conns)} still open")


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def unread_bench(tmp, baseline=None, connections=4, streams=100):
    """HTTP/2 clients that ask for a 4 MiB answer on each of `streams`
    streams, grant the largest flow-control windows and read nothing
    (RFC 9113 §10.5), in front of nghttpd (which sends whatever the windows
    allow): each proxy's RSS growth per such connection, and whether it
    answers a new client meanwhile."""
    print(f"\n== HTTP/2 clients that read nothing: {connections} connections x {streams} streams of a 4 MiB answer, "
          "windows at 2^31-1; RSS growth per connection (lower is better)")
    procs = Procs()
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "big"), "wb") as f:
            f.write(bytes(4 << 20))
        ports = {k: free_port() for k in ("app", "sidecar", "baseline", "nghttpx", "haproxy")}
        procs.start(["nghttpd", "--no-tls", "-d", www, str(ports["app"])])
        targets = {"sidecar": start_sidecar(procs, ports["sidecar"], ports["app"]),
                   "nghttpx": procs.start(nghttpx_args(ports["nghttpx"], ports["app"]))}
        if baseline:
            targets["baseline"] = start_sidecar(procs, ports["baseline"], ports["app"], binary=baseline)
        hap = os.path.join(tmp, "unread-haproxy.cfg")
        open(hap, "w").write(f"""
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen h2
  bind 127.0.0.1:{ports['haproxy']} proto h2
  server app 127.0.0.1:{ports['app']} proto h2
""")
        targets["haproxy"] = procs.start(["haproxy", "-f", hap])
        for k in ("app", *targets):
            wait_port(ports[k])
        block = bytes([0x82, 0x86]) + b"\x00\x05:path\x04/big" + b"\x00\x0a:authority\x01x"
        for name, proc in targets.items():
            pids = [proc.pid] + (children(proc.pid) if name == "nghttpx" else [])
            h2load_run(["-n", "4", "-c1", f"http://127.0.0.1:{ports[name]}/big"])
            time.sleep(0.5)
            before = rss_kib(pids)
            held = []
            for _ in range(connections):
                s = socket.create_connection(("127.0.0.1", ports[name]))
                out = H2_PREFACE + h2_frame(4, 0, 0, bytes([0, 4, 0x7f, 0xff, 0xff, 0xff]))
                out += h2_frame(8, 0, 0, (0x7fffffff - 65535).to_bytes(4, "big"))
                out += b"".join(h2_frame(1, 5, 1 + 2 * i, block) for i in range(streams))
                s.sendall(out)
                held.append(s)
            peak, still, start = before, time.time(), time.time()
            while time.time() - start < 3 or time.time() - still < 1:
                time.sleep(0.1)
                now = rss_kib(pids)
                if now > peak:
                    peak, still = now, time.time()
                if time.time() - start > 20:
                    break
            try:
                h2load_run(["-n", "1", "-c1", "-N", "10", f"http://127.0.0.1:{ports[name]}/big"])
                served = "a new client is answered meanwhile"
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                served = f"a new client is NOT answered meanwhile ({str(e).splitlines()[0][:80]})"
            for s in held:
                s.close()
            print(f"  {name}: {(peak - before) / connections / 1024:.1f} MiB per connection "
                  f"(RSS {before / 1024:.1f} -> {peak / 1024:.1f} MiB); {served}")
    finally:
        procs.stop()


def nginx_mirror_conf(tmp, port, app, mirror_target):
    return nginx_config(tmp, f"nginx-mirror-{port}", {"app": app, "copy": mirror_target}, f"""    listen 127.0.0.1:{port};
    location / {{ mirror /mirror; proxy_pass http://app; {PROXY_TO} }}
    location = /mirror {{ internal; proxy_pass http://copy$request_uri; {PROXY_TO} }}""")


class Session:
    """`mirrord-cli connect` with a config, ended with Ctrl-C."""

    def __init__(self, tunnel, config, tmp):
        path = os.path.join(tmp, f"session-{time.time_ns()}.json")
        open(path, "w").write(json.dumps(config))
        # The developer's side runs on the "laptop" CPU, with the load generator.
        self.proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, f"{RELEASE}/mirrord-cli", "connect", "--addr", f"127.0.0.1:{tunnel}",
                                      "-f", path, "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if '"plan"' in line:
                # The rest of its events (one per copy) are read and
                # dropped, as a reader of the CLI's output would.
                threading.Thread(target=collections.deque, args=(self.proc.stdout, 0), daemon=True).start()
                return
        raise RuntimeError("the session did not open")

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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


def session_bench(procs, tmp, seconds, rounds, baseline=None):
    """The primary path at 2000 req/s with no session and with a mirror
    session whose local app is fast, slow and stalled, through this build's
    sidecar and (with `baseline`) another build's, interleaved; nginx's
    mirror beside them; and a stolen request's latency over the tunnel."""
    ports = {k: free_port() for k in ("app", "fast", "slow", "stalled", "sidecar", "tunnel", "nginx_slow", "nginx_stalled",
                                       "baseline", "baseline_tunnel")}
    procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['app']}"])
    # The local apps are on the "laptop" CPU; nginx's mirror targets are the same processes.
    procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['fast']}"], cpu=LOAD_CPU)
    procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['slow']}", "--delay-ms", "200"], cpu=LOAD_CPU)
    procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['stalled']}", "--delay-ms", "100000000"], cpu=LOAD_CPU)
    # (row prefix, port, tunnel port, binary) of each sidecar measured.
    sidecars = [("", "sidecar", "tunnel", None)]
    if baseline:
        sidecars.append(("baseline ", "baseline", "baseline_tunnel", baseline))
    pids = {prefix: start_sidecar(procs, ports[name], ports["app"], "--ports", str(ports["app"]), "--insecure-no-token",
                                  tunnel=ports[tunnel], binary=binary).pid
            for prefix, name, tunnel, binary in sidecars}
    procs.start(["nginx", "-c", nginx_mirror_conf(tmp, ports["nginx_slow"], ports["app"], ports["slow"])])
    procs.start(["nginx", "-c", nginx_mirror_conf(tmp, ports["nginx_stalled"], ports["app"], ports["stalled"])])
    for k in ports:
        if baseline or not k.startswith("baseline"):
            wait_port(ports[k])

    def mirror_to(target):
        return {"feature": {"network": {"incoming": {"mode": "mirror", "port_mapping": [[ports[target], ports["app"]]]}}}}

    cases = (("mirror fast", "fast"), ("mirror slow (200 ms)", "slow"), ("mirror stalled", "stalled"))
    primary = {f"{prefix}{k}": [] for prefix in pids for k in ("no session", *(name for name, _ in cases))}
    primary |= {"nginx mirror slow (200 ms)": [], "nginx mirror stalled": []}
    stolen = {"direct to local app": [], "stolen via tunnel": []}

    def primary_path(prefix, name, session=None):
        """oha at 2000 req/s, and the sidecar's CPU time (every thread) per
        request; with a session, the CLI's too (the developer's side: on a
        cluster, the laptop's). Then the latency at the sidecar's socket."""
        watched = [pids[prefix]] + ([session.proc.pid] if session else [])
        before = [cpu_ns([pid]) for pid in watched]
        run = oha_latency(ports[name], seconds, 2000)
        used = [(cpu_ns([pid]) - b) / (seconds * 2000) / 1000 for pid, b in zip(watched, before)]
        run["cpu_us"] = used[0]
        if session:
            run["cli_us"] = used[1]
        # Again with the capture on, which costs both sides CPU: apart from
        # the figures above.
        wire = Wire(ports[name], tmp)
        oha_latency(ports[name], seconds, 2000)
        run["wire"] = wire.stop()
        return run

    for r in range(rounds):
        print(f"sessions round {r + 1}/{rounds}", file=sys.stderr)
        for prefix, name, tunnel, _ in sidecars:
            primary[f"{prefix}no session"].append(primary_path(prefix, name))
            for case, target in cases:
                session = Session(ports[tunnel], mirror_to(target), tmp)
                try:
                    primary[f"{prefix}{case}"].append(primary_path(prefix, name, session))
                finally:
                    session.close()
        primary["nginx mirror slow (200 ms)"].append(oha_latency(ports["nginx_slow"], seconds, 2000))
        primary["nginx mirror stalled"].append(oha_latency(ports["nginx_stalled"], seconds, 2000))
        stolen["direct to local app"].append(oha_latency(ports["fast"], seconds, 200))
        steal = {"feature": {"network": {"incoming": {"mode": "steal", "port_mapping": [[ports["fast"], ports["app"]]]}}}}
        session = Session(ports["tunnel"], steal, tmp)
        try:
            stolen["stolen via tunnel"].append(oha_latency(ports["sidecar"], seconds, 200))
        finally:
            session.close()
    _, peak, _ = proc_stat(pids[""])
    med = statistics.median
    print("\n== sessions: primary path at 2000 req/s (oha -c16) with a mirror session, p50/p99 ms and errors")
    for name, runs in primary.items():
        prefix = "baseline " if name.startswith("baseline ") else ""
        base = med([x["p99"] for x in primary[f"{prefix}no session"]])
        p50, p99 = med([x["p50"] for x in runs]), med([x["p99"] for x in runs])
        errors = sum(x["errors"] for x in runs)
        spread = f"[{min(x['p99'] for x in runs) / base:.2f}-{max(x['p99'] for x in runs) / base:.2f}]"
        cpu = f" sidecar CPU {med([x['cpu_us'] for x in runs]):.1f} us/req" if "cpu_us" in runs[0] else ""
        if "cli_us" in runs[0]:
            cpu += f", CLI {med([x['cli_us'] for x in runs]):.1f}"
        print(f"  {name:30s} p50={p50:8.3f} p99={p99:9.3f} (p99 x{p99 / base:.2f} {spread} of no session) "
              f"errors={errors}{cpu}")
    print(f"  sidecar peak RSS through the mirror runs: {peak:.1f} MiB")
    print("== the same runs at the sidecar's socket (tcpdump on lo: request's first byte in to response's first byte "
          "out), p50/p99 ms")
    for name, runs in primary.items():
        if "wire" not in runs[0]:
            continue
        prefix = "baseline " if name.startswith("baseline ") else ""
        base = med([x["wire"]["p99"] for x in primary[f"{prefix}no session"]])
        p50, p99 = med([x["wire"]["p50"] for x in runs]), med([x["wire"]["p99"] for x in runs])
        spread = f"[{min(x['wire']['p99'] for x in runs) / base:.2f}-{max(x['wire']['p99'] for x in runs) / base:.2f}]"
        # Each round against the same round's run without a session.
        paired = zip(runs, primary[f"{prefix}no session"])
        within = sum(x["wire"]["p99"] <= 1.1 * none["wire"]["p99"] for x, none in paired)
        print(f"  {name:30s} p50={p50:8.3f} p99={p99:9.3f} (p99 x{p99 / base:.2f} {spread} of no session; "
              f"within +10 % of its round's in {within}/{len(runs)}) requests={sum(x['wire']['count'] for x in runs)}")
    print("== sessions: stolen request latency at 200 req/s over the loopback tunnel")
    d50, d99 = med([x["p50"] for x in stolen["direct to local app"]]), med([x["p99"] for x in stolen["direct to local app"]])
    s50, s99 = med([x["p50"] for x in stolen["stolen via tunnel"]]), med([x["p99"] for x in stolen["stolen via tunnel"]])
    print(f"  direct to the local app: p50={d50:.3f} p99={d99:.3f}; stolen: p50={s50:.3f} p99={s99:.3f}")
    print(f"  added by the tunnel: p50={s50 - d50:.3f} ms, p99={s99 - d99:.3f} ms")


class Wire:
    """The latency of every request as the sidecar's socket sees it: from a
    request's first byte arriving on `port` to the response's first byte
    leaving it, per connection, from tcpdump's timestamps on loopback. The
    load generator's own scheduling is not in it: this is what a pod's
    clients get from the sidecar, whatever shares the client's CPU."""

    def __init__(self, port, tmp):
        self.port, self.path = port, os.path.join(tmp, f"wire-{port}-{time.time_ns()}.pcap")
        payload = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0"
        self.proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, "tcpdump", "-i", "lo", "-n", "-B", "65536", "-s", "96",
                                      "-w", self.path, f"tcp port {port} and {payload}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump says "listening on lo" once it captures.
        if "listening" not in self.proc.stderr.readline():
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start on lo: {self.proc.stderr.read()[-400:]}")

    def stop(self):
        """Stops the capture; returns {"p50", "p99"} in ms and the count."""
        time.sleep(0.1)
        self.proc.terminate()
        rest = self.proc.communicate(timeout=30)[1]
        dropped = re.search(r"(\d+) packets? dropped by kernel", rest)
        if dropped and dropped.group(1) != "0":
            raise RuntimeError(f"tcpdump dropped {dropped.group(1)} packets: the wire latency would be partial")
        out = subprocess.run(["tcpdump", "-r", self.path, "-tt", "-n"], capture_output=True, text=True, check=True).stdout
        os.unlink(self.path)
        asked, took = {}, []
        for line in out.splitlines():
            m = re.match(r"([\d.]+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+):", line)
            if not m:
                continue
            t, src, dst = float(m.group(1)), int(m.group(2)), int(m.group(3))
            if dst == self.port:
                asked.setdefault(src, t)
            elif src == self.port and dst in asked:
                took.append((t - asked.pop(dst)) * 1000)
        if not took:
            raise RuntimeError(f"tcpdump saw no request answered on port {self.port}")
        took.sort()
        return {"p50": took[len(took) // 2], "p99": took[int(len(took) * 0.99)], "count": len(took)}


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


def row(name, rounds, higher_better=True, unit=""):
    """rounds: {target: [value per round]}. Prints each target's median,
    its ratios to direct and to the better peer, and the spread over the
    rounds (min-max)."""
    values = {k: statistics.median(v) for k, v in rounds.items()}
    best_peer = (max if higher_better else min)(values[k] for k in PEERS if k in values)
    parts = []
    for k, v in values.items():
        vs_direct = f"x{v / values['direct']:.2f} direct, " if values.get("direct") else ""
        vs_peer = v / best_peer if best_peer else float("nan")
        spread = f"[{min(rounds[k]):.3f}-{max(rounds[k]):.3f}]"
        parts.append(f"{k}={v:.3f}{unit} {spread} ({vs_direct}x{vs_peer:.2f} best peer)")
    print(f"{name}:\n  " + "\n  ".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", choices=["proxy", "sessions", "idle", "admission", "cores", "instructions"],
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


if __name__ == "__main__":
    main()
