//! The pure `Pod -> Pod` mutation: what the webhook adds to an opted-in pod.

use std::collections::BTreeSet;

use std::time::Duration;

use mirrord_config::names::{
    ADMIN_PORT, ANNOTATION_INJECT, ANNOTATION_MAX_PAUSE, ANNOTATION_OPAQUE_PORTS, ANNOTATION_PAUSE,
    ANNOTATION_PAUSE_CONTAINERS, ANNOTATION_PORTS, ANNOTATION_SKIP_PORTS, ANNOTATION_STATUS, CONTAINER_GUARD,
    CONTAINER_INIT, CONTAINER_PROXY, INJECTED_CONTAINERS, TUNNEL_PORT,
};
use mirrord_config::parse_duration;
use serde_json::{json, Map, Value};

/// Name of the iptables init container.
pub const INIT_NAME: &str = CONTAINER_INIT;
/// Name of the proxy sidecar.
pub const SIDECAR_NAME: &str = CONTAINER_PROXY;
/// Name of the pause guard (resumes the app if the sidecar dies).
pub const GUARD_NAME: &str = CONTAINER_GUARD;
/// Containers that other webhooks add to carry the pod's traffic: pausing
/// them would cut the pod off, so they are not the app unless named.
const MESH_PROXIES: [&str; 2] = ["istio-proxy", "linkerd-proxy"];
/// The pause lease when the pod does not set `mirrord.dev/max-pause`.
const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(30 * 60);
/// How much longer the guard lets a pause last than the sidecar does: the
/// sidecar normally ends it and tells the sessions; the guard is the backstop.
const GUARD_LEASE_MARGIN: Duration = Duration::from_secs(60);
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The mutated pod, or why it is left alone. `namespace_opted_in` says
/// whether the pod's Namespace carries the opt-in annotation.
pub fn mutate(pod: &Value, namespace_opted_in: bool, settings: &Settings) -> Result<Result<Value, Skip>, Invalid> {
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else { return Ok(Err(Skip::NotAPod)) };
    let annotations = pod.pointer("/metadata/annotations").and_then(Value::as_object);
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    match annotation(ANNOTATION_INJECT) {
        Some("disabled") => return Ok(Err(Skip::OptedOut)),
        Some("enabled") => {}
        Some(other) => {
            return Err(Invalid {
                key: ANNOTATION_INJECT,
                message: format!("{other:?}: expected \"enabled\" or \"disabled\""),
            })
        }
        None if namespace_opted_in => {}
        None => return Ok(Err(Skip::NotOptedIn)),
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Err(Skip::HostNetwork));
    }
    if names(spec, "initContainers").chain(names(spec, "containers")).any(|n| INJECTED_CONTAINERS.contains(&n)) {
        return Ok(Err(Skip::AlreadyInjected));
    }
    let ports = match annotation(ANNOTATION_PORTS) {
        Some(list) => port_list(ANNOTATION_PORTS, list)?,
        None => declared_ports(spec),
    };
    if ports.is_empty() {
        return Ok(Err(Skip::NoPorts));
    }
    let skip =
        annotation(ANNOTATION_SKIP_PORTS).map(|l| port_list(ANNOTATION_SKIP_PORTS, l)).transpose()?.unwrap_or_default();
    let opaque = annotation(ANNOTATION_OPAQUE_PORTS)
        .map(|l| port_list(ANNOTATION_OPAQUE_PORTS, l))
        .transpose()?
        .unwrap_or_default();
    // A pod in the node's PID namespace cannot share one of its own.
    let host_pid = spec.get("hostPID").and_then(Value::as_bool) == Some(true);
    let pause = match annotation(ANNOTATION_PAUSE) {
        None | Some("enabled") => !host_pid,
        Some("disabled") => false,
        Some(other) => {
            return Err(Invalid {
                key: ANNOTATION_PAUSE,
                message: format!("{other:?}: expected \"enabled\" or \"disabled\""),
            })
        }
    };
    let max_pause = match annotation(ANNOTATION_MAX_PAUSE) {
        None => DEFAULT_MAX_PAUSE,
        Some(text) => parse_duration(text).ok().filter(|d| !d.is_zero()).ok_or_else(|| Invalid {
            key: ANNOTATION_MAX_PAUSE,
            message: format!("{text:?}: expected a duration such as 30m, 2h or 90s"),
        })?,
    };
    let containers: Vec<String> = names(spec, "containers").map(str::to_owned).collect();
    let app_containers: Vec<String> = match annotation(ANNOTATION_PAUSE_CONTAINERS) {
        Some(list) => {
            let named: Vec<String> =
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if let Some(unknown) = named.iter().find(|n| !containers.contains(n)) {
                return Err(Invalid {
                    key: ANNOTATION_PAUSE_CONTAINERS,
                    message: format!(
                        "{unknown:?} is not a container of this pod: expected some of {}",
                        containers.join(", ")
                    ),
                });
            }
            named
        }
        None => containers.iter().filter(|n| !MESH_PROXIES.contains(&n.as_str())).cloned().collect(),
    };
    let app_uid = app_uid(spec);
    let mut out = pod.clone();
    let injected = Injected {
        ports: &ports,
        skip: &skip,
        opaque: &opaque,
        pause,
        max_pause,
        app_uid,
        app_containers: &app_containers,
    };
    if let Some(object) = out.as_object_mut() {
        inject(object, &injected, settings);
    }
    Ok(Ok(out))
}

