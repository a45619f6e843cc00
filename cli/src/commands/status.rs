//! `mirrord-cli status`: the pods of a target (or every pod of a namespace
//! with the sidecar), and what each sidecar says of itself: version,
//! sessions (name, filter, since, counts), pause (since, lease left).
//! Each sidecar's `/status` is read over a port-forward of its admin port.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use mirrord_config::names::{ADMIN_PORT, ANNOTATION_STATUS};
use mirrord_config::Target;
use serde_json::{json, Value};

use crate::cluster::{self, Cluster, ClusterFlags, TargetPod};
use crate::ExitCode;

/// Flags of `mirrord-cli status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A target as `connect` takes it (deployment/NAME, pod/NAME, …);
    /// without it, every pod of the namespace that has the sidecar.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// `text`: a table; `json`: one document for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One pod's line: what the API says, and what its sidecar says.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStatus {
    pub pod: String,
    /// The workload that owns it (`deployment/api`), when known.
    pub workload: Option<String>,
    pub injected: bool,
    pub ready: bool,
    /// From the injector's status annotation.
    pub sidecar_version: Option<String>,
    /// The sidecar's `/status`, or why it could not be read.
    pub sidecar: Result<Value, String>,
}

impl PodStatus {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "pod": self.pod, "workload": self.workload, "injected": self.injected, "ready": self.ready,
            "sidecar_version": self.sidecar_version,
        });
        match &self.sidecar {
            Ok(status) => v["status"] = status.clone(),
            Err(why) => v["error"] = json!(why),
        }
        v
    }
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let cluster = match Cluster::connect(&args.cluster.access(), None).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let selector = match args.target.as_deref().map(|t| Target::parse(t, None)) {
        None => None,
        Some(Ok(Some(target))) => match cluster.selector(&target).await {
            Ok(s) => Some(s),
            Err(e) => return failed(e),
        },
        Some(Ok(None)) => {
            eprintln!("error: targetless has no pods: give a workload, or no target for the whole namespace");
            return ExitCode::InvalidConfig;
        }
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::InvalidConfig;
        }
    };
    let pods = match cluster.pod_objects(selector.as_ref()).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let pods: Vec<&Pod> =
        pods.iter().filter(|p| selector.is_some() || TargetPod::of(p).is_some_and(|t| t.injected)).collect();
    let lines = futures::future::join_all(pods.into_iter().map(|p| pod_status(&cluster, p))).await;
    let lines: Vec<PodStatus> = lines.into_iter().flatten().collect();
    match args.output {
        Output::Json => {
            let doc = json!({"namespace": cluster.namespace,
                             "pods": lines.iter().map(PodStatus::to_json).collect::<Vec<_>>()});
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Output::Text if lines.is_empty() => {
            let what = args.target.as_deref().unwrap_or("no pod with the mirrord sidecar");
            println!("namespace {}: {what}", cluster.namespace);
            if args.target.is_some() {
                println!("(no pods)");
            }
        }
        Output::Text => print!("{}", render(&lines)),
    }
    ExitCode::Ok
}

fn failed(e: cluster::Error) -> ExitCode {
    eprintln!("error: {e}");
    e.exit_code()
}

async fn pod_status(cluster: &Cluster, pod: &Pod) -> Option<PodStatus> {
    let target = TargetPod::of(pod)?;
    let sidecar_version = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_STATUS))
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|s| s["version"].as_str().map(str::to_owned));
    let sidecar = if !target.injected {
        Err("no sidecar".to_owned())
    } else if !target.ready {
        Err("sidecar not ready".to_owned())
    } else {
        read_status(cluster, &target.name).await
    };
    Some(PodStatus {
        pod: target.name,
        workload: owner(pod),
        injected: target.injected,
        ready: target.ready,
        sidecar_version,
        sidecar,
    })
}

/// `GET /status` on the sidecar's admin port, over a port-forward.
async fn read_status(cluster: &Cluster, pod: &str) -> Result<Value, String> {
    let call = async {
        let stream = cluster.forward_port(pod, ADMIN_PORT).await.map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin port: {e}"))?;
        tokio::spawn(conn);
        let request = http::Request::get("/status")
            .header(http::header::HOST, "sidecar")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = send.send_request(request).await.map_err(|e| format!("admin port: {e}"))?;
        let code = response.status();
        use http_body_util::BodyExt;
        let body = http_body_util::Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("admin port: {e}"))?
            .to_bytes();
        if !code.is_success() {
            return Err(format!("the sidecar answered {code} (an older sidecar without /status?)"));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("the sidecar's /status is not JSON: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 15 s".to_owned()))
}

