//! `mirrord-cli demo`: mirrord end to end on this machine, no cluster and no
//! root. The real sidecar runs in explicit mode on loopback in front of a
//! "pod" app; the real session client connects to it and delivers to a
//! "laptop" app; a traffic generator shows who answers: first with no
//! session, then mirroring, then stealing only requests with a header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_proxy::run::{RunArgs, Running};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::connect::{self, ConnectArgs};
use crate::status::LogFormat;
use crate::ExitCode;

/// Runs the demo; exits by itself.
pub async fn run() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            eprintln!("error: demo failed: {e:#}");
            ExitCode::Failure
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    let pod_hits = Arc::new(AtomicUsize::new(0));
    let laptop_hits = Arc::new(AtomicUsize::new(0));
    let pod_app = app("the pod's app", pod_hits.clone()).await?;
    let laptop_app = app("your local app", laptop_hits.clone()).await?;
    let Sidecar { addr: sidecar, tunnel, token, stop: stop_sidecar } = sidecar(pod_app).await?;
    println!("pod app on {pod_app}, sidecar in front of it on {sidecar}, local app on {laptop_app}\n");

    println!("1. No session: the pod's app answers everything.");
    traffic(sidecar).await?;

    let mirror = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"mirror","port_mapping":[[{},{}]]}}}}}}}}"#,
        laptop_app.port(),
        pod_app.port()
    );
    println!("\n2. Mirror session: the pod's app still answers; your local app gets a copy of each request.");
    let before = laptop_hits.load(Ordering::SeqCst);
    let mirrored = async {
        traffic(sidecar).await?;
        // Copies travel on their own, a few milliseconds behind the answers.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while laptop_hits.load(Ordering::SeqCst) - before < REQUESTS && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    };
    with_session(tunnel, &token, &mirror, mirrored).await?;
    println!("   your local app received {} copies", laptop_hits.load(Ordering::SeqCst) - before);

    let steal = format!(
        r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","http_filter":{{"header_filter":"x-user: demo","ports":[{}]}},"port_mapping":[[{},{}]]}}}}}}}}"#,
        pod_app.port(),
        laptop_app.port(),
        pod_app.port()
    );
    println!("\n3. Steal session with a header filter: requests with `x-user: demo` go to your local app, the rest to the pod.");
    with_session(tunnel, &token, &steal, traffic(sidecar)).await?;

    println!("\n4. Session closed: the pod's app answers everything again.");
    traffic(sidecar).await?;
    let _ = stop_sidecar.send(());
    println!(
        "\ndone: the pod's app answered {} requests, your local app {}.",
        pod_hits.load(Ordering::SeqCst),
        laptop_hits.load(Ordering::SeqCst)
    );
    Ok(())
}

/// A small HTTP app that says who it is.
async fn app(name: &'static str, hits: Arc<AtomicUsize>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let body = format!("{name} answered {} {}", req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// The demo's sidecar: where it listens, its tunnel and session token, and
/// how to stop it.
struct Sidecar {
    addr: SocketAddr,
    tunnel: SocketAddr,
    token: Option<String>,
    stop: oneshot::Sender<()>,
}

/// The real sidecar, explicit mode, every port chosen by the kernel, with a
/// session token of its own.
async fn sidecar(upstream: SocketAddr) -> anyhow::Result<Sidecar> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }
    let port = upstream.port().to_string();
    let upstream = upstream.to_string();
    let argv = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--tunnel",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--ports",
        &port,
    ];
    let running = Running::bind(&Flags::try_parse_from(argv)?.run)?;
    let inbound = running.inbound_addrs()[0];
    let tunnel = running.tunnel_addr().ok_or_else(|| anyhow::anyhow!("no tunnel address"))?;
    let token = running.session_token().map(str::to_owned);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(running.serve(async {
        let _ = stopped.await;
    }));
    Ok(Sidecar { addr: inbound, tunnel, token, stop })
}

/// Runs `during` inside a session with `config`, then ends the session the
/// way Ctrl-C does.
async fn with_session(
    tunnel: SocketAddr,
    token: &Option<String>,
    config: &str,
    during: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("mirrord-demo-{}.json", std::process::id()));
    std::fs::write(&path, config)?;
    let (open, opened) = oneshot::channel();
    let args = ConnectArgs {
        target: None,
        cluster: Default::default(),
        addr: Some(tunnel.to_string()),
        config: Some(path.clone()),
        token: token.clone(),
        name: Some("demo".to_owned()),
        local_host: [127, 0, 0, 1].into(),
        log_format: LogFormat::Text,
        on_open: Some(open),
        command: Vec::new(),
    };
    let (end, ended) = oneshot::channel::<()>();
    let session = tokio::spawn(connect::run(args, async {
        let _ = ended.await;
    }));
    let result = match opened.await {
        Ok(()) => during.await,
        Err(_) => Err(anyhow::anyhow!("the session did not open")),
    };
    let _ = end.send(());
    let code = session.await?;
    let _ = std::fs::remove_file(&path);
    anyhow::ensure!(code == ExitCode::Ok, "the session ended with {code:?}");
    result
}

/// The `x-user` header of each request `traffic` sends (none when empty).
const USERS: [&str; 4] = ["", "demo", "", "demo"];
const REQUESTS: usize = USERS.len();

/// Four requests, two with the demo header, and who answered each.
async fn traffic(sidecar: SocketAddr) -> anyhow::Result<()> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for (i, user) in USERS.iter().enumerate() {
        let mut req = Request::get(format!("http://{sidecar}/orders/{i}"));
        if !user.is_empty() {
            req = req.header("x-user", *user);
        }
        let resp = client.request(req.body(Empty::new())?).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        let with = if user.is_empty() { "                 " } else { " (x-user: demo)  " };
        println!("   GET /orders/{i}{with} -> {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}
