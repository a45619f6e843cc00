//! The pure `Pod -> JSON Patch` mutation: what the webhook adds to an
//! opted-in pod. The patch is the difference between the parts of the pod
//! the injection writes ([`touched`]) before and after it, so it is always
//! exactly what [`inject`] changed, while the rest of the pod (most of it:
//! the app's containers, their env and probes) is neither copied nor
//! compared.

mod pause;
pub mod read;

use std::collections::BTreeSet;

use mirrord_config::names::{
    parse_max_sessions, ADMIN_PORT, ADMIN_PORT_NAME, ANNOTATION_INJECT, ANNOTATION_MAX_SESSIONS,
    ANNOTATION_OPAQUE_PORTS, ANNOTATION_PORTS, ANNOTATION_SKIP_PORTS, ANNOTATION_STATUS, CONTAINER_GUARD,
    CONTAINER_INIT, CONTAINER_PROXY, INJECTED_CONTAINERS, TOKEN_DIR, TOKEN_FILE, TOKEN_KEY, TOKEN_SECRET, TUNNEL_PORT,
};
use serde_json::{json, Map, Value};

use crate::patch;
use pause::Pause;

/// Name of the iptables init container.
pub const INIT_NAME: &str = CONTAINER_INIT;
/// Name of the proxy sidecar.
pub const SIDECAR_NAME: &str = CONTAINER_PROXY;
/// Name of the pause guard (resumes the app if the sidecar dies).
pub const GUARD_NAME: &str = CONTAINER_GUARD;
/// Name of the token Secret's volume in the pod.
pub const TOKEN_VOLUME: &str = "mirrord-session-token";
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// How the injector is set up (flags of `mirrord-injector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Image of `mirrord-proxy` (init and sidecar).
    pub image: String,
    /// Sidecar as a native sidecar (init container with restartPolicy
    /// Always, Kubernetes 1.29+) or as a classic container.
    pub native_sidecar: bool,
}

/// Why a pod is left as it is (also the metric label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Skip {
    NotOptedIn,
    OptedOut,
    HostNetwork,
    AlreadyInjected,
    NoPorts,
    NotAPod,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Skip::NotOptedIn => "not_opted_in",
            Skip::OptedOut => "opted_out",
            Skip::HostNetwork => "host_network",
            Skip::AlreadyInjected => "already_injected",
            Skip::NoPorts => "no_ports",
            Skip::NotAPod => "not_a_pod",
        }
    }
}

/// Why an annotation cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {message}")]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

/// What the webhook does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// The JSON Patch (RFC 6902) that adds the init container and the
    /// sidecar.
    Inject(Vec<Value>),
    /// Left as it is, for this reason.
    Skip(Skip),
    /// Left as it is: an annotation cannot be honoured (the API server
    /// shows the warning to whoever created the pod).
    Invalid(Invalid),
}

impl Mutation {
    /// `pod` as it is admitted, if it is injected: the patch applied.
    pub fn injected(self, pod: &Value) -> Option<Value> {
        let Mutation::Inject(ops) = self else { return None };
        let mut out = pod.clone();
        patch::apply(&mut out, &ops).ok()?;
        Some(out)
    }
}

impl From<Invalid> for Mutation {
    fn from(invalid: Invalid) -> Self {
        Mutation::Invalid(invalid)
    }
}

/// What becomes of `pod`. `namespace_opted_in` says whether the pod's
/// Namespace carries the opt-in annotation.
pub fn pod(pod: &Value, namespace_opted_in: bool, settings: &Settings) -> Mutation {
    let plan = match decide(pod, namespace_opted_in) {
        Ok(plan) => plan,
        Err(other) => return other,
    };
    let Some(pod) = pod.as_object() else { return Mutation::Skip(Skip::NotAPod) };
    let before = touched(pod, settings);
    let mut after = before.clone();
    inject(&mut after, &plan, settings);
    Mutation::Inject(patch::diff(&Value::Object(before), &Value::Object(after)))
}

