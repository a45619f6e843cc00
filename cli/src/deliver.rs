//! Delivering one intercepted request or connection to the local app, over
//! its Exchange call: request body in, response (steal) or nothing (mirror)
//! out.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use mirrord_api::proto::exchange_frame::Kind as Wire;
use mirrord_api::proto::tunnel_client::TunnelClient;
use mirrord_api::proto::{self, incoming, Attach, End, ExchangeFrame, Failure, Header, HttpVersion, ResponseHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::local::Clients;
use crate::status::Reporter;

/// Headers that describe one hop, not the message.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

/// What delivering needs.
#[derive(Debug)]
pub struct Delivery {
    pub client: TunnelClient<Channel>,
    pub session_id: String,
    pub clients: Clients,
    pub status: Reporter,
    pub config: mirrord_config::Config,
    pub local_host: std::net::IpAddr,
    /// Copies being delivered at once; beyond, a copy is dropped (copies
    /// are lossy by design, and a stalled local app must not pile them up).
    pub copies: Arc<tokio::sync::Semaphore>,
}

/// Copies delivered to the local app at once.
pub const MAX_COPIES_IN_FLIGHT: usize = 256;

impl Delivery {
    /// Handles one Incoming to the end.
    pub async fn handle(self: Arc<Self>, incoming: proto::Incoming) {
        let port = u16::try_from(incoming.port).unwrap_or(0);
        let steal = incoming.mode == proto::Mode::Steal as i32;
        let local = SocketAddr::new(self.local_host, self.config.incoming.local_port(port));
        // A copy of a request without a body comes whole in its announcement.
        let whole_copy = !steal && matches!(&incoming.kind, Some(incoming::Kind::Http(r)) if r.body_complete);
        let permit = if steal { None } else { self.copies.clone().try_acquire_owned().ok() };
        if !steal && permit.is_none() {
            if !whole_copy {
                // Attached and dropped at once: the sidecar frees it right away.
                let _ = self.exchange(incoming.id).await;
            }
            self.status.dropped(port);
            return;
        }
        let (tx, frames) = if whole_copy {
            let (tx, _) = mpsc::channel(1);
            let (_, frames) = mpsc::channel(1);
            (tx, frames)
        } else {
            match self.exchange(incoming.id).await {
                Ok((tx, inbound)) => (tx, read_frames(inbound)),
                Err(e) => {
                    self.status.error(port, &format!("exchange {} could not be opened: {}", incoming.id, e.message()));
                    return;
                }
            }
        };
        let result = match incoming.kind {
            Some(incoming::Kind::Http(request)) => self.http(request, local, frames, &tx, steal).await,
            Some(incoming::Kind::Tcp(tcp)) => tcp_stream(tcp.data, local, frames, &tx, steal).await,
            None => Err("empty announcement".to_owned()),
        };
        drop(permit);
        match result {
            Ok(status) => self.status.delivered(port, steal, status),
            Err(e) => {
                self.status.error(port, &e);
                if steal {
                    let _ = tx.send(frame(Wire::Failure(Failure { message: format!("mirrord-cli: {e}") }))).await;
                }
            }
        }
    }

    /// Opens the Exchange call for announcement `id`.
    async fn exchange(
        &self,
        id: u64,
    ) -> Result<(mpsc::Sender<ExchangeFrame>, tonic::Streaming<ExchangeFrame>), tonic::Status> {
        let (tx, rx) = mpsc::channel::<ExchangeFrame>(16);
        let attach = Wire::Attach(Attach { session_id: self.session_id.clone(), id });
        let _ = tx.send(ExchangeFrame { kind: Some(attach) }).await;
        let mut client = self.client.clone();
        let inbound = client.exchange(ReceiverStream::new(rx)).await?.into_inner();
        Ok((tx, inbound))
    }

    async fn http(
        &self,
        request: proto::HttpRequest,
        local: SocketAddr,
        inbound: mpsc::Receiver<Wire>,
        tx: &mpsc::Sender<ExchangeFrame>,
        steal: bool,
    ) -> Result<Option<u16>, String> {
        let http2 = request.version == HttpVersion::Http2 as i32;
        if !http2 && steal && is_upgrade(&request) {
            return upgrade(&request, local, inbound, tx).await;
        }
        let req = build_request(&request, local, inbound)?;
        let client = self.clients.get(local, http2);
        let response = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach the local app at {local}: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        if !steal {
            // A copy: the answer only counts.
            let _ = response.into_body().collect().await;
            return Ok(Some(status));
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
            .map(|(n, v)| Header { name: n.as_str().to_owned(), value: Bytes::copy_from_slice(v.as_bytes()) })
            .collect();
        let end_of_stream = hyper::body::Body::is_end_stream(response.body());
        send(tx, Wire::Response(ResponseHead { status: u32::from(status), headers, end_of_stream })).await?;
        let mut body = response.into_body();
        while let Some(next) = body.frame().await {
            let next = next.map_err(|e| format!("the local app's response broke off: {e}"))?;
            match next.into_data() {
                Ok(data) => send(tx, Wire::Data(data)).await?,
                Err(other) => {
                    if let Ok(trailers) = other.into_trailers() {
                        send(tx, Wire::Trailers(proto::Trailers { headers: to_wire(&trailers) })).await?;
                    }
                }
            }
        }
        send(tx, Wire::End(End {})).await?;
        Ok(Some(status))
    }
}

/// Reads the sidecar's side of an exchange into a channel. The call is kept
/// open until the sidecar ends it: dropping it early would reset the stream
/// and lose what this side still has to send.
fn read_frames(mut inbound: tonic::Streaming<ExchangeFrame>) -> mpsc::Receiver<Wire> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut forwarding = true;
        while let Some(Ok(frame)) = inbound.next().await {
            if let (true, Some(kind)) = (forwarding, frame.kind) {
                forwarding = tx.send(kind).await.is_ok();
            }
        }
    });
    rx
}

