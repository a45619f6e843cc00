//! The tunnel's gRPC service: sessions open and close here, and each
//! intercepted request or connection is carried by an Exchange call.
//!
//! Served on 127.0.0.1 inside the pod, reached through the API server's
//! port-forward (RBAC: `pods/portforward`); since every container of the pod
//! shares that loopback, a session may also have to present a token.
//! It runs on a thread of its own at a lower priority than the data path
//! (`start_thread`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mirrord_config::Config;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn, Instrument};

use crate::metrics::Metrics;
use crate::metrics::{Direction, SessionEnd};
use crate::pause::{Hold, Pause};
use crate::proto::tunnel_server::TunnelServer;
use crate::proto::{self, exchange_frame, session_event, session_request};
use crate::runtime_thread::RuntimeThread;
use crate::session::Frame;
use crate::session::{plan, Refusal, Session, Sessions};

pub use mirrord_api::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// After a clean session end, how long announced exchanges may still be attached.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The service.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub sessions: Arc<Sessions>,
    /// What sessions must present; `None` only with `--insecure-no-token`.
    pub token: Option<crate::secret::SessionToken>,
    pub metrics: Arc<Metrics>,
    pub pause: Arc<Pause>,
}

type ExchangeStream = Pin<Box<dyn Stream<Item = Result<proto::ExchangeFrame, Status>> + Send>>;

/// Removes the session from routing when the session call ends, however it ends.
/// Releases its pause, if it holds one, right after.
struct Registered {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    hold: Option<Hold>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.remove(self.session.seq);
        drop(self.hold.take());
        self.metrics.sessions.dec();
        info!("session closed; its traffic is the app's again");
    }
}

