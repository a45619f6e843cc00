//! HTTP/1 passthrough that keeps request boundaries.
//!
//! The bytes of each message are forwarded as they arrived (one exception
//! below): heads are parsed in place ([`head`]) only to learn the framing of
//! the body that follows ([`body`]) and to refuse what the app might frame
//! differently. So the app sees what the client sent (header case and order
//! included), every request on a keep-alive connection is known by its
//! boundaries (where per-request routing hooks in), and the cost per request
//! is one parse per direction.
//!
//! Two pumps run in the connection's task: `request` (client → app) and
//! `response` (app → client). They share a queue of what each response
//! answers, so that HEAD and upgrade responses are framed right and a refusal
//! is written only after every earlier response is complete. A pipelining
//! client gets at most 64 requests ahead of their answers (`queue::MAX_PIPELINED`);
//! its next request is read as an answer completes.
//!
//! An app connection is held only while a request is in flight (and 10 ms
//! after, for a next request sent at once): when every
//! request read so far has been answered and no byte of the next one has
//! arrived, the app connection goes back to the [`pool`](crate::pool) and
//! the client connection waits alone, with no buffer. The pairing is kept
//! for the rest of the connection once the app answers 401 or 407 (NTLM and
//! Negotiate authenticate the connection, not the request), and after a
//! protocol switch (the connection is a tunnel then).
//!
//! One field is not forwarded as it arrived: an HTTP/1.1 request whose only
//! connection option is `close` goes to the app without its Connection line,
//! and the sidecar ends the client's connection itself, with
//! `connection: close` in the response (RFC 9110 §7.6.1: the Connection
//! field is for one hop). The app connection goes back to the pool, so a
//! client that opens a connection per request (kubelet probes, load
//! balancers that do not pool) costs the app no connection of its own.

pub mod body;
mod framing;
pub mod head;
mod queue;
mod request;
mod response;
mod rewrite;
mod route;
mod stolen;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::app;
use crate::pool::AppConn;
use crate::shutdown::Shutdown;
use queue::{Pending, Shared};

/// How long a client connection keeps its app connection after the last
/// response, for a next request sent at once.
const GRACE: Duration = Duration::from_millis(10);

/// Read buffers start small (idle keep-alive connections are common) and
/// grow up to this while a read keeps filling them (bulk bodies).
const INITIAL_BUFFER: usize = 8 * 1024;
const MAX_BUFFER: usize = 64 * 1024;

/// What one HTTP/1 connection needs: where it goes, when to stop, and the
/// inbound side's shared state (limits, metrics, sessions, the pause, the
/// pool of idle app connections, the descriptor budget), by reference:
/// a connection's future holds this for its life, idle or not.
#[derive(Debug, Clone)]
pub struct Conn {
    pub dst: SocketAddr,
    pub shutdown: Shutdown,
    pub inbound: Arc<crate::inbound::Inbound>,
}

/// How a pump ended.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its source closed cleanly and the close was passed on; the other
    /// direction may go on.
    Eof,
    /// The whole connection must end now.
    Close,
    /// Every request read so far is answered, and no byte of the next one
    /// has arrived: the app connection may be given back.
    Idle,
}