fn frame(kind: Wire) -> ExchangeFrame {
    ExchangeFrame { kind: Some(kind) }
}

async fn send(tx: &mpsc::Sender<ExchangeFrame>, kind: Wire) -> Result<(), String> {
    tx.send(frame(kind)).await.map_err(|_| "the tunnel closed".to_owned())
}

fn to_wire(headers: &http::HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(n, v)| Header { name: n.as_str().to_owned(), value: Bytes::copy_from_slice(v.as_bytes()) })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The request for the local app, its body streamed from the exchange.
fn build_request(
    request: &proto::HttpRequest,
    local: SocketAddr,
    inbound: mpsc::Receiver<Wire>,
) -> Result<Request<crate::local::Body>, String> {
    let method =
        Method::from_bytes(request.method.as_bytes()).map_err(|_| format!("invalid method {:?}", request.method))?;
    let host = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(&h.value).ok())
        .map(str::to_owned);
    let uri: Uri = if request.uri.starts_with('/') {
        format!("http://{}{}", host.clone().unwrap_or_else(|| local.to_string()), request.uri)
    } else {
        request.uri.clone()
    }
    .parse()
    .map_err(|e| format!("invalid request target {:?}: {e}", request.uri))?;
    let mut builder = Request::builder().method(method).uri(uri);
    for h in &request.headers {
        let name = h.name.to_ascii_lowercase();
        // `te: trailers` is end to end (gRPC needs it); every other hop-by-hop header is not.
        let trailers_te = name == "te" && h.value.eq_ignore_ascii_case(b"trailers");
        if HOP_BY_HOP.contains(&name.as_str()) && !trailers_te {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&h.value)) {
            builder = builder.header(n, v);
        }
    }
    let body = if request.body_complete {
        http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        crate::inbound_body::InboundBody::new(inbound).boxed_unsync()
    };
    builder.body(body).map_err(|e| format!("cannot build the request: {e}"))
}

