#!/usr/bin/env python3
"""Writes the Grafana dashboards (JSON) and their ConfigMaps for Grafana's
sidecar loader. The JSON files are what Grafana imports; run this after
changing a panel: `python3 manifests/monitoring/dashboards/generate.py`.
A test checks that the checked-in files are what this writes."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Every sidecar query is narrowed by the dashboard's variables.
SEL = 'namespace=~"$namespace",workload=~"$workload",pod=~"$pod"'


def datasource_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name, label, query):
    return {"name": name, "label": label, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "definition": query, "query": {"query": query, "refId": name},
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "sort": 1, "hide": 0, "regex": ""}


class Panels:
    """Lays panels out on Grafana's 24-column grid, two per row by default."""

    def __init__(self):
        self.panels, self.x, self.y, self.row_h, self.next_id = [], 0, 0, 0, 1

    def add(self, title, kind, targets, unit="short", w=12, h=8, description="", options=None, field=None):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {
            "id": self.next_id, "title": title, "type": kind, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "fieldConfig": {"defaults": {"unit": unit, **(field or {})}, "overrides": []},
            "options": options or {},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (expr, legend) in enumerate(targets)],
        }
        self.panels.append(panel)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)


def dashboard(uid, title, description, variables, panels):
    return {
        "uid": uid, "title": title, "description": description, "tags": ["mirrord"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "timezone": "browser", "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": []}, "links": [],
        "panels": panels,
    }


