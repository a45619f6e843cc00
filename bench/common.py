"""What every part of the bench shares: free ports, the processes it
starts (pinned, stopped with what they started), the sidecar and its peers
and their configs, the load generators, and /proc readings of CPU, memory
and wake-ups; `row` prints a figure against direct and the best peer."""
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time


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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


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
