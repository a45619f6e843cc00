//! Waiting for a condition that others announce on a [`Notify`].

use tokio::sync::Notify;

/// Resolves once `holds` is true: at once if it is, else at the first
/// announcement on `notify` after which it is. Whoever makes it true calls
/// `notify.notify_waiters()`.
pub(crate) async fn until(notify: &Notify, holds: impl Fn() -> bool) {
    loop {
        let announced = notify.notified();
        tokio::pin!(announced);
        // Registered before the check: an announcement between the check
        // and the wait is not missed.
        announced.as_mut().enable();
        if holds() {
            return;
        }
        announced.await;
    }
}
