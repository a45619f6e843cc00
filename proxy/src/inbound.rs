//! The inbound listener: every connection redirected to the sidecar is
//! matched to its original destination, classified, and proxied.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn, Instrument};

use crate::budget::{Budget, Fds};
use crate::detect::{self, Detected};
use crate::h1;
use crate::h2::{self, Proxy};
use crate::limits::Limits;
use crate::metrics::{Metrics, Protocol};
use crate::pause::Pause;
use crate::pool::Pool;
use crate::rewind::Rewind;
use crate::session::Sessions;
use crate::shutdown::Shutdown;
use crate::socket;
use crate::tcp;

/// Where proxied connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The address the client asked for, before iptables redirected it.
    Original,
    /// One fixed upstream (explicit mode, no iptables).
    Fixed(SocketAddr),
}

/// Shared state of the inbound side.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub destination: Destination,
    /// Ports passed through as raw TCP without detection (`*`: all).
    pub opaque_ports: crate::ports::PortList,
    /// Connected developer sessions.
    pub sessions: Arc<Sessions>,
    /// Ports that belong to the sidecar itself: a connection redirected to
    /// one of them would loop, and is refused.
    pub own_ports: BTreeSet<u16>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// While it holds the app paused, kubelet's HTTP probes are answered here.
    pub pause: Arc<Pause>,
    /// Idle HTTP/1 app connections.
    pub pool: Arc<Pool>,
    pub budget: Arc<Budget>,
    /// Whether memory is near the limit: then what would take more is refused.
    pub pressure: Arc<crate::pressure::Pressure>,
}

impl Inbound {
    /// The same, with a pool of its own: for a worker thread, whose app
    /// connections are registered with its own runtime.
    pub fn for_worker(&self) -> Inbound {
        Inbound { pool: Arc::default(), ..self.clone() }
    }
}

#[cfg(test)]
impl Inbound {
    /// For unit tests: explicit mode to `app`, 1 s limits, 100 descriptors,
    /// no sessions, no pause.
    pub(crate) fn for_tests(app: SocketAddr, opaque_ports: crate::ports::PortList) -> Inbound {
        let metrics = Arc::new(Metrics::default());
        let second = Duration::from_secs(1);
        Inbound {
            destination: Destination::Fixed(app),
            opaque_ports,
            sessions: Arc::new(Sessions::new(crate::ports::PortList::default())),
            own_ports: BTreeSet::new(),
            limits: Limits {
                detect_timeout: second,
                header_read_timeout: second,
                max_head: 1024,
                body_read_timeout: second,
                tcp_idle_timeout: None,
                http_idle_timeout: None,
            },
            budget: Budget::new(100, metrics.inbound_fds.clone()),
            pressure: Arc::new(crate::pressure::Pressure::off()),
            pause: Pause::disabled("no pause here", metrics.clone()),
            metrics,
            pool: Arc::default(),
        }
    }
}

/// Accepts until shutdown; each connection runs in its own task, on this
/// thread or, as `worker` decides, on another worker's.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: Shutdown,
    worker: Option<crate::workers::Worker>,
) {
    let mut refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.signalled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(fds) = inbound.budget.take(1) else {
                    refusals.refuse(stream, &inbound);
                    continue;
                };
                match &worker {
                    Some(worker) => worker.place(stream, peer, fds, &inbound, &shutdown),
                    None => serve(stream, peer, fds, &inbound, &shutdown, ()),
                }
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!("accept failed: {e}");
                inbound.metrics.error(crate::metrics::Fault::Accept);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `stream` in a task of its own on this thread; `held` is dropped
/// when the connection ends.
pub(crate) fn serve<H: Send + 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    fds: Fds,
    inbound: &Arc<Inbound>,
    shutdown: &Shutdown,
    held: H,
) {
    let span = tracing::debug_span!("conn", %peer);
    let conn = handle(stream, fds, inbound.clone(), shutdown.clone());
    tokio::spawn(task(conn, held).instrument(span));
}

/// A connection's task: `conn`, then `held` dropped. The connection's
/// future (over a KiB) is boxed once and the task holds a pointer to it: it
/// is not copied into the task's cell and over again at its end. (Boxing
/// an `async` block that awaits a captured future instead would hold that
/// future twice, as the captured value and as the one awaited.)
fn task<F: std::future::Future<Output = ()>, H>(conn: F, held: H) -> impl std::future::Future<Output = ()> {
    let conn = Box::pin(conn);
    async move {
        conn.await;
        drop(held);
    }
}

