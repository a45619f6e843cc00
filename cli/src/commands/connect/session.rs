//! One session on one sidecar: the tunnel reached (`--addr`, or a
//! port-forward through the API server), Hello and the plan, then the
//! session's events until it ends or Ctrl-C says Bye.

use std::sync::Arc;
use std::time::Duration;

use mirrord_api::proto::tunnel_client::TunnelClient;
use mirrord_api::proto::{self, session_event, session_request, Bye, Hello, SessionRequest};
use mirrord_api::PROTOCOL_VERSION;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::ConnectArgs;
use crate::cluster::{self, Cluster, Place};
use crate::deliver::Delivery;
use crate::status::Reporter;
use crate::ExitCode;

pub(super) type Opened =
    (TunnelClient<Channel>, tonic::Streaming<proto::SessionEvent>, mpsc::Sender<SessionRequest>, proto::Plan);

/// Connects, says Hello, and waits for the plan. `Err` is the exit code and
/// what to print.
pub(super) async fn open(place: &Place, args: &ConnectArgs, config_json: String) -> Result<Opened, (ExitCode, String)> {
    let unreachable =
        |e: Unreachable| (ExitCode::Failure, format!("cannot reach the sidecar at {}: {e}", place.label()));
    let channel = match place {
        Place::Addr(addr) => connect(addr).await.map_err(unreachable)?,
        Place::Pod { cluster, pod } => {
            // The first port-forward is made here, so that what the API
            // server says (forbidden, gone) is reported as it is.
            let first = cluster.forward(pod).await.map_err(|e| {
                let code =
                    if matches!(e, cluster::Error::Forbidden { .. }) { ExitCode::Cluster } else { ExitCode::Failure };
                (code, e.to_string())
            })?;
            connect_pod(cluster, pod, first).await.map_err(unreachable)?
        }
    };
    let mut client = TunnelClient::new(channel);
    let (requests, rx) = mpsc::channel(4);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: args.name.clone().unwrap_or_else(default_name),
        config_json,
        token: args.token.clone().unwrap_or_default(),
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let _ = requests.send(SessionRequest { kind: Some(session_request::Kind::Hello(hello)) }).await;
    let refused =
        |e: &tonic::Status| (refused_code(e), format!("{} refused the session: {}", place.label(), e.message()));
    let mut events = client.session(ReceiverStream::new(rx)).await.map_err(|e| refused(&e))?.into_inner();
    match events.message().await {
        Ok(Some(proto::SessionEvent { kind: Some(session_event::Kind::Plan(plan)) })) => {
            Ok((client, events, requests, plan))
        }
        Ok(_) => Err((ExitCode::Failure, format!("the sidecar at {} did not answer with a plan", place.label()))),
        Err(e) => Err(refused(&e)),
    }
}

pub(super) async fn serve(
    mut events: tonic::Streaming<proto::SessionEvent>,
    delivery: Arc<Delivery>,
    status: Reporter,
    requests: mpsc::Sender<SessionRequest>,
    stop: impl std::future::Future<Output = ()>,
) -> ExitCode {
    tokio::pin!(stop);
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            event = events.message() => match event {
                Ok(Some(proto::SessionEvent { kind: Some(kind) })) => match kind {
                    session_event::Kind::Incoming(incoming) => {
                        deliveries.spawn(delivery.clone().handle(incoming));
                    }
                    session_event::Kind::Notice(n) => {
                        status.say(serde_json::json!({"event": "notice", "message": n.message}), &format!("notice: {}", n.message));
                    }
                    session_event::Kind::Pause(p) => {
                        status.paused(p.paused.then_some(p.processes));
                        let event = serde_json::json!({"event": "pause", "paused": p.paused, "processes": p.processes, "message": p.message});
                        status.say(event, &p.message);
                    }
                    session_event::Kind::Closed(_) => return ExitCode::Ok,
                    session_event::Kind::Plan(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    status.say(serde_json::json!({"event": "lost"}), "error: the tunnel to the sidecar was lost; the session has ended");
                    return ExitCode::Failure;
                }
            },
            () = &mut stop => break,
        }
    }
    // Ctrl-C: ask the sidecar to drop this session's rules, and wait until it
    // says the traffic is the app's again.
    let _ = requests.send(SessionRequest { kind: Some(session_request::Kind::Bye(Bye {})) }).await;
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(event)) = events.message().await {
            match event.kind {
                Some(session_event::Kind::Closed(_)) => return true,
                // Announced before the rules went away: still delivered.
                Some(session_event::Kind::Incoming(incoming)) => {
                    deliveries.spawn(delivery.clone().handle(incoming));
                }
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    // Requests already with the local app finish (copies included).
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while deliveries.join_next().await.is_some() {} }).await;
    let text = if closed { "session closed: traffic goes to the app again" } else { "session ended" };
    status.say(serde_json::json!({"event": "closed", "acknowledged": closed}), text);
    ExitCode::Ok
}

/// Why the sidecar's tunnel cannot be reached.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("invalid address {addr:?}: expected HOST:PORT ({error})")]
    Address { addr: String, error: String },
    /// The transport error with its causes, on one line.
    #[error("{0}")]
    Connect(String),
}

async fn connect(addr: &str) -> Result<Channel, Unreachable> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Unreachable::Address { addr: addr.to_owned(), error: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(mirrord_api::TUNNEL_STREAM_WINDOW)
        .initial_connection_window_size(mirrord_api::TUNNEL_CONNECTION_WINDOW)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(|e| Unreachable::Connect(cluster::error_chain(&e)))
}

fn refused_code(e: &tonic::Status) -> ExitCode {
    match e.code() {
        tonic::Code::FailedPrecondition
        | tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument
        | tonic::Code::ResourceExhausted => ExitCode::Refused,
        _ => ExitCode::Failure,
    }
}

/// Connects over a port-forward to the pod's sidecar, through the API server.
async fn connect_pod(cluster: &Cluster, pod: &str, first: cluster::Forwarded) -> Result<Channel, Unreachable> {
    let (cluster, pod) = (cluster.clone(), pod.to_owned());
    let first = Arc::new(std::sync::Mutex::new(Some(first)));
    let connector = tower::service_fn(move |_: http::Uri| {
        let (cluster, pod) = (cluster.clone(), pod.clone());
        let ready = first.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            match ready {
                Some(stream) => Ok(hyper_util::rt::TokioIo::new(stream)),
                None => cluster.forward(&pod).await.map(hyper_util::rt::TokioIo::new),
            }
        }
    });
    Endpoint::from_static("http://sidecar.mirrord")
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(mirrord_api::TUNNEL_STREAM_WINDOW)
        .initial_connection_window_size(mirrord_api::TUNNEL_CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| Unreachable::Connect(cluster::error_chain(&e)))
}

/// How a session is named to other sessions by default: user@host.
fn default_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}