pub(crate) fn from_wire(headers: &[Header]) -> http::HeaderMap {
    headers
        .iter()
        .filter_map(|h| {
            Some((HeaderName::from_bytes(h.name.as_bytes()).ok()?, HeaderValue::from_bytes(&h.value).ok()?))
        })
        .collect()
}

fn is_upgrade(request: &proto::HttpRequest) -> bool {
    let has = |name: &str, token: &str| {
        request.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade")) && has("connection", "upgrade")
}

/// A stolen upgrade (WebSocket): the request goes to the local app on a
/// connection of its own; after its 101, bytes flow both ways as they are.
async fn upgrade(
    request: &proto::HttpRequest,
    local: SocketAddr,
    mut inbound: mpsc::Receiver<Wire>,
    tx: &mpsc::Sender<ExchangeFrame>,
) -> Result<Option<u16>, String> {
    let stream = connect_local(local).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with the local app failed: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    let method =
        Method::from_bytes(request.method.as_bytes()).map_err(|_| format!("invalid method {:?}", request.method))?;
    let mut builder = Request::builder().method(method).uri(request.uri.as_str());
    for h in &request.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(&h.value)) {
            builder = builder.header(n, v);
        }
    }
    let req =
        builder.body(http_body_util::Empty::<Bytes>::new()).map_err(|e| format!("cannot build the request: {e}"))?;
    let mut response = sender.send_request(req).await.map_err(|e| format!("the local app did not answer: {e}"))?;
    let status = response.status().as_u16();
    let headers = to_wire(response.headers());
    let end_of_stream = hyper::body::Body::is_end_stream(response.body());
    send(tx, Wire::Response(ResponseHead { status: u32::from(status), headers, end_of_stream })).await?;
    if status != 101 {
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !body.is_empty() {
            send(tx, Wire::Data(body)).await?;
        }
        send(tx, Wire::End(End {})).await?;
        return Ok(Some(status));
    }
    let upgraded = hyper::upgrade::on(&mut response).await.map_err(|e| format!("upgrade failed: {e}"))?;
    let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    let to_local = async move {
        while let Some(frame) = inbound.recv().await {
            match frame {
                Wire::Data(data) if wr.write_all(&data).await.is_err() => break,
                // The first End closes the (empty) request body; the tunnel's
                // own end is the channel closing.
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_local = pump_to_sidecar(&mut rd, tx);
    let (_, sent) = tokio::join!(to_local, from_local);
    sent.map(|()| Some(status))
}

/// Reads a local stream to its end, as Data frames and a final End.
async fn pump_to_sidecar<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    tx: &mpsc::Sender<ExchangeFrame>,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => send(tx, Wire::Data(Bytes::copy_from_slice(&buf[..n]))).await?,
        }
    }
    send(tx, Wire::End(End {})).await
}

async fn connect_local(local: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(local).await.map_err(|e| format!("cannot reach the local app at {local}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A whole TCP connection: bytes both ways until both sides are done. The
/// local app's bytes go back for a stolen connection; a copy's are read and
/// dropped, since the remote app answers that client (and the sidecar may
/// have ended the exchange already).
async fn tcp_stream(
    first: Bytes,
    local: SocketAddr,
    mut inbound: mpsc::Receiver<Wire>,
    tx: &mpsc::Sender<ExchangeFrame>,
    steal: bool,
) -> Result<Option<u16>, String> {
    let (mut rd, mut wr) = connect_local(local).await?.into_split();
    wr.write_all(&first).await.map_err(|e| e.to_string())?;
    let to_local = async move {
        while let Some(frame) = inbound.recv().await {
            match frame {
                Wire::Data(data) if wr.write_all(&data).await.is_err() => break,
                Wire::End(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_local = async {
        if steal {
            pump_to_sidecar(&mut rd, tx).await
        } else {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(1..) = rd.read(&mut buf).await {}
            Ok(())
        }
    };
    let (_, sent) = tokio::join!(to_local, from_local);
    sent.map(|()| None)
}
