//! The tunnel in-process: tonic over `tokio::io::duplex`, no sockets. The
//! data path's side is driven directly through the session registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use mirrord_proxy::metrics::Metrics;
use mirrord_proxy::pause::Pause;
use mirrord_proxy::ports::PortList;
use mirrord_proxy::proto::exchange_frame::Kind as Wire;
use mirrord_proxy::proto::tunnel_client::TunnelClient;
use mirrord_proxy::proto::tunnel_server::TunnelServer;
use mirrord_proxy::proto::{self, session_event, session_request};
use mirrord_proxy::session::wire::{self, Announced, Frame};
use mirrord_proxy::session::{RequestView, Sessions};
use mirrord_proxy::tunnel::{Tunnel, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Hands out one end of a fresh duplex per connection; the other end goes
/// to the server.
#[derive(Clone)]
struct Duplex(mpsc::UnboundedSender<tokio::io::DuplexStream>);

impl tower_service::Service<Uri> for Duplex {
    type Response = TokioIo<tokio::io::DuplexStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (client, server) = tokio::io::duplex(1 << 16);
        let sent = self.0.send(server);
        Box::pin(async move {
            sent.map_err(|_| std::io::Error::other("server gone"))?;
            Ok(TokioIo::new(client))
        })
    }
}

struct Fixture {
    client: TunnelClient<Channel>,
    sessions: Arc<Sessions>,
    /// Holds the token file.
    _dir: tempfile::TempDir,
}

async fn fixture(known: &str, token: Option<&str>) -> Fixture {
    fixture_of(Sessions::new(known.parse::<PortList>().unwrap()), token).await
}

async fn fixture_of(sessions: Sessions, token: Option<&str>) -> Fixture {
    let sessions = Arc::new(sessions);
    let metrics = Arc::new(Metrics::default());
    let pause =
        Pause::disabled("pausing is disabled on this pod (annotation mirrord.dev/pause: disabled)", metrics.clone());
    let dir = tempfile::tempdir().unwrap();
    let token = token.map(|t| {
        let path = dir.path().join("token");
        std::fs::write(&path, t).unwrap();
        mirrord_proxy::secret::SessionToken::File(mirrord_proxy::secret::TokenFile(path))
    });
    let tunnel = Tunnel { sessions: sessions.clone(), token, metrics, pause };
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::UnboundedReceiverStream::new(rx), Ok::<_, std::io::Error>);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(TunnelServer::new(tunnel), incoming));
    let channel = Endpoint::try_from("http://tunnel.test").unwrap().connect_with_connector(Duplex(tx)).await.unwrap();
    Fixture { client: TunnelClient::new(channel), sessions, _dir: dir }
}

fn hello(config: &str, token: &str, version: u32) -> proto::SessionRequest {
    proto::SessionRequest {
        kind: Some(session_request::Kind::Hello(proto::Hello {
            protocol_version: version,
            client_name: "test".to_owned(),
            config_json: config.to_owned(),
            token: token.to_owned(),
            client_version: "9.9.9".to_owned(),
        })),
    }
}

/// Opens a session; returns its events and the sender that keeps it open.
async fn open(
    f: &mut Fixture,
    first: proto::SessionRequest,
) -> Result<(tonic::Streaming<proto::SessionEvent>, mpsc::Sender<proto::SessionRequest>), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let events = f.client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok((events, tx))
}

async fn plan(events: &mut tonic::Streaming<proto::SessionEvent>) -> Result<proto::Plan, tonic::Status> {
    match events.message().await?.and_then(|e| e.kind) {
        Some(session_event::Kind::Plan(p)) => Ok(p),
        other => panic!("expected a plan, got {other:?}"),
    }
}

const STEAL_ALICE: &str =
    r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#;

