//! App → client: responses in request order, bytes forwarded as read.

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::body::Body;
use super::head::{parse_response, Kind};
use super::{fill, forward_message, tunnel, Conn, Done, Message, Pending, Shared, INITIAL_BUFFER, MAX_BUFFER};
use crate::metrics::{status_class, Protocol, RequestLabels};

pub(super) async fn pump<R, W>(mut rd: R, mut wr: W, shared: &Shared, conn: &Conn) -> Done
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut counters: [Option<Counter>; 5] = Default::default();
    loop {
        if let Some(done) = due_refusal(&mut wr, shared, conn).await {
            return done;
        }
        if buf.is_empty() {
            // Between responses: wait for the app, or for a queued refusal.
            let read = tokio::select! {
                r = fill(&mut rd, &mut buf) => r,
                () = shared.changed.notified() => continue,
            };
            match read {
                Ok(0) => return if wr.shutdown().await.is_ok() { Done::Eof } else { Done::Close },
                Ok(_) => {}
                Err(_) => return Done::Close,
            }
        }
        let kind = match shared.queue().front() {
            Some(Pending::Response { kind, .. }) => *kind,
            _ => Kind::Normal,
        };
        let head = match parse_response(&buf, kind) {
            Ok(Some(head)) => head,
            Ok(None) if buf.len() < MAX_BUFFER => match fill(&mut rd, &mut buf).await {
                Ok(n) if n > 0 => continue,
                _ => return Done::Close,
            },
            Ok(None) | Err(_) => {
                debug!("unparseable response from the app; closing the connection");
                conn.metrics.error("upstream_response");
                return Done::Close;
            }
        };
        let informational = (100..200).contains(&head.status) && !head.tunnel;
        if !informational {
            if let Some(Pending::Response { switched: Some(tx), .. }) = shared.queue().pop_front() {
                let _ = tx.send(head.tunnel);
            }
            let idx = usize::from(head.status / 100).clamp(1, 5) - 1;
            counters[idx]
                .get_or_insert_with(|| {
                    let labels = RequestLabels {
                        port: conn.dst.port(),
                        protocol: Protocol::Http1,
                        status: status_class(head.status),
                    };
                    conn.metrics.requests.get_or_create(&labels).clone()
                })
                .inc();
        }
        let tunnel_after = head.tunnel;
        let until_close = head.body == Body::UntilClose;
        match forward_message(&mut rd, &mut wr, &mut buf, head.len, head.body).await {
            Message::Complete => {}
            // A body delimited by close has ended; anything else was cut short.
            Message::SourceClosed if until_close => return Done::Eof,
            Message::SourceClosed | Message::Failed => return Done::Close,
            Message::Invalid(e) => {
                debug!("invalid chunked response body from the app: {e}");
                conn.metrics.error("upstream_response");
                return Done::Close;
            }
        }
        if tunnel_after {
            return tunnel(&mut rd, &mut wr, &mut buf).await;
        }
    }
}

/// A refusal or close that is next in line is answered now.
async fn due_refusal<W: AsyncWrite + Unpin>(wr: &mut W, shared: &Shared, conn: &Conn) -> Option<Done> {
    let response = match shared.queue().front() {
        Some(Pending::Reject(r)) => {
            conn.metrics.error(r.reason());
            Some(r.response())
        }
        Some(Pending::Close) => None,
        _ => return None,
    };
    if let Some(bytes) = response {
        let _ = wr.write_all(&bytes).await;
    }
    let _ = wr.shutdown().await;
    Some(Done::Close)
}
