//! The tunnel's front door: a connection reaches the gRPC server only once
//! it has sent the HTTP/2 connection preface, within a few seconds. A client
//! that connects and stays silent, or trickles bytes, is closed instead of
//! holding a connection (and a task) open for as long as it likes. At most
//! `max` connections are open at once, waiting for their preface or served:
//! beyond, a new one is closed at once, so that a client that connects in
//! a loop takes no more than that of the pod's descriptors.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts on `listener`; yields the connections whose preface arrived
/// within `within`, while fewer than `max` are open. Ends when the
/// receiving side is dropped.
pub fn gated(listener: TcpListener, within: Duration, max: usize) -> ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(64);
    let room = Arc::new(Semaphore::new(max));
    tokio::spawn(async move {
        // Said once each time the gate fills up, not per connection closed.
        let mut full = false;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!("tunnel accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = room.clone().try_acquire_owned() else {
                if !std::mem::replace(&mut full, true) {
                    warn!("session tunnel: {max} connections open, its limit (twice --max-sessions); new ones are closed until one ends");
                }
                continue;
            };
            full = false;
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if preface_within(&stream, within).await {
                    let _ = tx.send(Ok(Admitted { stream, _permit: permit })).await;
                } else {
                    debug!("tunnel connection closed: no HTTP/2 preface in time");
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection through the gate: it holds its place until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

#[cfg(test)]
impl Admitted {
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Whether the whole preface arrives (peeked, not consumed) in time.
async fn preface_within(stream: &TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 24];
    loop {
        match timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n == PREFACE.len() => return &buf == PREFACE,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) if buf[..n] != PREFACE[..n] => return false,
            // Part of it: peek again once more has had time to arrive.
            Ok(Ok(_)) => {
                if Instant::now() >= deadline {
                    return false;
                }
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn only_connections_that_send_the_preface_in_time_get_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gate = gated(listener, Duration::from_millis(300), 16);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut wrong = TcpStream::connect(addr).await.unwrap();
        wrong.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut trickle = TcpStream::connect(addr).await.unwrap();
        trickle.write_all(&PREFACE[..10]).await.unwrap();
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(&PREFACE[..10]).await.unwrap();
        sleep(Duration::from_millis(50)).await;
        good.write_all(&PREFACE[10..]).await.unwrap();
        let through = tokio::time::timeout(Duration::from_secs(2), gate.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(through.peer_addr().unwrap(), good.local_addr().unwrap());
        // The others are closed by the gate within its time.
        for s in [&mut silent, &mut wrong, &mut trickle] {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read(s, &mut b)).await;
            assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(100), gate.next()).await.is_err(),
            "nothing else got through"
        );
    }

    #[tokio::test]
    async fn beyond_its_limit_a_new_connection_is_closed_until_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gate = gated(listener, Duration::from_secs(2), 2);
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(PREFACE).await.unwrap();
            held.push(tokio::time::timeout(Duration::from_secs(2), gate.next()).await.unwrap().unwrap().unwrap());
            clients.push(c);
        }
        // Closed at once, before its preface could matter.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(PREFACE).await;
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut third, &mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the third connection is closed: {n:?}");
        assert!(tokio::time::timeout(Duration::from_millis(100), gate.next()).await.is_err());
        // One ends: the next one gets through.
        drop(held.remove(0));
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        fourth.write_all(PREFACE).await.unwrap();
        let through = tokio::time::timeout(Duration::from_secs(2), gate.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(through.peer_addr().unwrap(), fourth.local_addr().unwrap());
    }
}
