//! HTTP/2 connections that take no more memory while memory is near the
//! limit: `h2` reads ahead and keeps what it read (request bodies up to the
//! windows granted to the client, the app's answers up to the windows
//! granted to the app) whether or not a stream takes it, and queues what it
//! writes until the peer reads it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Instant, Sleep};

use super::Pressure;

/// How long a gated connection waits before it reads again while memory
/// is near the limit.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(50);

/// How long a client may leave the sidecar's writes waiting (it reads
/// nothing) while memory is near the limit, before its connection closes.
const WRITES_STALLED: Duration = Duration::from_secs(1);

/// A connection whose reads wait while memory is near the limit: what it
/// reads is admitted after the read, and the next read waits until memory
/// is below the mark again, but for a ration shared by every gated
/// connection ([`Pressure::ration`]); the bytes stay in the kernel
/// meanwhile. The ration keeps everything moving slowly (control frames,
/// the app's answers, so that streams end and give their memory back, or
/// get as far as being shed); without it, streams waiting for the app's
/// answers under pressure would wait, and hold their memory, for good.
///
/// A client's connection also fails its writes (and so ends) once they have
/// waited for a second on a client that reads nothing while memory is near
/// the limit: everything it holds (its streams, their buffers, its app
/// connection) is given back at once, where resetting its streams one by
/// one would let the memory they free go to its next streams. (Not the
/// app's: an app that reads nothing is a paused or a busy app.)
#[derive(Debug)]
pub struct Gated<T> {
    io: T,
    pressure: Arc<Pressure>,
    /// Set while reads wait (on the heap: only under pressure).
    wait: Option<Pin<Box<Sleep>>>,
    /// Whether writes that stall end the connection (a client's).
    end_stalled: bool,
    /// Set while a write waits (with a memory limit only).
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> Gated<T> {
    /// A client's connection.
    pub fn client(io: T, pressure: Arc<Pressure>) -> Self {
        Gated { io, pressure, wait: None, end_stalled: true, stalled: None }
    }

    /// A connection to the app.
    pub fn app(io: T, pressure: Arc<Pressure>) -> Self {
        Gated { io, pressure, wait: None, end_stalled: false, stalled: None }
    }

    /// A write's outcome: one that waits starts (or checks) the stall timer.
    fn written<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if !polled.is_pending() {
            self.stalled = None;
            return polled;
        }
        if !self.end_stalled || self.pressure.mark().is_none() {
            return polled;
        }
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(sleep(WRITES_STALLED)));
        while stalled.as_mut().poll(cx).is_ready() {
            if self.pressure.high() {
                self.pressure.shed();
                return Poll::Ready(Err(io::Error::other(
                    "the client has read nothing for a second while memory is near the limit",
                )));
            }
            stalled.as_mut().reset(Instant::now() + WRITES_STALLED);
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Under pressure, a read takes its share of the ration, or waits.
        let mut allowed = usize::MAX;
        while let Some(wait) = this.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            if !this.pressure.high() {
                this.wait = None;
                break;
            }
            allowed = this.pressure.ration(buf.remaining());
            if allowed > 0 {
                break;
            }
            wait.as_mut().reset(Instant::now() + READ_AGAIN_AFTER);
        }
        let read = if allowed >= buf.remaining() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            buf.filled().len() - before
        } else {
            let mut part = buf.take(allowed);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            // SAFETY: the read initialised the first n unfilled bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            n
        };
        let read = u64::try_from(read).unwrap_or(u64::MAX);
        if !this.pressure.admit(read) {
            // Waiting: the next read waits for the next period at least.
            match this.wait.as_mut() {
                Some(wait) => wait.as_mut().reset(Instant::now() + READ_AGAIN_AFTER),
                None => this.wait = Some(Box::pin(sleep(READ_AGAIN_AFTER))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.written(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pressure::{MemoryLimit, Usage};
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Always at the mark: the process uses more than a byte.
    fn at_the_mark() -> (Arc<Pressure>, Counter) {
        let shed = Counter::default();
        (Arc::new(Pressure::new(&MemoryLimit { bytes: 1, usage: Usage::Resident }, shed.clone())), shed)
    }

    /// At the mark a connection reads its share of the ration, period by
    /// period; everything still arrives.
    #[tokio::test]
    async fn at_the_mark_reads_take_the_ration_and_everything_arrives() {
        let (pressure, _) = at_the_mark();
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let sent = vec![7u8; 200 * 1024];
        peer.write_all(&sent).await.unwrap();
        drop(peer);
        let mut gated = Gated::app(io, pressure);
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        // The first read goes through (nothing had told it to wait yet).
        let first = gated.read(&mut buf[..1024]).await.unwrap();
        got.extend_from_slice(&buf[..first]);
        loop {
            let n = gated.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n as u64 <= super::super::RATION, "{n} bytes in one read at the mark");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, sent);
        // The rest took a period each at least.
        let periods = (sent.len() - first).div_ceil(super::super::RATION as usize);
        let least = READ_AGAIN_AFTER * u32::try_from(periods).unwrap();
        assert!(started.elapsed() >= least, "{:?} for {} bytes", started.elapsed(), sent.len());
    }

    /// A client that reads nothing while memory is at the mark: after a
    /// second its connection's writes fail (and the connection ends), and it
    /// counts as shed. The app's connection waits instead.
    #[tokio::test]
    async fn a_client_that_reads_nothing_at_the_mark_is_cut_off_after_a_second() {
        let (pressure, shed) = at_the_mark();
        let (_peer, io) = tokio::io::duplex(4096);
        let mut client = Gated::client(io, pressure.clone());
        let chunk = vec![0u8; 1024];
        let started = std::time::Instant::now();
        let failed = loop {
            if let Err(e) = client.write_all(&chunk).await {
                break e;
            }
        };
        assert!(started.elapsed() >= WRITES_STALLED, "{:?}", started.elapsed());
        assert!(failed.to_string().contains("read nothing"), "{failed}");
        assert_eq!(shed.get(), 1);

        let (_peer, io) = tokio::io::duplex(4096);
        let mut app = Gated::app(io, pressure);
        let waited = tokio::time::timeout(WRITES_STALLED * 2, async {
            loop {
                app.write_all(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(waited.is_err(), "the app's connection waits, it does not fail");
    }
}
