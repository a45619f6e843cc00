"""Instructions per request of each proxy, counted by valgrind's callgrind.

Wall-clock throughput on a shared VM moves by 2x between rounds with the
other tenants' load; the number of instructions a proxy executes for the
same requests does not (the same build and load give the same count to
within a fraction of a percent, whatever else the machine does). This part
runs each proxy alone under callgrind, warms it up, zeroes the counters,
sends a fixed load, dumps the counters and divides by the requests
answered. It counts user-space instructions only: time in the kernel
(syscalls, the TCP stack) is not in it, so it complements the wall-clock
rows rather than replacing them. Lower is better."""
import os
import re
import subprocess
import tempfile
import time

import load
import peers
import procs

WARMUP = 2000


def callgrind(run, tmp, name, args):
    """Starts `args` under callgrind (children too: nghttpx forks its worker),
    its profiles written to tmp/cg.NAME.PID[.N]."""
    out = os.path.join(tmp, f"cg.{name}.%p")
    return run.start(["valgrind", "--tool=callgrind", "--trace-children=yes", f"--callgrind-out-file={out}",
                      *args])


def control(tmp, name, op):
    """Zeroes (-z) or dumps (-d) the counters of every process of target
    `name`; after a dump, the instructions since the last zero."""
    before = set(os.listdir(tmp))
    subprocess.run(["callgrind_control", op], capture_output=True, timeout=60)
    if op != "-d":
        return 0
    # A dump is written as cg.NAME.PID.N (a forked child also gets its
    # cg.NAME.PID, which is not a dump).
    dump = re.compile(rf"cg\.{re.escape(name)}\.\d+\.\d+$")
    deadline = time.time() + 30
    total, seen = 0, set()
    while time.time() < deadline:
        new = {f for f in set(os.listdir(tmp)) - before if dump.match(f) and f not in seen}
        for f in new:
            text = open(os.path.join(tmp, f)).read()
            m = re.search(r"^summary: (\d+)", text, re.M)
            if m:
                total += int(m.group(1))
                seen.add(f)
        if seen:
            time.sleep(0.5)
            if not {f for f in set(os.listdir(tmp)) - before if dump.match(f)} - seen:
                return total
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no profile for {name}")


def h2load_count(args):
    """Runs h2load for a fixed number of requests; all must succeed."""
    out = load.load(["h2load", *args])
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or m.group(2) != "0" or m.group(3) != "0":
        raise RuntimeError(f"h2load {' '.join(args)}: requests failed:\n{out[-800:]}")
    return int(m.group(1))


def wrk_count(port, seconds):
    """wrk, a new connection per request, for `seconds`; requests answered."""
    out = load.load(["wrk", "-t1", "-c16", f"-d{seconds}s", "-H", "Connection: close", f"http://127.0.0.1:{port}/"])
    if load.wrk_errors(out):
        raise RuntimeError(f"wrk through {port}: errors:\n{out[-800:]}")
    return int(re.search(r"(\d+) requests in", out).group(1))


def loads(unary, requests):
    """The measured loads: name -> run(port, n) -> requests answered (a new
    connection per request runs for 3 s, whatever `n`)."""
    grpc = ["-d", unary, *load.GRPC_HEADERS]
    return {
        "h1": lambda port, n=requests: h2load_count(["--h1", "-n", str(n), "-c16", "-t1", f"http://127.0.0.1:{port}/"]),
        "new_conn": lambda port, n=requests: wrk_count(port, 3),
        "h2": lambda port, n=requests: h2load_count(["-n", str(n), "-c8", "-m16", "-t1", f"http://127.0.0.1:{port}/"]),
        "grpc": lambda port, n=requests: h2load_count(["-n", str(n), "-c8", "-m16", "-t1", *grpc,
                                                       f"http://127.0.0.1:{port}/bench.Echo/Unary"]),
    }