/// The parts of `pod` that [`inject`] may write, in their places:
/// `metadata.annotations` and the `spec` lists it adds to (the app's
/// `containers` only for a classic sidecar). A parent that is not an
/// object is kept as it is, for `inject` to replace. (A pod from
/// [`read::pod`] holds these lists' elements in part, which gives the same
/// patch: `inject` only adds elements at their start or end.)
fn touched(pod: &Map<String, Value>, settings: &Settings) -> Map<String, Value> {
    let spec: &[&str] = if settings.native_sidecar {
        &["volumes", "initContainers", "shareProcessNamespace"]
    } else {
        &["volumes", "initContainers", "containers", "shareProcessNamespace"]
    };
    let mut out = Map::new();
    for (parent, keys) in [("metadata", &["annotations"][..]), ("spec", spec)] {
        let part = match pod.get(parent) {
            Some(Value::Object(object)) => {
                Value::Object(keys.iter().filter_map(|&k| Some((k.to_owned(), object.get(k)?.clone()))).collect())
            }
            Some(other) => other.clone(),
            None => continue,
        };
        out.insert(parent.to_owned(), part);
    }
    out
}

fn decide(pod: &Value, namespace_opted_in: bool) -> Result<Plan, Mutation> {
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else { return Err(Mutation::Skip(Skip::NotAPod)) };
    let annotations = pod.pointer("/metadata/annotations").and_then(Value::as_object);
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    match annotation(ANNOTATION_INJECT) {
        Some("disabled") => return Err(Mutation::Skip(Skip::OptedOut)),
        Some("enabled") => {}
        Some(other) => {
            return Err(Mutation::Invalid(Invalid {
                key: ANNOTATION_INJECT,
                message: format!("{other:?}: expected \"enabled\" or \"disabled\""),
            }))
        }
        None if namespace_opted_in => {}
        None => return Err(Mutation::Skip(Skip::NotOptedIn)),
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Mutation::Skip(Skip::HostNetwork));
    }
    if names(spec, "initContainers").chain(names(spec, "containers")).any(|n| INJECTED_CONTAINERS.contains(&n)) {
        return Err(Mutation::Skip(Skip::AlreadyInjected));
    }
    let ports = match annotation(ANNOTATION_PORTS) {
        Some(list) => port_list(ANNOTATION_PORTS, list)?,
        None => declared_ports(spec),
    };
    if ports.is_empty() {
        return Err(Mutation::Skip(Skip::NoPorts));
    }
    let skip =
        annotation(ANNOTATION_SKIP_PORTS).map(|l| port_list(ANNOTATION_SKIP_PORTS, l)).transpose()?.unwrap_or_default();
    let opaque = annotation(ANNOTATION_OPAQUE_PORTS)
        .map(|l| port_list(ANNOTATION_OPAQUE_PORTS, l))
        .transpose()?
        .unwrap_or_default();
    let pause = Pause::from_pod(spec, annotation)?;
    let max_sessions = annotation(ANNOTATION_MAX_SESSIONS).map(max_sessions).transpose()?;
    Ok(Plan { ports, skip, opaque, pause, max_sessions })
}

/// `mirrord.dev/max-sessions`.
fn max_sessions(text: &str) -> Result<u16, Invalid> {
    parse_max_sessions(text.trim())
        .map_err(|expected| Invalid { key: ANNOTATION_MAX_SESSIONS, message: format!("{text:?}: {expected}") })
}

/// What an injection adds, as read from the pod and its annotations.
struct Plan {
    ports: BTreeSet<u16>,
    skip: BTreeSet<u16>,
    opaque: BTreeSet<u16>,
    pause: Pause,
    /// The sidecar's `--max-sessions`, when the pod sets it.
    max_sessions: Option<u16>,
}

