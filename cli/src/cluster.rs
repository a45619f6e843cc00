//! The Kubernetes side of `connect`: credentials as every Kubernetes tool
//! resolves them, a target resolved to its pods, and a port-forward to each
//! pod's sidecar over the API server (no local listener).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use mirrord_config::names::{ANNOTATION_STATUS, CONTAINER_PROXY, TOKEN_KEY, TOKEN_SECRET, TUNNEL_PORT};
use mirrord_config::{Target, TargetKind};

/// Where the cluster's credentials come from (flags, then the session
/// config's `kubeconfig` / `kube_context`, then the environment).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `-n`; else the target's namespace; else the context's.
    pub namespace: Option<String>,
}

/// What goes wrong reaching a target, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no context {context:?} in the kubeconfig{}", known_list(.known))]
    UnknownContext { context: String, known: Vec<String> },
    #[error("no Kubernetes credentials: {0} (set KUBECONFIG, pass --kubeconfig, or run inside a cluster)")]
    NoCredentials(String),
    #[error("cannot reach the Kubernetes API at {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error("the Kubernetes API at {server} did not answer {what} within {} s", API_TIMEOUT.as_secs())]
    Timeout { server: String, what: String },
    #[error("the Kubernetes API refused {verb} on {resource} in namespace {namespace}: {message} (ask for a Role that grants it; manifests/rbac/developer.yaml lists what mirrord-cli needs)")]
    Forbidden { verb: &'static str, resource: String, namespace: String, message: String },
    #[error("{kind} {name:?} not found in namespace {namespace}{}", suggestions(.nearest, .existing))]
    NotFound { kind: &'static str, name: String, namespace: String, nearest: Option<String>, existing: Vec<String> },
    #[error("the Kubernetes API failed {verb} on {resource}: {message}")]
    Api { verb: &'static str, resource: String, message: String },
    #[error("target {target} cannot be used: {why}")]
    Unsupported { target: String, why: String },
    #[error("{target} has no running pod in namespace {namespace}")]
    NoPods { target: String, namespace: String },
    #[error("{target}: none of its {count} pod(s) has the mirrord sidecar ({which}); {}", not_injected_hint(target, *.opted_in))]
    NotInjected { target: String, count: usize, which: String, opted_in: bool },
    #[error("port-forward to pod {pod}: {message}")]
    Forward { pod: String, message: String },
    #[error("namespace {namespace} has no session token (Secret {secret}{why}): `mirrord-cli inject` creates it along with the first opt-in, `mirrord-cli token rotate -n {namespace}` alone", secret = TOKEN_SECRET)]
    NoToken { namespace: String, why: &'static str },
}

/// What to do about pods without the sidecar: opt in, or, when the pods
/// already carry the opt-in, look at the injector (it did not act on them).
fn not_injected_hint(target: &str, opted_in: bool) -> String {
    if opted_in {
        "they carry the opt-in annotation, so the injector did not act when they were created: check that it runs (kubectl -n mirrord get pods) and that its webhook is configured, then roll the pods out again".to_owned()
    } else {
        format!("neither their pod template nor their namespace opts in: run `mirrord-cli inject {target}` (or set the annotation mirrord.dev/inject: \"enabled\" on the pod template or the namespace), then let it roll out")
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(": expected one of {}", known.join(", "))
    }
}

fn suggestions(nearest: &Option<String>, existing: &[String]) -> String {
    match (nearest, existing) {
        (Some(n), _) => format!("; did you mean {n:?}?"),
        (None, []) => String::new(),
        (None, names) => format!("; there are: {}", names.join(", ")),
    }
}

/// The longest any one call to the API may take.
pub const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection to the cluster.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    /// The namespace targets are looked up in.
    pub namespace: String,
    /// The API server, for messages.
    pub server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("namespace", &self.namespace).field("server", &self.server).finish()
    }
}

impl Cluster {
    /// Credentials from `access`: an explicit kubeconfig file, else
    /// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
    pub async fn connect(access: &Access, target_namespace: Option<&str>) -> Result<Cluster, Error> {
        let options = KubeConfigOptions { context: access.context.clone(), ..KubeConfigOptions::default() };
        let config = match &access.kubeconfig {
            Some(path) => {
                let kubeconfig = read_kubeconfig(path)?;
                check_context(&kubeconfig, access.context.as_deref())?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| Error::Kubeconfig { path: path.display().to_string(), message: e.to_string() })?
            }
            None => {
                if let Ok(kubeconfig) = Kubeconfig::read() {
                    check_context(&kubeconfig, access.context.as_deref())?;
                }
                match kube::Config::from_kubeconfig(&options).await {
                    Ok(config) => config,
                    Err(kubeconfig_error) => {
                        kube::Config::incluster().map_err(|_| Error::NoCredentials(kubeconfig_error.to_string()))?
                    }
                }
            }
        };
        let namespace = access
            .namespace
            .clone()
            .or_else(|| target_namespace.map(str::to_owned))
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client =
            client(&config).map_err(|e| Error::Unreachable { server: server.clone(), message: error_chain(&e) })?;
        Ok(Cluster { client, namespace, server })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Bounds an API call by [`API_TIMEOUT`].
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(API_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout { server: self.server.clone(), what: what.to_owned() }))
    }

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
        let list = self
            .bounded("listing pods", async {
                self.api::<Pod>().list(&selector.list_params()).await.map_err(|e| self.failed(e, "list", "pods", None))
            })
            .await?;
        Ok(list.items.iter().filter_map(TargetPod::of).collect())
    }

    /// The namespace's session token: key `token` of the Secret
    /// `mirrord-session-token`, which the injector mounts into every sidecar
    /// of the namespace (`get` on that one Secret is what RBAC grants).
    pub async fn session_token(&self) -> Result<String, Error> {
        let secret = self
            .bounded("reading the session token", async {
                self.api::<k8s_openapi::api::core::v1::Secret>()
                    .get_opt(TOKEN_SECRET)
                    .await
                    .map_err(|e| self.failed(e, "get", "secrets", Some(TOKEN_SECRET)))
            })
            .await?;
        let no_token = |why| Error::NoToken { namespace: self.namespace.clone(), why };
        let secret = secret.ok_or_else(|| no_token(" does not exist"))?;
        let value = secret.data.and_then(|mut d| d.remove(TOKEN_KEY)).ok_or_else(|| no_token(" has no key token"))?;
        let token = String::from_utf8(value.0).map_err(|_| no_token(": its token is not text"))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(no_token(": its token is empty"));
        }
        Ok(token.to_owned())
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

    async fn get<K>(&self, kind: &'static str, resource: &str, name: &str) -> Result<K, Error>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self.api::<K>().get(name).await {
            Ok(object) => Ok(object),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let existing: Vec<String> = match self.api::<K>().list_metadata(&ListParams::default()).await {
                    Ok(list) => list.items.into_iter().filter_map(|m| m.metadata.name).collect(),
                    Err(_) => Vec::new(),
                };
                let nearest = mirrord_config::nearest(name, existing.iter().map(String::as_str)).map(str::to_owned);
                let mut existing = existing;
                existing.truncate(10);
                Err(Error::NotFound {
                    kind,
                    name: name.to_owned(),
                    namespace: self.namespace.clone(),
                    nearest,
                    existing,
                })
            }
            Err(e) => Err(self.failed(e, "get", resource, Some(name))),
        }
    }

    fn failed(&self, e: kube::Error, verb: &'static str, resource: &str, name: Option<&str>) -> Error {
        let resource = match name {
            Some(n) => format!("{resource}/{n}"),
            None => resource.to_owned(),
        };
        match e {
            kube::Error::Api(s) if s.code == 403 => {
                Error::Forbidden { verb, resource, namespace: self.namespace.clone(), message: s.message }
            }
            kube::Error::Api(s) => Error::Api { verb, resource, message: format!("{} ({})", s.message, s.code) },
            other => Error::Unreachable { server: self.server.clone(), message: error_chain(&other) },
        }
    }

    /// A byte stream to the sidecar's session tunnel in `pod`.
    pub async fn forward(&self, pod: &str) -> Result<Forwarded, Error> {
        self.forward_port(pod, TUNNEL_PORT).await
    }

    /// A byte stream to `port` on the pod's loopback.
    pub async fn forward_port(&self, pod: &str, port: u16) -> Result<Forwarded, Error> {
        self.bounded(&format!("a port-forward to pod {pod}"), self.forward_unbounded(pod, port)).await
    }

    /// The pods of `selector` (every pod of the namespace without one), as
    /// the API has them.
    pub async fn pod_objects(&self, selector: Option<&PodSelector>) -> Result<Vec<Pod>, Error> {
        let params = selector.map(PodSelector::list_params).unwrap_or_default();
        let list = self
            .bounded("listing pods", async {
                self.api::<Pod>().list(&params).await.map_err(|e| self.failed(e, "list", "pods", None))
            })
            .await?;
        Ok(list.items)
    }

    async fn forward_unbounded(&self, pod: &str, port: u16) -> Result<Forwarded, Error> {
        let forbidden = |message: String| Error::Forbidden {
            verb: "create",
            resource: format!("pods/{pod}/portforward"),
            namespace: self.namespace.clone(),
            message,
        };
        let mut forwarder = self.api::<Pod>().portforward(pod, &[port]).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 403 => forbidden(s.message),
            // The WebSocket upgrade refused: only the status is known.
            kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::ProtocolSwitch(status))
                if status == http::StatusCode::FORBIDDEN =>
            {
                forbidden("403 Forbidden".to_owned())
            }
            other => Error::Forward { pod: pod.to_owned(), message: error_chain(&other) },
        })?;
        let stream = forwarder
            .take_stream(port)
            .ok_or_else(|| Error::Forward { pod: pod.to_owned(), message: format!("no stream for port {port}") })?;
        Ok(Box::new(stream))
    }
}

