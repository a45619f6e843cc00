"""The sessions part (`--only sessions`): the primary path's latency with a
mirror session whose consumer is fast, slow or stalled (at the client and at
the sidecar's socket, `Wire`), nginx's mirror beside it, and what a stolen
request's tunnel adds. See bench/README.md."""
import collections
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

from load import oha_latency
from peers import nginx_config, PROXY_TO
from procs import cpu_ns, free_port, LOAD_CPU, proc_stat, RELEASE, start_sidecar, wait_port


def nginx_mirror_conf(tmp, port, app, mirror_target):
    return nginx_config(tmp, f"nginx-mirror-{port}", {"app": app, "copy": mirror_target}, f"""    listen 127.0.0.1:{port};
    location / {{ mirror /mirror; proxy_pass http://app; {PROXY_TO} }}
    location = /mirror {{ internal; proxy_pass http://copy$request_uri; {PROXY_TO} }}""")


# The developer's side (the CLI and the local apps) stands in for a laptop:
# it shares the load generator's CPU (two CPUs have no other place) at
# SCHED_IDLE, so that it takes only time nothing else on that CPU wants.
# At normal priority its work there moves the latency measured at the
# sidecar's socket by itself: a busy loop taking 30 % of that CPU, with no
# session at all, raises the socket p99 as much as a mirror session does;
# the same loop at SCHED_IDLE does not.
LAPTOP = ["chrt", "-i", "0"]