/// Proxies one HTTP/1 client connection whose first bytes are `prefix`.
pub async fn serve(mut client: TcpStream, prefix: Bytes, conn: Conn) {
    let shared = Shared::default();
    let mut requests = request::State::new(prefix, first_buffer(&conn.inbound.pressure));
    let mut responses = response::State::new(&conn);
    // The app connection kept between rounds once pinned.
    let mut held: Option<AppConn> = None;
    loop {
        if requests.buf.is_empty() && held.is_none() {
            // An idle connection keeps no buffer, no field list and no queue.
            requests.release();
            responses.buf = BytesMut::new();
            shared.queue().shrink_to_fit();
            if !wait_for_request(&mut client, &mut requests.buf, &conn).await {
                break;
            }
        }
        let mut app = match held.take().or_else(|| conn.inbound.pool.take(conn.dst)) {
            Some(app) => app,
            // Boxed, like the round: connecting is rare next to waiting.
            None => match Box::pin(AppConn::connect(conn.dst, &conn.inbound.budget)).await {
                Ok(app) => app,
                Err(e) => {
                    debug!("{e}");
                    conn.inbound.metrics.error(e.reason());
                    let _ = client.write_all(&error_response(&e)).await;
                    break;
                }
            },
        };
        // Boxed: the pumps' state exists only while a request is in flight,
        // and an idle connection's task stays small.
        let round = Box::pin(round(&mut client, &mut app.stream, &mut requests, &mut responses, &shared, &conn)).await;
        if round != Done::Idle {
            break;
        }
        let finished = shared.finished.load(Ordering::Relaxed);
        if shared.is_pinned() {
            held = Some(app);
        } else if responses.buf.is_empty() {
            conn.inbound.pool.put(conn.dst, app);
        } else {
            // The app sent bytes nobody asked for: not reusable.
            debug!("the app sent bytes after its last response; its connection is closed");
            conn.inbound.metrics.error(crate::metrics::Fault::UpstreamResponse);
            responses.buf.clear();
        }
        if finished {
            // Nothing more can come from a client that asked to close: its
            // socket closes now (a FIN, no lingering read).
            if requests.buf.is_empty() {
                return;
            }
            break;
        }
    }
    // What the connection holds goes before the lingering (a refused head's
    // buffer, up to the head limit, for each of thousands of refused
    // clients; a pinned app connection).
    drop((requests, responses, shared, held));
    linger(&mut client).await;
}

/// One round: both pumps, until the connection ends ([`Done::Close`] or
/// [`Done::Eof`]) or is idle ([`Done::Idle`]).
async fn round(
    client: &mut TcpStream,
    app: &mut TcpStream,
    requests: &mut request::State,
    responses: &mut response::State,
    shared: &Shared,
    conn: &Conn,
) -> Done {
    let (client_rd, client_wr) = client.split();
    let (app_rd, app_wr) = app.split();
    let request_pump = request::pump(client_rd, app_wr, requests, shared, conn);
    let response_pump = response::pump(app_rd, client_wr, responses, shared, conn);
    tokio::pin!(request_pump, response_pump);
    tokio::select! {
        done = &mut request_pump => match done {
            Done::Eof => {
                response_pump.await;
                Done::Eof
            }
            Done::Idle => response_pump.await,
            Done::Close => Done::Close,
        },
        done = &mut response_pump => {
            // No answer will come for what is still queued: an upgrade
            // waiting to learn whether the protocol switched learns that it
            // did not, instead of waiting for ever (the app closed without
            // answering it).
            shared.queue().clear();
            shared.room.notify_one();
            if done != Done::Close {
                request_pump.await;
            }
            Done::Close
        }
    }
}

/// Waits, holding nothing but the client socket, for the first bytes of
/// the next request. False: the client closed, the keep-alive timeout
/// passed, or the sidecar is shutting down.
async fn wait_for_request(client: &mut TcpStream, buf: &mut BytesMut, conn: &Conn) -> bool {
    let mut shutdown = conn.shutdown.clone();
    let deadline = conn.inbound.limits.http_idle_timeout.map(|t| tokio::time::Instant::now() + t);
    let expired = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        tokio::select! {
            ready = client.readable() => if ready.is_err() { return false },
            () = shutdown.signalled() => return false,
            () = &mut expired => {
                conn.inbound.metrics.error(crate::metrics::Fault::HttpIdleTimeout);
                return false;
            }
        }
        // A read through the reactor (not `try_read`): a short read clears
        // the readiness, so the next wait needs no failed read to learn
        // that nothing more is there.
        buf.reserve(first_buffer(&conn.inbound.pressure));
        match poll_once_read(client, buf) {
            std::task::Poll::Ready(Ok(n)) => return n > 0,
            std::task::Poll::Ready(Err(e)) => {
                debug!("client read failed: {e}");
                return false;
            }
            // The readiness was stale: wait again, without the buffer.
            std::task::Poll::Pending => *buf = BytesMut::new(),
        }
    }
}