/// A port-forwarded stream (kube's forwarding task ends with it).
pub type Forwarded = Box<dyn Stream>;

/// What a forwarded stream is, as one trait for a trait object.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The pods a target stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelector {
    /// `pod/NAME`: that one pod.
    Name(String),
    /// The workload's or Service's label selector (`app=api,tier=web`).
    Labels(String),
}

impl PodSelector {
    fn list_params(&self) -> ListParams {
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

/// kube's client stack (TLS from the kubeconfig, credentials, the cluster's
/// URL), on connections with TCP_NODELAY: the session tunnel's small gRPC
/// frames cross the port-forward one WebSocket message each, and with
/// Nagle's algorithm each would wait for the previous one's delayed ACK
/// (about 40 ms at every turn of a request).
fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .service(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https));
    Ok(kube::Client::new(service, config.default_namespace.clone()))
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

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, Error> {
    Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig { path: path.display().to_string(), message: error_chain(&e) })
}

fn check_context(kubeconfig: &Kubeconfig, context: Option<&str>) -> Result<(), Error> {
    let Some(context) = context else { return Ok(()) };
    let known: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    if known.iter().any(|k| k == context) {
        Ok(())
    } else {
        Err(Error::UnknownContext { context: context.to_owned(), known })
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(&format!(": {next}"));
        }
        source = s.source();
    }
    text
}

