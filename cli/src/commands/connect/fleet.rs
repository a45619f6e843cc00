//! The sessions of one `connect` while they run: one per pod, following
//! the target's pods (a new ready pod gets a session, a going one's ends,
//! a broken port-forward is tried again), or the one of `--addr`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mirrord_config::Config;

use super::session::{open, serve, Opened};
use super::ConnectArgs;
use crate::cluster::{self, Cluster, Place};
use crate::deliver::Delivery;
use crate::local::Clients;
use crate::status::{Reporter, Status};
use crate::ExitCode;

/// The sessions of one `connect`, one per pod (or the one of `--addr`).
pub(super) struct Fleet {
    pub(super) status: Arc<Status>,
    pub(super) config: Config,
    pub(super) config_json: String,
    pub(super) args: Arc<ConnectArgs>,
    /// Each session to its end: (where, how it ended).
    pub(super) running: tokio::task::JoinSet<(Place, ExitCode)>,
    /// Pods with a session, and how to end each.
    pub(super) open: std::collections::HashMap<String, tokio::sync::watch::Sender<bool>>,
}

/// What `connect` follows while its sessions run: the target's pods.
pub(super) struct Watch {
    pub(super) cluster: Cluster,
    pub(super) selector: cluster::PodSelector,
    pub(super) described: String,
}

/// How long a pod whose port-forward broke waits before it is tried again,
/// doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Fleet {
    /// Registers a session's end signal and a task that runs it: what
    /// `task` returns when told to end (or on its own) is its end.
    fn spawn<F>(&mut self, place: Place, task: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> F)
    where
        F: std::future::Future<Output = ExitCode> + Send + 'static,
    {
        let (end, ended) = tokio::sync::watch::channel(false);
        self.open.insert(place.label(), end);
        let session = task(ended);
        self.running.spawn(async move { (place, session.await) });
    }

    /// Runs an opened session until it ends or is told to.
    pub(super) fn serve(&mut self, place: Place, opened: Opened) {
        let reporter = Reporter::new(self.status.clone(), place.pod());
        let (config, local_host) = (self.config.clone(), self.args.local_host);
        self.spawn(place, |ended| deliver(opened, reporter, config, local_host, ended));
    }

    /// Opens a session on a pod that appeared (or whose port-forward broke),
    /// after `delay`, and serves it.
    fn join(&mut self, cluster: &Cluster, pod: String, delay: Duration) {
        let place = Place::Pod { cluster: cluster.clone(), pod: pod.clone() };
        let (args, json, config) = (self.args.clone(), self.config_json.clone(), self.config.clone());
        let reporter = Reporter::new(self.status.clone(), Some(&pod));
        self.spawn(place.clone(), |mut ended| async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = ended.wait_for(|s| *s) => return ExitCode::Ok,
            }
            match open(&place, &args, json).await {
                Ok(opened) => {
                    reporter.say(serde_json::json!({"event": "joined"}), "session open on this pod");
                    deliver(opened, reporter, config, args.local_host, ended).await
                }
                Err((_, message)) => {
                    reporter
                        .say(serde_json::json!({"event": "retry", "message": message}), &format!("not yet: {message}"));
                    ExitCode::Failure
                }
            }
        });
    }

    pub(super) async fn run(mut self, stop: impl std::future::Future<Output = ()>, watch: Option<Watch>) -> ExitCode {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let mut pods = watch.as_ref().map(|w| Box::pin(w.cluster.watch(&w.selector)));
        let mut state = Running {
            code: ExitCode::Ok,
            stopping: false,
            ready: self.open.keys().map(|pod| (pod.clone(), RETRY_FIRST)).collect(),
            waiting_said: false,
        };
        loop {
            tokio::select! {
                ended = self.running.join_next(), if !self.running.is_empty() => match ended {
                    Some(Ok((place, ended_with))) => self.ended(&mut state, watch.as_ref(), &place, ended_with),
                    Some(Err(_)) => state.code = ExitCode::Failure,
                    None => {}
                },
                event = next_event(&mut pods), if !state.stopping => {
                    if let (Some(w), Some(event)) = (&watch, event) {
                        self.pod_event(&mut state, w, event).await;
                    }
                },
                _ = ticker.tick() => self.status.redraw(),
                () = &mut stop, if !state.stopping => {
                    state.stopping = true;
                    for end in self.open.values() {
                        let _ = end.send(true);
                    }
                }
            }
            // Done when every session has ended and nothing brings another:
            // Ctrl-C, or the one sidecar of --addr.
            if self.running.is_empty() && (state.stopping || watch.is_none()) {
                break;
            }
        }
        state.code
    }

    /// A session ended: with --addr, that is the end; a pod still there and
    /// ready is tried again later (its port-forward or tunnel broke).
    fn ended(&mut self, state: &mut Running, watch: Option<&Watch>, place: &Place, ended_with: ExitCode) {
        self.open.remove(&place.label());
        match (watch, place.pod()) {
            (None, _) | (_, None) if ended_with != ExitCode::Ok => state.code = ended_with,
            (None, _) | (_, None) => {}
            (Some(w), Some(pod)) if !state.stopping => {
                if let Some(delay) = state.ready.get_mut(pod) {
                    let wait = *delay;
                    *delay = (*delay * 2).min(RETRY_MAX);
                    self.join(&w.cluster, pod.to_owned(), wait);
                } else {
                    Reporter::new(self.status.clone(), Some(pod))
                        .say(serde_json::json!({"event": "left"}), "the pod is gone; its session ended");
                }
                self.status.pods(self.open.len());
            }
            _ => {}
        }
        if let Some(w) = watch {
            if self.open.is_empty() && !state.stopping && !state.waiting_said {
                state.waiting_said = true;
                self.status.say(
                    &serde_json::json!({"event": "waiting"}),
                    &format!("no pod of {} has a session: waiting for one (Ctrl-C to end)", w.described),
                );
            }
        }
    }

    /// A change to one of the target's pods: a pod that became ready and
    /// injected gets a session; a going one's (terminating, not ready,
    /// deleted) ends quietly.
    async fn pod_event(
        &mut self,
        state: &mut Running,
        w: &Watch,
        event: Result<kube::runtime::watcher::Event<k8s_openapi::api::core::v1::Pod>, kube::runtime::watcher::Error>,
    ) {
        use kube::runtime::watcher::Event;
        let (name, usable) = match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                (pod.metadata.name.clone(), cluster::TargetPod::of(&pod).is_some_and(|p| p.injected && p.ready))
            }
            Ok(Event::Delete(pod)) => (pod.metadata.name.clone(), false),
            Ok(Event::Init | Event::InitDone) => (None, false),
            Err(e) => {
                let message = format!("watching the pods of {}: {e}; retrying", w.described);
                self.status.say(&serde_json::json!({"event": "note", "message": message}), &format!("note: {message}"));
                tokio::time::sleep(RETRY_FIRST).await;
                (None, false)
            }
        };
        let Some(name) = name else { return };
        if usable {
            state.ready.entry(name.clone()).or_insert(RETRY_FIRST);
            if !self.open.contains_key(&name) {
                state.waiting_said = false;
                self.join(&w.cluster, name, Duration::ZERO);
                self.status.pods(self.open.len());
            }
        } else if state.ready.remove(&name).is_some() {
            if let Some(end) = self.open.get(&name) {
                let _ = end.send(true);
            }
        }
    }
}

