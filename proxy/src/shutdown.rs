//! Graceful shutdown: one signal to stop accepting, then a wait until every
//! connection task has finished or the grace period is over.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every task that must finish before the process exits.
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
}

/// Owned by `run`: starts the shutdown and waits for the drain.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = mpsc::channel(1);
    (Trigger { signal: signal_tx, drained: drain_rx }, Shutdown { signal: signal_rx, _drain: drain_tx })
}

impl Shutdown {
    /// Resolves once shutdown has begun.
    pub async fn signalled(&mut self) {
        // An error means the trigger is gone, which also means shutting down.
        let _ = self.signal.wait_for(|s| *s).await;
    }

    /// Resolves once shutdown has begun, without holding up the drain.
    pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut signal = self.signal.clone();
        async move {
            let _ = signal.wait_for(|s| *s).await;
        }
    }
}

impl Trigger {
    /// Signals shutdown, then waits for every [`Shutdown`] to be dropped, at
    /// most `grace`. Returns whether everything finished in time.
    pub async fn drain(mut self, grace: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(grace, self.drained.recv()).await.is_ok()
    }
}