/// Connections refused for the budget: reset at once (a client retries or
/// fails fast, rather than waiting on a connection nobody serves), counted,
/// and logged at most every ten seconds.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<std::time::Instant>,
}

impl Refusals {
    fn refuse(&mut self, stream: TcpStream, inbound: &Inbound) {
        socket::reset_on_close(&stream);
        drop(stream);
        inbound.metrics.error(crate::metrics::Fault::FdBudget);
        self.since_log += 1;
        if self.logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            warn!(
                refused = self.since_log,
                budget = inbound.budget.limit(),
                "connections refused: the inbound side holds its whole file-descriptor budget (--fd-budget)"
            );
            self.since_log = 0;
            self.logged = Some(std::time::Instant::now());
        }
    }
}

async fn handle(mut stream: TcpStream, _fds: Fds, inbound: Arc<Inbound>, shutdown: Shutdown) {
    // (Socket options come with the listener: `socket::listen`.)
    let dst = match inbound.destination {
        Destination::Fixed(addr) => addr,
        Destination::Original => match socket::original_dst(&stream) {
            Ok(addr) => addr,
            Err(e) => {
                debug!("no original destination: {e}");
                inbound.metrics.error(crate::metrics::Fault::OriginalDst);
                return;
            }
        },
    };
    if inbound.destination == Destination::Original && inbound.own_ports.contains(&dst.port()) {
        debug!(%dst, "refused: the original destination is the sidecar itself");
        inbound.metrics.error(crate::metrics::Fault::LoopRefused);
        return;
    }
    let detected = if inbound.opaque_ports.contains(dst.port()) {
        Ok(Detected::Tcp(Bytes::new()))
    } else {
        detect::detect(&mut stream, inbound.limits.detect_timeout).await
    };
    let (protocol, prefix) = match detected {
        Ok(Detected::Http1(p)) => (Protocol::Http1, p),
        Ok(Detected::Http2(p)) => (Protocol::Http2, p),
        Ok(Detected::Tcp(p)) => (Protocol::Tcp, p),
        Ok(Detected::Closed) => return,
        Err(e) => {
            debug!("read failed during detection: {e}");
            inbound.metrics.error(crate::metrics::Fault::ClientRead);
            return;
        }
    };
    let counts = inbound.metrics.conn_counts(dst.port(), protocol);
    counts.connections.inc();
    let _open = OpenGuard::new(counts.open.clone());
    drop(counts);
    debug!(%dst, protocol = protocol.as_str(), "proxying");
    match protocol {
        Protocol::Http1 => {
            h1::serve(stream, prefix, h1::Conn { dst, shutdown, inbound: inbound.clone() }).await;
        }
        Protocol::Http2 => {
            let proxy = Proxy::new(dst, inbound.clone());
            Box::pin(h2::serve(Rewind::new(prefix, stream), proxy, shutdown)).await;
        }
        Protocol::Tcp => {
            let idle = inbound.limits.tcp_idle_timeout;
            Box::pin(tcp::forward(stream, prefix, dst, &inbound, idle)).await
        }
    }
}

/// Keeps the open-connections gauge right on every exit path.
struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Every connection's task is as large as its future, idle or not; the
    /// state that only a request in flight needs is boxed. A buffer or a
    /// large future in the wrong place shows up here (a 4 KiB array in the
    /// lingering close once made every idle connection cost 5.5 KiB).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let inbound = Arc::new(Inbound::for_tests(addr, crate::ports::PortList::default()));
        let stream = TcpStream::connect(addr).await.unwrap();
        let task = handle(stream, inbound.budget.take(1).unwrap(), inbound, shutdown);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 3072, "a connection's task is {size} bytes");
    }

    /// The connection's future is in its task once, behind a pointer: the
    /// task holds the pointer and what is dropped at its end, not a second
    /// copy of the future.
    #[test]
    fn a_connection_future_is_held_once() {
        let large = async {
            let block = [0u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&block);
        };
        let size = std::mem::size_of_val(&task(large, 0u64));
        assert!(size <= 64, "the task around a 4 KiB future is {size} bytes");
    }
}
