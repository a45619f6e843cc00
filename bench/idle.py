"""The idle part (`--only idle`): wake-ups and CPU with no connection at
all; RSS per idle keep-alive connection; idle HTTP/2 and raw TCP
connections; HTTP/2 clients that read nothing. See bench/README.md."""
import os
import re
import socket
import subprocess
import sys
import time

from load import H2_PREFACE, h2_frame, h2load_run, unread_h2, wrk_errors
from peers import nghttpx_args
from procs import children, cpu_ns, free_port, LOAD_CPU, Procs, rss_kib, serve_big, start_sidecar, switches, wait_port


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
        ports = {k: free_port() for k in ("app", "sidecar", "baseline", "nghttpx", "haproxy")}
        serve_big(procs, tmp, ports["app"])
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
        for name, proc in targets.items():
            pids = [proc.pid] + (children(proc.pid) if name == "nghttpx" else [])
            h2load_run(["-n", "4", "-c1", f"http://127.0.0.1:{ports[name]}/big"])
            time.sleep(0.5)
            before = rss_kib(pids)
            held = []
            for _ in range(connections):
                s = socket.create_connection(("127.0.0.1", ports[name]))
                s.sendall(unread_h2(streams))
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
