"""The processes the bench starts (pinned to their CPUs, stopped with what
they started), the sidecar among them, free ports, and /proc readings of
CPU, memory and wake-ups."""
import os
import re
import signal
import socket
import subprocess
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


RELEASE = os.path.join(ROOT, "target", "release")


APP_CPU, LOAD_CPU, BOTH_CPUS = "0", "1", "0,1"


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


def serve_big(procs, tmp, port):
    """nghttpd (HTTP/2, h2c) on `port`, serving one 4 MiB file, `/big`: an
    app that sends whatever the windows allow."""
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "big"), "wb") as f:
        f.write(bytes(4 << 20))
    return procs.start(["nghttpd", "--no-tls", "-d", www, str(port)])


def start_sidecar(procs, listen, upstream, *extra, tunnel=0, binary=None, threads=1, cpu=APP_CPU):
    """The sidecar (this build's, or `binary`) in explicit mode with `threads`
    worker threads, listening on `listen` for `upstream`; its admin server on
    a port the kernel picks (nothing reads it)."""
    return procs.start([binary or f"{RELEASE}/mirrord-proxy", "run", "--threads", str(threads), "--listen",
                        f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{upstream}", "--admin", "127.0.0.1:0",
                        "--tunnel", f"127.0.0.1:{tunnel}", *extra], cpu=cpu)


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
