//! A changed pod template rolled out as the workload controllers, the
//! admission chain and the kubelet would, at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{remove, store, Changes, State};

/// The mutating admission webhook the stand-in calls for every pod it
/// creates, as an API server does for a MutatingWebhookConfiguration.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `https://HOST:PORT/PATH`.
    pub url: String,
    /// The CA that signed the webhook's certificate (the caBundle).
    pub ca_file: PathBuf,
}

/// A rollout as the Deployment (StatefulSet, ReplicaSet) controller and the
/// kubelet would make it, at once: the old pods go, `replicas` new ones are
/// made from the template, each admitted through the webhook; then they run,
/// ready, and the workload's status says so. A webhook's refusal becomes a
/// FailedCreate event and a ReplicaFailure condition, as there.
pub(super) async fn roll_out(
    state: &Arc<Mutex<State>>,
    changes: &Changes,
    webhook: &Webhook,
    resource: &str,
    ns: &str,
    name: &str,
) {
    let Some(workload) =
        state.lock().expect("state").objects.get(&(resource.to_owned(), ns.to_owned(), name.to_owned())).cloned()
    else {
        return;
    };
    let generation = workload["metadata"]["generation"].as_u64().unwrap_or(1);
    let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1);
    let template = &workload["spec"]["template"];
    let labels = template["metadata"]["labels"].clone();
    let old: Vec<String> = {
        let st = state.lock().expect("state");
        st.objects
            .iter()
            .filter(|((r, n, _), o)| {
                r == "pods"
                    && n == ns
                    && matches_labels(&workload["spec"]["selector"]["matchLabels"], &o["metadata"]["labels"])
            })
            .map(|((_, _, pod), _)| pod.clone())
            .collect()
    };
    for pod in old {
        remove(state, changes, "pods", ns, &pod);
    }
    let mut ready = 0;
    let mut failure = None;
    for i in 0..replicas {
        let pod_name = format!("{name}-{generation}-{i}");
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                         "annotations": template["metadata"]["annotations"].clone(),
                         "uid": format!("uid-{pod_name}"),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": workload["kind"], "name": name,
                                              "uid": workload["metadata"]["uid"], "controller": true}]},
            "spec": template["spec"].clone()
        });
        match admit(webhook, &pod, ns).await {
            Ok(ops) => {
                if let Err(e) = json_patch::patch(&mut pod, &ops) {
                    failure = Some(format!("the webhook's patch does not apply: {e}"));
                    continue;
                }
            }
            Err(message) => {
                failure = Some(message);
                continue;
            }
        }
        let statuses = |list: &str, always_ready: bool| -> Vec<Value> {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let running = always_ready || c["restartPolicy"] == "Always";
                    json!({"name": c["name"], "ready": running, "started": running, "restartCount": 0,
                           "image": c["image"], "imageID": ""})
                })
                .collect()
        };
        pod["status"] = json!({
            "phase": "Running", "podIP": format!("10.0.0.{}", 10 + i),
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": statuses("containers", true),
            "initContainerStatuses": statuses("initContainers", false),
        });
        store(state, changes, "pods", ns, pod);
        ready += 1;
    }
    let mut workload = workload;
    let mut status = json!({"observedGeneration": generation, "replicas": ready, "updatedReplicas": ready,
                            "readyReplicas": ready, "availableReplicas": ready});
    if let Some(message) = &failure {
        status["conditions"] =
            json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}]);
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{generation}"), "namespace": ns},
            "involvedObject": {"kind": workload["kind"], "name": name, "namespace": ns, "apiVersion": "apps/v1"},
            "reason": "FailedCreate", "message": message, "type": "Warning", "count": 1
        });
        store(state, changes, "events", ns, event);
    }
    workload["status"] = status;
    store(state, changes, resource, ns, workload);
}

fn matches_labels(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// One AdmissionReview to the webhook over HTTPS (curl, verifying the
/// webhook's certificate against the CA): the JSON patch to apply, or why
/// the pod was refused, worded as the API server words it.
async fn admit(webhook: &Webhook, pod: &Value, ns: &str) -> Result<json_patch::Patch, String> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": format!("review-{}", pod["metadata"]["name"].as_str().unwrap_or_default()),
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": ns, "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                    "object": pod, "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
                    "dryRun": false}
    });
    let webhook = webhook.clone();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&webhook.ca_file)
            .args(["-H", "Content-Type: application/json", "--data-binary", "@-", &webhook.url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("curl: {e}"))?;
        child.stdin.take().expect("stdin").write_all(review.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "Internal error occurred: failed calling webhook \"inject.mirrord.dev\": {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice::<Value>(&out.stdout).map_err(|e| format!("the webhook's answer is not JSON: {e}"))
    })
    .await
    .map_err(|e| e.to_string())??;
    let response = &answer["response"];
    if response["allowed"] != true {
        return Err(format!(
            "admission webhook \"inject.mirrord.dev\" denied the request: {}",
            response["status"]["message"].as_str().unwrap_or("no reason given")
        ));
    }
    let Some(patch) = response["patch"].as_str() else { return Ok(json_patch::Patch(Vec::new())) };
    let bytes = mirrord_injector::review::unbase64(patch).ok_or("the webhook's patch is not base64")?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the webhook's patch is not a JSON patch: {e}"))
}
