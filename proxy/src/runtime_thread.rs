//! A named thread that runs a future on a single-threaded runtime of its
//! own until it is told to stop: the data path's workers (`workers.rs`) and
//! the session tunnel (`tunnel.rs`).

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Stops its thread when dropped, without waiting for it; [`stop`] waits.
///
/// [`stop`]: RuntimeThread::stop
#[derive(Debug)]
pub(crate) struct RuntimeThread {
    exit: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl RuntimeThread {
    /// Runs `first` on the new thread (thread settings such as priority),
    /// then `serve` on `runtime` until it ends or the thread is stopped;
    /// the runtime's other tasks run meanwhile and are dropped with it.
    /// Build `runtime` and register its sockets (`runtime.enter()`) before,
    /// so that failures are the caller's to report.
    pub(crate) fn spawn(
        name: &str,
        runtime: Runtime,
        first: impl FnOnce() + Send + 'static,
        serve: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<RuntimeThread> {
        let (exit, exited) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            first();
            runtime.block_on(async move {
                tokio::select! {
                    () = serve => {}
                    _ = exited => {}
                }
            });
        })?;
        Ok(RuntimeThread { exit, thread })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(self) {
        let _ = self.exit.send(());
        let _ = self.thread.join();
    }
}
