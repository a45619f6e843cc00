"""The pressure part (`--only pressure`, as root): the sidecar in a memory
cgroup with the limit the injector gives it (64 MiB), under clients that
hold its memory on purpose, this build and (with `--baseline`) another. See
bench/README.md."""
import os
import socket
import subprocess
import time

from load import unread_h2
from procs import free_port, Procs, RELEASE, serve_big, wait_port

LIMIT = 64 << 20
HEAD_BYTES = 60_000
STREAMS = 200


class MemoryCgroup:
    """A memory cgroup (v2 where the unified hierarchy has the memory
    controller, else v1's) with `limit` and no swap, removed by `remove`."""

    def __init__(self, name, limit):
        v2 = "/sys/fs/cgroup"
        if "memory" in open_or_empty(os.path.join(v2, "cgroup.subtree_control")):
            self.dir, self.v2 = os.path.join(v2, name), True
        else:
            self.dir, self.v2 = os.path.join(v2, "memory", name), False
        os.makedirs(self.dir, exist_ok=True)
        write(os.path.join(self.dir, "memory.max" if self.v2 else "memory.limit_in_bytes"), str(limit))
        if self.v2:
            write(os.path.join(self.dir, "memory.swap.max"), "0", missing_ok=True)

    def wrap(self, args):
        return ["sh", "-c", f"echo $$ > {self.dir}/cgroup.procs && exec \"$0\" \"$@\"", *args]

    def peak_mib(self):
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int(open_or_empty(os.path.join(self.dir, name)) or 0) / (1 << 20)

    def oom_kills(self):
        text = open_or_empty(os.path.join(self.dir, "memory.events" if self.v2 else "memory.oom_control"))
        return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill ")), 0)

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def open_or_empty(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def write(path, text, missing_ok=False):
    try:
        with open(path, "w") as f:
            f.write(text)
    except FileNotFoundError:
        if not missing_ok:
            raise


def connect(port):
    """A connection, or None once the sidecar takes none (it died, or it
    is stalled at its limit)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
    s.settimeout(2)
    return s


def slow_heads(port, n):
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
    head += b"a" * (HEAD_BYTES - len(head))
    conns = []
    for _ in range(n):
        s = connect(port)
        if s is None:
            break
        try:
            s.sendall(head)
        except OSError:
            pass
        conns.append(s)
    return conns


def unread_streams(port, n):
    out = unread_h2(STREAMS)
    conns = []
    for _ in range(n):
        s = connect(port)
        if s is None:
            break
        try:
            s.sendall(out)
        except OSError:
            pass
        conns.append(s)
    return conns


def answered(port, h2):
    """Whether a new client gets its answer (HTTP/1 `/`, or HTTP/2 `/big`
    whole) within 3 s, with curl."""
    args = ["--http2-prior-knowledge", f"http://127.0.0.1:{port}/big"] if h2 else [f"http://127.0.0.1:{port}/"]
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", *args],
                         capture_output=True, text=True).stdout
    return out == "200"


def attack(name, binary, upstream, h2, connections):
    """One attack on one build in a fresh cgroup: its peak, its OOM kills and
    whether a new client is answered 2 s into the attack."""
    cgroup = MemoryCgroup(f"mirrord-test-bench-{os.getpid()}-{name}", LIMIT)
    procs = Procs()
    try:
        port = free_port()
        sidecar = procs.start(cgroup.wrap([binary, "run", "--threads", "1", "--listen", f"127.0.0.1:{port}",
                                           "--upstream", f"127.0.0.1:{upstream}", "--admin", "127.0.0.1:0",
                                           "--tunnel", "127.0.0.1:0", "--insecure-no-token"]))
        wait_port(port)
        conns = (unread_streams if h2 else slow_heads)(port, connections)
        time.sleep(2)
        served = sidecar.poll() is None and answered(port, h2)
        alive = sidecar.poll() is None
        for c in conns:
            c.close()
        return cgroup.peak_mib(), cgroup.oom_kills(), alive, served, len(conns)
    finally:
        procs.stop()
        cgroup.remove()


def pressure_bench(tmp, baseline=None, heads=(1500, 3800), h2_connections=(8, 64)):
    if os.geteuid() != 0:
        print("\n== memory pressure: skipped (needs root for a memory cgroup)")
        return
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs = Procs()
    try:
        h1_app, h2_app = free_port(), free_port()
        procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{h1_app}"])
        serve_big(procs, tmp, h2_app)
        wait_port(h1_app)
        wait_port(h2_app)
        builds = {"sidecar": f"{RELEASE}/mirrord-proxy"} | ({"baseline": baseline} if baseline else {})
        print(f"\n== memory pressure: the sidecar in a memory cgroup of {LIMIT >> 20} MiB (as injected); "
              "peak as the cgroup counts it, OOM kills, and whether a new client is answered 2 s in")
        cases = [(f"{n} clients sending {HEAD_BYTES // 1000} KB request heads slowly", False, h1_app, n) for n in heads]
        cases += [(f"{n} HTTP/2 connections of {STREAMS} streams of 4 MiB never read", True, h2_app, n)
                  for n in h2_connections]
        for what, h2, app, n in cases:
            print(f"  {what}:")
            for name, binary in builds.items():
                peak, kills, alive, served, opened = attack(name, binary, app, h2, n)
                state = "running" if alive else "DEAD"
                took = "" if opened == n else f" (took only {opened} connections)"
                print(f"    {name}: peak {peak:.1f} MiB, {kills} OOM kills, {state}{took}, "
                      f"a new client {'answered' if served else 'NOT answered'}")
    finally:
        procs.stop()
