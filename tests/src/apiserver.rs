//! A Kubernetes API server stand-in that speaks real Kubernetes HTTP, for
//! the parts mirrord uses: HTTPS with its own CA and a bearer token, reached
//! through a generated kubeconfig, so that `mirrord-cli` runs unmodified.
//!
//! It serves GET, LIST and WATCH (with equality label selectors and the
//! `metadata.name` field selector; a watch replays what changed after its
//! resourceVersion) of pods, services, secrets, events, namespaces,
//! deployments, statefulsets and replicasets; POST and JSON merge PATCH;
//! metadata-only lists (`as=PartialObjectMetadataList`); 401/403/404/409 in
//! Kubernetes' `Status` shape, with RBAC rules enforced when given
//! ([`Rule`]); rollouts of a changed template through a webhook
//! ([`Webhook`]); and `pods/NAME/portforward` over WebSocket as the API server and
//! kubelet do: subprotocol `v4.channel.k8s.io`, a data and an error channel
//! per port, each opened by a frame carrying the port (little-endian); the
//! data channel's bytes go to 127.0.0.1:PORT inside the pod's network
//! namespace.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

/// The resources served, with their API group path.
const RESOURCES: [(&str, &str, &str); 8] = [
    ("pods", "/api/v1", "Pod"),
    ("secrets", "/api/v1", "Secret"),
    ("events", "/api/v1", "Event"),
    ("namespaces", "/api/v1", "Namespace"),
    ("services", "/api/v1", "Service"),
    ("deployments", "/apis/apps/v1", "Deployment"),
    ("statefulsets", "/apis/apps/v1", "StatefulSet"),
    ("replicasets", "/apis/apps/v1", "ReplicaSet"),
];

