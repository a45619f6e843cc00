//! The app side of one HTTP/2 client connection, at the original destination
//! address: its streams share one multiplexed connection to the app. Each
//! client connection gets its own, so the app sees as many connections as
//! there are clients, as it would without the sidecar, and nothing is locked
//! across clients; a client that has had no stream open for a while lets
//! its app connection go (`release`), as an idle HTTP/1 client does.
//!
//! Streams are opened with the `h2` crate directly: a request is sent and its
//! response awaited in the client stream's own task, and a request body that
//! is already complete (a GET, a unary gRPC call) is sent at once, so a
//! stream costs no task or channel beyond the ones the client side has.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tracing::debug;

use super::body::{send_body, H2Body, UpBody};
use crate::app::Error;
use crate::budget::Budget;
use crate::pool::AppConn;
use crate::pressure::Pressure;

/// Flow-control windows towards the app: what the app may send ahead of
/// what the client side takes, per stream and per client connection. The
/// app is in the same pod, so 256 KiB cover its round trip many times over
/// (a stream is not held to HTTP/2's default 64 KiB, nor its window
/// updates sent as often); and they bound what a client that reads nothing
/// makes the sidecar hold on the app's side.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// Bytes buffered per stream towards the app before a body waits (an app
/// that grants large windows but is paused or slow holds no more).
const SEND_BUFFER: usize = 64 * 1024;

/// An open connection to the app.
#[derive(Debug, Clone)]
struct Conn {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ends (the app closed it, or it failed).
    closed: Arc<AtomicBool>,
}

/// The connection to the app on behalf of one client connection.
#[derive(Debug)]
pub struct Upstream {
    dst: SocketAddr,
    /// Each connection to the app takes its descriptor from it.
    budget: Arc<Budget>,
    /// For the request bodies sent to the app.
    pressure: Arc<Pressure>,
    /// Cloned by each stream; replaced if the app closed it.
    h2: Mutex<Option<Conn>>,
    /// Held while the connection is made: streams that arrive meanwhile
    /// wait for it instead of dialling their own.
    connecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    pub fn new(dst: SocketAddr, budget: Arc<Budget>, pressure: Arc<Pressure>) -> Self {
        Upstream { dst, budget, pressure, h2: Mutex::default(), connecting: tokio::sync::Mutex::new(()) }
    }

    pub fn dst(&self) -> SocketAddr {
        self.dst
    }

    /// Sends an HTTP/2 request on the shared app connection. Its body goes
    /// along as it arrives; the response comes back when its head does.
    pub async fn send_h2(&self, req: Request<UpBody>) -> Result<Response<H2Body>, Error> {
        let dst = self.dst;
        let conn = match self.current() {
            Some(c) => c,
            // Boxed: once per client connection, not in every stream's future.
            None => Box::pin(self.connect_once()).await?,
        };
        // A connection that cannot take streams any more (the app said
        // GOAWAY, or it failed) is not offered to the next one; a request
        // refused for itself leaves it as it is.
        let refused = |error: h2::Error| {
            if error.is_go_away() || error.is_io() || error.is_library() {
                conn.closed.store(true, Ordering::Release);
            }
            Error::Request { dst, error }
        };
        let mut sender = conn.sender.clone().ready().await.map_err(refused)?;
        let (mut parts, body) = req.into_parts();
        with_authority(&mut parts, dst);
        let end_of_stream = body.is_end_stream();
        let (response, send) = sender.send_request(Request::from_parts(parts, ()), end_of_stream).map_err(refused)?;
        if !end_of_stream {
            // The body is sent from here while it is ready (most bodies come
            // whole with their head); only one still arriving gets a task.
            let mut pipe = Box::pin(send_body(body, send, self.pressure.clone()));
            if std::future::poll_fn(|cx| Poll::Ready(pipe.as_mut().poll(cx).is_pending())).await {
                tokio::spawn(pipe);
            }
        }
        let response = response.await.map_err(|error| Error::Request { dst, error })?;
        Ok(response.map(H2Body::new))
    }

    /// Lets the app connection go: it closes once the streams still on it
    /// have ended; the next stream opens another.
    pub fn release(&self) {
        self.lock_h2().take();
    }

    /// The app connection, if it is open.
    fn current(&self) -> Option<Conn> {
        self.lock_h2().as_ref().filter(|c| !c.closed.load(Ordering::Acquire)).cloned()
    }

    fn lock_h2(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        // Poisoning only means another stream panicked while swapping the
        // sender; the value is still a valid sender or None.
        self.h2.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects, or waits for the stream that is connecting already.
    async fn connect_once(&self) -> Result<Conn, Error> {
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let c = self.connect_h2().await?;
        *self.lock_h2() = Some(c.clone());
        Ok(c)
    }

    async fn connect_h2(&self) -> Result<Conn, Error> {
        let dst = self.dst;
        let AppConn { stream, fds } = AppConn::connect(dst, &self.budget).await?;
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .enable_push(false)
            .handshake(crate::pressure::Gated::app(stream, self.pressure.clone()))
            .await
            .map_err(|error| Error::Handshake { dst, error })?;
        let closed = Arc::new(AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            // Awaited by reference: the task holds the connection once, not
            // as the captured value and again as the future awaited.
            if let Err(e) = (&mut conn).await {
                debug!(%dst, "HTTP/2 connection to the app ended: {e}");
            }
            done.store(true, Ordering::Release);
            // The socket is closed: its descriptor goes back to the budget.
            drop(fds);
        });
        Ok(Conn { sender, closed })
    }
}

/// HTTP/2 requests carry their scheme and authority (RFC 9113 §8.3.1); a
/// client that left `:authority` out gets it from `Host`, or the app's
/// address, as HTTP/1 would.
fn with_authority(parts: &mut http::request::Parts, dst: SocketAddr) {
    if parts.uri.scheme().is_some() || parts.method == http::Method::CONNECT {
        return;
    }
    let authority = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .or_else(|| http::uri::Authority::try_from(dst.to_string()).ok());
    let mut uri = http::uri::Parts::from(std::mem::take(&mut parts.uri));
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = authority;
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(full) = http::Uri::from_parts(uri) {
        parts.uri = full;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn uri_sent(uri: &str, host: Option<&str>) -> String {
        let mut req = Request::builder().uri(uri);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        with_authority(&mut parts, "10.0.0.7:8080".parse().unwrap());
        parts.uri.to_string()
    }

    #[test]
    fn a_request_without_authority_gets_it_from_host_or_the_app_address() {
        assert_eq!(uri_sent("http://api.local/a?b=1", Some("other")), "http://api.local/a?b=1");
        assert_eq!(uri_sent("/a?b=1", Some("api.local:81")), "http://api.local:81/a?b=1");
        assert_eq!(uri_sent("/a", None), "http://10.0.0.7:8080/a");
        assert_eq!(uri_sent("/a", Some("not a host")), "http://10.0.0.7:8080/a");
    }
}
