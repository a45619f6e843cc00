//! Objects as the API server returns them, for tests to put in the stand-in.

use serde_json::{json, Value};

/// A pod as the API server shows it: labels, the injector's marks when
/// `injected`, Running with the sidecar ready when `ready`.
pub fn pod(namespace: &str, name: &str, labels: &Value, ip: &str, injected: bool, ready: bool) -> Value {
    pod_with(namespace, name, labels, ip, injected, ready, &json!({}))
}

/// [`pod`] with more annotations (from its template).
pub fn pod_with(
    namespace: &str,
    name: &str,
    labels: &Value,
    ip: &str,
    injected: bool,
    ready: bool,
    extra: &Value,
) -> Value {
    let containers = vec![json!({"name": "app", "image": "app:1"})];
    let mut init = Vec::new();
    let mut annotations = extra.clone();
    let statuses = vec![
        json!({"name": "app", "ready": ready, "restartCount": 0, "image": "app:1", "imageID": "", "started": ready}),
    ];
    let mut init_statuses = Vec::new();
    if injected {
        annotations["mirrord.dev/status"] = json!("injected");
        init.push(json!({"name": "mirrord-init", "image": "mirrord-proxy:1"}));
        init.push(json!({"name": "mirrord-proxy", "image": "mirrord-proxy:1", "restartPolicy": "Always"}));
        init_statuses
            .push(json!({"name": "mirrord-init", "ready": false, "restartCount": 0, "image": "", "imageID": ""}));
        init_statuses.push(json!({"name": "mirrord-proxy", "ready": ready, "restartCount": 0, "image": "", "imageID": "", "started": ready}));
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations,
                     "uid": format!("uid-{name}")},
        "spec": {"containers": containers, "initContainers": init},
        "status": {"phase": if ready { "Running" } else { "Pending" }, "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                   "containerStatuses": statuses, "initContainerStatuses": init_statuses}
    })
}

/// A workload whose selector matches `labels`.
pub fn workload(kind: &str, namespace: &str, name: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}
    })
}

/// The namespace's session token Secret, as `mirrord-cli inject` makes it.
pub fn token_secret(namespace: &str, token: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": mirrord_config::names::TOKEN_SECRET, "namespace": namespace},
        "data": {mirrord_config::names::TOKEN_KEY: mirrord_injector::review::base64(token.as_bytes())}
    })
}

/// A Service selecting `labels`.
pub fn service(namespace: &str, name: &str, labels: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 80}]}
    })
}