#[tonic::async_trait]
impl proto::tunnel_server::Tunnel for Tunnel {
    type SessionStream = crate::session::Events;
    type ExchangeStream = ExchangeStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(proto::SessionRequest { kind: Some(session_request::Kind::Hello(hello)) }) => hello,
            _ => return Err(Status::invalid_argument("expected Hello as the first message of a session")),
        };
        let refused = |reason: SessionEnd| {
            let metrics = self.metrics.clone();
            move |status: Status| {
                metrics.session_ended(reason);
                status
            }
        };
        check_version(&hello).map_err(refused(SessionEnd::RefusedVersion))?;
        self.check_token(&hello.token).map_err(refused(SessionEnd::RefusedToken))?;
        let config = Config::from_json(&hello.config_json)
            .map_err(|e| config_refused(&e, &hello))
            .map_err(refused(SessionEnd::RefusedConfig))?;
        let name = client_name(&hello.client_name);
        let summary = config.to_string();
        let (session, events) = Session::new(
            self.sessions.next_seq(),
            crate::secret::random_id().map_err(|e| Status::internal(format!("no randomness for a session id: {e}")))?,
            name.clone(),
            self.metrics.session_label(&name),
            config,
        );
        let contested = self.sessions.add(session.clone()).map_err(|refusal| {
            let (status, reason) = match &refusal {
                Refusal::Conflict(_) => (Status::failed_precondition(refusal.to_string()), SessionEnd::RefusedConflict),
                Refusal::Full { .. } => (Status::resource_exhausted(refusal.to_string()), SessionEnd::RefusedLimit),
            };
            refused(reason)(status)
        })?;
        self.metrics.sessions.inc();
        let mut registered = Registered {
            sessions: self.sessions.clone(),
            session: session.clone(),
            metrics: self.metrics.clone(),
            hold: None,
        };
        let span = tracing::info_span!("session", client = %name);
        span.in_scope(|| info!(%summary, "session opened"));
        let (ports, mut warnings) = plan(&session, &self.sessions.known_ports);
        warnings.extend(contested);
        let plan = proto::Plan {
            session_id: session.secret.clone(),
            ports,
            warnings,
            sidecar_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        session.send(session_event::Kind::Plan(plan), true).await;
        if session.config.pause {
            // After the plan, so that the client hears of the pause in order.
            registered.hold = Some(
                span.in_scope(|| self.pause.hold(&session))
                    .map_err(|why| Status::failed_precondition(format!("pause refused: {why}")))
                    .map_err(refused(SessionEnd::RefusedPause))?,
            );
        }
        tokio::spawn(
            async move {
                let clean = loop {
                    match inbound.message().await {
                        Ok(Some(proto::SessionRequest { kind: Some(session_request::Kind::Bye(_)) })) => break true,
                        Ok(None) | Err(_) => break false,
                        Ok(Some(_)) => {}
                    }
                };
                let session = registered.session.clone();
                registered.metrics.session_ended(if clean { SessionEnd::Closed } else { SessionEnd::Lost });
                drop(registered);
                if clean {
                    // What was announced before Bye may still be attached
                    // and delivered; after a lost connection, it fails at once.
                    session.settle(SETTLE).await;
                    session.send(session_event::Kind::Closed(proto::Closed {}), false).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(events))
    }

    async fn exchange(
        &self,
        request: Request<Streaming<proto::ExchangeFrame>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let mut inbound = request.into_inner();
        let attach = match inbound.message().await? {
            Some(proto::ExchangeFrame { kind: Some(exchange_frame::Kind::Attach(a)) }) => a,
            _ => return Err(Status::invalid_argument("expected Attach as the first frame of an exchange")),
        };
        let session = self
            .sessions
            .by_secret(&attach.session_id)
            .ok_or_else(|| Status::not_found("no such session: it has ended"))?;
        let slot = session
            .attach(attach.id)
            .ok_or_else(|| Status::not_found(format!("no exchange {} in this session", attach.id)))?;
        let from_client = slot.from_client;
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                // A second Attach or an empty frame carries nothing.
                if let Some(frame) = frame.kind.and_then(Frame::from_wire) {
                    if let Frame::Data(data) = &frame {
                        metrics.tunnel_bytes(Direction::FromClient, data.len());
                    }
                    // Nobody reads what comes back for a copy: it is dropped.
                    // Ending the call would reset the stream, and with it the
                    // rest of the copy still on its way to the client.
                    let Some(from_client) = &from_client else { continue };
                    // The stolen request's client has gone: the call ends, so
                    // the client stops sending (an endless response too).
                    if send_in_pieces(from_client, frame).await.is_err() {
                        break;
                    }
                }
            }
        });
        let to_client = self.metrics.clone();
        let outbound = ReceiverStream::new(slot.to_client).map(move |frame| {
            if let Frame::Data(data) = &frame {
                to_client.tunnel_bytes(Direction::ToClient, data.len());
            }
            Ok(proto::ExchangeFrame { kind: Some(frame.into_wire()) })
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// The largest piece of a Data frame queued towards the data path. A
/// stolen exchange whose client reads nothing then holds a bounded number
/// of bytes (its queue of pieces, and the frame they are cut from), however
/// large the frames the session sends (up to the message limit).
const PIECE: usize = 16 * 1024;

/// Queues `frame`, a Data frame cut in pieces of at most [`PIECE`] bytes
/// (views of the same buffer: nothing is copied); `Err` when the data path's
/// end has gone.
async fn send_in_pieces(to: &tokio::sync::mpsc::Sender<Frame>, frame: Frame) -> Result<(), ()> {
    let frame = match frame {
        Frame::Data(mut data) => {
            while data.len() > PIECE {
                to.send(Frame::Data(data.split_to(PIECE))).await.map_err(drop)?;
            }
            Frame::Data(data)
        }
        other => other,
    };
    to.send(frame).await.map_err(drop)
}

impl Tunnel {
    fn check_token(&self, presented: &str) -> Result<(), Status> {
        use crate::secret::TokenError;
        let Some(token) = &self.token else { return Ok(()) };
        token.check(presented).map_err(|e| {
            tracing::warn!("session refused: {e}");
            match e {
                TokenError::Mismatch | TokenError::Generated => Status::unauthenticated(e.to_string()),
                TokenError::Missing { .. } => Status::failed_precondition(e.to_string()),
                TokenError::Unreadable { .. } => Status::internal(e.to_string()),
            }
        })
    }
}

fn check_version(hello: &proto::Hello) -> Result<(), Status> {
    let v = hello.protocol_version;
    let client = if hello.client_version.is_empty() { "unknown" } else { &hello.client_version };
    if v < MIN_PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "mirrord-cli {client} speaks tunnel protocol {v}, this sidecar ({}) needs {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}: upgrade mirrord-cli",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if v > PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "mirrord-cli {client} speaks tunnel protocol {v}, this sidecar ({}) only up to {PROTOCOL_VERSION}: upgrade the sidecar (re-create the pod with a newer injector) or use an older mirrord-cli",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(())
}

/// Why a session config is refused. The CLI validated it already, so a key
/// this sidecar does not know means the CLI is newer: say which to upgrade.
fn config_refused(e: &mirrord_config::Error, hello: &proto::Hello) -> Status {
    let unknown = e.located().is_some_and(|l| l.message.starts_with("unknown key"));
    if !unknown {
        return Status::failed_precondition(format!("invalid session config: {e}"));
    }
    let client = if hello.client_version.is_empty() { "unknown" } else { &hello.client_version };
    Status::failed_precondition(format!(
        "invalid session config: {e}: mirrord-cli {client} uses a key this sidecar ({}) does not know: upgrade the sidecar (re-create the pod with a newer injector) or use mirrord-cli {}",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_VERSION")
    ))
}

/// A printable, bounded client name for logs and other sessions' notices.
fn client_name(raw: &str) -> String {
    let name: String = raw.chars().filter(|c| !c.is_control()).take(64).collect();
    if name.is_empty() {
        "anonymous".to_owned()
    } else {
        name
    }
}

/// The session tunnel's own thread and runtime, at a lower scheduling
/// priority than the data path (nice +10). What the tunnel does (encoding
/// copies and stolen traffic, session bookkeeping) then never runs in the
/// same scheduler turn as a request of the primary path, and where the CPU
/// is contended (a pod's CPU limit, a busy node) the primary path goes first.
/// The data path only hands frames over bounded channels. `None` (logged)
/// when the thread cannot be made: no sessions then, but the app's traffic
/// flows.
pub(crate) fn start_thread(
    listener: TcpListener,
    tunnel: Tunnel,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Option<RuntimeThread> {
    let started = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener.into_std()?)?
        };
        RuntimeThread::spawn("proxy-tunnel", runtime, lower_priority, serve_tunnel(listener, tunnel, stop))
    });
    started.map_err(|e| warn!("session tunnel not served: {e}")).ok()
}

