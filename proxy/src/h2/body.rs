//! Bodies of HTTP/2 streams: the app's response read from its `h2` stream;
//! any body sent on an `h2` stream within its flow control; a request body
//! teed to mirroring sessions on its way to the app; and a response body
//! that arrives from a session.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use tokio::sync::mpsc;
use tracing::debug;

use crate::metrics::Metrics;
use crate::pressure::Pressure;
use crate::session::wire::{Frame as Wire, Header};
use crate::session::Copies;

/// Request bodies sent to the app: as received (no session), or through
/// the sessions' step (read ahead for body filters, teed to mirrors).
pub type UpBody = Either<H2Body, Tee>;

/// A body read from an `h2` stream (a client's request, the app's response): its data
/// (flow-control credit given back as each frame is taken, so the sender is
/// held to the pace of the side this goes to), then its trailers.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl H2Body {
    pub fn new(recv: h2::RecvStream) -> Self {
        H2Body { recv, data_done: false, done: false }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

/// Sends `body` on an HTTP/2 stream as it comes, within the peer's flow
/// control; its trailers, or its end, end the stream. A body that fails
/// resets the stream (nobody takes a cut body as whole); a peer that resets
/// the stream ends the sending. While memory is near the limit no more of
/// the body is taken (its sender's window is not given back, so it sends
/// no more); after a second of that, or of the peer's flow control holding
/// it back ([`send_data`]), the stream is reset.
pub async fn send_body<B, P>(mut body: B, mut send: h2::SendStream<Bytes>, pressure: P)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    P: std::ops::Deref<Target = Pressure>,
{
    // The data taken last: it makes room for as much more from the sender.
    let mut taken = 0;
    loop {
        if !pressure.admit(taken) && !memory_given_back(&pressure).await {
            send.send_reset(h2::Reason::CANCEL);
            pressure.shed();
            return;
        }
        let frame = tokio::select! {
            // The body first: a frame that is ready is sent without asking
            // `h2` (a lock) whether the peer reset the stream; the send
            // would say so.
            biased;
            frame = http_body_util::BodyExt::frame(&mut body) => frame,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let sent = match frame {
            None => send.send_data(Bytes::new(), true),
            Some(Err(e)) => {
                debug!("body broke off: {e}");
                send.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    taken = data.len() as u64;
                    let last = body.is_end_stream();
                    match send_data(&mut send, data, last, &pressure).await {
                        Ok(()) if !last => continue,
                        sent => sent,
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers),
                    Err(_) => continue,
                },
            },
        };
        if let Err(e) = sent {
            debug!("body not sent: {e}");
        }
        return;
    }
}

/// Sends `data` as the peer's window allows. A stream that the peer's flow
/// control has held back for a second while memory is near the limit is
/// reset: what it holds (its send buffer, the data on its way) is given
/// back, and a client that reads nothing holds nothing for long.
async fn send_data(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    end_of_stream: bool,
    pressure: &Pressure,
) -> Result<(), h2::Error> {
    // The body's last data is handed to `h2` at once: it is held already
    // (its flow-control credit went back to the sender when it was read)
    // and nothing is read after it, so queueing it in `h2` until the peer's
    // window opens holds no more than waiting for the window here would. A
    // request on a stream the app has not opened yet (it gets no window
    // before) is then sent without a wait, a task or a wake-up: a unary
    // call's message, a small POST.
    if data.is_empty() || end_of_stream {
        return send.send_data(data, end_of_stream);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = match std::future::poll_fn(|cx| Poll::Ready(send.poll_capacity(cx))).await {
            Poll::Ready(capacity) => capacity,
            Poll::Pending => match held_back(send, pressure).await {
                Some(capacity) => capacity,
                None => {
                    send.send_reset(h2::Reason::CANCEL);
                    pressure.shed();
                    return Ok(());
                }
            },
        };
        let granted = match capacity {
            Some(granted) => granted?,
            // The stream is gone: the peer says why in its reset.
            None => return Ok(()),
        };
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, end_of_stream && data.is_empty())?;
    }
    Ok(())
}

/// Waits while memory is near the limit, for [`HELD_BACK`] at most: true
/// once it is below the mark.
async fn memory_given_back(pressure: &Pressure) -> bool {
    let until = tokio::time::Instant::now() + HELD_BACK;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(HELD_BACK / 20).await;
        if !pressure.high() {
            return true;
        }
    }
    false
}

