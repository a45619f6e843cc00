use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrord_injector::metrics::Metrics;
use mirrord_injector::mutate::Settings;
use mirrord_injector::server::{self, Webhook};
use mirrord_injector::tls;

/// The mirrord admission webhook: adds the sidecar to opted-in pods.
#[derive(Debug, Parser)]
#[command(name = "mirrord-injector", version)]
struct Args {
    /// HTTPS address of the webhook (`POST /mutate`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Plain-HTTP admin address (`/metrics`, `/ready`, `/live`).
    #[arg(long, default_value = "0.0.0.0:9090")]
    admin: SocketAddr,
    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(long, value_name = "PATH")]
    cert_file: PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,
    /// Image of mirrord-proxy, for the init container and the sidecar.
    #[arg(long, default_value = concat!("ghcr.io/metalbear-co/mirrord-proxy:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Inject the sidecar as a classic container (clusters older than 1.29)
    /// instead of a native sidecar.
    #[arg(long)]
    classic_sidecar: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MIRRORD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirrord-injector: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrord-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let certs = tls::Certs::new(tls::load(&args.cert_file, &args.key_file)?);
    tls::watch(certs.clone(), args.cert_file.clone(), args.key_file.clone(), Duration::from_secs(2));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics = Arc::new(Metrics::default());
    let webhook = Arc::new(Webhook {
        settings: Settings { image: args.image, native_sidecar: !args.classic_sidecar },
        metrics: metrics.clone(),
        // Namespace opt-in needs the namespace watch; pods opt in by annotation.
        namespace_opted_in: Box::new(|_| false),
    });
    let admin =
        tokio::net::TcpListener::bind(args.admin).await.with_context(|| format!("cannot listen on {}", args.admin))?;
    tokio::spawn(server::admin(admin, metrics));
    tracing::info!(listen = %args.listen, admin = %args.admin, "webhook listening");
    server::serve(listener, acceptor, webhook, stop_signal()).await;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    } else {
        std::future::pending::<()>().await;
    }
}