/// Lowers the calling thread's priority (nice +10; Linux sets it per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments; setpriority only changes the
        // nice value of the calling thread, which lowering always may.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if rc != 0 {
            warn!("the session tunnel's thread keeps its priority: {}", std::io::Error::last_os_error());
        }
    }
}

/// Serves the session tunnel. A connection must send the HTTP/2 preface
/// within 5 s (`gate`); then HTTP/2 keepalive both ways: a peer silent for
/// about three seconds (laptop asleep, CLI stopped, link gone) is dropped,
/// which ends its session.
async fn serve_tunnel(listener: TcpListener, tunnel: Tunnel, stop: impl Future<Output = ()>) {
    let incoming = crate::gate::gated(listener, Duration::from_secs(5), 2 * tunnel.sessions.max());
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(mirrord_api::TUNNEL_STREAM_WINDOW)
        .initial_connection_window_size(mirrord_api::TUNNEL_CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .serve_with_incoming_shutdown(TunnelServer::new(tunnel), incoming, stop)
        .await;
    if let Err(e) = result {
        warn!("session tunnel stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(client_name("alice\n\u{1b}[31m"), "alice[31m");
        assert_eq!(client_name(""), "anonymous");
        assert_eq!(client_name(&"x".repeat(100)).len(), 64);
    }

    #[tokio::test]
    async fn data_is_queued_in_pieces_of_at_most_16_kib_and_other_frames_whole() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let data = bytes::Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<_>>());
        send_in_pieces(&tx, Frame::Data(data.clone())).await.unwrap();
        send_in_pieces(&tx, Frame::End).await.unwrap();
        let mut got = Vec::new();
        for want in [PIECE, PIECE, 40_000 - 2 * PIECE] {
            match rx.recv().await {
                Some(Frame::Data(piece)) => {
                    assert_eq!(piece.len(), want);
                    got.extend_from_slice(&piece);
                }
                other => panic!("expected a piece of {want} bytes, got {other:?}"),
            }
        }
        assert_eq!(got, data);
        assert!(matches!(rx.recv().await, Some(Frame::End)));
        drop(rx);
        assert!(send_in_pieces(&tx, Frame::End).await.is_err(), "the data path's end has gone");
    }
}
