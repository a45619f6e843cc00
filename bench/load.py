"""The load generators (wrk, oha, h2load with HTTP/2 and gRPC framing,
iperf3), pinned to the load generator's CPU, and what they report."""
import json
import os
import re
import subprocess

from procs import BOTH_CPUS, LOAD_CPU


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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def unread_h2(streams):
    """What an HTTP/2 client that reads nothing sends: the preface, the
    largest windows (SETTINGS_INITIAL_WINDOW_SIZE and the connection's), and
    `streams` GETs of `/big`."""
    block = bytes([0x82, 0x86]) + b"\x00\x05:path\x04/big" + b"\x00\x0a:authority\x01x"
    out = H2_PREFACE + h2_frame(4, 0, 0, bytes([0, 4, 0x7f, 0xff, 0xff, 0xff]))
    out += h2_frame(8, 0, 0, (0x7fffffff - 65535).to_bytes(4, "big"))
    return out + b"".join(h2_frame(1, 5, 1 + 2 * i, block) for i in range(streams))