/// Adds the init container, the sidecar (and the guard), the token volume
/// and the status annotation. It writes only where [`touched`] says.
fn inject(pod: &mut Map<String, Value>, what: &Plan, settings: &Settings) {
    let list = |set: &BTreeSet<u16>| set.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut init_args = vec!["init".to_owned(), "--ports".to_owned(), list(&what.ports)];
    if !what.skip.is_empty() {
        init_args.extend(["--skip-ports".to_owned(), list(&what.skip)]);
    }
    let mut run_args = vec!["run".to_owned(), "--ports".to_owned(), list(&what.ports)];
    if !what.opaque.is_empty() {
        run_args.extend(["--opaque-ports".to_owned(), list(&what.opaque)]);
    }
    if let Some(n) = what.max_sessions {
        run_args.extend(["--max-sessions".to_owned(), n.to_string()]);
    }
    run_args.extend(what.pause.run_args());
    run_args.extend(["--token-file".to_owned(), TOKEN_FILE.to_owned()]);
    let init = json!({
        "name": INIT_NAME,
        "image": settings.image,
        "args": init_args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        }
    });
    let mut sidecar = json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "args": run_args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            what.pause.env()
        ],
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": what.pause.security_context()
    });
    let mut guard = what.pause.guard(&settings.image);
    let spec = object(pod, "spec");
    // Mounted in the sidecar alone, readable whatever user it runs as.
    // Optional: the pod starts without the Secret (its sidecar then refuses
    // sessions, saying how to create it), and the kubelet fills the volume in
    // when the Secret appears or changes.
    array(spec, "volumes").push(json!({
        "name": TOKEN_VOLUME,
        "secret": {"secretName": TOKEN_SECRET, "optional": true, "defaultMode": 0o444,
                   "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}]}
    }));
    let inits = array(spec, "initContainers");
    inits.insert(0, init);
    if settings.native_sidecar {
        sidecar["restartPolicy"] = json!("Always");
        sidecar["startupProbe"] =
            json!({"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 1, "failureThreshold": 30});
        inits.insert(1, sidecar);
        if let Some(mut guard) = guard.take() {
            guard["restartPolicy"] = json!("Always");
            inits.insert(2, guard);
        }
    } else {
        let containers = array(spec, "containers");
        containers.push(sidecar);
        containers.extend(guard.take());
    }
    if what.pause.enabled {
        spec.insert("shareProcessNamespace".to_owned(), json!(true));
    }
    let mut status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ports": what.ports,
        "initContainers": [INIT_NAME],
        "sidecar": {"name": SIDECAR_NAME, "native": settings.native_sidecar},
        "tunnelPort": TUNNEL_PORT,
    });
    what.pause.record(&mut status);
    let first_app = what.pause.app_containers.first().cloned();
    let annotations = object(object(pod, "metadata"), "annotations");
    annotations.insert(ANNOTATION_STATUS.to_owned(), json!(status.to_string()));
    if let Some(app) = first_app {
        annotations.entry(DEFAULT_CONTAINER.to_owned()).or_insert(json!(app));
    }
}

/// The object at `key`, made (or replacing a non-object) when missing.
fn object<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = m.entry(key.to_owned()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().unwrap_or_else(|| unreachable!("just made an object"))
}

fn array<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let entry = m.entry(key.to_owned()).or_insert_with(|| json!([]));
    if !entry.is_array() {
        *entry = json!([]);
    }
    entry.as_array_mut().unwrap_or_else(|| unreachable!("just made an array"))
}

pub(super) fn names<'a>(spec: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a str> {
    spec.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("name")?.as_str())
}