def start_target(run, tmp, name, binary, app, grpc_app):
    """Starts proxy `name` under callgrind in front of the two apps; returns
    the port each load goes to (nghttpx takes only HTTP/2 and gRPC)."""
    p = {k: procs.free_port() for k in ("h1", "h2", "grpc", "tcp")}
    if name == "nginx":
        conf = peers.nginx_conf(tmp, p["h1"], p["h2"], p["grpc"], app, grpc_app)
        # One process: the master serves.
        text = open(conf).read().replace("daemon off;", "daemon off;\nmaster_process off;")
        open(conf, "w").write(text)
        callgrind(run, tmp, name, ["nginx", "-c", conf])
    elif name == "haproxy":
        conf = peers.haproxy_conf(tmp, p["h1"], p["h2"], p["tcp"], p["grpc"], app, app, grpc_app)
        callgrind(run, tmp, name, ["haproxy", "-db", "-f", conf])
    elif name == "nghttpx":
        callgrind(run, tmp, name, peers.nghttpx_args(p["h2"], app))
        callgrind(run, tmp, name, peers.nghttpx_args(p["grpc"], grpc_app))
        return {"h2": p["h2"], "grpc": p["grpc"]}
    else:
        # A sidecar speaks HTTP/1 and HTTP/2 on one port.
        p["h2"] = p["h1"]
        for port, upstream in ((p["h1"], app), (p["grpc"], grpc_app)):
            callgrind(run, tmp, name, [binary, "run", "--threads", "1", "--listen", f"127.0.0.1:{port}", "--upstream",
                                       f"127.0.0.1:{upstream}", "--admin", "127.0.0.1:0", "--tunnel", "127.0.0.1:0"])
    return {"h1": p["h1"], "new_conn": p["h1"], "h2": p["h2"], "grpc": p["grpc"]}


def bench(baseline=None, requests=10000):
    """Instructions per request for HTTP/1.1 keep-alive, a new connection
    per request, HTTP/2 and gRPC unary, per proxy; printed with ratios to
    the best peer."""
    print(f"\n== instructions per request (valgrind --tool=callgrind, user space only; {requests} requests "
          f"after {WARMUP} to warm up, a new connection per request for 3 s; lower is better)")
    binaries = {"sidecar": f"{procs.RELEASE}/mirrord-proxy"}
    if baseline:
        binaries["baseline"] = baseline
    with tempfile.TemporaryDirectory() as tmp:
        work = loads(load.grpc_message(tmp, "unary.bin", 100, 1), requests)
        results = {k: {} for k in work}
        apps = procs.Procs()
        try:
            app, grpc_app = procs.free_port(), procs.free_port()
            apps.start([f"{procs.RELEASE}/sample-app", "--http", f"127.0.0.1:{app}"])
            apps.start([f"{procs.RELEASE}/sample-app", "--grpc", f"127.0.0.1:{grpc_app}"])
            procs.wait_port(app)
            procs.wait_port(grpc_app)
            for name in [*binaries, "nginx", "haproxy", "nghttpx"]:
                run = procs.Procs()
                try:
                    on = start_target(run, tmp, name, binaries.get(name), app, grpc_app)
                    for port in set(on.values()):
                        procs.wait_port(port, timeout=60)
                    for kind, port in on.items():
                        if kind != "new_conn":  # it follows h1 on the same port: warm
                            work[kind](port, WARMUP)
                        control(tmp, name, "-z")
                        answered = work[kind](port)
                        results[kind][name] = control(tmp, name, "-d") / max(answered, 1)
                finally:
                    run.stop()
        finally:
            apps.stop()
    for kind, title in (("h1", "HTTP/1.1 keep-alive (h2load --h1 -c16)"),
                        ("new_conn", "HTTP/1.1 new connection per request (wrk -c16, Connection: close)"),
                        ("h2", "HTTP/2 (h2load -c8 -m16)"),
                        ("grpc", "gRPC unary, 100-byte message (h2load -c8 -m16)")):
        peers.row(f"instructions per request, thousands: {title}",
              {k: [v / 1000] for k, v in results[kind].items()}, higher_better=False)
