//! `mirrord-cli inject | uninject`: opt a workload's pods (or a whole
//! namespace) in or out of the sidecar, by the annotations the injector
//! reads, and `mirrord-cli token rotate`: the namespace's session token.
//!
//! A workload is changed by a JSON merge patch of its pod template's
//! annotations (field manager `mirrord-cli`), which touches nothing else and
//! starts a rollout; `--wait` follows it. The annotations mirrord-cli owns
//! are the `mirrord.dev/` keys it writes ([`OWNED`]); `uninject` removes
//! exactly those.

use mirrord_config::names::{
    ANNOTATION_INJECT, ANNOTATION_MAX_PAUSE, ANNOTATION_MAX_SESSIONS, ANNOTATION_OPAQUE_PORTS, ANNOTATION_PAUSE,
    ANNOTATION_PORTS, ANNOTATION_SKIP_PORTS, TOKEN_SECRET,
};
use serde_json::{json, Map, Value};

use crate::cluster::{self, Cluster, ClusterFlags, Workload};
use crate::ExitCode;

mod args;
mod rollout;

pub use args::{ApplyFlags, InjectArgs, TokenArgs, UninjectArgs};

/// The annotations `inject` writes and `uninject` removes.
pub const OWNED: [&str; 7] = [
    ANNOTATION_INJECT,
    ANNOTATION_PORTS,
    ANNOTATION_SKIP_PORTS,
    ANNOTATION_OPAQUE_PORTS,
    ANNOTATION_PAUSE,
    ANNOTATION_MAX_PAUSE,
    ANNOTATION_MAX_SESSIONS,
];

/// What is opted in or out.
#[derive(Debug)]
enum Subject {
    Workload(Workload),
    Namespace,
}

fn subject(target: Option<&str>, cluster: &ClusterFlags) -> Result<Subject, String> {
    match target {
        Some(path) => Workload::parse(path).map(Subject::Workload),
        None if cluster.namespace.is_some() => Ok(Subject::Namespace),
        None => Err("give a TARGET (deployment/NAME, statefulset/NAME or replicaset/NAME), or --namespace NS to \
                     opt in every new pod of a namespace"
            .to_owned()),
    }
}

/// `mirrord-cli inject`.
pub async fn inject(args: InjectArgs) -> ExitCode {
    let subject = match subject(args.target.as_deref(), &args.cluster) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let mut wanted: Vec<(&str, Option<String>)> = vec![(ANNOTATION_INJECT, Some("enabled".to_owned()))];
    for (key, value) in [
        (ANNOTATION_PORTS, &args.ports),
        (ANNOTATION_SKIP_PORTS, &args.skip_ports),
        (ANNOTATION_OPAQUE_PORTS, &args.opaque_ports),
        (ANNOTATION_PAUSE, &args.pause),
        (ANNOTATION_MAX_PAUSE, &args.max_pause),
        (ANNOTATION_MAX_SESSIONS, &args.max_sessions),
    ] {
        if let Some(value) = value {
            if matches!(subject, Subject::Namespace) {
                return usage(&format!(
                    "--{} applies to a workload's pods: the namespace opt-in takes no settings (set them on each \
                     workload with `mirrord-cli inject TARGET`)",
                    key.trim_start_matches("mirrord.dev/")
                ));
            }
            wanted.push((key, Some(value.clone())));
        }
    }
    change(subject, wanted, &args.cluster, &args.apply, true).await
}

/// `mirrord-cli uninject`.
pub async fn uninject(args: UninjectArgs) -> ExitCode {
    let subject = match subject(args.target.as_deref(), &args.cluster) {
        Ok(s) => s,
        Err(e) => return usage(&e),
    };
    let wanted = OWNED.iter().map(|k| (*k, None)).collect();
    change(subject, wanted, &args.cluster, &args.apply, false).await
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::InvalidConfig
}

fn failed(e: cluster::Error) -> ExitCode {
    eprintln!("error: {e}");
    e.exit_code()
}

impl Subject {
    /// `deployment/api`, `namespace/shop`.
    fn describe(&self, cluster: &Cluster) -> String {
        match self {
            Subject::Workload(w) => w.describe(),
            Subject::Namespace => format!("namespace/{}", cluster.namespace),
        }
    }

    /// Where the annotations are in the object.
    fn annotations_path(&self) -> &'static [&'static str] {
        match self {
            Subject::Workload(_) => &["spec", "template", "metadata", "annotations"],
            Subject::Namespace => &["metadata", "annotations"],
        }
    }

    async fn read(&self, cluster: &Cluster) -> Result<Value, cluster::Error> {
        match self {
            Subject::Workload(w) => cluster.workload(w).await,
            Subject::Namespace => cluster.namespace_object().await,
        }
    }

    async fn patch(&self, cluster: &Cluster, patch: &Value) -> Result<(), cluster::Error> {
        match self {
            Subject::Workload(w) => cluster.patch_workload(w, patch).await,
            Subject::Namespace => cluster.patch_namespace(patch).await,
        }
    }

    /// The object as a PATCH request names it.
    fn resource(&self, cluster: &Cluster) -> String {
        match self {
            Subject::Workload(w) => format!("{} {} in namespace {}", w.resource(), w.name(), cluster.namespace),
            Subject::Namespace => format!("namespaces {}", cluster.namespace),
        }
    }

    fn effect(&self) -> &'static str {
        match self {
            Subject::Workload(_) => "its pods roll out",
            Subject::Namespace => "pods created from now on follow it",
        }
    }
}

