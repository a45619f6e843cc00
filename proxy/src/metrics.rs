//! The sidecar's metrics registry, rendered as Prometheus text on the admin
//! port. Labels are bounded: a port number, a protocol, a status class, or a
//! fixed error reason — never a path, header or address.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::h1::head::Reject;
use crate::pause::Resume;

/// What a connection turned out to speak.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tcp => "tcp",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub port: u16,
    pub protocol: Protocol,
    /// `2xx`, `5xx`, …
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterceptLabels {
    pub port: u16,
    /// `steal` or `mirror`.
    pub mode: &'static str,
}

/// Why a connection or request failed or was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Fault {
    /// accept(2) failed.
    Accept,
    /// The original destination of a redirected connection is unknown.
    OriginalDst,
    /// A connection to the sidecar's own listener (a redirect loop).
    LoopRefused,
    /// Reading the first bytes of a client failed.
    ClientRead,
    /// A raw TCP connection idle past `--tcp-idle-timeout`.
    TcpIdleTimeout,
    UpstreamConnect,
    UpstreamHandshake,
    UpstreamRequest,
    /// The app's response could not be read or trusted.
    UpstreamResponse,
    /// A request body stalled past `--body-read-timeout`.
    BodyReadTimeout,
    /// A request body ended before its framing said it would.
    RequestBodyIncomplete,
    /// A request refused before it reached anyone (400, 408, 414, 431, …).
    Refused(Reject),
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Accept => "accept",
            Fault::OriginalDst => "original_dst",
            Fault::LoopRefused => "loop_refused",
            Fault::ClientRead => "client_read",
            Fault::TcpIdleTimeout => "tcp_idle_timeout",
            Fault::UpstreamConnect => "upstream_connect",
            Fault::UpstreamHandshake => "upstream_handshake",
            Fault::UpstreamRequest => "upstream_request",
            Fault::UpstreamResponse => "upstream_response",
            Fault::BodyReadTimeout => "body_read_timeout",
            Fault::RequestBodyIncomplete => "request_body_incomplete",
            Fault::Refused(r) => r.reason(),
        }
    }
}

impl EncodeLabelValue for Fault {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub reason: Fault,
}

/// Why a pause ended, or `startup` (a previous sidecar's leftovers resumed).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Resumed {
    Startup,
    Pause(Resume),
}

impl EncodeLabelValue for Resumed {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Resumed::Startup => "startup",
            Resumed::Pause(why) => why.label(),
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabels {
    pub reason: Resumed,
}

/// Every metric of the sidecar, in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnLabels, Counter>,
    pub open_connections: Family<ConnLabels, Gauge>,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<FaultLabels, Counter>,
    pub sessions: Gauge,
    pub intercepted: Family<InterceptLabels, Counter>,
    pub mirror_dropped: Counter,
    pub paused: Gauge,
    pub paused_processes: Gauge,
    pub paused_seconds: Counter<f64, AtomicU64>,
    pub pause_resumes: Family<ResumeLabels, Counter>,
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
        registry.register("errors", "Connections or requests that failed, by reason", errors.clone());
        let sessions = Gauge::default();
        registry.register("sessions", "Developer sessions connected", sessions.clone());
        let intercepted = Family::default();
        registry.register(
            "intercepted",
            "Requests and connections stolen or mirrored to a session",
            intercepted.clone(),
        );
        let mirror_dropped = Counter::default();
        registry.register(
            "mirror_dropped",
            "Mirrored copies dropped because the session could not keep up",
            mirror_dropped.clone(),
        );
        let paused = Gauge::default();
        registry.register("paused", "1 while the app is paused for a session, else 0", paused.clone());
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
            sessions,
            intercepted,
            mirror_dropped,
            paused,
            paused_processes,
            paused_seconds,
            pause_resumes,
        }
    }
}

impl Metrics {
    pub fn intercepted(&self, port: u16, mode: &'static str) {
        self.intercepted.get_or_create(&InterceptLabels { port, mode }).inc();
    }

    pub fn pause_resumed(&self, reason: Resumed) {
        self.pause_resumes.get_or_create(&ResumeLabels { reason }).inc();
    }

    pub fn error(&self, reason: Fault) {
        self.errors.get_or_create(&FaultLabels { reason }).inc();
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
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
