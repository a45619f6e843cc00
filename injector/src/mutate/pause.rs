//! What pause needs in a pod: a shared process namespace, a sidecar and a
//! guard allowed to signal the app, the app's container names, the lease.

use std::time::Duration;

use mirrord_config::names::{
    ANNOTATION_MAX_PAUSE, ANNOTATION_PAUSE, ANNOTATION_PAUSE_CONTAINERS, CONTAINER_GUARD, ENV_APP_CONTAINERS,
};
use mirrord_config::parse_duration;
use serde_json::{json, Map, Value};

use super::{names, Invalid};

/// Containers that other webhooks add to carry the pod's traffic: pausing
/// them would cut the pod off, so they are not the app unless named.
const MESH_PROXIES: [&str; 2] = ["istio-proxy", "linkerd-proxy"];
/// The pause lease when the pod does not set `mirrord.dev/max-pause`.
const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(30 * 60);
/// The longest `mirrord.dev/max-pause` accepted: a day.
const MAX_PAUSE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// How much longer the guard lets a pause last than the sidecar does: the
/// sidecar normally ends it and tells the sessions; the guard is the backstop.
const GUARD_LEASE_MARGIN: Duration = Duration::from_secs(60);

/// Pause as the pod's annotations and spec set it.
#[derive(Debug)]
pub(super) struct Pause {
    pub enabled: bool,
    max_pause: Duration,
    /// The uid every app container runs as, when the pod says.
    app_uid: Option<i64>,
    /// The containers a pause stops.
    pub app_containers: Vec<String>,
}

impl Pause {
    pub fn from_pod<'a>(
        spec: &Map<String, Value>,
        annotation: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Pause, Invalid> {
        // A pod in the node's PID namespace cannot share one of its own.
        let host_pid = spec.get("hostPID").and_then(Value::as_bool) == Some(true);
        let enabled = match annotation(ANNOTATION_PAUSE) {
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
            Some(text) => parse_duration(text)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1) && *d <= MAX_PAUSE_LIMIT)
                .ok_or_else(|| Invalid {
                key: ANNOTATION_MAX_PAUSE,
                message: format!("{text:?}: expected a duration from 1s to 24h, such as 30m, 2h or 90s"),
            })?,
        };
        let containers: Vec<String> = names(spec, "containers").map(str::to_owned).collect();
        let app_containers = match annotation(ANNOTATION_PAUSE_CONTAINERS) {
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
            None => containers.into_iter().filter(|n| !MESH_PROXIES.contains(&n.as_str())).collect(),
        };
        Ok(Pause { enabled, max_pause, app_uid: app_uid(spec), app_containers })
    }

    /// Who the sidecar and the guard run as. Without pause: an unprivileged
    /// uid. With pause they must be allowed to signal the app: as the app's
    /// own uid when the pod names it, else as root with every capability
    /// dropped but KILL (capabilities added to a non-root container are not
    /// effective on Kubernetes, which sets no ambient capabilities).
    pub fn security_context(&self) -> Value {
        let (uid, caps) = match (self.enabled, self.app_uid) {
            (false, _) => (65532, json!({"drop": ["ALL"]})),
            (true, Some(uid)) => (uid, json!({"drop": ["ALL"]})),
            (true, None) => (0, json!({"drop": ["ALL"], "add": ["KILL"]})),
        };
        json!({
            "runAsUser": uid, "runAsNonRoot": uid != 0, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "capabilities": caps
        })
    }

    /// The sidecar's pause flags.
    pub fn run_args(&self) -> [String; 2] {
        if self.enabled {
            ["--max-pause".to_owned(), seconds(self.max_pause)]
        } else {
            ["--pause".to_owned(), "disabled".to_owned()]
        }
    }

    /// The env var naming the app's containers.
    pub fn env(&self) -> Value {
        json!({"name": ENV_APP_CONTAINERS, "value": self.app_containers.join(",")})
    }

    /// The guard container, when pause is enabled.
    pub fn guard(&self, image: &str) -> Option<Value> {
        self.enabled.then(|| {
            json!({
                "name": CONTAINER_GUARD,
                "image": image,
                "args": ["guard", "--max-pause", seconds(self.max_pause + GUARD_LEASE_MARGIN)],
                "env": [self.env()],
                "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}},
                "securityContext": self.security_context()
            })
        })
    }

    /// What the status annotation records of pause.
    pub fn record(&self, status: &mut Value) {
        status["pause"] = json!(self.enabled);
        if self.enabled {
            status["guard"] = json!(CONTAINER_GUARD);
            status["maxPause"] = json!(seconds(self.max_pause));
        }
    }
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

