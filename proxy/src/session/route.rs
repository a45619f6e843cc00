//! The one routing step every protocol path takes: decide which sessions
//! take a request or connection, announce it to them, open the copies for
//! the mirroring ones and the exchange of the stealing one, and count it.
//! HTTP/1 and HTTP/2 requests go through [`route_request`]; a raw TCP
//! connection decides first, opens its steal, and opens its copies only
//! once the app has accepted the connection ([`open_steal`], [`open_copies`]).

use std::sync::Arc;

use super::wire::{Announced, HttpRequest, Mode};
use super::{Copies, Exchange, RequestView, Session, Sessions};
use crate::metrics::{InterceptMode, Metrics};

/// What happens to one request besides (or instead of) the app.
#[derive(Debug, Default)]
pub struct Routed {
    /// The session that answers instead of the app.
    pub steal: Option<Exchange>,
    /// Copies for the mirroring sessions.
    pub copies: Copies,
}

/// Routes one HTTP request. `announce` builds the request as sessions see
/// it; it runs only when some session takes the request.
pub async fn route_request(
    sessions: &Sessions,
    port: u16,
    view: RequestView<'_>,
    announce: impl FnOnce() -> HttpRequest,
    metrics: &Metrics,
) -> Routed {
    let decision = sessions.decide(port, Some(view));
    if decision.is_passthrough() {
        return Routed::default();
    }
    let request = Announced::Http(announce());
    match decision.steal {
        Some(session) => {
            let copies = if decision.mirrors.is_empty() {
                Copies::default()
            } else {
                open_copies(&decision.mirrors, port, request.clone(), metrics).await
            };
            Routed { steal: open_steal(&session, port, request, metrics).await, copies }
        }
        None => Routed { steal: None, copies: open_copies(&decision.mirrors, port, request, metrics).await },
    }
}

/// Opens the exchange of a stolen request or connection; `None` when the
/// session is gone (the app then answers).
pub async fn open_steal(session: &Session, port: u16, announce: Announced, metrics: &Metrics) -> Option<Exchange> {
    let exchange = session.open(port, Mode::Steal, announce).await;
    if exchange.is_some() {
        session.intercepts.count(metrics, port, InterceptMode::Steal);
        session.stolen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    exchange
}

/// Opens the copies for the mirroring sessions. A request without a body
/// travels whole in its announcement; others get an exchange for the body
/// (or the connection's bytes). A session too far behind loses its copy.
/// The last session takes `announce` itself, the others a copy of it.
pub async fn open_copies(mirrors: &[Arc<Session>], port: u16, announce: Announced, metrics: &Metrics) -> Copies {
    let mut copies = Copies::default();
    if let Some((last, others)) = mirrors.split_last() {
        for session in others {
            open_copy(session, port, announce.clone(), metrics, &mut copies).await;
        }
        open_copy(last, port, announce, metrics, &mut copies).await;
    }
    copies
}

async fn open_copy(session: &Session, port: u16, announce: Announced, metrics: &Metrics, copies: &mut Copies) {
    let opened = match announce {
        Announced::Http(request) if request.body_complete => {
            let sent = session.announce_copy(port, request);
            if sent {
                copies.announced();
            }
            sent
        }
        announce => match session.open(port, Mode::Mirror, announce).await {
            Some(exchange) => {
                copies.add(exchange.to_client, session.label.clone());
                true
            }
            None => false,
        },
    };
    if opened {
        session.intercepts.count(metrics, port, InterceptMode::Mirror);
        session.mirrored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else {
        metrics.mirror_dropped(&session.label);
    }
}
