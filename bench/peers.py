"""The proxies the sidecar is measured against (nginx, haproxy, nghttpx),
their configs, and `row`, which prints a figure against direct and the
best of them."""
import os
import statistics


PEERS = ("nginx", "haproxy", "nghttpx")


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
