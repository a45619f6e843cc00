//! The sidecar's metrics registry, rendered as OpenMetrics text on the admin
//! port. Labels are bounded: a port number, a protocol, a status class, a
//! route, a fixed reason, or a session name from a bounded set
//! ([`MAX_SESSION_LABELS`]) — never a path, header or address.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

mod conn_counts;
mod intercepts;
mod labels;

pub use conn_counts::ConnCounts;
pub use intercepts::Intercepts;
pub use labels::*;

/// Request durations from 0.1 ms to 30 s: from the request head read to the
/// last byte of the response written (HTTP/1), or to the end of the response
/// stream (HTTP/2).
pub const DURATION_BUCKETS: [f64; 17] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the sidecar, in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnLabels, Counter>,
    pub open_connections: Family<ConnLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<FaultLabels, Counter>,
    pub durations: Family<DurationLabels, Histogram, fn() -> Histogram>,
    pub sessions: Gauge,
    pub session_ends: Family<SessionEndLabels, Counter>,
    pub intercepted: Family<InterceptLabels, Counter>,
    pub mirror_dropped: Family<SessionOnlyLabels, Counter>,
    pub tunnel_bytes: Family<DirectionLabels, Counter>,
    /// Session names that have a label of their own.
    session_names: Mutex<Vec<SessionLabel>>,
    pub paused: Gauge,
    /// File descriptors the inbound side holds, and may hold.
    pub inbound_fds: Gauge,
    pub fd_budget: Gauge,
    /// When the current pause began (Unix seconds); 0 while the app runs.
    pub pause_started: Gauge,
    /// The longest a pause may last (`--max-pause`).
    pub pause_lease: Gauge,
    pub paused_processes: Gauge,
    pub paused_seconds: Counter<f64, AtomicU64>,
    pub pause_resumes: Family<ResumeLabels, Counter>,
    /// The series of each port and protocol, shared by their connections.
    conn_counts: RwLock<crate::fasthash::FastMap<(u16, Protocol), Arc<ConnCounts>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_proxy");
        let connections = Family::default();
        let open_connections = Family::default();
        let requests = Family::default();
        let errors = Family::default();
        registry.register(
            "connections",
            "Inbound connections accepted, by original port and protocol",
            connections.clone(),
        );
        registry.register("open_connections", "Inbound connections currently open", open_connections.clone());
        registry.register(
            "requests",
            "HTTP requests proxied, by port, protocol and response status class",
            requests.clone(),
        );
        registry.register("errors", "Connections or requests that failed or were refused, by reason", errors.clone());
        // The failures on the sidecar's side exist at 0 from the start, so
        // that a rate over them has data from the first failure on.
        for reason in [
            Fault::Accept,
            Fault::OriginalDst,
            Fault::LoopRefused,
            Fault::ClientRead,
            Fault::TcpIdleTimeout,
            Fault::UpstreamConnect,
            Fault::UpstreamHandshake,
            Fault::UpstreamRequest,
            Fault::UpstreamResponse,
            Fault::BodyReadTimeout,
            Fault::RequestBodyIncomplete,
            Fault::FdBudget,
            Fault::HttpIdleTimeout,
            Fault::Refused(crate::h1::head::Reject::MemoryPressure),
        ] {
            let _ = Family::<FaultLabels, Counter>::get_or_create(&errors, &FaultLabels { reason });
        }
        let durations = Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "HTTP requests, from head to the end of the response, by port, protocol and route (passthrough, mirrored, stolen)",
            prometheus_client::registry::Unit::Seconds,
            durations.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Developer sessions connected", sessions.clone());
        let session_ends = Family::default();
        registry.register(
            "session_ends",
            "Sessions that ended or were refused, by reason (closed, lost, refused_*)",
            session_ends.clone(),
        );
        let intercepted = Family::default();
        registry.register(
            "intercepted",
            "Requests and connections stolen or mirrored, by port, mode and session",
            intercepted.clone(),
        );
        let mirror_dropped = Family::default();
        registry.register(
            "mirror_dropped",
            "Mirrored copies dropped because the session could not keep up, by session",
            mirror_dropped.clone(),
        );
        let tunnel_bytes = Family::default();
        registry.register_with_unit(
            "tunnel",
            "Body and stream bytes that crossed the session tunnel, by direction",
            prometheus_client::registry::Unit::Bytes,
            tunnel_bytes.clone(),
        );
        registry.register(
            "build",
            "The sidecar's version",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        let inbound_fds = Gauge::default();
        registry.register(
            "inbound_fds",
            "File descriptors held for inbound connections (client and app sockets, splice pipes)",
            inbound_fds.clone(),
        );
        let fd_budget = Gauge::default();
        registry.register(
            "fd_budget",
            "File descriptors inbound connections may hold at once (--fd-budget)",
            fd_budget.clone(),
        );
        let paused = Gauge::default();
        registry.register("paused", "1 while the app is paused for a session, else 0", paused.clone());
        let pause_started = Gauge::default();
        registry.register_with_unit(
            "pause_started_timestamp",
            "When the current pause began, as a Unix timestamp; 0 while the app runs",
            prometheus_client::registry::Unit::Seconds,
            pause_started.clone(),
        );
        let pause_lease = Gauge::default();
        registry.register_with_unit(
            "pause_lease",
            "The longest a pause may last (--max-pause)",
            prometheus_client::registry::Unit::Seconds,
            pause_lease.clone(),
        );
        let start_time = Gauge::<i64>::default();
        start_time.set(unix_now());
        registry.register_with_unit(
            "start_time",
            "When this sidecar process started, as a Unix timestamp",
            prometheus_client::registry::Unit::Seconds,
            start_time,
        );
        let paused_processes = Gauge::default();
        registry.register("paused_processes", "App processes currently stopped", paused_processes.clone());
        let paused_seconds = Counter::<f64, AtomicU64>::default();
        registry.register("paused_seconds", "Time the app has spent paused", paused_seconds.clone());
        let pause_resumes = Family::default();
        registry.register(
            "pause_resumes",
            "Times the app was resumed, by reason (released, lease, terminating, shutdown, startup)",
            pause_resumes.clone(),
        );
        Metrics {
            registry,
            connections,
            open_connections,
            requests,
            errors,
            durations,
            sessions,
            session_ends,
            intercepted,
            mirror_dropped,
            tunnel_bytes,
            session_names: Mutex::default(),
            paused,
            inbound_fds,
            fd_budget,
            pause_started,
            pause_lease,
            paused_processes,
            paused_seconds,
            pause_resumes,
            conn_counts: RwLock::default(),
        }
    }
}

