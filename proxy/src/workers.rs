//! The data path's threads, when there is more than one (`--threads`, or
//! the container's CPU limit).
//!
//! Each worker is a thread with a single-threaded runtime of its own. It
//! accepts from the inbound listeners itself and serves a connection to its
//! end, as nginx's workers do: a connection's tasks never move between
//! threads. A new connection wakes the idle workers and the first to accept
//! it has it; that alone would leave a burst of connections (a client
//! opening its pool) on one worker for their life. So a worker that serves
//! more connections than another hands what it accepts to the least loaded
//! one (over a channel: one wake-up), and keeps it otherwise.
//!
//! Each worker keeps its own pool of idle app connections (a socket is
//! served by the runtime it was registered with); sessions, counters and
//! the descriptor budget are shared.
//!
//! The main thread keeps the rest: the admin server, the pause's rescans,
//! shutdown. The session tunnel has a thread of its own (`tunnel.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

use crate::budget::Fds;
use crate::inbound::{self, Inbound};
use crate::runtime_thread::RuntimeThread;
use crate::shutdown::Shutdown;

/// A connection handed from the worker that accepted it to another. The
/// channels are unbounded: what is in them holds descriptors from the
/// budget, which bounds them.
type Handed = (std::net::TcpStream, SocketAddr, Fds);

/// How many connections each worker serves, and the way to each.
#[derive(Debug)]
struct Balance {
    load: Vec<AtomicUsize>,
    to: Vec<mpsc::UnboundedSender<Handed>>,
}

/// One worker's side of the balance: what [`inbound::accept_loop`] asks
/// where a connection it accepted goes.
#[derive(Debug, Clone)]
pub(crate) struct Worker {
    balance: Arc<Balance>,
    me: usize,
}

/// Counts a connection against its worker while it is served.
struct Served {
    balance: Arc<Balance>,
    worker: usize,
}

