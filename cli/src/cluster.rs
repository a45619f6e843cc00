//! The Kubernetes side of `connect`: credentials as every Kubernetes tool
//! resolves them, and a port-forward to each pod's sidecar over the API
//! server (no local listener). `pods`: a target resolved to its pods;
//! `workload`: what `inject`/`uninject` read and change; `token`: the
//! namespace's session token; `error`: what goes wrong, with what to do
//! about it.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use mirrord_config::names::TUNNEL_PORT;

mod error;
mod pods;
mod token;
mod workload;

pub use error::{error_chain, Error};
pub use pods::{PodSelector, TargetPod};
pub use workload::{Rollout, Workload};

/// Where the cluster's credentials come from (flags, then the session
/// config's `kubeconfig` / `kube_context`, then the environment).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `-n`; else the target's namespace; else the context's.
    pub namespace: Option<String>,
}

/// Who `mirrord-cli` is in `managedFields`.
const FIELD_MANAGER: &str = "mirrord-cli";

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

    fn patch_params() -> kube::api::PatchParams {
        kube::api::PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..kube::api::PatchParams::default() }
    }

    /// A JSON merge patch of `resource/name` (field manager `mirrord-cli`):
    /// it touches nothing the patch does not name.
    async fn merge_patch<K>(
        &self,
        api: Api<K>,
        resource: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.bounded(&format!("patching {resource}/{name}"), async {
            api.patch(name, &Self::patch_params(), &kube::api::Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| self.failed(e, "patch", resource, Some(name)))
        })
        .await
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

/// The cluster flags every command that talks to the API shares.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterFlags {
    /// Namespace (default: for connect, the config's target.namespace; then
    /// the kubeconfig context's).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig file (default: for connect, the config's `kubeconfig`;
    /// then KUBECONFIG, ~/.kube/config, the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: for connect, the config's
    /// `kube_context`; then the kubeconfig's current context).
    #[arg(long, value_name = "CONTEXT")]
    pub context: Option<String>,
}

impl ClusterFlags {
    pub fn access(&self) -> Access {
        Access { kubeconfig: self.kubeconfig.clone(), context: self.context.clone(), namespace: self.namespace.clone() }
    }
}
