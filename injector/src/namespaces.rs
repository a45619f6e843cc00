//! Which namespaces opted in (`mirrord.dev/inject: "enabled"` on the
//! Namespace): a cache kept by a list-then-watch of namespaces, so an
//! admission never waits on the API.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mirrord_config::names::ANNOTATION_INJECT;
use serde_json::Value;
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
    fn apply(&self, event: &Value) -> Option<String> {
        let object = &event["object"];
        if event["type"] == "BOOKMARK" {
            return object["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        }
        let name = object["metadata"]["name"].as_str()?.to_owned();
        let mut set = self.opted_in.write().unwrap_or_else(|p| p.into_inner());
        if event["type"] != "DELETED" && opts_in(object) {
            set.insert(name);
        } else {
            set.remove(&name);
        }
        object["metadata"]["resourceVersion"].as_str().map(str::to_owned)
    }
}

fn opts_in(namespace: &Value) -> bool {
    namespace["metadata"]["annotations"][ANNOTATION_INJECT] == "enabled"
}

/// Keeps `cache` current for as long as the process runs: list, then watch
/// from the list's resourceVersion; after a failed or expired watch, list again.
pub async fn keep(api: Api, cache: Arc<Namespaces>, metrics: Arc<crate::metrics::Metrics>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match sync(&api, &cache).await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                metrics.api_error(crate::metrics::ApiCall::WatchNamespaces);
                warn!("namespace watch: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn sync(api: &Api, cache: &Namespaces) -> Result<(), crate::kube::Error> {
    let list = api.call(http::Method::GET, "/api/v1/namespaces", None, Vec::new()).await?;
    let names = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| opts_in(n))
        .filter_map(|n| n["metadata"]["name"].as_str());
    cache.replace(names.map(str::to_owned).collect());
    let mut version = list["metadata"]["resourceVersion"].as_str().unwrap_or("").to_owned();
    info!("namespace opt-ins listed; watching");
    loop {
        let path = format!("/api/v1/namespaces?watch=1&allowWatchBookmarks=true&resourceVersion={version}");
        let mut expired = false;
        api.watch(&path, |event| {
            if event["type"] == "ERROR" {
                // 410 Gone: the version is too old; a fresh list follows.
                expired = true;
            } else if let Some(v) = cache.apply(&event) {
                version = v;
            }
        })
        .await?;
        if expired {
            return Ok(());
        }
    }
}