/// TCP ports declared by the pod's containers.
fn declared_ports(spec: &Map<String, Value>) -> BTreeSet<u16> {
    spec.get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
        .filter(|p| p.get("protocol").and_then(Value::as_str).is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| p.get("containerPort")?.as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

fn port_list(key: &'static str, list: &str) -> Result<BTreeSet<u16>, Invalid> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(Invalid { key, message: format!("{list:?}: expected comma-separated ports 1-65535, got {s:?}") }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod that opts in, with one app container listening on 8080.
    pub(super) fn sample() -> Value {
        json!({"metadata": {"annotations": {ANNOTATION_INJECT: "enabled"}},
               "spec": {"containers": [{"name": "api", "image": "a", "ports": [{"containerPort": 8080}]}]}})
    }

    /// The sidecar of a pod mutated in native mode: right after the
    /// iptables init container.
    pub(super) fn sidecar(out: &Value) -> &Value {
        &out["spec"]["initContainers"][1]
    }

    #[test]
    fn classic_mode_appends_the_sidecar_to_the_containers() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: false };
        let out = pod(&sample(), false, &settings).injected(&sample()).unwrap();
        let containers: Vec<&str> =
            out["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(containers, ["api", SIDECAR_NAME, GUARD_NAME]);
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0]["name"], INIT_NAME);
        assert!(out["spec"]["containers"][1].get("restartPolicy").is_none());
        assert_eq!(pod(&out, false, &settings), Mutation::Skip(Skip::AlreadyInjected));
    }

    #[test]
    fn an_apps_own_scrape_annotations_are_kept() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut annotated = sample();
        let own = json!({"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/stats"});
        for (k, v) in own.as_object().unwrap() {
            annotated["metadata"]["annotations"][k] = v.clone();
        }
        let out = pod(&annotated, false, &settings).injected(&annotated).unwrap();
        for (k, v) in own.as_object().unwrap() {
            assert_eq!(&out["metadata"]["annotations"][k], v, "{k}");
        }
        // The sidecar's metrics are found by its named port instead.
        assert_eq!(sidecar(&out)["ports"][0]["name"], ADMIN_PORT_NAME);
    }

    /// The patch made from the touched parts is the one a diff of the
    /// whole pod before and after `inject` gives: for every fixture, in both
    /// modes, and for pods whose parts have the wrong types.
    #[test]
    fn the_patch_is_the_whole_pods_difference() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pods");
        let mut pods: Vec<Value> = std::fs::read_dir(dir)
            .unwrap()
            .map(|f| serde_json::from_str(&std::fs::read_to_string(f.unwrap().path()).unwrap()).unwrap())
            .collect();
        assert!(pods.len() >= 40, "{} fixtures", pods.len());
        let odd = [
            ("/metadata", json!("a string")),
            ("/metadata/annotations/x", json!(["not", "an", "object"])),
            ("/spec/volumes", json!({"not": "a list"})),
            ("/spec/initContainers", json!(7)),
            ("/spec/containers/0/x", json!(null)),
            ("/spec/shareProcessNamespace", json!(false)),
        ];
        for (at, value) in odd {
            let mut odd = sample();
            let (parent, key) = at.rsplit_once('/').unwrap();
            if let Some(Value::Object(m)) = odd.pointer_mut(parent) {
                m.insert(key.to_owned(), value);
            }
            if at == "/metadata" {
                odd["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80}]);
            }
            pods.push(odd);
        }
        let mut injected = 0;
        for native_sidecar in [true, false] {
            let settings = Settings { image: "proxy:1".to_owned(), native_sidecar };
            for p in &pods {
                let Ok(plan) = decide(p, true) else { continue };
                let mut whole = p.clone();
                inject(whole.as_object_mut().unwrap(), &plan, &settings);
                assert_eq!(pod(p, true, &settings), Mutation::Inject(patch::diff(p, &whole)), "{p}");
                injected += 1;
            }
        }
        assert!(injected >= 60, "{injected} injected");
    }

    #[test]
    fn max_sessions_reaches_the_sidecar_and_a_bad_value_is_named() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut limited = sample();
        limited["metadata"]["annotations"][ANNOTATION_MAX_SESSIONS] = json!("8");
        let out = pod(&limited, false, &settings).injected(&limited).unwrap();
        let args = sidecar(&out)["args"].to_string();
        assert!(args.contains("\"--max-sessions\",\"8\""), "{args}");
        let plain = pod(&sample(), false, &settings).injected(&sample()).unwrap();
        assert!(!sidecar(&plain)["args"].to_string().contains("max-sessions"));
        for bad in ["0", "4097", "many", "-1", ""] {
            limited["metadata"]["annotations"][ANNOTATION_MAX_SESSIONS] = json!(bad);
            assert_eq!(
                pod(&limited, false, &settings),
                Mutation::Invalid(Invalid {
                    key: ANNOTATION_MAX_SESSIONS,
                    message: format!("{bad:?}: expected a number of sessions from 1 to 4096"),
                }),
            );
        }
    }

    #[test]
    fn native_mode_puts_the_sidecar_right_after_the_iptables_init() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut with_init = sample();
        with_init["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        let out = pod(&with_init, false, &settings).injected(&with_init).unwrap();
        let inits: Vec<&str> =
            out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(inits, [INIT_NAME, SIDECAR_NAME, GUARD_NAME, "migrate"]);
        assert_eq!(sidecar(&out)["restartPolicy"], "Always");
        assert_eq!(out["spec"]["initContainers"][2]["restartPolicy"], "Always");
    }
}
