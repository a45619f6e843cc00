//! A session's event stream towards its client, fed from two sides.
//!
//! Stolen traffic and state changes go through a channel and wake the
//! tunnel's thread at once: the client is waiting for them. Copies for a
//! mirroring session that travel whole in their announcement (requests
//! without a body: most of them) are gathered instead: the first copy
//! after a quiet spell wakes the tunnel, which then sends what it gathered
//! every [`GATHER`] for as long as copies keep coming. At a steady rate the
//! data path does not wake the tunnel's thread at all, and the tunnel and
//! the client run once per batch rather than once per request: less of
//! their work lands between a request and its answer on the CPUs they
//! share with the data path.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::proto;

/// How long the tunnel gathers copies before sending them: a copy reaches
/// its developer this much later, next to a port-forward's round trip.
pub const GATHER: Duration = Duration::from_millis(4);

pub type Event = Result<proto::SessionEvent, tonic::Status>;

/// Copies waiting for the tunnel, bounded: a client that falls behind
/// loses copies, and the data path never waits.
#[derive(Debug)]
pub struct Gathered {
    inner: Mutex<Queue>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<proto::SessionEvent>,
    /// The tunnel's task, when it found the queue empty and waits for a copy.
    waiting: Option<Waker>,
}

impl Gathered {
    pub fn new(cap: usize) -> Gathered {
        Gathered { inner: Mutex::default(), cap }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A push or pop cannot be left half-done by a panic elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a copy; false (dropped) when the queue is full.
    pub fn push(&self, event: proto::SessionEvent) -> bool {
        let waiting = {
            let mut queue = self.lock();
            if queue.events.len() >= self.cap {
                return false;
            }
            queue.events.push_back(event);
            queue.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
        true
    }
}

/// The stream the tunnel sends to the client: urgent events as they come,
/// gathered copies in batches. It ends when the session's channel closes
/// and the gathered copies are out.
#[derive(Debug)]
pub struct Events {
    urgent: mpsc::Receiver<Event>,
    gathered: std::sync::Arc<Gathered>,
    /// Armed by the first copy after a quiet spell; copies are gathered
    /// until it fires. While copies keep coming it goes on ticking, and the
    /// tunnel gathers on the tick alone, not woken by the data path; a tick
    /// without copies disarms it.
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The tick fired: the copies gathered by then are being sent.
    sending: bool,
}

impl Events {
    pub fn new(urgent: mpsc::Receiver<Event>, gathered: std::sync::Arc<Gathered>) -> Events {
        Events { urgent, gathered, tick: None, sending: false }
    }

    /// The next urgent event, if one is waiting.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        self.urgent.try_recv()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = &mut *self;
        match this.urgent.poll_recv(cx) {
            Poll::Ready(Some(event)) => return Poll::Ready(Some(event)),
            // The session is over: what was gathered goes out at once.
            Poll::Ready(None) => return Poll::Ready(this.gathered.lock().events.pop_front().map(Ok)),
            Poll::Pending => {}
        }
        let mut queue = this.gathered.lock();
        loop {
            if this.sending {
                if let Some(event) = queue.events.pop_front() {
                    return Poll::Ready(Some(Ok(event)));
                }
                this.sending = false;
            }
            match &mut this.tick {
                None if queue.events.is_empty() => {
                    match &queue.waiting {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => queue.waiting = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                None => {
                    queue.waiting = None;
                    this.tick = Some(Box::pin(tokio::time::sleep(GATHER)));
                }
                Some(tick) => {
                    if tick.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if queue.events.is_empty() {
                        this.tick = None;
                    } else {
                        tick.as_mut().reset(tokio::time::Instant::now() + GATHER);
                        this.sending = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::proto::session_event;

    fn notice(message: &str) -> proto::SessionEvent {
        proto::SessionEvent { kind: Some(session_event::Kind::Notice(proto::Notice { message: message.to_owned() })) }
    }

    fn text(event: Option<Event>) -> String {
        match event.unwrap().unwrap().kind {
            Some(session_event::Kind::Notice(n)) => n.message,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn copies_wait_for_the_batch_and_urgent_events_do_not() {
        let (tx, rx) = mpsc::channel(8);
        let gathered = Arc::new(Gathered::new(4));
        let mut events = Events::new(rx, gathered.clone());
        assert!(gathered.push(notice("copy 1")));
        assert!(gathered.push(notice("copy 2")));
        tx.send(Ok(notice("urgent"))).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(text(events.next().await), "urgent");
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(text(events.next().await), "copy 1");
        assert_eq!(started.elapsed(), GATHER);
        // The rest of the batch follows without another wait.
        assert_eq!(text(events.next().await), "copy 2");
        assert_eq!(started.elapsed(), GATHER);
        // A copy that comes while copies keep coming goes out at the next
        // tick, not a whole GATHER after it came.
        assert!(tokio::time::timeout(GATHER / 4, events.next()).await.is_err(), "the batch is out");
        tokio::time::sleep(GATHER / 4).await;
        assert!(gathered.push(notice("copy 2b")));
        assert_eq!(text(events.next().await), "copy 2b");
        assert_eq!(started.elapsed(), GATHER * 2);
        // A tick without copies stops the ticking: a copy after it starts
        // a new batch.
        let next = tokio::spawn(async move {
            let event = events.next().await;
            (text(event), events)
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(gathered.push(notice("copy 3")));
        let pushed = tokio::time::Instant::now();
        let (got, mut events) = next.await.unwrap();
        assert_eq!(got, "copy 3");
        assert_eq!(pushed.elapsed(), GATHER);
        // When the session's channel closes, what was gathered goes out at
        // once, then the stream ends.
        assert!(gathered.push(notice("copy 4")));
        drop(tx);
        let closed = tokio::time::Instant::now();
        assert_eq!(text(events.next().await), "copy 4");
        assert_eq!(closed.elapsed(), Duration::ZERO);
        assert!(events.next().await.is_none());
    }

    #[test]
    fn a_full_queue_drops_copies() {
        let gathered = Gathered::new(2);
        assert!(gathered.push(notice("1")));
        assert!(gathered.push(notice("2")));
        assert!(!gathered.push(notice("3")));
    }
}
