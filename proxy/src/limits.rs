//! Time and size limits on what clients send (a leaf: every protocol path
//! reads them, none is imported for them).

use std::time::Duration;

/// Time and size limits on what clients send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long to wait for bytes that decide the protocol.
    pub detect_timeout: Duration,
    /// How long an HTTP/1 client may take to send a complete request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 beyond).
    pub max_head: usize,
    /// How long an HTTP/1 request body may go without a byte arriving: then
    /// the connection is closed (the head is already forwarded, so no
    /// status can be sent) and sessions get the body as cut short.
    pub body_read_timeout: Duration,
    /// How long an HTTP client connection may wait, between requests, for
    /// the next one (HTTP/2: with no stream open); `None`: forever.
    pub http_idle_timeout: Option<Duration>,
    /// How long a raw TCP connection may carry no data either way before it
    /// is closed; `None`: never.
    pub tcp_idle_timeout: Option<Duration>,
}