impl Served {
    fn new(balance: &Arc<Balance>, worker: usize) -> Served {
        balance.load[worker].fetch_add(1, Ordering::Relaxed);
        Served { balance: balance.clone(), worker }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.balance.load[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    /// Serves `stream` here, unless another worker serves fewer
    /// connections: then there.
    pub(crate) fn place(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        fds: Fds,
        inbound: &Arc<Inbound>,
        shutdown: &Shutdown,
    ) {
        let load = |w: usize| self.balance.load[w].load(Ordering::Relaxed);
        let mine = load(self.me);
        let least = (0..self.balance.load.len()).min_by_key(|&w| load(w)).unwrap_or(self.me);
        if load(least) < mine {
            // Counted at once, so that the next connection sees it; the
            // receiving worker's `Served` uncounts it.
            self.balance.load[least].fetch_add(1, Ordering::Relaxed);
            let sent = match stream.into_std() {
                Ok(std) => self.balance.to[least].send((std, peer, fds)).is_ok(),
                Err(e) => {
                    debug!("connection from {peer} lost on its way to another worker: {e}");
                    false
                }
            };
            if !sent {
                self.balance.load[least].fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        inbound::serve(stream, peer, fds, inbound, shutdown, Served::new(&self.balance, self.me));
    }
}

/// Serves the connections other workers hand to this one, until shutdown.
async fn receive(
    mut handed: mpsc::UnboundedReceiver<Handed>,
    worker: Worker,
    inbound: Arc<Inbound>,
    mut shutdown: Shutdown,
) {
    loop {
        let (std, peer, fds) = tokio::select! {
            h = handed.recv() => match h {
                Some(h) => h,
                None => return,
            },
            () = shutdown.signalled() => return,
        };
        // Already counted by the worker that handed it over.
        let served = Served { balance: worker.balance.clone(), worker: worker.me };
        match TcpStream::from_std(std) {
            Ok(stream) => inbound::serve(stream, peer, fds, &inbound, &shutdown, served),
            Err(e) => debug!("connection from {peer} handed over, not served: {e}"),
        }
    }
}

/// Running worker threads; [`Workers::stop`] ends them.
#[derive(Debug)]
pub(crate) struct Workers {
    threads: Vec<RuntimeThread>,
    #[cfg(test)]
    balance: Arc<Balance>,
}

impl Workers {
    /// Starts `count` workers on copies of `listeners` (the caller's can be
    /// dropped then). Each worker's runtime is built and its copies
    /// registered with it here, so that a failure is reported before any
    /// worker runs.
    pub(crate) fn start(
        count: usize,
        listeners: &[TcpListener],
        inbound: &Inbound,
        shutdown: &Shutdown,
    ) -> io::Result<Workers> {
        let mut prepared = Vec::with_capacity(count);
        for _ in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let own = {
                let _context = runtime.enter();
                listeners
                    .iter()
                    .map(|l| TcpListener::from_std(SockRef::from(l).try_clone()?.into()))
                    .collect::<io::Result<Vec<_>>>()?
            };
            prepared.push((runtime, own));
        }
        let (to, from): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance { load: (0..count).map(|_| AtomicUsize::new(0)).collect(), to });
        let mut threads = Vec::with_capacity(count);
        for (me, ((runtime, listeners), handed)) in prepared.into_iter().zip(from).enumerate() {
            let inbound = Arc::new(inbound.for_worker());
            let shutdown = shutdown.clone();
            let worker = Worker { balance: balance.clone(), me };
            let serve = async move {
                for listener in listeners {
                    let accept =
                        inbound::accept_loop(listener, inbound.clone(), shutdown.clone(), Some(worker.clone()));
                    tokio::spawn(accept);
                }
                tokio::spawn(receive(handed, worker, inbound.clone(), shutdown.clone()));
                tokio::spawn(crate::memory::sweep(inbound, shutdown.clone(), false));
                // Only the tasks hold the shutdown now: the drain waits for
                // them, not for this thread. They run until the drain is
                // over (or the grace period); what is left is dropped with
                // the runtime.
                drop(shutdown);
                std::future::pending::<()>().await;
            };
            // On failure, the workers already started stop as `threads` is dropped.
            threads.push(RuntimeThread::spawn("proxy-worker", runtime, || {}, serve)?);
        }
        Ok(Workers {
            threads,
            #[cfg(test)]
            balance,
        })
    }

    /// Ends every worker (after the drain) and waits for its thread.
    pub(crate) fn stop(self) {
        for thread in self.threads {
            thread.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;

    impl Workers {
        fn loads(&self) -> Vec<usize> {
            self.balance.load.iter().map(|l| l.load(Ordering::Relaxed)).collect()
        }
    }

    /// Connections opened one after another (as a client fills its pool)
    /// are spread over the workers whichever accepts them, each carries
    /// its bytes both ways, and the workers end after the drain.
    #[test]
    fn connections_are_spread_over_the_workers_and_served_there() {
        let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        // Raw TCP on every port: no detection wait.
        let inbound = Inbound::for_tests(app.local_addr().unwrap(), "*".parse().unwrap());
        let (trigger, shutdown) = crate::shutdown::channel();
        let workers = Workers::start(2, std::slice::from_ref(&listener), &inbound, &shutdown).unwrap();
        drop((shutdown, listener));

        let mut clients = Vec::new();
        for i in 0..8u8 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let (mut served, _) = app.accept().unwrap();
            client.write_all(&[i]).unwrap();
            let mut byte = [0u8];
            served.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i);
            served.write_all(&[i + 100]).unwrap();
            client.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i + 100);
            clients.push((client, served));
        }
        assert_eq!(workers.loads(), vec![4, 4]);

        drop(clients);
        assert!(runtime.block_on(trigger.drain(Duration::from_secs(5))), "the workers' connections did not end");
        let started = Instant::now();
        workers.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
