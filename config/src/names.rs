//! Names shared by every mirrord component: annotation keys, environment
//! variables and default ports. Each is defined once, here.

/// Pod-template or Namespace annotation that opts pods into injection.
pub const ANNOTATION_INJECT: &str = "mirrord.dev/inject";
/// Inbound ports to redirect to the sidecar (default: the declared container ports).
pub const ANNOTATION_PORTS: &str = "mirrord.dev/ports";
/// Inbound ports never redirected.
pub const ANNOTATION_SKIP_PORTS: &str = "mirrord.dev/skip-ports";
/// Ports whose traffic is never inspected for HTTP.
pub const ANNOTATION_OPAQUE_PORTS: &str = "mirrord.dev/opaque-ports";
/// Whether sessions may pause the app (`enabled` by default).
pub const ANNOTATION_PAUSE: &str = "mirrord.dev/pause";
/// The pod's containers that pause stops (comma-separated names; default:
/// every container but well-known mesh proxies).
pub const ANNOTATION_PAUSE_CONTAINERS: &str = "mirrord.dev/pause-containers";
/// The longest a session may keep the app paused (a duration such as `30m`).
pub const ANNOTATION_MAX_PAUSE: &str = "mirrord.dev/max-pause";
/// The most sessions the pod's sidecar serves at once (a number, 1-4096;
/// default 64).
pub const ANNOTATION_MAX_SESSIONS: &str = "mirrord.dev/max-sessions";
/// The range `mirrord.dev/max-sessions` and the sidecar's `--max-sessions` accept.
pub const MAX_SESSIONS_RANGE: std::ops::RangeInclusive<u16> = 1..=4096;

/// A `--max-sessions` / `mirrord.dev/max-sessions` value, within
/// [`MAX_SESSIONS_RANGE`]; the error says what is expected.
pub fn parse_max_sessions(text: &str) -> Result<u16, String> {
    text.parse::<u16>().ok().filter(|n| MAX_SESSIONS_RANGE.contains(n)).ok_or_else(|| {
        format!("expected a number of sessions from {} to {}", MAX_SESSIONS_RANGE.start(), MAX_SESSIONS_RANGE.end())
    })
}
/// Written by the injector: what it injected and by which version.
pub const ANNOTATION_STATUS: &str = "mirrord.dev/status";

/// The containers mirrord injects.
pub const CONTAINER_INIT: &str = "mirrord-init";
pub const CONTAINER_PROXY: &str = "mirrord-proxy";
pub const CONTAINER_GUARD: &str = "mirrord-guard";
/// Every container mirrord injects: never the app, never paused.
pub const INJECTED_CONTAINERS: [&str; 3] = [CONTAINER_INIT, CONTAINER_PROXY, CONTAINER_GUARD];

/// Port the init container's iptables rules redirect inbound traffic to.
pub const INBOUND_PORT: u16 = 18006;
/// Port of the session tunnel (gRPC), bound to 127.0.0.1 inside the pod.
pub const TUNNEL_PORT: u16 = 18010;
/// Port of the sidecar's admin server (`/metrics`, `/ready`, `/live`).
pub const ADMIN_PORT: u16 = 18090;
/// The admin port's name in the injected pod, for scrape configurations.
pub const ADMIN_PORT_NAME: &str = "mirrord-admin";
/// The sidecar's own ports: never redirected, never proxied.
pub const PROXY_PORTS: [u16; 3] = [INBOUND_PORT, TUNNEL_PORT, ADMIN_PORT];
/// The well-known ports of server-first protocols (the server speaks first:
/// FTP, SMTP, POP3, IMAP, submission, MySQL, NATS, VNC). The sidecar passes
/// them through as raw TCP without waiting for client bytes to detect HTTP,
/// which would delay every connection by the detection timeout.
pub const SERVER_FIRST_PORTS: &str = "21,25,110,143,587,3306,4222,5900";

/// Environment variable: the containers that are the app, for pause
/// (comma-separated; set by the injector on the sidecar and the guard).
pub const ENV_APP_CONTAINERS: &str = "MIRRORD_APP_CONTAINERS";
/// Environment variable: the sidecar's log filter (tracing `EnvFilter` syntax).
pub const ENV_LOG: &str = "MIRRORD_LOG";
/// Environment variable: log format, `text` or `json`.
pub const ENV_LOG_FORMAT: &str = "MIRRORD_LOG_FORMAT";

/// The Secret (one per namespace) holding the token sessions present to the
/// sidecars of that namespace. `mirrord-cli inject` creates it; the injector
/// mounts it into every sidecar (optional: pods start without it, and then
/// refuse sessions until it exists).
pub const TOKEN_SECRET: &str = "mirrord-session-token";
/// The Secret's key holding the token.
pub const TOKEN_KEY: &str = "token";
/// Where the sidecar sees the Secret (a read-only volume).
pub const TOKEN_DIR: &str = "/var/run/secrets/mirrord";
/// The token file the sidecar reads at every session open, so that a rotated
/// Secret takes effect without a restart.
pub const TOKEN_FILE: &str = "/var/run/secrets/mirrord/token";