#[derive(Debug, Default)]
struct State {
    /// (resource, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// (namespace, pod) → the network namespace a port-forward enters.
    netns: HashMap<(String, String), String>,
    version: u64,
    /// Every change: (version, resource, namespace, ADDED|MODIFIED|DELETED, object).
    history: Vec<(u64, String, String, &'static str, Value)>,
    /// Every request, as "VERB PATH" (for RBAC checks).
    log: Vec<String>,
    /// Every request as RBAC authorizes it: (API group, resource, verb).
    authorized: Vec<(String, String, String)>,
    /// (verb, resource) pairs answered 403, as RBAC would without a grant;
    /// verbs as Kubernetes names them (get, list, watch, create).
    denied: Vec<(String, String)>,
    /// The role every request is checked against, when set.
    rules: Option<Vec<Rule>>,
    /// Requests answered 403, as "VERB PATH".
    forbidden: Vec<String>,
    /// Pods of rollouts are admitted through this webhook; without one,
    /// changing a template rolls nothing out.
    webhook: Option<Webhook>,
}

/// Told the version of every change, for watches.
type Changes = tokio::sync::broadcast::Sender<u64>;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

mod objects;
mod rbac;
mod rollout;

pub use objects::{pod, pod_with, service, token_secret, workload};
pub use rbac::Rule;
pub use rollout::Webhook;

/// A running stand-in; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub token: String,
    state: Arc<Mutex<State>>,
    changes: Changes,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let (chain, key, ca_pem) =
            mirrord_injector::tls::self_signed_pem(vec!["localhost".to_owned()]).expect("certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_file, chain).expect("write");
        std::fs::write(&key_file, key).expect("write");
        let certs =
            mirrord_injector::tls::Certs::new(mirrord_injector::tls::load(&cert_file, &key_file).expect("load"));
        let mut config = certs.server_config();
        // HTTP/1.1 only: the port-forward upgrade is an HTTP/1.1 one.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let token = format!("token-{}", std::process::id());
        let state = Arc::new(Mutex::new(State::default()));
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (served_state, served_token, served_changes) = (state.clone(), token.clone(), changes.clone());
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        // As Go's net/http does for every connection.
                        let _ = tcp.set_nodelay(true);
                        let (acceptor, state, token) = (acceptor.clone(), served_state.clone(), served_token.clone());
                        let changes = served_changes.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let svc = hyper::service::service_fn(move |req| {
                                let (state, token, changes) = (state.clone(), token.clone(), changes.clone());
                                async move { Ok::<_, std::convert::Infallible>(handle(req, &state, &token, &changes).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
            drop(dir);
        });
        ApiServer { addr, ca_pem, token, state, changes, stop: Some(stop), thread: Some(thread) }
    }

    /// A kubeconfig for this server, with a context named `sim` (namespace `namespace`).
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let ca = mirrord_injector::review::base64(self.ca_pem.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: https://localhost:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: developer\n  user:\n    token: {token}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: developer\n    namespace: {namespace}\ncurrent-context: sim\n",
            port = self.addr.port(),
            token = self.token
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Adds or replaces an object (its kind says which resource).
    pub fn put(&self, object: Value) {
        let kind = object["kind"].as_str().expect("kind");
        let ns = match kind {
            "Namespace" => String::new(),
            _ => object["metadata"]["namespace"].as_str().expect("namespace").to_owned(),
        };
        store(&self.state, &self.changes, resource_of(kind), &ns, object);
    }

    /// Deletes an object (`kind` as in its `kind` field).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        remove(&self.state, &self.changes, resource_of(kind), namespace, name);
    }

    /// Which network namespace a port-forward to the pod enters.
    pub fn forward_into(&self, namespace: &str, pod: &str, netns: &str) {
        self.state.lock().expect("state").netns.insert((namespace.to_owned(), pod.to_owned()), netns.to_owned());
    }

    /// Answers `verb` on `resource` (e.g. "create", "pods/portforward") with
    /// 403 from now on, as RBAC does for a role without that grant.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.state.lock().expect("state").denied.push((verb.to_owned(), resource.to_owned()));
    }

    /// From now on, answers 403 to every request the role's rules do not
    /// grant, as RBAC does for a user bound to that role alone.
    pub fn enforce(&self, rules: Vec<Rule>) {
        self.state.lock().expect("state").rules = Some(rules);
    }

    /// From now on, a changed pod template rolls out (see [`rollout::roll_out`]),
    /// each new pod admitted through `webhook`.
    pub fn admit_with(&self, webhook: Webhook) {
        self.state.lock().expect("state").webhook = Some(webhook);
    }

    /// The object `kind`/`name` in `namespace` ("" for cluster-scoped), as stored.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = RESOURCES.iter().find(|(_, _, k)| *k == kind).map(|(r, _, _)| *r).expect("a served kind");
        self.state
            .lock()
            .expect("state")
            .objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The objects of `kind` in `namespace`.
    pub fn list(&self, kind: &str, namespace: &str) -> Vec<Value> {
        let resource = resource_of(kind);
        let st = self.state.lock().expect("state");
        st.objects.iter().filter(|((r, n, _), _)| r == resource && n == namespace).map(|(_, o)| o.clone()).collect()
    }

    /// Every request so far as RBAC authorizes it: (API group, resource,
    /// verb), e.g. ("", "pods/portforward", "create").
    pub fn authorized(&self) -> Vec<(String, String, String)> {
        self.state.lock().expect("state").authorized.clone()
    }

    /// The requests answered 403 so far, as "VERB PATH".
    pub fn forbidden(&self) -> Vec<String> {
        self.state.lock().expect("state").forbidden.clone()
    }

    /// The rules of the ClusterRoles in `manifests/rbac/developer.yaml`
    /// named `names`.
    pub fn roles(names: &[&str]) -> Vec<Rule> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/rbac/developer.yaml");
        let text = std::fs::read_to_string(path).expect("developer.yaml");
        let mut rules = Vec::new();
        for doc in text.split("\n---\n") {
            let role: Value = serde_yaml::from_str(doc).expect("YAML");
            if role["kind"] == "ClusterRole" && names.iter().any(|n| role["metadata"]["name"] == *n) {
                rules.extend(Rule::of_role(&role));
            }
        }
        assert!(!rules.is_empty(), "no ClusterRole {names:?} in developer.yaml");
        rules
    }

    /// The requests served so far, as "VERB PATH".
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state").log.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, body)
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// Equality-based selectors only (`a=b,c==d,e!=f`), as clients send them.
fn matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|r| !r.is_empty()).all(|requirement| {
        if let Some((k, v)) = requirement.split_once("!=") {
            return labels[k.trim()].as_str() != Some(v.trim());
        }
        let (k, v) = requirement.split_once("==").or_else(|| requirement.split_once('=')).unwrap_or((requirement, ""));
        labels[k.trim()].as_str() == Some(v.trim())
    })
}

