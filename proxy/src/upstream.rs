//! The app side of one client connection, at the original destination
//! address. Each client connection gets its own connection to the app, in the
//! protocol it came in: HTTP/1 requests on a keep-alive client connection go
//! one after another over one app connection; HTTP/2 streams share one
//! multiplexed app connection. So the app sees as many connections as there
//! are clients, as it would without the sidecar, and no lock or pool is
//! shared between clients.

use std::net::SocketAddr;
use std::sync::Mutex;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::socket;

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

/// Connection(s) to the app on behalf of one client connection.
#[derive(Debug)]
pub struct Upstream {
    dst: SocketAddr,
    /// HTTP/1: held while a request is sent, so requests stay in order.
    h1: tokio::sync::Mutex<Option<http1::SendRequest<Incoming>>>,
    /// HTTP/2: cloned by each stream.
    h2: Mutex<Option<http2::SendRequest<Incoming>>>,
}

impl Upstream {
    pub fn new(dst: SocketAddr) -> Self {
        Upstream { dst, h1: Default::default(), h2: Default::default() }
    }

    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// Sends an HTTP/1 request. The app connection is reused once the
    /// previous response has been read; if the app closed it meanwhile, the
    /// request goes over a new one.
    pub async fn send_h1(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let dst = self.dst;
        let mut slot = self.h1.lock().await;
        let reused = match slot.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        let mut sender = match (reused, slot.take()) {
            (true, Some(sender)) => sender,
            _ => self.connect_h1(false).await?,
        };
        let result = match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) if reused => {
                    debug!("the app closed the idle connection; reconnecting");
                    sender = self.connect_h1(false).await?;
                    sender.send_request(req).await.map_err(|source| Error::Request { dst, source })
                }
                _ => Err(Error::Request { dst, source: e.into_error() }),
            },
        };
        if result.is_ok() {
            *slot = Some(sender);
        }
        result
    }

    /// Sends an HTTP/1 request that asks for a protocol upgrade, on an app
    /// connection of its own (after a 101 it carries the new protocol).
    pub async fn send_upgrade(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let mut sender = self.connect_h1(true).await?;
        sender.send_request(req).await.map_err(|source| Error::Request { dst: self.dst, source })
    }

    /// Sends an HTTP/2 request on the shared app connection.
    pub async fn send_h2(&self, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let dst = self.dst;
        let existing = self.lock_h2().as_ref().filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = self.connect_h2().await?;
                *self.lock_h2() = Some(s.clone());
                s
            }
        };
        sender.ready().await.map_err(|source| Error::Request { dst, source })?;
        sender.send_request(req).await.map_err(|source| Error::Request { dst, source })
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<Incoming>>> {
        // Poisoning only means another stream panicked while swapping the
        // sender; the value is still a valid sender or None.
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect_h1(&self, upgrades: bool) -> Result<http1::SendRequest<Incoming>, Error> {
        let dst = self.dst;
        let stream = socket::connect(dst).await.map_err(|source| Error::Connect { dst, source })?;
        let (sender, conn) = http1::Builder::new()
            .preserve_header_case(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Handshake { dst, source })?;
        tokio::spawn(async move {
            let result = if upgrades { conn.with_upgrades().await } else { conn.await };
            if let Err(e) = result {
                debug!(%dst, "connection to the app ended: {e}");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Incoming>, Error> {
        let dst = self.dst;
        let stream = socket::connect(dst).await.map_err(|source| Error::Connect { dst, source })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Handshake { dst, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%dst, "HTTP/2 connection to the app ended: {e}");
            }
        });
        Ok(sender)
    }
}
