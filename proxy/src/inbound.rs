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

use crate::detect::{self, Detected};
use crate::h1;
use crate::h2::{self, Proxy};
use crate::limits::Limits;
use crate::metrics::{ConnLabels, Metrics, Protocol};
use crate::pause::Pause;
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
#[derive(Debug)]
pub struct Inbound {
    pub destination: Destination,
    /// Ports never inspected for HTTP.
    pub opaque_ports: BTreeSet<u16>,
    /// Connected developer sessions.
    pub sessions: Arc<Sessions>,
    /// Ports that belong to the sidecar itself: a connection redirected to
    /// one of them would loop, and is refused.
    pub own_ports: BTreeSet<u16>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// While it holds the app paused, kubelet's HTTP probes are answered here.
    pub pause: Arc<Pause>,
}

/// Accepts until shutdown; each connection runs in its own task.
pub async fn accept_loop(listener: TcpListener, inbound: Arc<Inbound>, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.signalled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("conn", %peer);
                tokio::spawn(handle(stream, inbound.clone(), shutdown.clone()).instrument(span));
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

async fn handle(mut stream: TcpStream, inbound: Arc<Inbound>, shutdown: Shutdown) {
    socket::tune(&stream);
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
    let detected = if inbound.opaque_ports.contains(&dst.port()) {
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
    let labels = ConnLabels { port: dst.port(), protocol };
    inbound.metrics.connections.get_or_create(&labels).inc();
    let _open = OpenGuard::new(inbound.metrics.open_connections.get_or_create(&labels).clone());
    debug!(%dst, protocol = protocol.as_str(), "proxying");
    match protocol {
        Protocol::Http1 => {
            let conn = h1::Conn {
                dst,
                limits: inbound.limits,
                metrics: inbound.metrics.clone(),
                shutdown,
                sessions: inbound.sessions.clone(),
                pause: inbound.pause.clone(),
            };
            h1::serve(stream, prefix, conn).await;
        }
        Protocol::Http2 => {
            let proxy = Proxy::new(dst, inbound.metrics.clone(), inbound.sessions.clone(), shutdown);
            h2::serve(Rewind::new(prefix, stream), proxy, &inbound.limits).await;
        }
        Protocol::Tcp => {
            let idle = inbound.limits.tcp_idle_timeout;
            tcp::forward(stream, prefix, dst, &inbound.sessions, &inbound.metrics, idle).await
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