/// Whether an object is one a list or watch with these parameters selects.
fn selected(q: &HashMap<String, String>, object: &Value) -> bool {
    let labels = q.get("labelSelector").map(String::as_str).unwrap_or("");
    let name = q.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name="));
    matches(labels, &object["metadata"]["labels"]) && name.is_none_or(|n| object["metadata"]["name"] == n)
}

async fn handle(req: Request<Incoming>, state: &Arc<Mutex<State>>, token: &str, changes: &Changes) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let verb = req.method().as_str().to_owned();
    state.lock().expect("state").log.push(format!("{verb} {path}"));
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"));
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let not_found = || status(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}"));
    // /api/v1/namespaces[/NAME] (cluster-scoped), or
    // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]], /apis/apps/v1/namespaces/...
    let (prefix, ns, resource, parts): (&str, &str, &str, Vec<&str>) =
        if let Some(rest) = path.strip_prefix("/api/v1/namespaces").filter(|r| r.is_empty() || !r[1..].contains('/')) {
            let name = rest.trim_start_matches('/');
            (
                "/api/v1",
                "",
                "namespaces",
                if name.is_empty() { vec!["", "namespaces"] } else { vec!["", "namespaces", name] },
            )
        } else {
            let Some((prefix, rest)) = path.split_once("/namespaces/") else { return not_found() };
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [ns, resource, ..] => (prefix, *ns, *resource, parts.clone()),
                _ => return not_found(),
            }
        };
    let Some((_, group, kind)) = RESOURCES.iter().find(|(r, g, _)| *r == resource && *g == prefix) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource {path}"),
        );
    };
    // The verbs and resource as RBAC sees them. Kubernetes 1.35 authorizes a
    // WebSocket port-forward (a GET) with both get and create.
    let q = query(&req);
    let watching = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    let (rbac_verbs, rbac_resource): (Vec<&str>, String) = match (req.method().as_str(), parts.as_slice()) {
        ("GET", [_, _]) if watching => (vec!["watch"], resource.to_owned()),
        ("GET", [_, _]) => (vec!["list"], resource.to_owned()),
        ("GET", [_, _, _, sub]) => (vec!["get", "create"], format!("{resource}/{sub}")),
        ("GET", _) => (vec!["get"], resource.to_owned()),
        ("PATCH", _) => (vec!["patch"], resource.to_owned()),
        ("PUT", _) => (vec!["update"], resource.to_owned()),
        ("DELETE", _) => (vec!["delete"], resource.to_owned()),
        (_, _) => (vec!["create"], resource.to_owned()),
    };
    let rbac_group = if prefix == "/api/v1" { "" } else { "apps" };
    let name = parts.get(2).copied().filter(|n| !n.is_empty());
    for rbac_verb in rbac_verbs {
        let mut st = state.lock().expect("state");
        st.authorized.push((rbac_group.to_owned(), rbac_resource.clone(), rbac_verb.to_owned()));
        let denied = st.denied.iter().any(|(v, r)| v == rbac_verb && *r == rbac_resource)
            || st
                .rules
                .as_ref()
                .is_some_and(|rules| !rules.iter().any(|r| r.allows(rbac_group, &rbac_resource, rbac_verb, name)));
        if denied {
            st.forbidden.push(format!("{verb} {path}"));
        }
        drop(st);
        if denied {
            let what =
                if rbac_group.is_empty() { rbac_resource.clone() } else { format!("{rbac_resource}.{rbac_group}") };
            let scope =
                if ns.is_empty() { "at the cluster scope".to_owned() } else { format!("in the namespace \"{ns}\"") };
            return status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{what} \"{}\" is forbidden: User \"developer\" cannot {rbac_verb} resource \"{rbac_resource}\" in API group \"{rbac_group}\" {scope}",
                    name.unwrap_or("")
                ),
            );
        }
    }
    let content_type =
        req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match (req.method().as_str(), parts.as_slice()) {
        ("GET", [_, _]) if watching => watch(q, state, changes, resource, ns),
        ("GET", [_, _]) => {
            let metadata_only = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("as=PartialObjectMetadataList"));
            let state = state.lock().expect("state");
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((r, n, _), o)| r == resource && n == ns && selected(&q, o))
                .map(|(_, o)| {
                    if metadata_only {
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
                    } else {
                        o.clone()
                    }
                })
                .collect();
            let (api_version, list_kind) = if metadata_only {
                ("meta.k8s.io/v1".to_owned(), "PartialObjectMetadataList".to_owned())
            } else {
                (group.trim_start_matches("/api/").trim_start_matches("/apis/").to_owned(), format!("{kind}List"))
            };
            respond(
                StatusCode::OK,
                json!({"apiVersion": api_version, "kind": list_kind,
                       "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
            )
        }
        ("GET", [_, _, name]) => {
            let state = state.lock().expect("state");
            match state.objects.get(&(resource.to_owned(), ns.to_owned(), (*name).to_owned())) {
                Some(object) => respond(StatusCode::OK, object.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound", &format!("{resource} \"{name}\" not found")),
            }
        }
        ("GET", [_, "pods", name, "portforward"]) => portforward(req, state, ns, name),
        ("POST", [_, _]) => {
            let Some(mut object) = body_json(req).await else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not a JSON object");
            };
            let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value");
            };
            if state.lock().expect("state").objects.contains_key(&(resource.to_owned(), ns.to_owned(), name.clone())) {
                return status(StatusCode::CONFLICT, "AlreadyExists", &format!("{resource} \"{name}\" already exists"));
            }
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["uid"] = json!(format!("uid-{resource}-{name}"));
            object["metadata"]["generation"] = json!(1);
            record_manager(&mut object, &q, "Update");
            respond(StatusCode::CREATED, store(state, changes, resource, ns, object))
        }
        ("PATCH", [_, _, name]) => {
            if content_type != "application/merge-patch+json" {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!("the stand-in applies merge patches only, not {content_type:?}"),
                );
            }
            let Some(patch) = body_json(req).await else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not a JSON object");
            };
            let key = (resource.to_owned(), ns.to_owned(), (*name).to_owned());
            let Some(before) = state.lock().expect("state").objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", &format!("{resource} \"{name}\" not found"));
            };
            let mut after = before.clone();
            merge_patch(&mut after, &patch);
            if after == before {
                return respond(StatusCode::OK, before);
            }
            record_manager(&mut after, &q, "Update");
            let template_changed = after["spec"]["template"] != before["spec"]["template"];
            if after["spec"] != before["spec"] {
                let generation = before["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
                after["metadata"]["generation"] = json!(generation);
            }
            let stored = store(state, changes, resource, ns, after);
            let webhook = state.lock().expect("state").webhook.clone();
            if let (true, Some(webhook)) = (template_changed && group == &"/apis/apps/v1", webhook) {
                let (state, changes) = (state.clone(), changes.clone());
                let (resource, ns, name) = (resource.to_owned(), ns.to_owned(), (*name).to_owned());
                tokio::spawn(async move { rollout::roll_out(&state, &changes, &webhook, &resource, &ns, &name).await });
            }
            respond(StatusCode::OK, stored)
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", &format!("{verb} is not supported on {path}")),
    }
}

