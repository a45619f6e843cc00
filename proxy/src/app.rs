//! Reaching the app behind the sidecar: why it can fail.

use std::net::SocketAddr;

/// Why a request could not be delivered to the app.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the app at {dst}: {error}")]
    Connect { dst: SocketAddr, error: std::io::Error },
    #[error("HTTP handshake with the app at {dst} failed: {error}")]
    Handshake { dst: SocketAddr, error: h2::Error },
    #[error("the app at {dst} did not answer: {error}")]
    Request { dst: SocketAddr, error: h2::Error },
    #[error(
        "no connection to the app at {dst}: the sidecar holds its whole budget of {limit} file descriptors (see --fd-budget)"
    )]
    Budget { dst: SocketAddr, limit: usize },
}

impl Error {
    /// The status the client gets: 503 when the sidecar's descriptor budget
    /// is spent (the sidecar's state, not the app's), 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Error::Budget { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// Metric reason.
    pub fn reason(&self) -> crate::metrics::Fault {
        use crate::metrics::Fault;
        match self {
            Error::Connect { .. } => Fault::UpstreamConnect,
            Error::Handshake { .. } => Fault::UpstreamHandshake,
            Error::Request { .. } => Fault::UpstreamRequest,
            Error::Budget { .. } => Fault::FdBudget,
        }
    }
}