struct Injected<'a> {
    ports: &'a BTreeSet<u16>,
    skip: &'a BTreeSet<u16>,
    opaque: &'a BTreeSet<u16>,
    pause: bool,
    max_pause: Duration,
    /// The uid every app container runs as, when the pod says.
    app_uid: Option<i64>,
    app_containers: &'a [String],
}

/// The uid the app's containers run as, if the pod spec says and they agree.
fn app_uid(spec: &Map<String, Value>) -> Option<i64> {
    let pod_uid = spec.get("securityContext").and_then(|s| s.get("runAsUser")).and_then(Value::as_i64);
    let mut uids = spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| c.pointer("/securityContext/runAsUser").and_then(Value::as_i64).or(pod_uid));
    let first = uids.next()??;
    uids.all(|u| u == Some(first)).then_some(first)
}

/// Who the sidecar and the guard run as. Without pause: an unprivileged
/// uid. With pause they must be allowed to signal the app: as the app's own
/// uid when the pod names it, else as root with every capability dropped
/// but KILL (capabilities added to a non-root container are not effective
/// on Kubernetes, which sets no ambient capabilities).
fn pause_security(what: &Injected<'_>) -> Value {
    let (uid, caps) = match (what.pause, what.app_uid) {
        (false, _) => (65532, json!({"drop": ["ALL"]})),
        (true, Some(uid)) => (uid, json!({"drop": ["ALL"]})),
        (true, None) => (0, json!({"drop": ["ALL"], "add": ["KILL"]})),
    };
    json!({
        "runAsUser": uid, "runAsNonRoot": uid != 0, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": caps
    })
}

fn inject(pod: &mut Map<String, Value>, what: &Injected<'_>, settings: &Settings) {
    let list = |set: &BTreeSet<u16>| set.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut init_args = vec!["init".to_owned(), "--ports".to_owned(), list(what.ports)];
    if !what.skip.is_empty() {
        init_args.extend(["--skip-ports".to_owned(), list(what.skip)]);
    }
    let mut run_args = vec!["run".to_owned(), "--ports".to_owned(), list(what.ports)];
    if !what.opaque.is_empty() {
        run_args.extend(["--opaque-ports".to_owned(), list(what.opaque)]);
    }
    if what.pause {
        run_args.extend(["--max-pause".to_owned(), seconds(what.max_pause)]);
    } else {
        run_args.extend(["--pause".to_owned(), "disabled".to_owned()]);
    }
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
            {"name": "MIRRORD_APP_CONTAINERS", "value": what.app_containers.join(",")}
        ],
        "ports": [{"name": "mirrord-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": pause_security(what)
    });
    let mut guard = what.pause.then(|| {
        json!({
            "name": GUARD_NAME,
            "image": settings.image,
            "args": ["guard", "--max-pause", seconds(what.max_pause + GUARD_LEASE_MARGIN)],
            "env": [{"name": "MIRRORD_APP_CONTAINERS", "value": what.app_containers.join(",")}],
            "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}},
            "securityContext": pause_security(what)
        })
    });
    let spec = object(pod, "spec");
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
    if what.pause {
        spec.insert("shareProcessNamespace".to_owned(), json!(true));
    }
    let mut status = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ports": what.ports,
        "initContainers": [INIT_NAME],
        "sidecar": {"name": SIDECAR_NAME, "native": settings.native_sidecar},
        "pause": what.pause,
        "tunnelPort": TUNNEL_PORT,
    });
    if what.pause {
        status["guard"] = json!(GUARD_NAME);
        status["maxPause"] = json!(seconds(what.max_pause));
    }
    let first_app = what.app_containers.first().cloned();
    let annotations = object(object(pod, "metadata"), "annotations");
    annotations.insert(ANNOTATION_STATUS.to_owned(), json!(status.to_string()));
    if let Some(app) = first_app {
        annotations.entry(DEFAULT_CONTAINER.to_owned()).or_insert(json!(app));
    }
}

/// A duration as `mirrord-proxy` flags take it.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
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

