//! Developer sessions as the data path sees them: who is connected, with
//! which config, in which order; and the routing decision for a connection
//! or request (pass through, steal to one session, mirror to some).
//!
//! Sessions are kept in connect order, so precedence among overlapping steal
//! filters is deterministic: the first connected wins. The list is swapped
//! whole on every change; the data path reads it without holding a lock
//! across anything, and skips it entirely when no session is connected.

mod contest;
mod events;
mod exchange;
mod plan;
mod route;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mirrord_config::{Config, Mode, RequestBody};
use tokio::sync::mpsc;

pub use contest::Yielded;
pub use events::Events;
pub use exchange::{Copies, Exchange, Slot};
pub use plan::{conflict, describe, plan, Conflict};
pub use route::{open_copies, open_steal, route_request, Routed};
pub use wire::{Announced, Frame};

use crate::ports::PortList;
use crate::proto::{self, session_event};

/// Events waiting for a session's client; beyond this, mirrored copies are
/// dropped and stolen traffic waits.
const EVENT_QUEUE: usize = 1024;

/// Exchanges announced but not yet attached, per session. Beyond this the
/// client is not keeping up: copies are dropped and stolen traffic stays
/// with the app, so memory stays bounded whatever the client does.
const MAX_UNATTACHED: usize = 1024;

/// One connected developer session.
#[derive(Debug)]
pub struct Session {
    /// Connect order.
    pub seq: u64,
    /// Secret that names the session's exchanges.
    pub secret: String,
    /// As the client introduced itself.
    pub name: String,
    /// The name as the metrics know it (bounded).
    pub label: crate::metrics::SessionLabel,
    /// Its count of intercepted requests and connections, per port and mode.
    pub intercepts: crate::metrics::Intercepts,
    pub config: Config,
    events: mpsc::Sender<events::Event>,
    /// Copies announced whole, sent in batches (`events.rs`).
    gathered: Arc<events::Gathered>,
    slots: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
    /// Sessions already told that this one took their match (told once each).
    told_about: Mutex<Vec<u64>>,
    /// Signalled whenever the client attaches an exchange.
    attached: tokio::sync::Notify,
    /// Ports given up to another session (`on_concurrent_steal`).
    pub yielded: Yielded,
    /// When it opened, for `/status`.
    pub opened: std::time::Instant,
    /// Requests and connections stolen, and copies made, for `/status`.
    pub stolen: AtomicU64,
    pub mirrored: AtomicU64,
}

impl Session {
    pub fn new(
        seq: u64,
        secret: String,
        name: String,
        label: crate::metrics::SessionLabel,
        config: Config,
    ) -> (Arc<Self>, Events) {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let gathered = Arc::new(events::Gathered::new(EVENT_QUEUE));
        let session = Session {
            seq,
            secret,
            name,
            intercepts: crate::metrics::Intercepts::new(label.clone()),
            label,
            config,
            events,
            gathered: gathered.clone(),
            slots: Mutex::default(),
            next_id: AtomicU64::new(1),
            told_about: Mutex::default(),
            attached: tokio::sync::Notify::new(),
            yielded: Yielded::default(),
            opened: std::time::Instant::now(),
            stolen: AtomicU64::new(0),
            mirrored: AtomicU64::new(0),
        };
        (Arc::new(session), Events::new(rx, gathered))
    }