async fn body_json(req: Request<Incoming>) -> Option<Value> {
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice::<Value>(&bytes).ok().filter(Value::is_object)
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Notes the request's field manager in `metadata.managedFields`, as the API
/// server does (without the field set).
fn record_manager(object: &mut Value, q: &HashMap<String, String>, operation: &str) {
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".to_owned());
    let fields = &mut object["metadata"]["managedFields"];
    if !fields.is_array() {
        *fields = json!([]);
    }
    let list = fields.as_array_mut().expect("an array");
    list.retain(|m| m["manager"] != manager.as_str());
    list.push(json!({"manager": manager, "operation": operation, "apiVersion": "v1"}));
}

/// Stores a created or changed object, tells watches, returns it as stored.
fn store(state: &Arc<Mutex<State>>, changes: &Changes, resource: &str, ns: &str, mut object: Value) -> Value {
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let mut st = state.lock().expect("state");
    st.version += 1;
    let version = st.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    let key = (resource.to_owned(), ns.to_owned(), name);
    let change = if st.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
    st.objects.insert(key, object.clone());
    st.history.push((version, resource.to_owned(), ns.to_owned(), change, object.clone()));
    drop(st);
    let _ = changes.send(version);
    object
}

/// Deletes an object, tells watches.
fn remove(state: &Arc<Mutex<State>>, changes: &Changes, resource: &str, ns: &str, name: &str) {
    let mut st = state.lock().expect("state");
    let Some(mut object) = st.objects.remove(&(resource.to_owned(), ns.to_owned(), name.to_owned())) else { return };
    st.version += 1;
    let version = st.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    st.history.push((version, resource.to_owned(), ns.to_owned(), "DELETED", object));
    drop(st);
    let _ = changes.send(version);
}

/// The resource (`pods`) of a kind (`Pod`) the stand-in serves.
fn resource_of(kind: &str) -> &'static str {
    RESOURCES.iter().find(|(_, _, k)| *k == kind).map(|(r, _, _)| *r).expect("a served kind")
}