/// How long a stream may wait for its peer's flow control while memory is
/// near the limit.
const HELD_BACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits for capacity on a stream that has none: `None` if it is held back
/// for [`HELD_BACK`] at a time when memory is near the limit.
async fn held_back(send: &mut h2::SendStream<Bytes>, pressure: &Pressure) -> Option<Option<Result<usize, h2::Error>>> {
    let check = tokio::time::sleep(HELD_BACK);
    tokio::pin!(check);
    loop {
        tokio::select! {
            capacity = std::future::poll_fn(|cx| send.poll_capacity(cx)) => return Some(capacity),
            () = &mut check => {
                if pressure.high() {
                    return None;
                }
                check.as_mut().reset(tokio::time::Instant::now() + HELD_BACK);
            }
        }
    }
}

/// A request body whose first frames may have been read ahead (for body
/// filters), then the rest as it arrives. A failure met while reading ahead
/// is passed on at its place in the stream, so nobody receives a truncated
/// body as complete.
#[derive(Debug)]
pub struct Replay {
    read: VecDeque<Frame<Bytes>>,
    failed: Option<h2::Error>,
    rest: Option<H2Body>,
}

impl Replay {
    pub fn new(body: H2Body) -> Self {
        Replay { read: VecDeque::new(), failed: None, rest: Some(body) }
    }

    /// Reads the body ahead while it ends within `cap` data bytes and
    /// `within`; returns its data when it ended. `None`: not all of it was
    /// read; what was read is still passed on first.
    pub async fn read_ahead(&mut self, cap: usize, within: std::time::Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut data = Vec::new();
        loop {
            let Some(rest) = self.rest.as_mut() else { return Some(data) };
            if data.len() > cap {
                return None;
            }
            match tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(rest)).await {
                Err(_) => return None,
                Ok(None) => self.rest = None,
                Ok(Some(Err(e))) => {
                    self.failed = Some(e);
                    self.rest = None;
                    return None;
                }
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    self.read.push_back(frame);
                }
            }
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.failed.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.rest, self.read.is_empty() && self.failed.is_none()) {
            (Some(rest), true) => rest.size_hint(),
            (None, true) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A request body on its way to the app, copied frame by frame to mirroring
/// sessions (lossy: [`Copies`] drops a copy rather than wait).
#[derive(Debug)]
pub struct Tee {
    pub inner: Replay,
    pub copies: Copies,
    pub metrics: Arc<Metrics>,
}

impl Body for Tee {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let next = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &next {
            Some(Ok(frame)) => {
                if let Some(wire) = to_wire(frame) {
                    this.copies.send(&wire, &this.metrics);
                }
            }
            None => this.copies.send(&Wire::End, &this.metrics),
            Some(Err(_)) => this.copies = Copies::default(),
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body frame as an exchange frame.
pub fn to_wire(frame: &Frame<Bytes>) -> Option<Wire> {
    if let Some(data) = frame.data_ref() {
        return Some(Wire::Data(data.clone()));
    }
    frame.trailers_ref().map(|t| Wire::Trailers(headers_to_wire(t)))
}

pub fn headers_to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(n, v)| Header { name: n.as_str().to_owned(), value: Bytes::copy_from_slice(v.as_bytes()) })
        .collect()
}

pub fn headers_from_wire(headers: &[Header]) -> HeaderMap {
    headers
        .iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?;
            Some((name, HeaderValue::from_bytes(&h.value).ok()?))
        })
        .collect()
}

/// Why a session's response body broke off.
#[derive(Debug, thiserror::Error)]
#[error("the session ended in the middle of the response")]
pub struct Cut;

/// A response body arriving from a session, frame by frame.
#[derive(Debug)]
pub struct FromSession {
    pub from_client: mpsc::Receiver<Wire>,
    /// Keeps the exchange call open until the answer is complete.
    pub _keep_open: mpsc::Sender<Wire>,
    pub done: bool,
}

impl Body for FromSession {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match std::task::ready!(self.from_client.poll_recv(cx)) {
                Some(Wire::Data(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Wire::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(headers_from_wire(&t))))),
                Some(Wire::End) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Some(_) => continue,
                // The session failed or went away mid-body: the stream is reset.
                None => Poll::Ready(Some(Err(Cut))),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