    /// Whether this session takes traffic of `port`: its config covers it
    /// and it has not given the port up to another session.
    pub fn takes(&self, port: u16) -> bool {
        self.config.incoming.applies_to(port) && !self.yielded.contains(port)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        // The map is only inserted into and removed from; a panic elsewhere
        // cannot leave it half-updated.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an event on the session stream: waiting for room when `wait`
    /// (stolen traffic), dropping it when full otherwise (copies).
    pub async fn send(&self, event: session_event::Kind, wait: bool) -> bool {
        let event = Ok(proto::SessionEvent { kind: Some(event) });
        if wait {
            self.events.send(event).await.is_ok()
        } else {
            self.events.try_send(event).is_ok()
        }
    }

    /// Sends an event that must not wait (state changes); dropped if the
    /// client is far behind.
    pub fn notify(&self, event: session_event::Kind) {
        let _ = self.events.try_send(Ok(proto::SessionEvent { kind: Some(event) }));
    }

    /// Announces an intercepted request or connection and returns the data
    /// path's ends of its exchange. `None` when the session is gone or, for
    /// a copy, too far behind.
    pub async fn open(&self, port: u16, mode: wire::Mode, announced: Announced) -> Option<Exchange> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (exchange, slot) = exchange::pair(mode == wire::Mode::Mirror);
        {
            let mut slots = self.slots();
            if slots.len() >= MAX_UNATTACHED {
                return None;
            }
            slots.insert(id, slot);
        }
        let kind = Some(announced.into_wire());
        let incoming = proto::Incoming { id, port: u32::from(port), mode: mode.into_wire() as i32, kind };
        if self.send(session_event::Kind::Incoming(incoming), mode == wire::Mode::Steal).await {
            Some(exchange)
        } else {
            self.slots().remove(&id);
            None
        }
    }

    /// Announces a copy that is complete in itself (a request without a
    /// body): no exchange is needed, so none is opened; it goes out with
    /// the next batch of copies. False when dropped.
    pub fn announce_copy(&self, port: u16, request: wire::HttpRequest) -> bool {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kind = Some(Announced::Http(request).into_wire());
        let incoming = proto::Incoming { id, port: u32::from(port), mode: proto::Mode::Mirror as i32, kind };
        self.gathered.push(proto::SessionEvent { kind: Some(session_event::Kind::Incoming(incoming)) })
    }

    /// The client attached to exchange `id`: hands over its slot.
    pub fn attach(&self, id: u64) -> Option<Slot> {
        let slot = self.slots().remove(&id);
        self.attached.notify_waiters();
        slot
    }

    /// After a clean end: lets the client attach what was announced before
    /// the rules went away, for at most `within`.
    pub async fn settle(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attached = self.attached.notified();
            if self.slots().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, attached).await.is_err() {
                return;
            }
        }
    }

    /// Tells this session, once per other session, that a request matching
    /// its filter went to `winner`, which connected first.
    pub fn tell_lost_match(&self, winner: &Session, port: u16) {
        let mut told = self.told_about.lock().unwrap_or_else(|p| p.into_inner());
        if told.contains(&winner.seq) {
            return;
        }
        told.push(winner.seq);
        let message = format!(
            "a request on port {port} matched your filter but went to session {:?}, which connected first and whose filter matches it too",
            winner.name
        );
        self.notify(session_event::Kind::Notice(proto::Notice { message }));
    }
}

/// Where a connection or request goes.
#[derive(Debug, Default)]
pub struct Decision {
    pub steal: Option<Arc<Session>>,
    pub mirrors: Vec<Arc<Session>>,
}

impl Decision {
    pub fn is_passthrough(&self) -> bool {
        self.steal.is_none() && self.mirrors.is_empty()
    }
}

/// What a request looks like to a filter.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The whole body, when it was read for a body filter.
    pub body: Option<&'a [u8]>,
}

/// The most of a request body buffered for body filters. A longer body (or
/// one not complete within the head's read timeout) is not read first: body
/// filters do not match it, and it streams as always.
pub const BODY_FILTER_CAP: usize = 64 * 1024;

/// How long a request body may take to arrive before it is routed without
/// it (body filters then do not match).
pub const BODY_FILTER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sessions a sidecar serves at once by default (`--max-sessions`): each
/// one is tried on every request of the ports it takes, and each mirroring
/// one gets a copy, so a client that opens sessions in a loop must not be
/// able to multiply the pod's work without end.
pub const DEFAULT_MAX_SESSIONS: u16 = 64;

/// Why a session was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another session already steals what it would steal.
    #[error(transparent)]
    Conflict(Conflict),
    /// The sidecar serves as many sessions as it may.
    #[error(
        "the sidecar serves as many sessions as it may (--max-sessions {max}): end one of them, or raise the limit \
         (`mirrord-cli inject TARGET --max-sessions N` sets the pods' mirrord.dev/max-sessions)"
    )]
    Full { max: usize },
}