/// Where the sidecar of each pod is reached.
#[derive(Debug, Clone)]
pub enum Place {
    /// `--addr`: a port-forward made by hand, or a sidecar on loopback.
    Addr(String),
    /// A pod of the target, through the API server.
    Pod { cluster: Cluster, pod: String },
}

impl Place {
    /// How the place is named in messages and JSON events.
    pub fn label(&self) -> String {
        match self {
            Place::Addr(addr) => addr.clone(),
            Place::Pod { pod, .. } => pod.clone(),
        }
    }

    pub fn pod(&self) -> Option<&str> {
        match self {
            Place::Addr(_) => None,
            Place::Pod { pod, .. } => Some(pod),
        }
    }
}

impl Error {
    /// The exit code this error ends a command with.
    pub fn exit_code(&self) -> crate::ExitCode {
        match self {
            Error::NotFound { .. }
            | Error::NoPods { .. }
            | Error::NotInjected { .. }
            | Error::Unsupported { .. }
            | Error::NoToken { .. } => crate::ExitCode::Target,
            _ => crate::ExitCode::Cluster,
        }
    }
}

/// The cluster flags of `inject`, `uninject`, `status` and `token`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the kubeconfig's current context).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
}

impl ClusterFlags {
    pub fn access(&self) -> Access {
        Access { kubeconfig: self.kubeconfig.clone(), context: self.context.clone(), namespace: self.namespace.clone() }
    }
}

/// A workload whose pod template can be opted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    ReplicaSet,
}

