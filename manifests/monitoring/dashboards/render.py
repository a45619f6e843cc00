#!/usr/bin/env python3
"""Renders the main panels of the "mirrord — sessions and traffic" dashboard
to a PNG from a Prometheus, with the panels' own queries (read from
mirrord-sessions.json), so a reader sees what the dashboard shows.

    render.py PROMETHEUS_URL START END OUT.png NAMESPACE WORKLOAD POD
"""

import datetime
import json
import os
import sys
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PANELS = ["Traffic by route", "Latency p99 by route", "Requests and connections taken by sessions",
          "Errors and refusals by reason", "Mirror copies dropped", "App paused"]


def query_range(url, expr, start, end, step):
    qs = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{qs}", timeout=30) as resp:
        answer = json.load(resp)
    if answer.get("status") != "success":
        raise SystemExit(f"{expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, metric):
    out = fmt
    for key, value in metric.items():
        out = out.replace("{{" + key + "}}", value)
    return out.strip() or "value"


def main():
    url, start, end, out, namespace, workload, pod = sys.argv[1:8]
    start, end = float(start), float(end)
    step = max(1.0, (end - start) / 200)
    with open(os.path.join(HERE, "mirrord-sessions.json")) as f:
        board = json.load(f)
    panels = {p["title"]: p for p in board["panels"]}
    fig, axes = plt.subplots(3, 2, figsize=(14, 10), constrained_layout=True)
    fig.suptitle(board["title"], fontsize=14)
    for ax, title in zip(axes.flat, PANELS):
        panel = panels[title]
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "15s").replace("$__range", "5m")
                    .replace("$namespace", namespace).replace("$workload", workload).replace("$pod", pod))
            for series in query_range(url, expr, start, end, step):
                points = [(datetime.datetime.fromtimestamp(float(t), datetime.timezone.utc), float(v))
                          for t, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    xs, ys = zip(*points)
                    ys = [y * 1000 for y in ys] if unit == "s" else ys
                    ax.step(xs, ys, where="post", label=legend(target["legendFormat"], series["metric"]))
        ax.set_title(title)
        ax.set_ylabel({"s": "ms", "reqps": "req/s", "ops": "per second"}.get(unit, ""))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="upper left")
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main()
