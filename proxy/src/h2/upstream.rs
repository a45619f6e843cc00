//! The app side of one HTTP/2 client connection, at the original destination
//! address: its streams share one multiplexed connection to the app. Each
//! client connection gets its own, so the app sees as many connections as
//! there are clients, as it would without the sidecar, and nothing is locked
//! across clients.

use std::net::SocketAddr;
use std::sync::Mutex;

use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::body::UpBody;
use crate::app::Error;
use crate::socket;

/// The connection to the app on behalf of one client connection.
#[derive(Debug)]
pub struct Upstream {
    dst: SocketAddr,
    /// Cloned by each stream; replaced if the app closed it.
    h2: Mutex<Option<http2::SendRequest<UpBody>>>,
    /// Held while the connection is made: streams that arrive meanwhile
    /// wait for it instead of dialling their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    pub fn new(dst: SocketAddr) -> Self {
        Upstream { dst, h2: Mutex::default(), connecting: tokio::sync::Mutex::new(()) }
    }

    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// Sends an HTTP/2 request on the shared app connection.
    pub async fn send_h2(&self, req: Request<UpBody>) -> Result<Response<Incoming>, Error> {
        let dst = self.dst;
        let mut sender = match self.current() {
            Some(s) => s,
            None => {
                let _connecting = self.connecting.lock().await;
                match self.current() {
                    Some(s) => s,
                    None => {
                        // Boxed: once per client connection, not in every stream's future.
                        let s = Box::pin(self.connect_h2()).await?;
                        *self.lock_h2() = Some(s.clone());
                        s
                    }
                }
            }
        };
        sender.ready().await.map_err(|error| Error::Request { dst, error })?;
        sender.send_request(req).await.map_err(|error| Error::Request { dst, error })
    }

    /// The app connection, if it is open.
    fn current(&self) -> Option<http2::SendRequest<UpBody>> {
        self.lock_h2().as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<http2::SendRequest<UpBody>>> {
        // Poisoning only means another stream panicked while swapping the
        // sender; the value is still a valid sender or None.
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<UpBody>, Error> {
        let dst = self.dst;
        let stream = socket::connect(dst).await.map_err(|error| Error::Connect { dst, error })?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| Error::Handshake { dst, error })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%dst, "HTTP/2 connection to the app ended: {e}");
            }
        });
        Ok(sender)
    }
}