/// All connected sessions, in connect order.
#[derive(Debug)]
pub struct Sessions {
    list: RwLock<Arc<Vec<Arc<Session>>>>,
    count: AtomicUsize,
    next_seq: AtomicU64,
    /// Every session whose exchanges can still be attached, by secret: also
    /// one that has just left routing and is settling.
    attachable: Mutex<Vec<std::sync::Weak<Session>>>,
    /// Ports the sidecar intercepts, when known (for plans and conflicts).
    pub known_ports: PortList,
    /// Sessions at once; beyond, a new one is refused.
    max: usize,
}

impl Sessions {
    pub fn new(known_ports: PortList) -> Self {
        Sessions {
            list: RwLock::default(),
            count: AtomicUsize::new(0),
            next_seq: AtomicU64::new(0),
            attachable: Mutex::default(),
            known_ports,
            max: usize::from(DEFAULT_MAX_SESSIONS),
        }
    }

    /// Sessions at once, at most.
    pub fn max(&self) -> usize {
        self.max
    }

    /// With room for `max` sessions at once (at least one).
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<Session>>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds a session, resolving ports it would steal whole beside another
    /// session as its `on_concurrent_steal` says (`Err`: refused, and why).
    /// `Ok` holds what its plan should say about contested ports.
    pub fn add(&self, session: Arc<Session>) -> Result<Vec<String>, Refusal> {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        if list.len() >= self.max {
            return Err(Refusal::Full { max: self.max });
        }
        let warnings = contest::admit(&list, &session, &self.known_ports).map_err(Refusal::Conflict)?;
        let mut attachable = self.attachable.lock().unwrap_or_else(|p| p.into_inner());
        attachable.retain(|w| w.strong_count() > 0);
        attachable.push(Arc::downgrade(&session));
        let mut next = (**list).clone();
        next.push(session);
        self.count.store(next.len(), Ordering::Release);
        *list = Arc::new(next);
        Ok(warnings)
    }

    /// Removes a session: from the next routing decision on, it is gone.
    pub fn remove(&self, seq: u64) {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<_> = list.iter().filter(|s| s.seq != seq).cloned().collect();
        if let Some(gone) = list.iter().find(|s| s.seq == seq) {
            contest::release(&next, gone);
        }
        self.count.store(next.len(), Ordering::Release);
        *list = Arc::new(next);
    }

    /// Whether some session's filter on `port` needs the request body.
    pub fn need_body(&self, port: u16) -> bool {
        !self.is_empty() && self.snapshot().iter().any(|s| s.takes(port) && s.config.incoming.needs_body(port))
    }

    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The live session with this secret, for attaching an exchange.
    pub fn by_secret(&self, secret: &str) -> Option<Arc<Session>> {
        let attachable = self.attachable.lock().unwrap_or_else(|p| p.into_inner());
        attachable
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|s| crate::secret::constant_time_eq(s.secret.as_bytes(), secret.as_bytes()))
    }

    /// Routing for a new connection, or for one request when `request` is
    /// given. A session whose `http_filter` covers this port only takes
    /// requests that match it, never a connection that is not HTTP.
    pub fn decide(&self, port: u16, request: Option<RequestView<'_>>) -> Decision {
        let mut decision = Decision::default();
        if self.is_empty() {
            return decision;
        }
        for session in self.snapshot().iter() {
            let incoming = &session.config.incoming;
            if !session.takes(port) {
                continue;
            }
            let matches = match (incoming.filter_for(port), request) {
                (None, _) => true,
                (Some(f), Some(r)) => {
                    f.matches_with_body(r.method, r.path, r.headers.iter().copied(), &RequestBody::new(r.body))
                }
                (Some(_), None) => false,
            };
            if !matches {
                continue;
            }
            match (incoming.mode, &decision.steal) {
                (Mode::Steal, None) => decision.steal = Some(session.clone()),
                (Mode::Steal, Some(winner)) => session.tell_lost_match(winner, port),
                (Mode::Mirror, _) => decision.mirrors.push(session.clone()),
                (Mode::Off, _) => {}
            }
        }
        decision
    }
}
