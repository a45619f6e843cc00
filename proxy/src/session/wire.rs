//! What the data path and the sessions exchange, in the sidecar's own terms;
//! the tunnel converts to and from the wire (protobuf) types at its edge
//! ([`Frame::from_wire`], [`Frame::into_wire`], [`Announced::into_wire`]).

use bytes::Bytes;

use crate::proto::{self, exchange_frame};

/// A header field as it was received: name as sent, value as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// A session's response head (steal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u32,
    pub headers: Vec<Header>,
    /// No body and no trailers follow (an HTTP/2 HEADERS frame that ended
    /// the stream); `End` still comes.
    pub end_of_stream: bool,
}

/// One frame of an exchange, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// From a session: the local app's response head.
    Response(ResponseHead),
    /// Body bytes (HTTP) or stream bytes (TCP, upgraded HTTP).
    Data(Bytes),
    /// Trailing headers (gRPC status).
    Trailers(Vec<Header>),
    /// No more bytes in this direction.
    End,
    /// The exchange failed; the message says why.
    Failure(String),
}

/// The HTTP versions a request can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// A request, announced to a session when it is stolen or copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// As sent: origin-form path and query for HTTP/1, the full URI for HTTP/2.
    pub uri: String,
    pub version: HttpVersion,
    pub headers: Vec<Header>,
    /// The request has no body (nothing follows but `End`).
    pub body_complete: bool,
}

/// What an exchange carries, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    Http(HttpRequest),
    /// A raw TCP connection, with the bytes the client already sent.
    Tcp(Bytes),
}

/// Whether a session takes the original or gets a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Steal,
    Mirror,
}

impl Header {
    fn from_wire(h: proto::Header) -> Self {
        Header { name: h.name, value: h.value }
    }

    fn into_wire(self) -> proto::Header {
        proto::Header { name: self.name, value: self.value }
    }
}

fn headers_from_wire(headers: Vec<proto::Header>) -> Vec<Header> {
    headers.into_iter().map(Header::from_wire).collect()
}

fn headers_into_wire(headers: Vec<Header>) -> Vec<proto::Header> {
    headers.into_iter().map(Header::into_wire).collect()
}

impl Frame {
    /// A frame from a client; `None` for an Attach (only valid first, and
    /// handled by the tunnel) or an empty frame.
    pub fn from_wire(kind: exchange_frame::Kind) -> Option<Self> {
        Some(match kind {
            exchange_frame::Kind::Attach(_) => return None,
            exchange_frame::Kind::Response(r) => Frame::Response(ResponseHead {
                status: r.status,
                headers: headers_from_wire(r.headers),
                end_of_stream: r.end_of_stream,
            }),
            exchange_frame::Kind::Data(d) => Frame::Data(d),
            exchange_frame::Kind::Trailers(t) => Frame::Trailers(headers_from_wire(t.headers)),
            exchange_frame::Kind::End(_) => Frame::End,
            exchange_frame::Kind::Failure(f) => Frame::Failure(f.message),
        })
    }

    pub fn into_wire(self) -> exchange_frame::Kind {
        match self {
            Frame::Response(r) => exchange_frame::Kind::Response(proto::ResponseHead {
                status: r.status,
                headers: headers_into_wire(r.headers),
                end_of_stream: r.end_of_stream,
            }),
            Frame::Data(d) => exchange_frame::Kind::Data(d),
            Frame::Trailers(h) => exchange_frame::Kind::Trailers(proto::Trailers { headers: headers_into_wire(h) }),
            Frame::End => exchange_frame::Kind::End(proto::End {}),
            Frame::Failure(message) => exchange_frame::Kind::Failure(proto::Failure { message }),
        }
    }
}

impl Announced {
    pub fn into_wire(self) -> proto::incoming::Kind {
        match self {
            Announced::Http(r) => proto::incoming::Kind::Http(proto::HttpRequest {
                method: r.method,
                uri: r.uri,
                version: match r.version {
                    HttpVersion::Http10 => proto::HttpVersion::Http10,
                    HttpVersion::Http11 => proto::HttpVersion::Http11,
                    HttpVersion::Http2 => proto::HttpVersion::Http2,
                } as i32,
                headers: headers_into_wire(r.headers),
                body: Bytes::new(),
                body_complete: r.body_complete,
            }),
            Announced::Tcp(data) => proto::incoming::Kind::Tcp(proto::TcpConnection { data }),
        }
    }
}

impl Mode {
    pub fn into_wire(self) -> proto::Mode {
        match self {
            Mode::Steal => proto::Mode::Steal,
            Mode::Mirror => proto::Mode::Mirror,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_wire_unchanged() {
        let h = || vec![Header { name: "Grpc-Status".into(), value: Bytes::from_static(b"0") }];
        let frames = [
            Frame::Response(ResponseHead { status: 201, headers: h(), end_of_stream: true }),
            Frame::Data(Bytes::from_static(b"\0body")),
            Frame::Trailers(h()),
            Frame::End,
            Frame::Failure("cut short".into()),
        ];
        for frame in frames {
            assert_eq!(Frame::from_wire(frame.clone().into_wire()), Some(frame));
        }
        let attach = exchange_frame::Kind::Attach(proto::Attach { session_id: "s".into(), id: 1 });
        assert_eq!(Frame::from_wire(attach), None);
    }
}