/// One read into the spare capacity of `buf`, without waiting.
fn poll_once_read(client: &mut TcpStream, buf: &mut BytesMut) -> std::task::Poll<std::io::Result<usize>> {
    use bytes::BufMut;
    use tokio::io::ReadBuf;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let spare = buf.chunk_mut();
    // SAFETY: ReadBuf only writes initialised bytes into the spare
    // capacity and reports how many; only those are added to `buf`.
    let mut read = ReadBuf::uninit(unsafe { spare.as_uninit_slice_mut() });
    match std::pin::Pin::new(client).poll_read(&mut cx, &mut read) {
        std::task::Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: the first n bytes of the spare capacity were just filled.
            unsafe { buf.advance_mut(n) };
            std::task::Poll::Ready(Ok(n))
        }
        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
        std::task::Poll::Pending => std::task::Poll::Pending,
    }
}

/// Lingering close: when the sidecar ends a connection that the client is
/// still sending on (a refused or broken request), closing at once would
/// reset it, and the reset can destroy responses the client has not read
/// yet (a refusal, earlier pipelined answers). So: FIN first, then read and
/// discard what still comes, for a short while, then close.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    // On the heap: an array here would sit in every connection's task.
    // Small: a refused client may be one of thousands sending on purpose.
    let mut sink = vec![0u8; 512];
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

/// A complete response naming the proxy, for when the app cannot be
/// reached: 502, or 503 when the sidecar's descriptor budget is spent.
pub fn error_response(e: &app::Error) -> Vec<u8> {
    let body = format!("mirrord-proxy: {e}\n");
    let status = e.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

/// Reads more into `buf`, growing it while reads keep filling it.
async fn fill<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if let Some(want) = grown(buf) {
        buf.reserve(want.saturating_sub(buf.len()).max(1024));
    }
    rd.read_buf(buf).await
}

/// The capacity `fill` grows `buf` to before its next read, if it has less
/// than 1 KiB to spare: doubled, up to [`MAX_BUFFER`].
fn grown(buf: &BytesMut) -> Option<usize> {
    (buf.capacity() - buf.len() < 1024).then(|| {
        if buf.capacity() >= INITIAL_BUFFER {
            (buf.capacity() * 2).min(MAX_BUFFER)
        } else {
            INITIAL_BUFFER
        }
    })
}

/// The bytes `fill` takes for `buf` before its next read.
fn growth(buf: &BytesMut) -> usize {
    grown(buf).map_or(0, |want| want.saturating_sub(buf.capacity()).max(1024))
}

/// The buffer a request head is first read into: [`INITIAL_BUFFER`], or
/// 1 KiB (most heads) while memory is near the limit.
fn first_buffer(pressure: &crate::pressure::Pressure) -> usize {
    if pressure.admit(INITIAL_BUFFER as u64) {
        INITIAL_BUFFER
    } else {
        1024
    }
}

/// Writes the first `n` bytes of `buf` and drops them from it.
async fn forward<W: AsyncWrite + Unpin>(wr: &mut W, buf: &mut BytesMut, n: usize) -> std::io::Result<()> {
    if n > 0 {
        wr.write_all(&buf[..n]).await?;
        buf.advance(n);
    }
    Ok(())
}

/// Passes the end of a stream on as a FIN: the other direction may go on.
async fn pass_fin<W: AsyncWrite + Unpin>(wr: &mut W) -> Done {
    if wr.shutdown().await.is_ok() {
        Done::Eof
    } else {
        Done::Close
    }
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
            Ok(0) => return pass_fin(wr).await,
            Ok(_) => {}
            Err(_) => return Done::Close,
        }
    }
}