/// The annotations to set (a value) or remove (null): only those `wanted`
/// differs on from `current` (all of them when `current` is unknown).
fn differing(current: Option<&Value>, wanted: &[(&str, Option<String>)]) -> Map<String, Value> {
    wanted
        .iter()
        .filter(|(key, value)| current.is_none_or(|c| c[*key].as_str() != value.as_deref()))
        .map(|(key, value)| ((*key).to_owned(), value.as_ref().map_or(Value::Null, |v| json!(v))))
        .collect()
}

/// Sets (`Some`) or removes (`None`) annotations of the subject, unless they
/// already are so; then, for `inject`, makes sure the namespace has a
/// session token; then, with `--wait`, follows the rollout.
async fn change(
    subject: Subject,
    wanted: Vec<(&str, Option<String>)>,
    flags: &ClusterFlags,
    apply: &ApplyFlags,
    injecting: bool,
) -> ExitCode {
    let cluster = match Cluster::connect(&flags.access(), None).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let described = subject.describe(&cluster);
    let path = subject.annotations_path();
    let object = match apply.dry_run {
        true => None,
        false => match subject.read(&cluster).await {
            Ok(o) => Some(o),
            Err(e) => return failed(e),
        },
    };
    let current = object.as_ref().map(|o| path.iter().fold(o, |v, k| &v[*k]));
    let changes = differing(current, &wanted);
    let patch = path.iter().rev().fold(Value::Object(changes.clone()), |v, k| json!({ *k: v }));
    if apply.dry_run {
        println!("# PATCH {} (application/merge-patch+json, fieldManager=mirrord-cli)", subject.resource(&cluster));
        println!("{}", serde_json::to_string_pretty(&patch).unwrap_or_default());
        return ExitCode::Ok;
    }
    if changes.is_empty() {
        let state = if injecting { "already opted in with these settings" } else { "not opted in" };
        println!("{described} is {state}: nothing changed");
    } else {
        if let Err(e) = subject.patch(&cluster, &patch).await {
            return failed(e);
        }
        let what: Vec<String> = changes
            .iter()
            .map(|(k, v)| match v.as_str() {
                Some(v) => format!("{k}={v}"),
                None => format!("-{k}"),
            })
            .collect();
        println!("{described}: {} ({})", what.join(", "), subject.effect());
    }
    if injecting {
        match cluster.ensure_session_token().await {
            Ok(true) => {
                println!("created the session token (Secret {TOKEN_SECRET}) in namespace {}", cluster.namespace)
            }
            Ok(false) => {}
            Err(e) => return failed(e),
        }
    }
    match (&subject, apply.wait) {
        (Subject::Workload(w), true) => rollout::wait(&cluster, w, apply.timeout, injecting).await,
        (Subject::Namespace, true) => {
            println!("note: --wait has nothing to follow for a namespace: existing pods are not rolled out");
            ExitCode::Ok
        }
        _ => ExitCode::Ok,
    }
}

/// `mirrord-cli token rotate`: a new session token for the namespace (made
/// when missing). Sidecars read it at the next session open; sessions
/// already open stay open.
pub async fn rotate(args: TokenArgs) -> ExitCode {
    let cluster = match Cluster::connect(&args.cluster.access(), None).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    match cluster.rotate_session_token().await {
        Ok(()) => {
            println!(
                "new session token in Secret {TOKEN_SECRET} of namespace {} (sidecars use it once the kubelet updates \
                 their volume, within a minute or two; open sessions stay open)",
                cluster.namespace
            );
            ExitCode::Ok
        }
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_differs_is_patched() {
        let wanted = [(ANNOTATION_INJECT, Some("enabled".to_owned())), (ANNOTATION_PORTS, None)];
        let all = differing(None, &wanted);
        assert_eq!(Value::Object(all), json!({ANNOTATION_INJECT: "enabled", ANNOTATION_PORTS: null}));
        let current = json!({ANNOTATION_INJECT: "enabled", "team": "shop"});
        assert!(differing(Some(&current), &wanted).is_empty(), "already so");
        let current = json!({ANNOTATION_INJECT: "disabled", ANNOTATION_PORTS: "80"});
        let both = differing(Some(&current), &wanted);
        assert_eq!(Value::Object(both), json!({ANNOTATION_INJECT: "enabled", ANNOTATION_PORTS: null}));
    }
}