impl Workload {
    /// `deployment/NAME` (`deploy/`), `statefulset/NAME`, `replicaset/NAME`;
    /// other kinds are refused with the reason.
    pub fn parse(path: &str) -> Result<Workload, String> {
        let Some((kind, name)) = path.split_once('/') else {
            return Err(format!("invalid target {path:?}: expected KIND/NAME, e.g. deployment/api"));
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deploy" => WorkloadKind::Deployment,
            "statefulset" | "sts" => WorkloadKind::StatefulSet,
            "replicaset" | "rs" => WorkloadKind::ReplicaSet,
            "daemonset" | "ds" => {
                return Err(format!(
                    "{path}: DaemonSets are not opted in: a session follows the replicas of a service, and a \
                     DaemonSet's rollout restarts a pod on every node; opt its pods in with the annotation {} on \
                     its template if you mean it",
                    mirrord_config::names::ANNOTATION_INJECT
                ))
            }
            "job" | "cronjob" => {
                return Err(format!(
                    "{path}: a Job's pod template cannot be changed once it exists; set the annotation {} in its \
                     manifest (or opt in the namespace with --namespace)",
                    mirrord_config::names::ANNOTATION_INJECT
                ))
            }
            "pod" | "po" => {
                return Err(format!(
                    "{path}: a pod cannot gain containers once created: opt in the workload that owns it"
                ))
            }
            "service" | "svc" => {
                return Err(format!("{path}: opt in the workload behind the Service (deployment/NAME)"));
            }
            other => {
                return Err(format!(
                    "invalid target {path:?}: unknown kind {other:?}, expected deployment, statefulset or replicaset"
                ))
            }
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!("invalid target {path:?}: expected KIND/NAME, e.g. deployment/api"));
        }
        Ok(Workload { kind, name: name.to_owned() })
    }

    pub fn describe(&self) -> String {
        format!("{}/{}", self.kind_name(), self.name)
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::ReplicaSet => "replicaset",
        }
    }

    /// The API resource, as in a URL (`deployments.apps/v1`).
    pub fn resource(&self) -> String {
        format!("{}s.apps/v1", self.kind_name())
    }

    fn api_resource(&self) -> kube::discovery::ApiResource {
        match self.kind {
            WorkloadKind::Deployment => kube::discovery::ApiResource::erase::<Deployment>(&()),
            WorkloadKind::StatefulSet => kube::discovery::ApiResource::erase::<StatefulSet>(&()),
            WorkloadKind::ReplicaSet => kube::discovery::ApiResource::erase::<ReplicaSet>(&()),
        }
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
    pub fn of(workload: &serde_json::Value) -> Rollout {
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
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

const FIELD_MANAGER: &str = "mirrord-cli";

impl Cluster {
    fn dynamic(&self, workload: &Workload) -> Api<kube::api::DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &workload.api_resource())
    }

    /// The workload as the API has it.
    pub async fn workload(&self, workload: &Workload) -> Result<serde_json::Value, Error> {
        let resource = format!("{}s", workload.kind_name());
        let got = self
            .bounded(&format!("reading {}", workload.describe()), async {
                self.dynamic(workload)
                    .get_opt(&workload.name)
                    .await
                    .map_err(|e| self.failed(e, "get", &resource, Some(&workload.name)))
            })
            .await?;
        match got {
            Some(object) => Ok(serde_json::to_value(object).unwrap_or_default()),
            None => {
                // The "did you mean" of the typed lookup.
                let error = match workload.kind {
                    WorkloadKind::Deployment => {
                        self.get::<Deployment>("deployment", "deployments", &workload.name).await.err()
                    }
                    WorkloadKind::StatefulSet => {
                        self.get::<StatefulSet>("statefulset", "statefulsets", &workload.name).await.err()
                    }
                    WorkloadKind::ReplicaSet => {
                        self.get::<ReplicaSet>("replicaset", "replicasets", &workload.name).await.err()
                    }
                };
                Err(error.unwrap_or(Error::NotFound {
                    kind: workload.kind_name(),
                    name: workload.name.clone(),
                    namespace: self.namespace.clone(),
                    nearest: None,
                    existing: Vec::new(),
                }))
            }
        }
    }

    /// The namespace object (for its annotations).
    pub async fn namespace_object(&self) -> Result<serde_json::Value, Error> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns = self.namespace.clone();
        let got = self
            .bounded(&format!("reading namespace {ns}"), async {
                api.get_opt(&ns).await.map_err(|e| self.failed(e, "get", "namespaces", Some(&ns)))
            })
            .await?;
        match got {
            Some(object) => Ok(serde_json::to_value(object).unwrap_or_default()),
            None => Err(Error::NotFound {
                kind: "namespace",
                name: ns.clone(),
                namespace: ns,
                nearest: None,
                existing: Vec::new(),
            }),
        }
    }

    fn patch_params() -> kube::api::PatchParams {
        kube::api::PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..kube::api::PatchParams::default() }
    }

    /// A merge patch of the workload (field manager `mirrord-cli`).
    pub async fn patch_workload(&self, workload: &Workload, patch: &serde_json::Value) -> Result<(), Error> {
        let resource = format!("{}s", workload.kind_name());
        self.bounded(&format!("patching {}", workload.describe()), async {
            self.dynamic(workload)
                .patch(&workload.name, &Self::patch_params(), &kube::api::Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| self.failed(e, "patch", &resource, Some(&workload.name)))
        })
        .await
    }

    /// A merge patch of the namespace object.
    pub async fn patch_namespace(&self, patch: &serde_json::Value) -> Result<(), Error> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns = self.namespace.clone();
        self.bounded(&format!("patching namespace {ns}"), async {
            api.patch(&ns, &Self::patch_params(), &kube::api::Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| self.failed(e, "patch", "namespaces", Some(&ns)))
        })
        .await
    }

    fn token_secret(token: &str) -> k8s_openapi::api::core::v1::Secret {
        let mut secret = k8s_openapi::api::core::v1::Secret::default();
        secret.metadata.name = Some(TOKEN_SECRET.to_owned());
        secret.metadata.labels =
            Some([("app.kubernetes.io/part-of".to_owned(), "mirrord".to_owned())].into_iter().collect());
        secret.type_ = Some("Opaque".to_owned());
        secret.data =
            Some([(TOKEN_KEY.to_owned(), k8s_openapi::ByteString(token.as_bytes().to_vec()))].into_iter().collect());
        secret
    }

    fn fresh_token(&self) -> Result<String, Error> {
        mirrord_api::random_hex(32).map_err(|e| Error::Api {
            verb: "create",
            resource: format!("secrets/{TOKEN_SECRET}"),
            message: format!("no randomness for a token: {e}"),
        })
    }

    /// Creates the namespace's session token when it has none; true when it
    /// was created.
    pub async fn ensure_session_token(&self) -> Result<bool, Error> {
        let api: Api<k8s_openapi::api::core::v1::Secret> = self.api();
        let exists = self
            .bounded("reading the session token", async {
                api.get_opt(TOKEN_SECRET).await.map_err(|e| self.failed(e, "get", "secrets", Some(TOKEN_SECRET)))
            })
            .await?
            .is_some();
        if exists {
            return Ok(false);
        }
        let secret = Self::token_secret(&self.fresh_token()?);
        let params = kube::api::PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
        self.bounded("creating the session token", async {
            match api.create(&params, &secret).await {
                Ok(_) => Ok(true),
                // Made meanwhile by someone else: theirs stands.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.failed(e, "create", "secrets", None)),
            }
        })
        .await
    }

    /// A new token in the namespace's Secret (made when missing).
    pub async fn rotate_session_token(&self) -> Result<(), Error> {
        if self.ensure_session_token().await? {
            return Ok(());
        }
        let api: Api<k8s_openapi::api::core::v1::Secret> = self.api();
        let token = self.fresh_token()?;
        let patch = serde_json::json!({"data": {TOKEN_KEY: k8s_openapi::ByteString(token.into_bytes())}});
        self.bounded("rotating the session token", async {
            api.patch(TOKEN_SECRET, &Self::patch_params(), &kube::api::Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| self.failed(e, "patch", "secrets", Some(TOKEN_SECRET)))
        })
        .await
    }

    /// The workload's pods now.
    pub async fn workload_pods(&self, workload: &Workload) -> Result<Vec<TargetPod>, Error> {
        let target = Target::parse(&workload.describe(), None)
            .map_err(|why| Error::Unsupported { target: workload.describe(), why })?;
        let Some(target) = target else { return Ok(Vec::new()) };
        let selector = self.selector(&target).await?;
        self.pods(&selector).await
    }

    /// Warning events of the workload and its pods, oldest first, as
    /// "Reason: message".
    pub async fn warnings(&self, workload: &Workload) -> Result<Vec<String>, Error> {
        let api: Api<k8s_openapi::api::core::v1::Event> = self.api();
        let list = self
            .bounded("listing events", async {
                api.list(&ListParams::default()).await.map_err(|e| self.failed(e, "list", "events", None))
            })
            .await?;
        let prefix = format!("{}-", workload.name);
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .filter(|e| e.involved_object.name.as_deref().is_some_and(|n| n == workload.name || n.starts_with(&prefix)))
            .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }
}