def sessions():
    p = Panels()
    p.add("Traffic by route", "timeseries",
          [(f'sum by (route) (rate(mirrord_proxy_request_duration_seconds_count{{{SEL}}}[$__rate_interval]))', "{{route}}")],
          unit="reqps", description="HTTP requests answered by the app alone (passthrough), by the app with copies "
                                    "to mirroring sessions (mirrored), or by a developer's session (stolen).")
    p.add("Requests and connections taken by sessions", "timeseries",
          [(f'sum by (mode, session) (rate(mirrord_proxy_intercepted_total{{{SEL}}}[$__rate_interval]))',
            "{{mode}} {{session}}")],
          unit="ops", description="Requests and connections stolen or mirrored, by developer session.")
    for q in ("0.5", "0.99"):
        p.add(f"Latency p{int(float(q) * 100)} by route", "timeseries",
              [(f'histogram_quantile({q}, sum by (route, le) '
                f'(rate(mirrord_proxy_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{route}}")],
              unit="s", description="From the request head read to the last byte of the response "
                                    "(HTTP/2: the end of the stream). Stolen requests include the round trip "
                                    "to the developer's machine.")
    p.add("Responses by status", "timeseries",
          [(f'sum by (status) (rate(mirrord_proxy_requests_total{{{SEL}}}[$__rate_interval]))', "{{status}}")],
          unit="reqps")
    p.add("Errors and refusals by reason", "timeseries",
          [(f'sum by (reason) (rate(mirrord_proxy_errors_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")],
          unit="ops", description="Refusals of malformed requests (400, 408, 413, 414, 431, 501, 505) and failures "
                                  "to reach the app (upstream_*), see docs/alerts.md.")
    p.add("Sessions connected", "stat", [(f'sum(mirrord_proxy_sessions{{{SEL}}})', "sessions")], w=6, h=6,
          options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"})
    p.add("Who takes traffic", "table",
          [(f'sum by (session, mode) (increase(mirrord_proxy_intercepted_total{{{SEL}}}[$__range]))', "")],
          w=10, h=6, description="Requests and connections each session took over the dashboard's time range.",
          options={"showHeader": True})
    p.add("Sessions ended or refused", "timeseries",
          [(f'sum by (reason) (increase(mirrord_proxy_session_ends_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")],
          w=8, h=6)
    p.add("Mirror copies dropped", "timeseries",
          [(f'sum by (session) (rate(mirrord_proxy_mirror_dropped_total{{{SEL}}}[$__rate_interval]))', "{{session}}")],
          unit="ops", description="Copies a mirroring session lost because it could not keep up; the original "
                                  "traffic is never slowed.")
    p.add("Tunnel throughput", "timeseries",
          [(f'sum by (direction) (rate(mirrord_proxy_tunnel_bytes_total{{{SEL}}}[$__rate_interval]))', "{{direction}}")],
          unit="Bps")
    p.add("App paused", "state-timeline", [(f'max by (pod) (mirrord_proxy_paused{{{SEL}}})', "{{pod}}")],
          w=12, h=6, field={"mappings": [{"type": "value", "options": {
              "0": {"text": "running", "color": "green"}, "1": {"text": "paused", "color": "orange"}}}]})
    p.add("Paused processes", "timeseries",
          [(f'sum by (pod) (mirrord_proxy_paused_processes{{{SEL}}})', "{{pod}}")], w=6, h=6)
    p.add("Resumes by reason", "timeseries",
          [(f'sum by (reason) (increase(mirrord_proxy_pause_resumes_total{{{SEL}}}[$__rate_interval]))', "{{reason}}")],
          w=6, h=6, description="released: the last session left; lease: the pause lasted as long as allowed; "
                                "terminating: the pod was being deleted; shutdown/startup: the sidecar stopped or "
                                "restarted.")
    p.add("Sidecar versions", "table", [(f'count by (version) (mirrord_proxy_build_info{{{SEL}}})', "")],
          w=8, h=5, options={"showHeader": True})
    variables = [datasource_var(),
                 query_var("namespace", "Namespace", "label_values(mirrord_proxy_build_info, namespace)"),
                 query_var("workload", "Workload",
                           'label_values(mirrord_proxy_build_info{namespace=~"$namespace"}, workload)'),
                 query_var("pod", "Pod",
                           'label_values(mirrord_proxy_build_info{namespace=~"$namespace",workload=~"$workload"}, pod)')]
    return dashboard("mirrord-sessions", "mirrord — sessions and traffic",
                     "What mirrord's sidecars do with a workload's traffic: passthrough, stolen and mirrored "
                     "requests, latency, sessions, refusals, pauses.", variables, p.panels)


def injector():
    inj = 'job=~"$job"'
    p = Panels()
    p.add("Admissions by outcome", "timeseries",
          [(f'sum by (result, reason) (rate(mirrord_injector_admissions_total{{{inj}}}[$__rate_interval]))',
            "{{result}} {{reason}}")], unit="ops")
    p.add("Admission latency", "timeseries",
          [(f'histogram_quantile(0.5, sum by (le) (rate(mirrord_injector_admission_duration_seconds_bucket{{{inj}}}'
            f'[$__rate_interval])))', "p50"),
           (f'histogram_quantile(0.99, sum by (le) (rate(mirrord_injector_admission_duration_seconds_bucket{{{inj}}}'
            f'[$__rate_interval])))', "p99")], unit="s",
          description="The MirrordAdmissionSlow alert fires when p99 stays above 5 ms.")
    p.add("Certificate expires in", "stat",
          [(f'min(mirrord_injector_certificate_expiry_timestamp_seconds{{{inj}}}) - time()', "expires in")],
          unit="s", w=8, h=6, options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
          field={"thresholds": {"mode": "absolute", "steps": [
              {"color": "red", "value": None}, {"color": "orange", "value": 604800},
              {"color": "green", "value": 2592000}]}})
    p.add("Kubernetes API errors", "timeseries",
          [(f'sum by (operation) (rate(mirrord_injector_api_errors_total{{{inj}}}[$__rate_interval]))',
            "{{operation}}")], unit="ops", w=8, h=6)
    p.add("Injectors up", "stat", [(f'sum(up{{{inj}}})', "up")], w=4, h=6,
          options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"})
    p.add("Injector versions", "table", [(f'count by (version) (mirrord_injector_build_info{{{inj}}})', "")],
          w=4, h=6, options={"showHeader": True})
    variables = [datasource_var(), query_var("job", "Job", "label_values(mirrord_injector_build_info, job)")]
    return dashboard("mirrord-injector", "mirrord — injector",
                     "The mirrord admission webhook: admissions, latency, certificate, API errors.",
                     variables, p.panels)


def configmaps(dashboards):
    docs = []
    for name, board in dashboards:
        text = json.dumps(board, indent=2, ensure_ascii=False)
        body = "\n".join("    " + line for line in text.splitlines())
        docs.append(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
            f"  name: grafana-dashboard-{name}\n  labels:\n    grafana_dashboard: \"1\"\n"
            "    app.kubernetes.io/part-of: mirrord\n"
            f"data:\n  {name}.json: |\n{body}\n")
    return "# Generated by generate.py from the dashboards in this folder; Grafana's sidecar loads\n" \
           "# ConfigMaps labelled grafana_dashboard=1.\n---\n" + "---\n".join(docs)


def main():
    # An output folder other than this one: for the test that compares.
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    boards = [("mirrord-sessions", sessions()), ("mirrord-injector", injector())]
    for name, board in boards:
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(board, f, indent=2, ensure_ascii=False)
            f.write("\n")
    with open(os.path.join(out, "configmaps.yaml"), "w") as f:
        f.write(configmaps(boards))


if __name__ == "__main__":
    main()
