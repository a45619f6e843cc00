//! A request body as it arrives over an exchange, for the local app. It is
//! complete only when the sidecar says so (End): a Failure, or an exchange
//! that closes before its End, is an error, so the local request is
//! aborted and the app never takes a truncated body for a whole one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use mirrord_api::proto::exchange_frame::Kind as Wire;
use tokio::sync::mpsc;

/// The frames of one exchange's request body.
#[derive(Debug)]
pub struct InboundBody {
    frames: mpsc::Receiver<Wire>,
    ended: bool,
}

impl InboundBody {
    pub fn new(frames: mpsc::Receiver<Wire>) -> Self {
        InboundBody { frames, ended: false }
    }
}

impl hyper::body::Body for InboundBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let cut = |why: String| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why);
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let frame = match std::task::ready!(self.frames.poll_recv(cx)) {
                Some(Wire::Data(data)) => Frame::data(data),
                Some(Wire::Trailers(t)) => Frame::trailers(crate::deliver::from_wire(&t.headers)),
                Some(Wire::End(_)) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Some(Wire::Failure(f)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(cut(format!("the request body was cut short: {}", f.message)))));
                }
                Some(_) => continue,
                None => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(cut("the exchange closed before the request body ended".into()))));
                }
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use mirrord_api::proto::{End, Failure};

    use super::*;

    async fn collect(frames: Vec<Wire>, close: bool) -> Result<Bytes, std::io::Error> {
        let (tx, rx) = mpsc::channel(8);
        for f in frames {
            tx.send(f).await.unwrap();
        }
        // The exchange stays open unless `close`.
        let _open = (!close).then_some(tx);
        InboundBody::new(rx).collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn complete_only_with_its_end() {
        let whole = collect(vec![Wire::Data("ab".into()), Wire::Data("c".into()), Wire::End(End {})], false).await;
        assert_eq!(whole.unwrap(), "abc");
        let failed =
            collect(vec![Wire::Data("ab".into()), Wire::Failure(Failure { message: "x".into() })], false).await;
        assert!(failed.unwrap_err().to_string().contains("cut short"));
        let closed = collect(vec![Wire::Data("ab".into())], true).await;
        assert!(closed.unwrap_err().to_string().contains("closed before the request body ended"));
    }
}
