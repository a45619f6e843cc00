//! What `inject` and `uninject` read and change: a workload's pod template
//! (or the namespace object), and how its rollout is going.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, ListParams};
use mirrord_config::names::ANNOTATION_INJECT;
use mirrord_config::{Target, TargetKind};
use serde_json::Value;

use super::{Cluster, Error, TargetPod};

/// A workload whose pod template can be opted in: a target of one of the
/// kinds that have one and roll it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    ReplicaSet,
}

impl Workload {
    /// A target as `connect` takes it, of a kind that can be opted in; other
    /// kinds are refused with the reason.
    pub fn parse(path: &str) -> Result<Workload, String> {
        let target: Target = match path.parse() {
            Ok(target) => target,
            Err(_) if matches!(path.split('/').next(), Some("daemonset" | "ds")) => {
                return Err(format!(
                    "{path}: DaemonSets are not opted in: a session follows the replicas of a service, and a \
                     DaemonSet's rollout restarts a pod on every node; opt its pods in with the annotation \
                     {ANNOTATION_INJECT} on its template if you mean it"
                ))
            }
            Err(e) => return Err(e),
        };
        let why = match target.kind {
            TargetKind::Deployment => return Ok(Workload { kind: WorkloadKind::Deployment, target }),
            TargetKind::StatefulSet => return Ok(Workload { kind: WorkloadKind::StatefulSet, target }),
            TargetKind::ReplicaSet => return Ok(Workload { kind: WorkloadKind::ReplicaSet, target }),
            TargetKind::Job | TargetKind::CronJob => format!(
                "a Job's pod template cannot be changed once it exists; set the annotation {ANNOTATION_INJECT} in \
                 its manifest (or opt in the namespace with --namespace)"
            ),
            TargetKind::Pod => "a pod cannot gain containers once created: opt in the workload that owns it".to_owned(),
            TargetKind::Service => "opt in the workload behind the Service (deployment/NAME)".to_owned(),
            TargetKind::Rollout => format!("set the annotation {ANNOTATION_INJECT} on the Rollout's pod template"),
            TargetKind::Label => "a label selector has no pod template: name the workload".to_owned(),
        };
        Err(format!("{path}: {why}"))
    }

    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// `deployment/api`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.target.kind.as_str(), self.target.name)
    }

    /// The API resource, as in a URL (`deployments.apps/v1`).
    pub fn resource(&self) -> String {
        format!("{}s.apps/v1", self.target.kind.as_str())
    }
}

/// How far a rollout is, from the workload's generation and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub wanted: u64,
    pub updated: u64,
    pub ready: u64,
    /// The controller has seen the latest template.
    pub observed: bool,
    /// Why pods cannot be created (the ReplicaFailure condition).
    pub failure: Option<String>,
}

impl Rollout {
    pub fn of(workload: &Value) -> Rollout {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let status = &workload["status"];
        let generation = n(&workload["metadata"]["generation"]);
        let failure = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure" && c["status"] == "True")
            .map(|c| c["message"].as_str().unwrap_or("pods cannot be created").to_owned());
        Rollout {
            wanted: workload["spec"]["replicas"].as_u64().unwrap_or(1),
            updated: n(&status["updatedReplicas"]),
            ready: n(&status["readyReplicas"]),
            observed: n(&status["observedGeneration"]) >= generation,
            failure,
        }
    }

    pub fn done(&self) -> bool {
        self.observed && self.updated >= self.wanted && self.ready >= self.wanted
    }
}

impl std::fmt::Display for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.observed {
            return write!(f, "waiting for the controller to see the new template");
        }
        write!(f, "{} of {} pods updated, {} ready", self.updated, self.wanted, self.ready)
    }
}

impl Cluster {
    /// The workload as the API has it (not found: with the nearest name).
    pub async fn workload(&self, workload: &Workload) -> Result<Value, Error> {
        let name = workload.name();
        let read = async {
            Ok(match workload.kind {
                WorkloadKind::Deployment => json(self.get::<Deployment>("deployment", "deployments", name).await?),
                WorkloadKind::StatefulSet => json(self.get::<StatefulSet>("statefulset", "statefulsets", name).await?),
                WorkloadKind::ReplicaSet => json(self.get::<ReplicaSet>("replicaset", "replicasets", name).await?),
            })
        };
        self.bounded(&format!("reading {}", workload.describe()), read).await
    }

    /// A merge patch of the workload's object.
    pub async fn patch_workload(&self, workload: &Workload, patch: &Value) -> Result<(), Error> {
        let name = workload.name();
        match workload.kind {
            WorkloadKind::Deployment => self.merge_patch(self.api::<Deployment>(), "deployments", name, patch).await,
            WorkloadKind::StatefulSet => self.merge_patch(self.api::<StatefulSet>(), "statefulsets", name, patch).await,
            WorkloadKind::ReplicaSet => self.merge_patch(self.api::<ReplicaSet>(), "replicasets", name, patch).await,
        }
    }

    /// The namespace object (for its annotations).
    pub async fn namespace_object(&self) -> Result<Value, Error> {
        let ns = &self.namespace;
        let got = self
            .bounded(&format!("reading namespace {ns}"), async {
                Api::<Namespace>::all(self.client.clone())
                    .get_opt(ns)
                    .await
                    .map_err(|e| self.failed(e, "get", "namespaces", Some(ns)))
            })
            .await?;
        let not_found = || Error::NotFound {
            kind: "namespace",
            name: ns.clone(),
            namespace: ns.clone(),
            nearest: None,
            existing: vec![],
        };
        got.map(json).ok_or_else(not_found)
    }

    /// A merge patch of the namespace object.
    pub async fn patch_namespace(&self, patch: &Value) -> Result<(), Error> {
        self.merge_patch(Api::<Namespace>::all(self.client.clone()), "namespaces", &self.namespace, patch).await
    }

    /// The workload's pods now.
    pub async fn workload_pods(&self, workload: &Workload) -> Result<Vec<TargetPod>, Error> {
        let selector = self.selector(&workload.target).await?;
        self.pods(&selector).await
    }

    /// Warning events of the workload and its pods, oldest first, as
    /// "Reason: message".
    pub async fn warnings(&self, workload: &Workload) -> Result<Vec<String>, Error> {
        let list = self
            .bounded("listing events", async {
                self.api::<Event>()
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| self.failed(e, "list", "events", None))
            })
            .await?;
        let name = workload.name();
        let prefix = format!("{name}-");
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| e.involved_object.name.as_deref().is_some_and(|n| n == name || n.starts_with(&prefix)))
            .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }
}

fn json<K: serde::Serialize>(object: K) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}
