//! Client → app: one request at a time, head checked, bytes forwarded as read.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use tracing::debug;

use super::head::{parse_request, Kind, Reject, RequestHead};
use super::{fill, forward_message, tunnel, Conn, Done, Message, Pending, Shared, INITIAL_BUFFER};

enum Next {
    Head(RequestHead),
    Eof,
    Reject(Reject),
    Shutdown,
    Failed,
}

pub(super) async fn pump<R, W>(mut rd: R, mut wr: W, prefix: Bytes, shared: &Shared, conn: &Conn) -> Done
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    let mut shutdown = conn.shutdown.clone();
    loop {
        let head = match next_head(&mut rd, &mut buf, conn, &mut shutdown).await {
            Next::Head(head) => head,
            Next::Eof => return if wr.shutdown().await.is_ok() { Done::Eof } else { Done::Close },
            Next::Reject(r) => {
                debug!(reason = r.reason(), "request refused");
                shared.push(Pending::Reject(r));
                return Done::Eof;
            }
            Next::Shutdown => {
                shared.push(Pending::Close);
                return Done::Eof;
            }
            Next::Failed => return Done::Close,
        };
        let (switched_tx, switched_rx) = match head.kind {
            Kind::Upgrade | Kind::Connect => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        shared.push(Pending::Response { kind: head.kind, switched: switched_tx });
        match forward_message(&mut rd, &mut wr, &mut buf, head.len, head.body).await {
            Message::Complete => {}
            // The client gave up mid-body; its FIN was passed on.
            Message::SourceClosed => return Done::Eof,
            Message::Invalid(e) => {
                // The head is already with the app: the only safe answer to a
                // broken body is to end the connection.
                debug!("invalid chunked request body: {e}");
                conn.metrics.error(Reject::InvalidChunkedBody.reason());
                return Done::Close;
            }
            Message::Failed => return Done::Close,
        }
        if let Some(rx) = switched_rx {
            // Nothing after an upgrade request may be parsed as HTTP until the
            // app has said whether it switched protocols.
            if rx.await.unwrap_or(false) {
                return tunnel(&mut rd, &mut wr, &mut buf).await;
            }
        }
    }
}

/// Reads until a complete request head, enforcing the size and time limits.
async fn next_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    conn: &Conn,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Next {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse_request(buf) {
                Ok(Some(head)) => return Next::Head(head),
                Err(r) => return Next::Reject(r),
                Ok(None) if buf.len() >= conn.limits.max_head => return Next::Reject(Reject::HeadTooLarge),
                Ok(None) => {}
            }
        }
        let read = match deadline {
            // Idle between requests: wait for the next one, or for shutdown.
            None if buf.is_empty() => tokio::select! {
                r = fill(rd, buf) => r,
                () = shutdown.signalled() => return Next::Shutdown,
            },
            _ => {
                let at = *deadline.get_or_insert_with(|| Instant::now() + conn.limits.header_read_timeout);
                match timeout_at(at, fill(rd, buf)).await {
                    Ok(r) => r,
                    Err(_) => return Next::Reject(Reject::HeadTimeout),
                }
            }
        };
        match read {
            Ok(0) => return Next::Eof,
            Ok(_) => {}
            Err(e) => {
                debug!("client read failed: {e}");
                return Next::Failed;
            }
        }
    }
}