/// What [`Fleet::run`] keeps between events.
struct Running {
    code: ExitCode,
    /// Ctrl-C (or the command's exit): every session is ending.
    stopping: bool,
    /// Pods that are there and ready, and how long each waits before a retry.
    ready: std::collections::HashMap<String, Duration>,
    /// "waiting for a pod" was said since the last session opened.
    waiting_said: bool,
}

/// Delivers an opened session's traffic to the local app until it ends or
/// `ended` says to end it.
async fn deliver(
    opened: Opened,
    reporter: Reporter,
    config: Config,
    local_host: IpAddr,
    mut ended: tokio::sync::watch::Receiver<bool>,
) -> ExitCode {
    let (client, events, requests, plan) = opened;
    let delivery = Arc::new(Delivery {
        client,
        session_id: plan.session_id,
        clients: Clients::default(),
        status: reporter.clone(),
        config,
        local_host,
        copies: Arc::new(tokio::sync::Semaphore::new(crate::deliver::MAX_COPIES_IN_FLIGHT)),
    });
    serve(events, delivery, reporter, requests, async move {
        let _ = ended.wait_for(|s| *s).await;
    })
    .await
}

/// The next event of the pod watch, or never without one.
async fn next_event<S>(pods: &mut Option<std::pin::Pin<Box<S>>>) -> Option<S::Item>
where
    S: futures::Stream,
{
    match pods {
        Some(stream) => futures::StreamExt::next(stream).await,
        None => std::future::pending().await,
    }
}
