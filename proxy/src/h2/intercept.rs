//! One HTTP/2 stream meeting the sessions: stolen (the session answers),
//! mirrored (copies on the side), or passed to the app.

use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use tokio::sync::mpsc;

use super::body::{headers_from_wire, headers_to_wire, to_wire, FromSession, H2Body, Replay, Tee};
use super::{bad_gateway, Body, Proxy};
use crate::metrics::{Metrics, Route};
use crate::session::wire::{Frame as Wire, HttpRequest, HttpVersion};
use crate::session::{route_request, Copies, Exchange, RequestView, Routed, BODY_FILTER_CAP, BODY_FILTER_WAIT};

/// Connection-specific headers, which HTTP/2 forbids.
const CONNECTION_SPECIFIC: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// Routes one stream and answers it. When a session's body filter applies
/// on this port, the body is read ahead first (up to [`BODY_FILTER_CAP`]).
pub(super) async fn route(proxy: &Proxy, req: Request<H2Body>) -> (Response<Body>, Route) {
    let port = proxy.upstream.dst().port();
    let (parts, body) = req.into_parts();
    let mut body = Replay::new(body);
    let read = match proxy.inbound.sessions.need_body(port) {
        true => body.read_ahead(BODY_FILTER_CAP, BODY_FILTER_WAIT).await,
        false => None,
    };
    let pairs: Vec<(&str, &[u8])> = parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let view = RequestView { method: parts.method.as_str(), path, headers: &pairs, body: read.as_deref() };
    let announce = || HttpRequest {
        method: parts.method.as_str().to_owned(),
        uri: parts.uri.to_string(),
        version: HttpVersion::Http2,
        headers: headers_to_wire(&parts.headers),
        body_complete: http_body::Body::is_end_stream(&body),
    };
    let Routed { steal: stolen, copies } =
        route_request(&proxy.inbound.sessions, port, view, announce, &proxy.inbound.metrics).await;
    let req = Request::from_parts(parts, body);
    match stolen {
        Some(exchange) => (steal(req, exchange, copies, proxy.inbound.metrics.clone()).await, Route::Stolen),
        None => {
            let route = if copies.mirrored() { Route::Mirrored } else { Route::Passthrough };
            let metrics = proxy.inbound.metrics.clone();
            (proxy.to_app(req.map(|inner| Either::Right(Tee { inner, copies, metrics }))).await, route)
        }
    }
}

/// The session answers. The request body streams to it from a task of its
/// own, so the answer can begin before the request ends (bidi streaming).
async fn steal(
    req: Request<Replay>,
    exchange: Exchange,
    copies: Copies,
    metrics: std::sync::Arc<Metrics>,
) -> Response<Body> {
    let Exchange { to_client, mut from_client } = exchange;
    let keep_open = to_client.clone();
    tokio::spawn(request_body(req.into_body(), to_client, copies, metrics));
    let head = match from_client.recv().await {
        Some(Wire::Response(head)) => head,
        Some(Wire::Failure(message)) => return bad_gateway(&format!("the developer's side failed: {message}")),
        _ => return bad_gateway("the session ended before answering this request"),
    };
    let done = head.end_of_stream;
    let mut resp =
        Response::new(Either::Right(Either::Right(FromSession { from_client, _keep_open: keep_open, done })));
    *resp.status_mut() =
        StatusCode::from_u16(u16::try_from(head.status).unwrap_or(502)).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers: HeaderMap = headers_from_wire(&head.headers);
    for name in CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    if headers.get("te").is_some_and(|v| v != "trailers") {
        headers.remove("te");
    }
    *resp.headers_mut() = headers;
    resp
}

async fn request_body(
    mut body: Replay,
    to_client: mpsc::Sender<Wire>,
    mut copies: Copies,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut to_client = Some(to_client);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        let Some(wire) = to_wire(&frame) else { continue };
        copies.send(&wire, &metrics);
        if let Some(tx) = &to_client {
            if tx.send(wire).await.is_err() {
                to_client = None;
            }
        }
    }
    copies.send(&Wire::End, &metrics);
    if let Some(tx) = to_client {
        let _ = tx.send(Wire::End).await;
    }
}
