//! Which namespaces opted in (`mirrord.dev/inject: "enabled"` on the
//! Namespace): a cache kept by a list-then-watch of namespaces, so an
//! admission never waits on the API.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use mirrord_config::names::ANNOTATION_INJECT;
use tracing::{info, warn};

use crate::kube::Api;

/// The opted-in namespaces, as last seen.
#[derive(Debug, Default)]
pub struct Namespaces {
    opted_in: RwLock<HashSet<String>>,
}

impl Namespaces {
    pub fn opted_in(&self, namespace: &str) -> bool {
        self.opted_in.read().unwrap_or_else(|p| p.into_inner()).contains(namespace)
    }

    fn replace(&self, names: HashSet<String>) {
        *self.opted_in.write().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Applies one watch event; returns its resourceVersion.
    /// A namespace as it is now: in the set if it opts in.
    fn set(&self, namespace: &Namespace) {
        let Some(name) = namespace.metadata.name.clone() else { return };
        let mut set = self.opted_in.write().unwrap_or_else(|p| p.into_inner());
        if opts_in(namespace) {
            set.insert(name);
        } else {
            set.remove(&name);
        }
    }

    fn remove(&self, name: &str) {
        self.opted_in.write().unwrap_or_else(|p| p.into_inner()).remove(name);
    }
}

fn opts_in(namespace: &Namespace) -> bool {
    namespace.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_INJECT)).is_some_and(|v| v == "enabled")
}

/// Keeps `cache` current for as long as the process runs: list, then watch
/// from the list's resourceVersion; after a failed or expired watch, list again.
pub async fn keep(api: Api, cache: Arc<Namespaces>, metrics: Arc<crate::metrics::Metrics>) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let namespaces: kube::Api<Namespace> = kube::Api::all(api.client());
    // The watcher lists, then watches from the list's version, and lists
    // again when the watch expires; errors come out of it and it retries.
    let events = watcher::watcher(namespaces, watcher::Config::default());
    let mut events = std::pin::pin!(events);
    let (mut listing, mut backoff) = (HashSet::new(), Duration::from_millis(500));
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(ns)) => {
                if opts_in(&ns) {
                    listing.extend(ns.metadata.name);
                }
            }
            Ok(Event::InitDone) => {
                cache.replace(std::mem::take(&mut listing));
                backoff = Duration::from_millis(500);
                info!("namespace opt-ins listed; watching");
            }
            Ok(Event::Apply(ns)) => cache.set(&ns),
            Ok(Event::Delete(ns)) => {
                if let Some(name) = &ns.metadata.name {
                    cache.remove(name);
                }
            }
            Err(e) => {
                metrics.api_error(crate::metrics::ApiCall::WatchNamespaces);
                warn!("namespace watch: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