/// A watch: what changed after `resourceVersion`, then every change as it
/// happens, one JSON event per line.
fn watch(
    q: HashMap<String, String>,
    state: &Arc<Mutex<State>>,
    changes: &Changes,
    resource: &str,
    ns: &str,
) -> Response<Body> {
    let after: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut told = changes.subscribe();
    let (resource, ns, state) = (resource.to_owned(), ns.to_owned(), state.clone());
    let events = async_stream(move |tx: tokio::sync::mpsc::Sender<Bytes>| async move {
        let mut sent = after;
        loop {
            let pending: Vec<(u64, Value)> = {
                let state = state.lock().expect("state");
                state
                    .history
                    .iter()
                    .filter(|(v, r, n, _, o)| *v > sent && *r == resource && *n == ns && selected(&q, o))
                    .map(|(v, _, _, change, o)| (*v, json!({"type": change, "object": o})))
                    .collect()
            };
            for (version, event) in pending {
                sent = version;
                if tx.send(Bytes::from(format!("{event}\n"))).await.is_err() {
                    return;
                }
            }
            match told.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let mut resp = Response::new(events);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

/// A streaming body fed by a task through a channel.
fn async_stream<F, Fut>(feed: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(feed(tx));
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)));
    BodyExt::boxed(StreamBody::new(frames))
}

fn portforward(req: Request<Incoming>, state: &Arc<Mutex<State>>, ns: &str, pod: &str) -> Response<Body> {
    let netns = state.lock().expect("state").netns.get(&(ns.to_owned(), pod.to_owned())).cloned();
    let Some(netns) = netns else {
        return status(StatusCode::NOT_FOUND, "NotFound", &format!("pods \"{pod}\" not found"));
    };
    let port: Option<u16> = query(&req).get("ports").and_then(|p| p.split(',').next()?.parse().ok());
    let Some(port) = port else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "expected one port in ports=");
    };
    let headers = req.headers();
    let offered = headers.get(http::header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !offered.split(',').any(|p| p.trim() == "v4.channel.k8s.io") {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "expected subprotocol v4.channel.k8s.io");
    }
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not a WebSocket upgrade");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tunnel(ws, &netns, port).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    h.insert(http::header::SEC_WEBSOCKET_ACCEPT, accept.parse().expect("header"));
    h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, http::HeaderValue::from_static("v4.channel.k8s.io"));
    resp
}

/// One forwarded port: channel 0 its bytes, channel 1 its errors, as kubelet does.
async fn tunnel<S>(ws: WebSocketStream<S>, netns: &str, port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    for channel in [0u8, 1] {
        if sink.send(Message::binary(vec![channel, lo, hi])).await.is_err() {
            return;
        }
    }
    let netns = netns.to_owned();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let connected = tokio::task::spawn_blocking(move || crate::netns::connect(&netns, addr)).await;
    let tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let mut frame = vec![1u8];
            frame.extend_from_slice(format!("error forwarding port {port}: {e}").as_bytes());
            let _ = sink.send(Message::binary(frame)).await;
            let _ = sink.close().await;
            return;
        }
        Err(_) => return,
    };
    let _ = tcp.set_nonblocking(true);
    // kubelet (Go) dials with TCP_NODELAY, as Go does by default.
    let _ = tcp.set_nodelay(true);
    let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else { return };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if data.first() == Some(&0) && wr.write_all(&data[1..]).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    if sink.send(Message::binary(buf[..n + 1].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(to_pod, from_pod);
}
