//! Reaching the app behind the sidecar: why it can fail.

use std::net::SocketAddr;

/// Why a request could not be delivered to the app.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the app at {dst}: {source}")]
    Connect { dst: SocketAddr, source: std::io::Error },
    #[error("HTTP handshake with the app at {dst} failed: {source}")]
    Handshake { dst: SocketAddr, source: hyper::Error },
    #[error("the app at {dst} did not answer: {source}")]
    Request { dst: SocketAddr, source: hyper::Error },
}

impl Error {
    /// Metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "upstream_connect",
            Error::Handshake { .. } => "upstream_handshake",
            Error::Request { .. } => "upstream_request",
        }
    }
}
