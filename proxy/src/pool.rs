//! Idle HTTP/1 app connections, kept per original destination.
//!
//! A client connection holds an app connection only while it has a request
//! in flight; between requests the app connection waits here for the next
//! request of any client to the same destination. So a thousand idle
//! keep-alive clients cost a thousand sockets, not two thousand, and the app
//! sees as many connections as there are requests in flight.
//!
//! A connection waits at most [`MAX_IDLE`] (shorter than the keep-alive
//! timeout of common app servers, so the app rarely closes one just as it
//! is reused) and is checked before reuse: one the app closed, or that has
//! bytes nobody asked for, is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::budget::{Budget, Fds};
use crate::fasthash::FastMap;

/// The longest an app connection waits for reuse.
pub const MAX_IDLE: Duration = Duration::from_secs(1);

/// Idle connections kept per destination; more are closed.
pub const MAX_PER_DESTINATION: usize = 256;

/// An app connection with the descriptor it holds from the budget.
#[derive(Debug)]
pub struct AppConn {
    pub stream: TcpStream,
    pub fds: Option<Fds>,
}

impl AppConn {
    /// A new connection to the app at `dst`, its descriptor taken from
    /// `budget`.
    pub async fn connect(dst: SocketAddr, budget: &Arc<Budget>) -> Result<AppConn, crate::app::Error> {
        let fds = budget.take(1).ok_or(crate::app::Error::Budget { dst, limit: budget.limit() })?;
        let stream = crate::socket::connect(dst).await.map_err(|error| crate::app::Error::Connect { dst, error })?;
        Ok(AppConn { stream, fds: Some(fds) })
    }
}

#[derive(Debug)]
struct Idle {
    conn: AppConn,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<FastMap<SocketAddr, Vec<Idle>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<SocketAddr, Vec<Idle>>> {
        // Nothing panics while holding it; the map is valid either way.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection to `dst`, if any.
    pub fn take(&self, dst: SocketAddr) -> Option<AppConn> {
        loop {
            let idle = self.lock().get_mut(&dst)?.pop()?;
            if idle.since.elapsed() < MAX_IDLE && is_quiet(&idle.conn.stream) {
                return Some(idle.conn);
            }
            // Closed by the app, stale, or carrying stray bytes: dropped
            // outside the lock, then the next one is tried.
        }
    }

    /// Keeps `conn` for the next request to `dst`.
    pub fn put(&self, dst: SocketAddr, conn: AppConn) {
        let surplus = {
            let mut idle = self.lock();
            let list = idle.entry(dst).or_default();
            list.push(Idle { conn, since: Instant::now() });
            (list.len() > MAX_PER_DESTINATION).then(|| list.remove(0))
        };
        drop(surplus);
    }

    /// Closes connections idle for longer than [`MAX_IDLE`].
    pub fn sweep(&self) {
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let mut expired = Vec::new();
            idle.retain(|_, list| {
                // Oldest first: the expired ones are a prefix.
                let keep_from = list.iter().position(|i| i.since.elapsed() < MAX_IDLE).unwrap_or(list.len());
                expired.extend(list.drain(..keep_from));
                !list.is_empty()
            });
            expired
        };
        drop(expired);
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True when nothing can be read from `stream`: the app has neither closed
/// it nor sent anything unasked. The reactor's readiness answers first: a
/// socket it has not seen become readable since its last short read needs
/// no system call; otherwise a non-blocking peek decides.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => return true,
        std::task::Poll::Ready(Err(_)) => return false,
        std::task::Poll::Ready(Ok(())) => {}
    }
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (AppConn, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (AppConn { stream: client, fds: None }, server)
    }

    #[tokio::test]
    async fn reuses_live_connections_and_drops_closed_or_noisy_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = listener.local_addr().unwrap();
        let pool = Pool::default();
        assert!(pool.take(dst).is_none());

        let (live, _live_server) = pair(&listener).await;
        let live_port = live.stream.local_addr().unwrap().port();
        let (closed, closed_server) = pair(&listener).await;
        let (noisy, mut noisy_server) = pair(&listener).await;
        pool.put(dst, live);
        pool.put(dst, closed);
        pool.put(dst, noisy);
        drop(closed_server);
        noisy_server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let taken = pool.take(dst).expect("the live one");
        assert_eq!(taken.stream.local_addr().unwrap().port(), live_port);
        assert!(pool.take(dst).is_none(), "the closed and the noisy one are gone");
    }

    #[tokio::test]
    async fn expired_connections_are_swept_and_never_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = listener.local_addr().unwrap();
        let pool = Pool::default();
        let (conn, _server) = pair(&listener).await;
        pool.put(dst, conn);
        assert_eq!(pool.len(), 1);
        pool.sweep();
        assert_eq!(pool.len(), 1, "not yet expired");
        tokio::time::sleep(MAX_IDLE + Duration::from_millis(20)).await;
        pool.sweep();
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn keeps_at_most_the_cap_per_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dst = listener.local_addr().unwrap();
        let pool = Pool::default();
        let mut servers = Vec::new();
        for _ in 0..MAX_PER_DESTINATION + 3 {
            let (conn, server) = pair(&listener).await;
            servers.push(server);
            pool.put(dst, conn);
        }
        assert_eq!(pool.len(), MAX_PER_DESTINATION);
    }
}