/// The status a refused session ends with.
async fn refusal(f: &mut Fixture, first: proto::SessionRequest) -> tonic::Status {
    match open(f, first).await {
        Ok((mut events, _tx)) => plan(&mut events).await.expect_err("the session should be refused"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn versions_tokens_and_configs_are_checked() {
    let mut f = fixture("80", Some("s3cret")).await;
    let status = refusal(&mut f, hello("{}", "s3cret", PROTOCOL_VERSION + 1)).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("upgrade the sidecar"), "{}", status.message());

    let status = refusal(&mut f, hello("{}", "wrong", PROTOCOL_VERSION)).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(!status.message().contains("s3cret"));

    let bad = r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"path_filter":"("}}}}}"#;
    let status = refusal(&mut f, hello(bad, "s3cret", PROTOCOL_VERSION)).await;
    assert!(
        status.message().contains("feature.network.incoming.http_filter.path_filter: invalid regex"),
        "{}",
        status.message()
    );

    // A key this sidecar does not know: the CLI is newer.
    let newer = r#"{"feature":{"network":{"incoming":{"mode":"steal","some_future_key":true}}}}"#;
    let status = refusal(&mut f, hello(newer, "s3cret", PROTOCOL_VERSION)).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("unknown key `some_future_key`"), "{}", status.message());
    assert!(status.message().contains("upgrade the sidecar"), "{}", status.message());

    let status = refusal(&mut f, hello(r#"{"pause":true}"#, "s3cret", PROTOCOL_VERSION)).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "pause refused: pausing is disabled on this pod (annotation mirrord.dev/pause: disabled)"
    );
    assert!(f.sessions.is_empty(), "a refused session leaves no rules behind");

    let (mut events, _tx) = open(&mut f, hello(STEAL_ALICE, "s3cret", PROTOCOL_VERSION)).await.unwrap();
    let plan = plan(&mut events).await.unwrap();
    assert_eq!(
        plan.ports,
        vec![proto::PortPlan { port: 80, action: "steal requests matching header \"x-user: alice\"".to_owned() }]
    );
}

#[tokio::test]
async fn a_filter_never_steals_a_port_whole() {
    // No http_filter.ports: the filter applies on the pod's port 3000.
    let mut f = fixture("3000", None).await;
    let (mut events, _tx) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    let filtered = plan(&mut events).await.unwrap();
    assert!(filtered.warnings.is_empty(), "{:?}", filtered.warnings);
    assert_eq!(filtered.ports[0].action, "steal requests matching header \"x-user: alice\"");

    // http_filter.ports naming none of the pod's ports: the session takes
    // nothing, and is told so.
    let mut f = fixture("3000", None).await;
    let only_80 = r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice","ports":[80]}}}}}"#;
    let (mut events, _tx) = open(&mut f, hello(only_80, "", PROTOCOL_VERSION)).await.unwrap();
    let plan = plan(&mut events).await.unwrap();
    assert!(
        plan.warnings[0].starts_with(
            "http_filter.ports [80] match none of the pod's ports [3000]: the filter matches nothing and this session receives no traffic"
        ),
        "{:?}",
        plan.warnings
    );
    assert_eq!(plan.ports[0].action, "untouched");
}

