//! Per-request routing on an HTTP/1 connection: which session, if any, steals
//! the request, and which get a copy.

use bytes::Bytes;

use super::head::{Fields, RequestHead};
use super::Conn;
use crate::session::wire::{Header, HttpRequest, HttpVersion};
use crate::session::{route_request, RequestView, Routed};

/// Decides and opens the exchanges for the request whose head is `head_bytes`
/// (parsed into `head` and `fields`). `body` is the whole request body when
/// it was read for body filters.
pub(super) async fn route(
    conn: &Conn,
    head_bytes: &[u8],
    head: &RequestHead,
    fields: &Fields,
    body: Option<&[u8]>,
) -> Routed {
    let (method, uri) = (fields.method(head_bytes), fields.target(head_bytes));
    let pairs: Vec<(&str, &[u8])> = fields.headers(head_bytes).collect();
    let announce = || HttpRequest {
        method: method.to_owned(),
        uri: uri.to_owned(),
        version: if head.http10 { HttpVersion::Http10 } else { HttpVersion::Http11 },
        headers: pairs
            .iter()
            .map(|(n, v)| Header { name: (*n).to_owned(), value: Bytes::copy_from_slice(v) })
            .collect(),
        body_complete: head.body == super::body::Body::Empty,
    };
    let view = RequestView { method, path: uri, headers: &pairs, body };
    route_request(&conn.inbound.sessions, conn.dst.port(), view, announce, &conn.inbound.metrics).await
}