class Session:
    """`mirrord-cli connect` with a config, ended with Ctrl-C."""

    def __init__(self, tunnel, config, tmp):
        path = os.path.join(tmp, f"session-{time.time_ns()}.json")
        open(path, "w").write(json.dumps(config))
        # The developer's side runs on the "laptop" CPU, with the load generator.
        self.proc = subprocess.Popen(["taskset", "-c", LOAD_CPU, *LAPTOP, f"{RELEASE}/mirrord-cli", "connect", "--addr", f"127.0.0.1:{tunnel}",
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


CASES = (("mirror fast", "fast"), ("mirror slow (200 ms)", "slow"), ("mirror stalled", "stalled"))


def session_bench(procs, tmp, seconds, rounds, baseline=None):
    """The primary path at 2000 req/s with no session and with a mirror
    session whose local app is fast, slow and stalled, through this build's
    sidecar and (with `baseline`) another build's, interleaved; nginx's
    mirror beside them; and a stolen request's latency over the tunnel."""
    ports, pids, sidecars = start_targets(procs, tmp, baseline)
    primary, stolen = measure(ports, pids, sidecars, tmp, seconds, rounds)
    _, peak, _ = proc_stat(pids[""])
    report_primary(primary, peak)
    report_stolen(stolen)


def start_targets(procs, tmp, baseline):
    """The app, the local apps (fast, slow, stalled) on the "laptop" CPU,
    the sidecars and nginx's mirrors; returns their ports, the sidecars'
    pids by row prefix, and (row prefix, port, tunnel port, binary) of each
    sidecar measured."""
    ports = {k: free_port() for k in ("app", "fast", "slow", "stalled", "sidecar", "tunnel", "nginx_slow", "nginx_stalled",
                                       "baseline", "baseline_tunnel")}
    procs.start([f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['app']}"])
    # The local apps are on the "laptop" CPU; nginx's mirror targets are the same processes.
    procs.start([*LAPTOP, f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['fast']}"], cpu=LOAD_CPU)
    procs.start([*LAPTOP, f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['slow']}", "--delay-ms", "200"],
                cpu=LOAD_CPU)
    procs.start([*LAPTOP, f"{RELEASE}/sample-app", "--http", f"127.0.0.1:{ports['stalled']}", "--delay-ms",
                 "100000000"], cpu=LOAD_CPU)
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
    return ports, pids, sidecars


def measure(ports, pids, sidecars, tmp, seconds, rounds):
    """The rounds, interleaved: each sidecar without a session, with each
    mirror case, and without a session again; nginx's mirrors; a stolen
    request's latency. Returns the runs of the primary path and of the
    stolen requests, by row."""
    def mirror_to(target):
        return {"feature": {"network": {"incoming": {"mode": "mirror", "port_mapping": [[ports[target], ports["app"]]]}}}}

    # "no session, again" closes each round as it began: how far two runs
    # without any session differ is the noise floor of every mirror case.
    primary = {f"{prefix}{k}": [] for prefix in pids
               for k in ("no session", *(name for name, _ in CASES), "no session, again")}
    primary |= {"nginx mirror slow (200 ms)": [], "nginx mirror stalled": []}
    stolen = {"direct to local app": [], "stolen via tunnel": []}
    for r in range(rounds):
        print(f"sessions round {r + 1}/{rounds}", file=sys.stderr)
        for prefix, name, tunnel, _ in sidecars:
            primary[f"{prefix}no session"].append(primary_path(ports[name], pids[prefix], tmp, seconds))
            for case, target in CASES:
                session = Session(ports[tunnel], mirror_to(target), tmp)
                try:
                    primary[f"{prefix}{case}"].append(primary_path(ports[name], pids[prefix], tmp, seconds, session))
                finally:
                    session.close()
            primary[f"{prefix}no session, again"].append(primary_path(ports[name], pids[prefix], tmp, seconds))
        primary["nginx mirror slow (200 ms)"].append(oha_latency(ports["nginx_slow"], seconds, 2000))
        primary["nginx mirror stalled"].append(oha_latency(ports["nginx_stalled"], seconds, 2000))
        stolen["direct to local app"].append(oha_latency(ports["fast"], seconds, 200))
        steal = {"feature": {"network": {"incoming": {"mode": "steal", "port_mapping": [[ports["fast"], ports["app"]]]}}}}
        session = Session(ports["tunnel"], steal, tmp)
        try:
            stolen["stolen via tunnel"].append(oha_latency(ports["sidecar"], seconds, 200))
        finally:
            session.close()
    return primary, stolen


def primary_path(port, pid, tmp, seconds, session=None):
    """oha at 2000 req/s on the sidecar at `port`, and the sidecar's CPU
    time (every thread) per request; with a session, the CLI's too (the
    developer's side: on a cluster, the laptop's). Then the latency at the
    sidecar's socket."""
    watched = [pid] + ([session.proc.pid] if session else [])
    before = [cpu_ns([p]) for p in watched]
    run = oha_latency(port, seconds, 2000)
    used = [(cpu_ns([p]) - b) / (seconds * 2000) / 1000 for p, b in zip(watched, before)]
    run["cpu_us"] = used[0]
    if session:
        run["cli_us"] = used[1]
    # Again with the capture on, which costs both sides CPU: apart from
    # the figures above.
    wire = Wire(port, tmp)
    oha_latency(port, seconds, 2000)
    run["wire"] = wire.stop()
    return run


def report_primary(primary, peak):
    """Each row's p50/p99 against its sidecar's runs without a session, as
    oha saw them, then as the sidecar's socket saw them."""
    med = statistics.median
    print("\n== sessions: primary path at 2000 req/s (oha -c16) with a mirror session, p50/p99 ms and errors")
    for name, runs in primary.items():
        base = med([x["p99"] for x in primary[f"{prefix_of(name)}no session"]])
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
        none = primary[f"{prefix_of(name)}no session"]
        base = med([x["wire"]["p99"] for x in none])
        p50, p99 = med([x["wire"]["p50"] for x in runs]), med([x["wire"]["p99"] for x in runs])
        spread = f"[{min(x['wire']['p99'] for x in runs) / base:.2f}-{max(x['wire']['p99'] for x in runs) / base:.2f}]"
        # Each round against the same round's run without a session.
        within = sum(x["wire"]["p99"] <= 1.1 * n["wire"]["p99"] for x, n in zip(runs, none))
        print(f"  {name:30s} p50={p50:8.3f} p99={p99:9.3f} (p99 x{p99 / base:.2f} {spread} of no session; "
              f"within +10 % of its round's in {within}/{len(runs)}) requests={sum(x['wire']['count'] for x in runs)}")


def prefix_of(name):
    """The row prefix of the sidecar a row belongs to (nginx's rows are
    set against this build's)."""
    return "baseline " if name.startswith("baseline ") else ""


def report_stolen(stolen):
    med = statistics.median
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