#[tokio::test]
async fn an_exchange_carries_a_stolen_request_both_ways() {
    let mut f = fixture("80", None).await;
    let (mut events, _keep) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    let plan = plan(&mut events).await.unwrap();

    // The data path: a matching request is routed and announced.
    let headers: [(&str, &[u8]); 1] = [("x-user", b"alice")];
    let decision =
        f.sessions.decide(80, Some(RequestView { method: "POST", path: "/orders", headers: &headers, body: None }));
    let session = decision.steal.expect("alice's filter matches");
    let request = wire::HttpRequest {
        method: "POST".to_owned(),
        uri: "/orders".to_owned(),
        version: wire::HttpVersion::Http11,
        headers: vec![],
        body_complete: false,
    };
    let data_path = session.open(80, wire::Mode::Steal, Announced::Http(request)).await.unwrap();
    data_path.to_client.send(Frame::Data(Bytes::from_static(b"request body"))).await.unwrap();
    data_path.to_client.send(Frame::End).await.unwrap();
    let no_match: [(&str, &[u8]); 1] = [("x-user", b"bob")];
    assert!(f
        .sessions
        .decide(80, Some(RequestView { method: "GET", path: "/", headers: &no_match, body: None }))
        .is_passthrough());

    // The client side: the announcement, then the exchange.
    let id = match events.message().await.unwrap().and_then(|e| e.kind) {
        Some(session_event::Kind::Incoming(i)) => i.id,
        other => panic!("expected an incoming, got {other:?}"),
    };
    let (tx, rx) = mpsc::channel(8);
    let frame = |kind| proto::ExchangeFrame { kind: Some(kind) };
    tx.send(frame(Wire::Attach(proto::Attach { session_id: "not-the-secret".to_owned(), id }))).await.unwrap();
    let denied = f.client.exchange(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::NotFound);

    let (tx, rx) = mpsc::channel(8);
    tx.send(frame(Wire::Attach(proto::Attach { session_id: plan.session_id.clone(), id }))).await.unwrap();
    let mut inbound = f.client.exchange(ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert_eq!(inbound.message().await.unwrap().unwrap().kind, Some(Wire::Data(Bytes::from_static(b"request body"))));
    assert_eq!(inbound.message().await.unwrap().unwrap().kind, Some(Wire::End(proto::End {})));
    let head = proto::ResponseHead { status: 201, headers: vec![], end_of_stream: false };
    tx.send(frame(Wire::Response(head.clone()))).await.unwrap();
    tx.send(frame(Wire::Data(Bytes::from_static(b"created")))).await.unwrap();
    tx.send(frame(Wire::End(proto::End {}))).await.unwrap();

    let mut from_client = data_path.from_client;
    let head = wire::ResponseHead { status: 201, headers: vec![], end_of_stream: false };
    assert_eq!(from_client.recv().await, Some(Frame::Response(head)));
    assert_eq!(from_client.recv().await, Some(Frame::Data(Bytes::from_static(b"created"))));
    assert_eq!(from_client.recv().await, Some(Frame::End));
}

#[tokio::test]
async fn first_connected_wins_and_the_other_is_told() {
    let mut f = fixture("80", None).await;
    let (mut first, _a) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut first).await.unwrap();
    let (mut second, _b) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut second).await.unwrap();
    let headers: [(&str, &[u8]); 1] = [("x-user", b"alice")];
    let view = RequestView { method: "GET", path: "/", headers: &headers, body: None };
    let winner = f.sessions.decide(80, Some(view)).steal.unwrap();
    assert_eq!(winner.seq, f.sessions.snapshot()[0].seq);
    f.sessions.decide(80, Some(view));
    match second.message().await.unwrap().and_then(|e| e.kind) {
        Some(session_event::Kind::Notice(n)) => assert!(n.message.contains("connected first"), "{}", n.message),
        other => panic!("expected a notice, got {other:?}"),
    }
}

