//! The queue the two pumps of a connection share: what each response
//! answers, in order (a forwarded request, a refusal, a stolen request, an
//! answer of the sidecar's own, the end of a round), and the connection's
//! flags (the app connection pinned, the client finished).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::{oneshot, Notify};

use super::head::{Kind, Reject};
use super::stolen;

/// Queued by the request pump, consumed in order by the response pump.
#[derive(Debug)]
pub(super) enum Pending {
    /// A request was forwarded; its response is awaited. Upgrade and CONNECT
    /// requests learn whether the app switched protocols.
    Response {
        kind: Kind,
        switched: Option<oneshot::Sender<bool>>,
        /// When its head was read, and whether copies went to sessions.
        started: std::time::Instant,
        route: crate::metrics::Route,
        /// The client asked to close after this request, and the app was
        /// not told: the response says `close` and ends the client's
        /// connection, and the app connection is given back.
        close_client: bool,
    },
    /// Answer this refusal once every earlier response is complete, then close.
    Reject(Reject),
    /// A session answers this one instead of the app.
    Stolen(stolen::Stolen),
    /// Answered by the sidecar itself once every earlier response is
    /// complete (a kubelet probe while the app is paused).
    Local(&'static [u8]),
    /// Close once every earlier response is complete (shutdown).
    Close,
    /// End the round once every earlier response is complete: the app
    /// connection is idle.
    Release,
}

/// Requests a client may have sent on (pipelined) before the answers to
/// the earlier ones are complete: beyond it, the next request is read once
/// an answer is. A client that pipelines requests and reads no answer then
/// holds this many entries, not as many as the buffers on the way carry.
pub(super) const MAX_PIPELINED: usize = 64;

#[derive(Debug, Default)]
pub(super) struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    pub(super) changed: Notify,
    /// Signalled when an entry leaves the queue (see [`MAX_PIPELINED`]).
    pub(super) room: Notify,
    /// The app connection stays with this client connection (see the module
    /// documentation).
    pinned: AtomicBool,
    /// A client that asked to close has its last response: its connection
    /// ends, and the app connection is free.
    pub(super) finished: AtomicBool,
}

impl Shared {
    pub(super) fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // Both pumps run in one task; a poisoned lock can only follow a
        // panic that already ended this connection's task.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next entry off the queue.
    pub(super) fn pop_front(&self) -> Option<Pending> {
        self.pop_front_if(|_| true)
    }

    /// Takes the next entry off the queue if `due` says it is the one. The
    /// request pump is told when that makes room (it waits only then).
    pub(super) fn pop_front_if(&self, due: impl FnOnce(&Pending) -> bool) -> Option<Pending> {
        let mut queue = self.queue();
        let full = queue.len() >= MAX_PIPELINED;
        let next = if queue.front().is_some_and(due) { queue.pop_front() } else { None };
        if full && next.is_some() {
            self.room.notify_one();
        }
        next
    }

    /// Returns once fewer than [`MAX_PIPELINED`] entries are queued.
    pub(super) async fn room(&self) {
        while self.queue().len() >= MAX_PIPELINED {
            self.room.notified().await;
        }
    }

    /// Turns the request just queued for the app, which the app has not
    /// been sent yet, into a refusal. False if the last entry is not one.
    pub(super) fn refuse_last(&self, reject: Reject) -> bool {
        let mut queue = self.queue();
        if !matches!(queue.back(), Some(Pending::Response { switched: None, .. })) {
            return false;
        }
        queue.pop_back();
        queue.push_back(Pending::Reject(reject));
        drop(queue);
        self.changed.notify_one();
        true
    }

    /// Keeps the app connection with this client connection from now on.
    pub(super) fn pin(&self) {
        self.pinned.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    pub(super) fn push(&self, pending: Pending) {
        // A refusal, close or stolen request needs the response pump's
        // attention now; for a forwarded request, the app's answer wakes it,
        // and so it does for the end of a round behind a forwarded request
        // (the response pump looks at the queue after every response).
        let mut queue = self.queue();
        let wake = match pending {
            Pending::Response { .. } => false,
            Pending::Release => !matches!(queue.back(), Some(Pending::Response { .. })),
            _ => true,
        };
        queue.push_back(pending);
        drop(queue);
        if wake {
            self.changed.notify_one();
        }
    }
}