fn names<'a>(spec: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a str> {
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

    fn pod() -> Value {
        json!({"metadata": {"annotations": {ANNOTATION_INJECT: "enabled"}},
               "spec": {"containers": [{"name": "api", "image": "a", "ports": [{"containerPort": 8080}]}]}})
    }

    #[test]
    fn classic_mode_appends_the_sidecar_to_the_containers() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: false };
        let out = mutate(&pod(), false, &settings).unwrap().unwrap();
        let containers: Vec<&str> =
            out["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(containers, ["api", SIDECAR_NAME, GUARD_NAME]);
        let inits = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0]["name"], INIT_NAME);
        assert!(out["spec"]["containers"][1].get("restartPolicy").is_none());
        assert_eq!(mutate(&out, false, &settings), Ok(Err(Skip::AlreadyInjected)));
    }

    #[test]
    fn native_mode_puts_the_sidecar_right_after_the_iptables_init() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut with_init = pod();
        with_init["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
        let out = mutate(&with_init, false, &settings).unwrap().unwrap();
        let inits: Vec<&str> =
            out["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(inits, [INIT_NAME, SIDECAR_NAME, GUARD_NAME, "migrate"]);
        assert_eq!(out["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert_eq!(out["spec"]["initContainers"][2]["restartPolicy"], "Always");
    }

    fn sidecar(out: &Value) -> &Value {
        &out["spec"]["initContainers"][1]
    }

    #[test]
    fn pause_runs_the_sidecar_and_guard_as_the_app_or_as_root_with_kill_only() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let out = mutate(&pod(), false, &settings).unwrap().unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 0);
        assert_eq!(sidecar(&out)["securityContext"]["capabilities"], json!({"drop": ["ALL"], "add": ["KILL"]}));
        assert_eq!(out["spec"]["initContainers"][2]["securityContext"], sidecar(&out)["securityContext"]);
        assert_eq!(out["spec"]["shareProcessNamespace"], true);

        let mut as_app = pod();
        as_app["spec"]["securityContext"] = json!({"runAsUser": 1000});
        let out = mutate(&as_app, false, &settings).unwrap().unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 1000);
        assert_eq!(sidecar(&out)["securityContext"]["runAsNonRoot"], true);
        assert_eq!(sidecar(&out)["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));

        let mut disabled = pod();
        disabled["metadata"]["annotations"][ANNOTATION_PAUSE] = json!("disabled");
        let out = mutate(&disabled, false, &settings).unwrap().unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 65532);
        assert!(sidecar(&out)["args"].to_string().contains("\"--pause\",\"disabled\""));
        assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 2, "no guard");
        assert!(out["spec"].get("shareProcessNamespace").is_none());

        let mut host_pid = pod();
        host_pid["spec"]["hostPID"] = json!(true);
        let out = mutate(&host_pid, false, &settings).unwrap().unwrap();
        assert!(
            out["spec"].get("shareProcessNamespace").is_none(),
            "hostPID pods cannot share a namespace of their own"
        );
    }

    #[test]
    fn pause_containers_default_to_all_but_mesh_proxies_and_can_be_named() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let env = |out: &Value| out["spec"]["initContainers"][1]["env"][3]["value"].as_str().unwrap().to_owned();
        let mut p = pod();
        p["spec"]["containers"] = json!([{"name": "api", "image": "a"}, {"name": "worker", "image": "w"},
                                         {"name": "istio-proxy", "image": "i"}]);
        p["metadata"]["annotations"][ANNOTATION_PORTS] = json!("8080");
        assert_eq!(env(&mutate(&p, false, &settings).unwrap().unwrap()), "api,worker");
        p["metadata"]["annotations"][ANNOTATION_PAUSE_CONTAINERS] = json!("worker");
        assert_eq!(env(&mutate(&p, false, &settings).unwrap().unwrap()), "worker");
        p["metadata"]["annotations"][ANNOTATION_PAUSE_CONTAINERS] = json!("wroker");
        let err = mutate(&p, false, &settings).unwrap_err();
        assert_eq!(err.message, "\"wroker\" is not a container of this pod: expected some of api, worker, istio-proxy");
    }

    #[test]
    fn max_pause_is_passed_to_the_sidecar_and_a_little_more_to_the_guard() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut p = pod();
        p["metadata"]["annotations"][ANNOTATION_MAX_PAUSE] = json!("10m");
        let out = mutate(&p, false, &settings).unwrap().unwrap();
        assert!(sidecar(&out)["args"].to_string().ends_with("\"--max-pause\",\"600s\"]"), "{}", sidecar(&out)["args"]);
        assert_eq!(out["spec"]["initContainers"][2]["args"], json!(["guard", "--max-pause", "660s"]));
        p["metadata"]["annotations"][ANNOTATION_MAX_PAUSE] = json!("soon");
        let err = mutate(&p, false, &settings).unwrap_err();
        assert_eq!(err.key, ANNOTATION_MAX_PAUSE);
        assert_eq!(err.message, "\"soon\": expected a duration such as 30m, 2h or 90s");
    }
}
