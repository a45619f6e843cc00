//! The series of each port and protocol, made once and shared by the
//! connections to it.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{status_class, ConnLabels, Metrics, Protocol, RequestLabels, Route};

/// The series of one port and protocol: connections, open connections,
/// requests by status class and durations by route. Made once
/// ([`Metrics::conn_counts`]) and shared by every connection to the port,
/// so that a connection and its requests are counted without a lookup by
/// label (which hashes the labels with SipHash under the family's lock).
#[derive(Debug)]
pub struct ConnCounts {
    port: u16,
    protocol: Protocol,
    pub connections: Counter,
    pub open: Gauge,
    requests: [OnceLock<Counter>; 5],
    durations: [OnceLock<Histogram>; 3],
}

impl Metrics {
    /// The series of `port` and `protocol`.
    pub fn conn_counts(&self, port: u16, protocol: Protocol) -> Arc<ConnCounts> {
        let known = self.conn_counts.read().unwrap_or_else(|p| p.into_inner()).get(&(port, protocol)).cloned();
        if let Some(counts) = known {
            return counts;
        }
        let mut all = self.conn_counts.write().unwrap_or_else(|p| p.into_inner());
        all.entry((port, protocol))
            .or_insert_with(|| {
                let labels = ConnLabels { port, protocol };
                Arc::new(ConnCounts {
                    port,
                    protocol,
                    connections: self.connections.get_or_create(&labels).clone(),
                    open: self.open_connections.get_or_create(&labels).clone(),
                    requests: Default::default(),
                    durations: Default::default(),
                })
            })
            .clone()
    }
}

impl ConnCounts {
    /// Counts a response by its status.
    pub fn answered(&self, metrics: &Metrics, status: u16) {
        let (port, protocol) = (self.port, self.protocol);
        let idx = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[idx]
            .get_or_init(|| {
                metrics.requests.get_or_create(&RequestLabels { port, protocol, status: status_class(status) }).clone()
            })
            .inc();
    }

    /// Records how long a request took, from `started` to now.
    pub fn done(&self, metrics: &Metrics, route: Route, started: std::time::Instant) {
        let (port, protocol) = (self.port, self.protocol);
        self.durations[route.index()]
            .get_or_init(|| metrics.duration(port, protocol, route))
            .observe(started.elapsed().as_secs_f64());
    }
}
