//! The label sets of the sidecar's metrics, each value from a fixed set (or
//! a bounded set of session names).

use std::fmt::Write;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

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

/// What happened to a request: answered by the app alone, by the app with
/// copies to mirroring sessions, or by a stealing session.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Route {
    Passthrough,
    Mirrored,
    Stolen,
}

impl Route {
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Route::Passthrough => "passthrough",
            Route::Mirrored => "mirrored",
            Route::Stolen => "stolen",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    pub port: u16,
    pub protocol: Protocol,
    pub route: Route,
}

/// How many session names get a label of their own; later ones count as `other`.
pub const MAX_SESSION_LABELS: usize = 16;

/// A session's name as a label value.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SessionLabel(Arc<str>);

impl SessionLabel {
    pub fn other() -> Self {
        SessionLabel(Arc::from("other"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionLabel {
    fn from(name: &str) -> Self {
        SessionLabel(Arc::from(name))
    }
}

impl EncodeLabelValue for SessionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// `steal` or `mirror`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum InterceptMode {
    Steal,
    Mirror,
}

impl EncodeLabelValue for InterceptMode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            InterceptMode::Steal => "steal",
            InterceptMode::Mirror => "mirror",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterceptLabels {
    pub port: u16,
    pub mode: InterceptMode,
    pub session: SessionLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionOnlyLabels {
    pub session: SessionLabel,
}

/// How a session ended, or why it was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client said Bye.
    Closed,
    /// The session call broke off (Ctrl-C without Bye, a lost or silent tunnel).
    Lost,
    /// Refused at Hello: protocol versions that do not meet.
    RefusedVersion,
    /// Refused at Hello: a missing or wrong token.
    RefusedToken,
    /// Refused at Hello: a config this sidecar cannot accept.
    RefusedConfig,
    /// Refused: another session already steals what it would steal.
    RefusedConflict,
    /// Refused: it asked to pause and the app cannot be paused.
    RefusedPause,
    /// Refused: the sidecar serves as many sessions as `--max-sessions` allows.
    RefusedLimit,
}

impl EncodeLabelValue for SessionEnd {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            SessionEnd::Closed => "closed",
            SessionEnd::Lost => "lost",
            SessionEnd::RefusedVersion => "refused_version",
            SessionEnd::RefusedToken => "refused_token",
            SessionEnd::RefusedConfig => "refused_config",
            SessionEnd::RefusedConflict => "refused_conflict",
            SessionEnd::RefusedPause => "refused_pause",
            SessionEnd::RefusedLimit => "refused_limit",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionEndLabels {
    pub reason: SessionEnd,
}

/// Which way bytes crossed the tunnel.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Sidecar → developer's machine (request bodies, copies, client bytes).
    ToClient,
    /// Developer's machine → sidecar (responses).
    FromClient,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::ToClient => "to_client",
            Direction::FromClient => "from_client",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
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
    /// A connection refused, or a request answered 503, because the
    /// inbound side holds its whole file-descriptor budget.
    FdBudget,
    /// An HTTP/1 client idle past `--http-idle-timeout` between requests.
    HttpIdleTimeout,
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
            Fault::FdBudget => "fd_budget",
            Fault::HttpIdleTimeout => "http_idle_timeout",
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