/// The owning workload: a Deployment through its ReplicaSet (whose name is
/// the Deployment's and the pod-template-hash), else the controller itself.
fn owner(pod: &Pod) -> Option<String> {
    let owner = pod.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let hash = pod.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => match owner.name.strip_suffix(&format!("-{hash}")) {
            Some(deployment) => Some(format!("deployment/{deployment}")),
            None => Some(format!("replicaset/{}", owner.name)),
        },
        (kind, _) => Some(format!("{}/{}", kind.to_ascii_lowercase(), owner.name)),
    }
}

/// `45s`, `3m05s`, `2h07m`.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The table: one line per pod, and one more per further session.
pub fn render(pods: &[PodStatus]) -> String {
    let header = ["POD", "WORKLOAD", "READY", "SIDECAR", "PAUSED", "STOLEN", "MIRRORED", "SESSIONS"];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for p in pods {
        let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let mut row = [
            p.pod.clone(),
            p.workload.clone().unwrap_or_else(|| "-".to_owned()),
            yes(p.ready),
            p.sidecar_version.clone().unwrap_or_else(|| "-".to_owned()),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            String::new(),
        ];
        let status = match &p.sidecar {
            Ok(status) => status,
            Err(why) => {
                row[7] = format!("({why})");
                rows.push(row);
                continue;
            }
        };
        let pause = &status["pause"];
        row[4] = match (pause["available"].as_bool(), pause["paused"].as_bool()) {
            (Some(false), _) => "disabled".to_owned(),
            (_, Some(true)) => format!(
                "yes, {} ({} left)",
                duration(pause["paused_seconds"].as_u64().unwrap_or(0)),
                duration(pause["lease_left_seconds"].as_u64().unwrap_or(0))
            ),
            _ => "no".to_owned(),
        };
        let sessions = status["sessions"].as_array().cloned().unwrap_or_default();
        let sum = |key: &str| sessions.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum::<u64>().to_string();
        row[5] = sum("stolen");
        row[6] = sum("mirrored");
        let described: Vec<String> = sessions
            .iter()
            .map(|s| {
                format!(
                    "{}: {}, open {}{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["config"].as_str().unwrap_or("?"),
                    duration(s["open_seconds"].as_u64().unwrap_or(0)),
                    if s["pause"] == true { " [pause]" } else { "" }
                )
            })
            .collect();
        match described.split_first() {
            None => {
                row[7] = "none".to_owned();
                rows.push(row);
            }
            Some((first, rest)) => {
                row[7] = first.clone();
                rows.push(row);
                for more in rest {
                    let mut extra: [String; 8] = Default::default();
                    extra[7] = more.clone();
                    rows.push(extra);
                }
            }
        }
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut text = line(&header.map(str::to_owned));
    for row in &rows {
        text.push_str(&line(row));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pods: one with two sessions, one of them pausing the app; one
    /// whose sidecar cannot be reached; one without the sidecar.
    #[test]
    fn status_table() {
        let paused = json!({
            "version": "0.1.0", "ready": true,
            "pause": {"available": true, "paused": true, "paused_seconds": 130, "lease_left_seconds": 1670,
                      "processes": 3, "holders": ["alice@dev1"]},
            "sessions": [
                {"name": "alice@dev1", "config": "steal port 8080 where header x-user: alice", "pause": true,
                 "open_seconds": 135, "stolen": 4, "mirrored": 0},
                {"name": "bob@dev2", "config": "mirror every port", "pause": false,
                 "open_seconds": 4000, "stolen": 0, "mirrored": 12},
            ]
        });
        let idle = json!({"version": "0.1.0", "ready": true, "sessions": [],
                          "pause": {"available": false, "why": "disabled", "paused": false}});
        let api = |pod: &str, sidecar| PodStatus {
            pod: pod.into(),
            workload: Some("deployment/api".into()),
            injected: true,
            ready: true,
            sidecar_version: Some("0.1.0".into()),
            sidecar,
        };
        let pods = vec![
            api("api-7d9c-0", Ok(paused)),
            api("api-7d9c-1", Ok(idle)),
            api("api-7d9c-2", Err("port-forward to pod api-7d9c-2: connection refused".into())),
            PodStatus {
                pod: "web-0".into(),
                workload: Some("statefulset/web".into()),
                injected: false,
                ready: true,
                sidecar_version: None,
                sidecar: Err("no sidecar".into()),
            },
        ];
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/status.txt");
        let text = render(&pods);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        assert_eq!(text, std::fs::read_to_string(&golden).unwrap(), "UPDATE_GOLDEN=1 rewrites {}", golden.display());
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(3600 * 2 + 60 * 7 + 5), "2h07m");
    }
}