#[tokio::test]
async fn sessions_beyond_the_limit_are_refused_until_one_ends() {
    let mut f = fixture_of(Sessions::new(PortList::All).with_max(2), None).await;
    let mirror = r#"{"feature":{"network":{"incoming":"mirror"}}}"#;
    let (mut first, first_tx) = open(&mut f, hello(mirror, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut first).await.unwrap();
    let (mut second, _second_tx) = open(&mut f, hello(mirror, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut second).await.unwrap();
    let refused = refusal(&mut f, hello(mirror, "", PROTOCOL_VERSION)).await;
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(
        refused.message(),
        "the sidecar serves as many sessions as it may (--max-sessions 2): end one of them, or raise the limit \
         (`mirrord-cli inject TARGET --max-sessions N` sets the pods' mirrord.dev/max-sessions)"
    );
    assert_eq!(f.sessions.snapshot().len(), 2, "the refused session never reached routing");
    first_tx.send(proto::SessionRequest { kind: Some(session_request::Kind::Bye(proto::Bye {})) }).await.unwrap();
    while let Some(event) = first.message().await.unwrap() {
        if matches!(event.kind, Some(session_event::Kind::Closed(_))) {
            break;
        }
    }
    let (mut third, _third_tx) = open(&mut f, hello(mirror, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut third).await.expect("a place is free again");
}

#[tokio::test]
async fn a_session_is_gone_from_routing_once_its_call_ends() {
    let mut f = fixture("80", None).await;
    let (mut events, tx) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    plan(&mut events).await.unwrap();
    assert!(!f.sessions.is_empty());
    tx.send(proto::SessionRequest { kind: Some(session_request::Kind::Bye(proto::Bye {})) }).await.unwrap();
    match events.message().await.unwrap().and_then(|e| e.kind) {
        Some(session_event::Kind::Closed(_)) => {}
        other => panic!("expected closed, got {other:?}"),
    }
    assert!(f.sessions.is_empty(), "rules must be gone before Closed is sent");
}

const MIRROR_9000: &str = r#"{"feature":{"network":{"incoming":{"mode":"mirror","ports":[9000]}}}}"#;

/// Attaches to the next announced exchange: its frames to the sidecar, and
/// what the sidecar sends.
async fn attach(
    f: &mut Fixture,
    events: &mut tonic::Streaming<proto::SessionEvent>,
    plan: &proto::Plan,
) -> (mpsc::Sender<proto::ExchangeFrame>, tonic::Streaming<proto::ExchangeFrame>) {
    let id = match events.message().await.unwrap().and_then(|e| e.kind) {
        Some(session_event::Kind::Incoming(i)) => i.id,
        other => panic!("expected an incoming, got {other:?}"),
    };
    let (tx, rx) = mpsc::channel(8);
    let attach = Wire::Attach(proto::Attach { session_id: plan.session_id.clone(), id });
    tx.send(proto::ExchangeFrame { kind: Some(attach) }).await.unwrap();
    let inbound = f.client.exchange(ReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, inbound)
}

/// A client that sends the local app's answer to a copy back (nobody reads
/// it) still gets the rest of the copy, and a clean end.
#[tokio::test]
async fn what_comes_back_for_a_copy_is_dropped_and_the_copy_goes_on() {
    let mut f = fixture("9000", None).await;
    let (mut events, _keep) = open(&mut f, hello(MIRROR_9000, "", PROTOCOL_VERSION)).await.unwrap();
    let plan = plan(&mut events).await.unwrap();
    let mirror = f.sessions.decide(9000, None).mirrors.pop().expect("the session mirrors port 9000");
    // As the data path holds a copy: the sending end only.
    let copy = mirror.open(9000, wire::Mode::Mirror, Announced::Tcp(Bytes::from_static(b"first"))).await.unwrap();
    drop(copy.from_client);
    let (tx, mut inbound) = attach(&mut f, &mut events, &plan).await;
    let data = |b: &'static [u8]| proto::ExchangeFrame { kind: Some(Wire::Data(Bytes::from_static(b))) };
    tx.send(data(b"the local app's answer")).await.unwrap();
    tx.send(data(b"and more of it")).await.unwrap();
    // The sidecar reads those before the rest of the copy comes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    copy.to_client.send(Frame::Data(Bytes::from_static(b"second"))).await.unwrap();
    copy.to_client.send(Frame::End).await.unwrap();
    drop(copy.to_client);
    assert_eq!(inbound.message().await.unwrap().unwrap().kind, Some(Wire::Data(Bytes::from_static(b"second"))));
    assert_eq!(inbound.message().await.unwrap().unwrap().kind, Some(Wire::End(proto::End {})));
    assert_eq!(inbound.message().await.unwrap(), None, "the call ends cleanly");
    // The client may still be sending the rest of the local app's answer.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tx.send(data(b"the end of the answer")).await.expect("the call still takes the client's frames");
    tx.send(proto::ExchangeFrame { kind: Some(Wire::End(proto::End {})) }).await.expect("and its end");
}

/// Once a stolen request's data path has gone (its client left), the call
/// ends, so that a client streaming an endless response stops.
#[tokio::test]
async fn a_stolen_exchange_whose_client_left_stops_the_response() {
    let mut f = fixture("80", None).await;
    let (mut events, _keep) = open(&mut f, hello(STEAL_ALICE, "", PROTOCOL_VERSION)).await.unwrap();
    let plan = plan(&mut events).await.unwrap();
    let headers: [(&str, &[u8]); 1] = [("x-user", b"alice")];
    let view = RequestView { method: "GET", path: "/events", headers: &headers, body: None };
    let session = f.sessions.decide(80, Some(view)).steal.unwrap();
    let request = wire::HttpRequest {
        method: "GET".to_owned(),
        uri: "/events".to_owned(),
        version: wire::HttpVersion::Http11,
        headers: vec![],
        body_complete: true,
    };
    let data_path = session.open(80, wire::Mode::Steal, Announced::Http(request)).await.unwrap();
    let (tx, _inbound) = attach(&mut f, &mut events, &plan).await;
    let head = proto::ResponseHead { status: 200, headers: vec![], end_of_stream: false };
    tx.send(proto::ExchangeFrame { kind: Some(Wire::Response(head)) }).await.unwrap();
    drop(data_path);
    let endless = async {
        loop {
            let chunk = proto::ExchangeFrame { kind: Some(Wire::Data(Bytes::from_static(b"data: tick\n\n"))) };
            if tx.send(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), endless)
        .await
        .expect("the sidecar ended the call, so sending fails");
}