impl Metrics {
    pub fn mirror_dropped(&self, session: &SessionLabel) {
        self.mirror_dropped.get_or_create(&SessionOnlyLabels { session: session.clone() }).inc();
    }

    pub fn session_ended(&self, reason: SessionEnd) {
        self.session_ends.get_or_create(&SessionEndLabels { reason }).inc();
    }

    pub fn tunnel_bytes(&self, direction: Direction, n: usize) {
        self.tunnel_bytes.get_or_create(&DirectionLabels { direction }).inc_by(n as u64);
    }

    /// The label for a session named `name`: its own for the first
    /// [`MAX_SESSION_LABELS`] names, `other` after that.
    pub fn session_label(&self, name: &str) -> SessionLabel {
        let mut names = self.session_names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = names.iter().find(|l| l.as_str() == name) {
            return known.clone();
        }
        if names.len() >= MAX_SESSION_LABELS || name == "other" {
            return SessionLabel::other();
        }
        let label = SessionLabel::from(name);
        names.push(label.clone());
        // At 0 from the session's start, so that a rate over drops has data.
        let _ = self.mirror_dropped.get_or_create(&SessionOnlyLabels { session: label.clone() });
        label
    }

    /// The duration histogram of one port, protocol and route.
    pub fn duration(&self, port: u16, protocol: Protocol, route: Route) -> Histogram {
        self.durations.get_or_create(&DurationLabels { port, protocol, route }).clone()
    }

    pub fn pause_resumed(&self, reason: Resumed) {
        self.pause_resumes.get_or_create(&ResumeLabels { reason }).inc();
    }

    pub fn error(&self, reason: Fault) {
        self.errors.get_or_create(&FaultLabels { reason }).inc();
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `2xx`-style class of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::head::Reject;

    #[test]
    fn session_labels_are_bounded() {
        let m = Metrics::default();
        let first = m.session_label("alice@laptop");
        assert_eq!(first.as_str(), "alice@laptop");
        for i in 1..MAX_SESSION_LABELS {
            assert_eq!(m.session_label(&format!("dev{i}")).as_str(), format!("dev{i}"));
        }
        assert_eq!(m.session_label("one-too-many").as_str(), "other");
        assert_eq!(m.session_label("alice@laptop"), first, "a known name keeps its label");
    }

    #[test]
    fn histograms_and_build_info_render() {
        let m = Metrics::default();
        let counts = m.conn_counts(80, Protocol::Http1);
        counts.done(&m, Route::Stolen, std::time::Instant::now());
        assert!(Arc::ptr_eq(&counts, &m.conn_counts(80, Protocol::Http1)), "one series per port and protocol");
        assert!(!Arc::ptr_eq(&counts, &m.conn_counts(80, Protocol::Http2)));
        assert!(!Arc::ptr_eq(&counts, &m.conn_counts(81, Protocol::Http1)));
        let text = m.render();
        assert!(text.contains("# TYPE mirrord_proxy_request_duration_seconds histogram"), "{text}");
        assert!(
            text.contains(
                r#"mirrord_proxy_request_duration_seconds_count{port="80",protocol="http1",route="stolen"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"le="0.0001""#) && text.contains(r#"le="30.0""#), "{text}");
        assert!(
            text.contains(&format!(r#"mirrord_proxy_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
    }

    #[test]
    fn renders_exact_lines() {
        let m = Metrics::default();
        m.connections.get_or_create(&ConnLabels { port: 80, protocol: Protocol::Http1 }).inc();
        m.requests
            .get_or_create(&RequestLabels { port: 80, protocol: Protocol::Http2, status: status_class(204) })
            .inc_by(2);
        m.error(Fault::UpstreamConnect);
        m.error(Fault::Refused(Reject::MissingHost));
        let text = m.render();
        for line in [
            "mirrord_proxy_connections_total{port=\"80\",protocol=\"http1\"} 1",
            "mirrord_proxy_requests_total{port=\"80\",protocol=\"http2\",status=\"2xx\"} 2",
            "mirrord_proxy_errors_total{reason=\"upstream_connect\"} 1",
            "mirrord_proxy_errors_total{reason=\"missing_host\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
