//! The "app" of the pod simulation: servers that report exactly what they
//! received, so that tests can compare what the app sees with and without
//! the sidecar in front of it.
//!
//! - `--http ADDR`: HTTP/1.1 and h2c (prior knowledge) on one port. Answers
//!   with a JSON echo of the request (method, path, version, headers, body,
//!   peer address), and the peer's port in `x-peer-port` (which connection
//!   of the proxy in front carried it). `/slow/MS` waits MS milliseconds
//!   first; `/status/N` answers N.
//! - `--tcp-echo ADDR`: echoes bytes; on the client's FIN, finishes and closes.
//! - `--greeting ADDR`: a server-first protocol: sends a greeting line on
//!   accept, then echoes.
//! - `--grpc ADDR`: gRPC echo over h2c: every request's messages come back
//!   as they arrive (unary and bidirectional streaming alike), then
//!   `grpc-status: 0`.
//!
//! Prints `listening KIND ADDR` per listener, then `ready`, on stdout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    http: Vec<SocketAddr>,
    #[arg(long)]
    tcp_echo: Vec<SocketAddr>,
    #[arg(long)]
    greeting: Vec<SocketAddr>,
    #[arg(long)]
    grpc: Vec<SocketAddr>,
    /// Reported in every HTTP answer as "app", to tell two instances apart.
    #[arg(long, default_value = "app")]
    name: String,
    /// Wait this long before every HTTP answer (a slow consumer).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name: &'static str = Box::leak(args.name.clone().into_boxed_str());
    DELAY_MS.store(args.delay_ms, std::sync::atomic::Ordering::Relaxed);
    let mut tasks = Vec::new();
    let kinds = args.http.iter().map(|a| (a, Kind::Http));
    let kinds = kinds.chain(args.tcp_echo.iter().map(|a| (a, Kind::Echo)));
    let kinds = kinds.chain(args.grpc.iter().map(|a| (a, Kind::Grpc)));
    for (addr, kind) in kinds.chain(args.greeting.iter().map(|a| (a, Kind::Greeting))) {
        let listener = TcpListener::bind(addr).await?;
        // Tests bind port 0 and read the real address from here.
        println!("listening {kind:?} {}", listener.local_addr()?);
        tasks.push(tokio::spawn(serve(listener, kind, name)));
    }
    println!("ready");
    for t in tasks {
        t.await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Http,
    Echo,
    Greeting,
    Grpc,
}

async fn serve(listener: TcpListener, kind: Kind, name: &'static str) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            match kind {
                Kind::Http => drop(http(stream, peer, name).await),
                Kind::Echo => drop(echo(stream, None).await),
                Kind::Grpc => drop(grpc(stream).await),
                Kind::Greeting => drop(echo(stream, Some(b"220 sample-app ready\r\n")).await),
            }
        });
    }
}

async fn echo(mut stream: TcpStream, greeting: Option<&[u8]>) -> std::io::Result<()> {
    if let Some(g) = greeting {
        stream.write_all(g).await?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}

async fn http(stream: TcpStream, peer: SocketAddr, name: &'static str) -> anyhow::Result<()> {
    let svc = hyper::service::service_fn(move |req| respond(req, peer, name));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that sends its last requests and then a FIN still gets
    // every answer (hyper would otherwise drop the ones still unanswered).
    builder.http1().half_close(true);
    builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn grpc(stream: TcpStream) -> anyhow::Result<()> {
    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
        let mut resp = Response::new(GrpcEcho { body: req.into_body(), ended: false });
        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(resp)
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        // As gRPC servers answer: without a `date` field.
        .auto_date_header(false)
        .serve_connection(TokioIo::new(stream), svc)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The request's bytes (its gRPC messages, framed as they came) sent back
/// as they arrive, then the trailers of a successful call.
struct GrpcEcho {
    body: Incoming,
    ended: bool,
}

impl hyper::body::Body for GrpcEcho {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                    // The request's own trailers: not echoed.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.ended = true;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

static DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn respond(req: Request<Incoming>, peer: SocketAddr, name: &str) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = DELAY_MS.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path.strip_prefix("/status/").and_then(|s| s.parse().ok()).unwrap_or(200);
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "peer_ip": peer.ip().to_string(),
        "app": name,
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("x-sample-app", http::HeaderValue::from_static("1"));
    resp.headers_mut().insert("x-peer-port", http::HeaderValue::from(peer.port()));
    Ok(resp)
}
