//! Why a session's request to pause the app is refused.

use std::time::Duration;

use mirrord_config::format_duration;

use super::procs::ScopeError;

/// A refused pause; the message is what the session is told.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// `--pause disabled`, with the reason the sidecar was given.
    #[error("{0}")]
    Disabled(String),
    #[error("the app is shutting down (a termination signal reached it): it cannot be paused")]
    Terminating,
    #[error("the sidecar is shutting down: the app cannot be paused")]
    ShuttingDown,
    #[error("the current pause reached its lease ({}) and the app was resumed; it can be paused again once the sessions holding it have left", format_duration(*.0))]
    Lease(Duration),
    /// The app's processes could not be read (a leaf message: the scope
    /// error says what).
    #[error("the app cannot be paused: {0}")]
    Scope(ScopeError),
    #[error("no process of {which} is visible to the sidecar: pausing needs the pod to share its process namespace (shareProcessNamespace, set by the injector when mirrord.dev/pause is enabled)")]
    NothingVisible { which: String },
    #[error("none of the app's {processes} process(es) could be stopped: the sidecar needs CAP_KILL, or to run as the app's user")]
    CannotSignal { processes: usize },
}