/// A duration as `mirrord-proxy` flags take it.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::tests::{sample as pod, sidecar};
    use crate::mutate::{self, Mutation, Settings};

    fn mutate(pod: &Value, opted_in: bool, settings: &Settings) -> Mutation {
        mutate::pod(pod, opted_in, settings)
    }

    fn invalid(m: Mutation) -> crate::mutate::Invalid {
        match m {
            Mutation::Invalid(invalid) => invalid,
            other => panic!("expected an invalid annotation, got {other:?}"),
        }
    }

    #[test]
    fn pause_runs_the_sidecar_and_guard_as_the_app_or_as_root_with_kill_only() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let out = mutate(&pod(), false, &settings).injected(&pod()).unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 0);
        assert_eq!(sidecar(&out)["securityContext"]["capabilities"], json!({"drop": ["ALL"], "add": ["KILL"]}));
        assert_eq!(out["spec"]["initContainers"][2]["securityContext"], sidecar(&out)["securityContext"]);
        assert_eq!(out["spec"]["shareProcessNamespace"], true);

        let mut as_app = pod();
        as_app["spec"]["securityContext"] = json!({"runAsUser": 1000});
        let out = mutate(&as_app, false, &settings).injected(&as_app).unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 1000);
        assert_eq!(sidecar(&out)["securityContext"]["runAsNonRoot"], true);
        assert_eq!(sidecar(&out)["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));

        let mut disabled = pod();
        disabled["metadata"]["annotations"][ANNOTATION_PAUSE] = json!("disabled");
        let out = mutate(&disabled, false, &settings).injected(&disabled).unwrap();
        assert_eq!(sidecar(&out)["securityContext"]["runAsUser"], 65532);
        assert!(sidecar(&out)["args"].to_string().contains("\"--pause\",\"disabled\""));
        assert_eq!(out["spec"]["initContainers"].as_array().unwrap().len(), 2, "no guard");
        assert!(out["spec"].get("shareProcessNamespace").is_none());

        let mut host_pid = pod();
        host_pid["spec"]["hostPID"] = json!(true);
        let out = mutate(&host_pid, false, &settings).injected(&host_pid).unwrap();
        assert!(
            out["spec"].get("shareProcessNamespace").is_none(),
            "hostPID pods cannot share a namespace of their own"
        );
    }

    #[test]
    fn pause_containers_default_to_all_but_mesh_proxies_and_can_be_named() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let env = |out: &Value| sidecar(out)["env"][3]["value"].as_str().unwrap().to_owned();
        let mut p = pod();
        p["spec"]["containers"] = json!([{"name": "api", "image": "a"}, {"name": "worker", "image": "w"},
                                         {"name": "istio-proxy", "image": "i"}]);
        p["metadata"]["annotations"][mirrord_config::names::ANNOTATION_PORTS] = json!("8080");
        assert_eq!(env(&mutate(&p, false, &settings).injected(&p).unwrap()), "api,worker");
        p["metadata"]["annotations"][ANNOTATION_PAUSE_CONTAINERS] = json!("worker");
        assert_eq!(env(&mutate(&p, false, &settings).injected(&p).unwrap()), "worker");
        p["metadata"]["annotations"][ANNOTATION_PAUSE_CONTAINERS] = json!("wroker");
        let err = invalid(mutate(&p, false, &settings));
        assert_eq!(err.message, "\"wroker\" is not a container of this pod: expected some of api, worker, istio-proxy");
    }

    #[test]
    fn max_pause_is_passed_to_the_sidecar_and_a_little_more_to_the_guard() {
        let settings = Settings { image: "proxy:1".to_owned(), native_sidecar: true };
        let mut p = pod();
        p["metadata"]["annotations"][ANNOTATION_MAX_PAUSE] = json!("10m");
        let out = mutate(&p, false, &settings).injected(&p).unwrap();
        assert!(sidecar(&out)["args"].to_string().contains("\"--max-pause\",\"600s\""), "{}", sidecar(&out)["args"]);
        assert_eq!(out["spec"]["initContainers"][2]["args"], json!(["guard", "--max-pause", "660s"]));
        p["metadata"]["annotations"][ANNOTATION_MAX_PAUSE] = json!("soon");
        let err = invalid(mutate(&p, false, &settings));
        assert_eq!(err.key, ANNOTATION_MAX_PAUSE);
        assert_eq!(err.message, "\"soon\": expected a duration from 1s to 24h, such as 30m, 2h or 90s");
        // Once a panic ("overflow when adding durations"), now a warning.
        for huge in ["18446744073709551615s", "999999999999999999h", "25h"] {
            p["metadata"]["annotations"][ANNOTATION_MAX_PAUSE] = json!(huge);
            assert_eq!(invalid(mutate(&p, false, &settings)).key, ANNOTATION_MAX_PAUSE, "{huge}");
        }
    }
}
