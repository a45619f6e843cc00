//! A request's body on its way: raw to the app, or decoded to the session
//! that took the request, and decoded to every mirroring session; read
//! ahead for body filters; and the client's bytes after a stolen upgrade.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use crate::h1::body::Body;
use crate::h1::head::{Reject, RequestHead};
use crate::h1::{fill, forward, Conn, Done, Shared};
use crate::session::{Copies, Frame, BODY_FILTER_CAP, BODY_FILTER_WAIT};

/// Reads the rest of a request body into `buf` (where it stays, to be
/// forwarded as always) when it fits under [`BODY_FILTER_CAP`] and arrives
/// within [`BODY_FILTER_WAIT`]; returns it decoded, for body filters.
/// `None`: not read (too large, too slow, broken framing, or the client
/// stopped sending); the request is routed without it.
pub(super) async fn body_for_filters<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    head: &RequestHead,
) -> Option<Vec<u8>> {
    if matches!(head.body, Body::Length(n) if n > BODY_FILTER_CAP as u64) {
        return None;
    }
    let deadline = Instant::now() + BODY_FILTER_WAIT;
    loop {
        let (mut framing, mut decoded) = (head.body.clone(), Vec::new());
        match framing.advance_decoded(&buf[head.len..], &mut |c| decoded.extend_from_slice(c)) {
            Ok((_, true)) => return Some(decoded),
            Ok((_, false)) if buf.len() - head.len < BODY_FILTER_CAP => {}
            _ => return None,
        }
        match timeout_at(deadline, fill(rd, buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Where a request's bytes go.
pub(super) enum Sink<'a, W> {
    /// The app gets the raw bytes, head included.
    App(&'a mut W),
    /// A session gets the decoded body; `None` once it has gone away (the
    /// body is still read to the end, to keep the connection's framing).
    Session(Option<mpsc::Sender<Frame>>),
}

pub(super) enum Passed {
    /// The request is through; the session's sender, for an upgrade.
    Complete(Option<mpsc::Sender<Frame>>),
    Stop(Done),
}

/// Passes `head_len` raw head bytes at the front of `buf` (for the app) and
/// the body that follows, copying the decoded body to mirroring sessions.
#[allow(clippy::too_many_arguments)]
pub(super) async fn pass_body<R, W>(
    rd: &mut R,
    mut sink: Sink<'_, W>,
    shared: &Shared,
    buf: &mut BytesMut,
    head_len: usize,
    mut body: Body,
    copies: &mut Copies,
    conn: &Conn,
) -> Passed
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ready = head_len;
    let decode = matches!(sink, Sink::Session(_)) || !copies.is_empty();
    loop {
        let mut content: Vec<Bytes> = Vec::new();
        let progress = if decode {
            body.advance_decoded(&buf[ready..], &mut |c| content.push(Bytes::copy_from_slice(c)))
        } else {
            body.advance(&buf[ready..])
        };
        let (used, done) = match progress {
            Ok(progress) => progress,
            Err(e) => {
                // Its head has not gone to the app yet when the framing
                // broke in the first bytes read with it.
                let head_unsent = ready > 0 && matches!(sink, Sink::App(_));
                return Passed::Stop(bad_chunks(&e, head_unsent, &sink, shared, copies, conn).await);
            }
        };
        ready += used;
        match &mut sink {
            Sink::App(wr) => {
                if forward(wr, buf, ready).await.is_err() {
                    cut_short(&Sink::<W>::Session(None), copies, conn, "the app stopped reading it").await;
                    return Passed::Stop(Done::Close);
                }
            }
            Sink::Session(_) => buf.advance(ready),
        }
        ready = 0;
        if !content.is_empty() {
            deliver(content, &mut sink, copies, conn).await;
        }
        if done {
            copies.send(&Frame::End, &conn.inbound.metrics);
            return Passed::Complete(match sink {
                Sink::Session(Some(tx)) => tx.send(Frame::End).await.ok().map(|()| tx),
                _ => None,
            });
        }
        if let Err(done) = read_more(rd, &mut sink, buf, copies, conn).await {
            return Passed::Stop(done);
        }
    }
}

/// Decoded body bytes to the copies and to the session that took the
/// request (while it is there).
async fn deliver<W>(content: Vec<Bytes>, sink: &mut Sink<'_, W>, copies: &mut Copies, conn: &Conn) {
    for chunk in content {
        let frame = Frame::Data(chunk);
        copies.send(&frame, &conn.inbound.metrics);
        if let Sink::Session(Some(tx)) = &sink {
            if tx.send(frame).await.is_err() {
                *sink = Sink::Session(None);
            }
        }
    }
}

/// A chunked body whose framing is invalid. If its head has not gone to
/// the app yet, it is refused like a bad head, after the earlier responses
/// (the refusal is counted when sent). Otherwise the app is mid-body and
/// the only safe end is to close the connection.
async fn bad_chunks<W>(
    e: &crate::h1::body::FramingError,
    head_unsent: bool,
    sink: &Sink<'_, W>,
    shared: &Shared,
    copies: &mut Copies,
    conn: &Conn,
) -> Done {
    debug!("invalid chunked request body: {e}");
    cut_short(sink, copies, conn, &format!("its chunked framing is invalid ({e})")).await;
    if head_unsent && shared.refuse_last(Reject::InvalidChunkedBody) {
        return Done::Eof;
    }
    conn.inbound.metrics.error(crate::metrics::Fault::Refused(Reject::InvalidChunkedBody));
    Done::Close
}

/// Reads more of the body, within the body read timeout; a client that
/// stops sending, closes or fails ends the request (and the connection).
async fn read_more<R, W>(
    rd: &mut R,
    sink: &mut Sink<'_, W>,
    buf: &mut BytesMut,
    copies: &mut Copies,
    conn: &Conn,
) -> Result<(), Done>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let read = match tokio::time::timeout(conn.inbound.limits.body_read_timeout, fill(rd, buf)).await {
        Ok(read) => read,
        Err(_) => {
            conn.inbound.metrics.error(crate::metrics::Fault::BodyReadTimeout);
            cut_short(sink, copies, conn, "the client sent nothing for too long").await;
            return Err(Done::Close);
        }
    };
    match read {
        Ok(0) => {
            // The client gave up mid-body: pass its FIN on.
            cut_short(sink, copies, conn, "the client closed the connection before it ended").await;
            if let Sink::App(wr) = sink {
                let _ = wr.shutdown().await;
            }
            Err(Done::Eof)
        }
        Ok(_) => Ok(()),
        Err(e) => {
            cut_short(sink, copies, conn, &format!("reading it failed: {e}")).await;
            Err(Done::Close)
        }
    }
}

/// A request body that will not be complete: the session that took the
/// request and every copy get a Failure instead of an End, so the
/// developer's app never takes what arrived for the whole request.
async fn cut_short<W>(sink: &Sink<'_, W>, copies: &mut Copies, conn: &Conn, why: &str) {
    let failure = Frame::Failure(format!("the request body was cut short: {why}"));
    let session = matches!(sink, Sink::Session(Some(_)));
    if session || !copies.is_empty() {
        conn.inbound.metrics.error(crate::metrics::Fault::RequestBodyIncomplete);
    }
    copies.send(&failure, &conn.inbound.metrics);
    *copies = Copies::default();
    if let Sink::Session(Some(tx)) = sink {
        let _ = tx.send(failure).await;
    }
}

/// After a stolen upgrade was accepted: the client's bytes go to the session.
pub(super) async fn tunnel_to_session<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    to_client: mpsc::Sender<Frame>,
) -> Done {
    loop {
        if !buf.is_empty() && to_client.send(Frame::Data(buf.split().freeze())).await.is_err() {
            return Done::Close;
        }
        match fill(rd, buf).await {
            Ok(0) => {
                let _ = to_client.send(Frame::End).await;
                return Done::Eof;
            }
            Ok(_) => {}
            Err(_) => return Done::Close,
        }
    }
}
