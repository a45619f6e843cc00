//! The tunnel's front door: a connection reaches the gRPC server only once
//! it has sent the HTTP/2 connection preface, within a few seconds. A client
//! that connects and stays silent, or trickles bytes, is closed instead of
//! holding a connection (and a task) open for as long as it likes.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout_at, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts on `listener`; yields the connections whose preface arrived
/// within `within`. Ends when the receiving side is dropped.
pub fn gated(listener: TcpListener, within: Duration) -> ReceiverStream<std::io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
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
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                if preface_within(&stream, within).await {
                    let _ = tx.send(Ok(stream)).await;
                } else {
                    debug!("tunnel connection closed: no HTTP/2 preface in time");
                }
            });
        }
    });
    ReceiverStream::new(rx)
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
        let mut gate = gated(listener, Duration::from_millis(300));
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
}
