//! A target resolved to its pods: the selector its workload or Service
//! stands for, the pods it selects now, and a watch on them as they come,
//! change and go.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use mirrord_config::names::{ANNOTATION_STATUS, CONTAINER_PROXY};
use mirrord_config::{Target, TargetKind};

use super::{Cluster, Error};

impl Cluster {
    /// Which pods a target stands for (reading its workload or Service).
    pub async fn selector(&self, target: &Target) -> Result<PodSelector, Error> {
        self.bounded(&format!("reading {}/{}", target.kind.as_str(), target.name), self.selector_unbounded(target))
            .await
    }

    async fn selector_unbounded(&self, target: &Target) -> Result<PodSelector, Error> {
        let name = &target.name;
        let selector = match target.kind {
            TargetKind::Pod => {
                self.get::<Pod>("pod", "pods", name).await?;
                return Ok(PodSelector::Name(name.clone()));
            }
            TargetKind::Label => name.clone(),
            TargetKind::Deployment => {
                let d = self.get::<Deployment>("deployment", "deployments", name).await?;
                selector(d.spec.map(|s| s.selector), target)?
            }
            TargetKind::StatefulSet => {
                let s = self.get::<StatefulSet>("statefulset", "statefulsets", name).await?;
                selector(s.spec.map(|s| s.selector), target)?
            }
            TargetKind::ReplicaSet => {
                let r = self.get::<ReplicaSet>("replicaset", "replicasets", name).await?;
                selector(r.spec.map(|s| s.selector), target)?
            }
            TargetKind::Service => {
                let s = self.get::<Service>("service", "services", name).await?;
                let labels = s.spec.and_then(|s| s.selector).unwrap_or_default();
                if labels.is_empty() {
                    return Err(Error::Unsupported {
                        target: describe(target),
                        why: "the Service has no selector, so no pods of its own".to_owned(),
                    });
                }
                match_labels(&labels)
            }
            TargetKind::Job | TargetKind::CronJob | TargetKind::Rollout => {
                return Err(Error::Unsupported {
                    target: describe(target),
                    why: format!(
                        "{} targets are not supported; target the pods with label/KEY=VALUE",
                        target.kind.as_str()
                    ),
                })
            }
        };
        Ok(PodSelector::Labels(selector))
    }

    /// The pods of a selector now, injected or not.
    pub async fn pods(&self, selector: &PodSelector) -> Result<Vec<TargetPod>, Error> {
        Ok(self.pod_objects(Some(selector)).await?.iter().filter_map(TargetPod::of).collect())
    }

    /// The selector's pods as they come, change and go.
    pub fn watch(
        &self,
        selector: &PodSelector,
    ) -> impl futures::Stream<Item = Result<kube::runtime::watcher::Event<Pod>, kube::runtime::watcher::Error>> + Send
    {
        let config = match selector {
            PodSelector::Name(name) => {
                kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"))
            }
            PodSelector::Labels(labels) => kube::runtime::watcher::Config::default().labels(labels),
        };
        kube::runtime::watcher(self.api::<Pod>(), config)
    }
}

/// The pods a target stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelector {
    /// `pod/NAME`: that one pod.
    Name(String),
    /// The workload's or Service's label selector (`app=api,tier=web`).
    Labels(String),
}

impl PodSelector {
    pub(super) fn list_params(&self) -> ListParams {
        match self {
            PodSelector::Name(name) => ListParams::default().fields(&format!("metadata.name={name}")),
            PodSelector::Labels(labels) => ListParams::default().labels(labels),
        }
    }
}

/// One pod of a target, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPod {
    pub name: String,
    /// The injector added the sidecar.
    pub injected: bool,
    /// The pod carries the opt-in annotation (from its template).
    pub opted_in: bool,
    /// Running, and the sidecar is ready.
    pub ready: bool,
}

impl TargetPod {
    /// `None` for a pod that is gone or going (deleted, succeeded, failed).
    pub fn of(pod: &Pod) -> Option<TargetPod> {
        let name = pod.metadata.name.clone()?;
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            return None;
        }
        let annotated = pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_STATUS));
        let spec = pod.spec.as_ref();
        let has_sidecar = spec.is_some_and(|s| {
            s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == CONTAINER_PROXY)
        });
        let sidecar_ready = status.is_some_and(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .any(|c| c.name == CONTAINER_PROXY && c.ready)
        });
        let opted_in = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(mirrord_config::names::ANNOTATION_INJECT))
            .is_some_and(|v| v == "enabled");
        Some(TargetPod {
            name,
            injected: annotated || has_sidecar,
            opted_in,
            ready: phase == "Running" && sidecar_ready,
        })
    }
}

fn describe(target: &Target) -> String {
    format!("{}/{}", target.kind.as_str(), target.name)
}

/// A workload's selector as a label selector string.
fn selector(selector: Option<LabelSelector>, target: &Target) -> Result<String, Error> {
    let selector = selector.unwrap_or_default();
    if selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(Error::Unsupported {
            target: describe(target),
            why: "its selector uses matchExpressions; target its pods with label/KEY=VALUE".to_owned(),
        });
    }
    let labels = selector.match_labels.unwrap_or_default();
    if labels.is_empty() {
        return Err(Error::Unsupported { target: describe(target), why: "its selector is empty".to_owned() });
    }
    Ok(match_labels(&labels))
}

fn match_labels(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
