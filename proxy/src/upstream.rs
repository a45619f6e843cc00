//! Connections from the sidecar to the app, at the original destination
//! address. HTTP/1 connections are pooled per destination and reused once the
//! previous response has been read; HTTP/2 has one multiplexed connection per
//! destination. Requests go out in the protocol they came in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::socket;

/// Idle HTTP/1 connections kept per destination.
const MAX_IDLE_PER_DST: usize = 128;

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

type Pool<T> = Arc<Mutex<HashMap<SocketAddr, T>>>;

/// The client side of the sidecar.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    h1_idle: Pool<Vec<http1::SendRequest<Incoming>>>,
    h2: Pool<http2::SendRequest<Incoming>>,
}

impl Upstream {
    /// Sends an HTTP/1 request over a pooled connection. A pooled connection
    /// that the app closed meanwhile is replaced once, transparently.
    pub async fn send_h1(&self, dst: SocketAddr, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let (mut sender, pooled) = match self.take_idle(dst) {
            Some(s) => (s, true),
            None => (self.connect_h1(dst, false).await?, false),
        };
        let result = match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) if pooled => {
                    debug!("pooled connection to the app was closed; reconnecting");
                    sender = self.connect_h1(dst, false).await?;
                    sender.send_request(req).await.map_err(|source| Error::Request { dst, source })
                }
                _ => Err(Error::Request { dst, source: e.into_error() }),
            },
        };
        if result.is_ok() {
            self.recycle(dst, sender);
        }
        result
    }

    /// Sends an HTTP/1 request that asks for a protocol upgrade, on a
    /// connection of its own (it leaves the pool's protocol if answered 101).
    pub async fn send_upgrade(&self, dst: SocketAddr, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let mut sender = self.connect_h1(dst, true).await?;
        sender.send_request(req).await.map_err(|source| Error::Request { dst, source })
    }

    /// Sends an HTTP/2 request on the destination's shared connection.
    pub async fn send_h2(&self, dst: SocketAddr, req: Request<Incoming>) -> Result<Response<Incoming>, Error> {
        let existing = self.lock_h2().get(&dst).filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let s = self.connect_h2(dst).await?;
                self.lock_h2().insert(dst, s.clone());
                s
            }
        };
        sender.ready().await.map_err(|source| Error::Request { dst, source })?;
        sender.send_request(req).await.map_err(|source| Error::Request { dst, source })
    }

    fn lock_h1(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<http1::SendRequest<Incoming>>>> {
        // A poisoned pool only means another task panicked mid-update of a
        // cache; its contents are still usable.
        self.h1_idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<Incoming>>> {
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self, dst: SocketAddr) -> Option<http1::SendRequest<Incoming>> {
        let mut pool = self.lock_h1();
        let idle = pool.get_mut(&dst)?;
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Returns the connection to the pool once its response has been read.
    fn recycle(&self, dst: SocketAddr, mut sender: http1::SendRequest<Incoming>) {
        let pool = self.h1_idle.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
                let idle = pool.entry(dst).or_default();
                if idle.len() < MAX_IDLE_PER_DST {
                    idle.push(sender);
                }
            }
        });
    }

    async fn connect_h1(&self, dst: SocketAddr, upgrades: bool) -> Result<http1::SendRequest<Incoming>, Error> {
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

    async fn connect_h2(&self, dst: SocketAddr) -> Result<http2::SendRequest<Incoming>, Error> {
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
