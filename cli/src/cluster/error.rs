//! What goes wrong reaching a cluster or a target, each with what to do
//! about it, and the exit code it ends a command with.

use mirrord_config::names::TOKEN_SECRET;

use super::API_TIMEOUT;

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
