//! HTTP/1 passthrough that keeps request boundaries.
//!
//! The bytes of each message are forwarded exactly as they arrived: heads are
//! parsed in place ([`head`]) only to learn the framing of the body that
//! follows ([`body`]) and to refuse what the app might frame differently. So
//! the app sees byte-for-byte what the client sent (header case and order
//! included), every request on a keep-alive connection is known by its
//! boundaries (where per-request routing hooks in), and the cost per request
//! is one parse per direction.
//!
//! Two pumps run in the connection's task: [`request`] (client → app) and
//! [`response`] (app → client). They share a queue of what each response
//! answers, so that HEAD and upgrade responses are framed right and a refusal
//! is written only after every earlier response is complete.

pub mod body;
pub mod head;
mod request;
mod response;
mod route;
mod stolen;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tracing::debug;

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::{app, socket};
use head::{Kind, Reject};

/// Read buffers start small (idle keep-alive connections are common) and
/// grow up to this while a read keeps filling them (bulk bodies).
const INITIAL_BUFFER: usize = 8 * 1024;
const MAX_BUFFER: usize = 64 * 1024;

/// What one HTTP/1 connection needs.
#[derive(Debug, Clone)]
pub struct Conn {
    pub dst: SocketAddr,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    pub sessions: Arc<Sessions>,
    pub pause: Arc<crate::pause::Pause>,
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its source closed cleanly and the close was passed on; the other
    /// direction may go on.
    Eof,
    /// The whole connection must end now.
    Close,
}

/// Queued by the request pump, consumed in order by the response pump.
#[derive(Debug)]
enum Pending {
    /// A request was forwarded; its response is awaited. Upgrade and CONNECT
    /// requests learn whether the app switched protocols.
    Response {
        kind: Kind,
        switched: Option<oneshot::Sender<bool>>,
        /// When its head was read, and whether copies went to sessions.
        started: std::time::Instant,
        route: crate::metrics::Route,
    },
    /// Answer this refusal once every earlier response is complete, then close.
    Reject(Reject),
    /// A session answers this one instead of the app.
    Stolen(stolen::Stolen),
    /// Answered by the sidecar itself once every earlier response is
    /// complete (a kubelet probe while the app is paused).
    Local(&'static [u8]),
    /// Close once every earlier response is complete (shutdown).
    Close,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    changed: Notify,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // Both pumps run in one task; a poisoned lock can only follow a
        // panic that already ended this connection's task.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns the request just queued for the app, which the app has not
    /// been sent yet, into a refusal. False if the last entry is not one.
    fn refuse_last(&self, reject: Reject) -> bool {
        let mut queue = self.queue();
        if !matches!(queue.back(), Some(Pending::Response { switched: None, .. })) {
            return false;
        }
        queue.pop_back();
        queue.push_back(Pending::Reject(reject));
        drop(queue);
        self.changed.notify_one();
        true
    }

    fn push(&self, pending: Pending) {
        // A refusal, close or stolen request needs the response pump's
        // attention now; for a forwarded request, the app's answer wakes it.
        let wake = !matches!(pending, Pending::Response { .. });
        self.queue().push_back(pending);
        if wake {
            self.changed.notify_one();
        }
    }
}

/// Proxies one HTTP/1 client connection whose first bytes are `prefix`.
pub async fn serve(mut client: TcpStream, prefix: Bytes, conn: Conn) {
    let mut app = match socket::connect(conn.dst).await {
        Ok(app) => app,
        Err(error) => {
            let e = app::Error::Connect { dst: conn.dst, error };
            debug!("{e}");
            conn.metrics.error(e.reason());
            let _ = client.write_all(&bad_gateway(&e)).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    {
        let shared = Shared::default();
        let (client_rd, client_wr) = client.split();
        let (app_rd, app_wr) = app.split();
        let requests = request::pump(client_rd, app_wr, prefix, &shared, &conn);
        let responses = response::pump(app_rd, client_wr, &shared, &conn);
        tokio::pin!(requests, responses);
        tokio::select! {
            done = &mut requests => if done == Done::Eof { responses.await; },
            done = &mut responses => if done == Done::Eof { requests.await; },
        }
    }
    drop(app);
    linger(&mut client).await;
}

/// Lingering close: when the sidecar ends a connection that the client is
/// still sending on (a refused or broken request), closing at once would
/// reset it, and the reset can destroy responses the client has not read
/// yet (a refusal, earlier pipelined answers). So: FIN first, then read and
/// discard what still comes, for a short while, then close.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// How long and how much a lingering close reads at most.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// A complete 502 response naming the proxy, for when the app cannot be reached.
pub fn bad_gateway(e: &app::Error) -> Vec<u8> {
    let body = format!("mirrord-proxy: {e}\n");
    format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads more into `buf`, growing it while reads keep filling it.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    if spare < 1024 {
        let want = if buf.capacity() >= INITIAL_BUFFER { (buf.capacity() * 2).min(MAX_BUFFER) } else { INITIAL_BUFFER };
        buf.reserve(want.saturating_sub(buf.len()).max(1024));
    }
    rd.read_buf(buf).await
}

/// Writes the first `n` bytes of `buf` and drops them from it.
async fn forward<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    if n > 0 {
        wr.write_all(&buf[..n]).await?;
        buf.advance(n);
    }
    Ok(())
}

/// After a protocol switch: whatever is buffered, then raw bytes until EOF,
/// which is passed on as a FIN.
async fn tunnel<R, W>(rd: &mut R, wr: &mut W, buf: &mut BytesMut) -> Done
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let n = buf.len();
        if forward(wr, buf, n).await.is_err() {
            return Done::Close;
        }
        match fill(rd, buf).await {
            Ok(0) => return if wr.shutdown().await.is_ok() { Done::Eof } else { Done::Close },
            Ok(_) => {}
            Err(_) => return Done::Close,
        }
    }
}
