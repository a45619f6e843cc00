//! Connections to the developer's local app: one pooled HTTP/1 client and one
//! HTTP/2 (prior knowledge) client per local port, always dialling
//! 127.0.0.1:PORT whatever the request's authority says, so the local app
//! sees the request's original Host / :authority.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Request bodies sent to the local app.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Dials one fixed address, for every URI.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub SocketAddr);

impl tower_service::Service<Uri> for Fixed {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// Pooled clients per (local port, HTTP/2?).
#[derive(Debug, Default)]
pub struct Clients {
    clients: Mutex<HashMap<(u16, bool), Client<Fixed, Body>>>,
}

impl Clients {
    pub fn get(&self, addr: SocketAddr, http2: bool) -> Client<Fixed, Body> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry((addr.port(), http2))
            .or_insert_with(|| {
                Client::builder(TokioExecutor::new()).http2_only(http2).set_host(false).build(Fixed(addr))
            })
            .clone()
    }
}
