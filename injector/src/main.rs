use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrord_injector::metrics::Metrics;
use mirrord_injector::mutate::Settings;
use mirrord_injector::namespaces::Namespaces;
use mirrord_injector::server::{self, Webhook};
use mirrord_injector::tls;

/// An admission parses, copies and diffs a whole pod as JSON: mostly small
/// allocations, which glibc's allocator makes half the cost of.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    #[arg(long, value_name = "PATH", requires = "key_file", required_unless_present = "self_signed")]
    cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PATH", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Generate a CA and a serving certificate for the Service at start, and
    /// add the CA to the caBundle of the webhook configuration (in-cluster).
    #[arg(long, conflicts_with_all = ["cert_file", "key_file"])]
    self_signed: bool,
    /// The webhook's Service name (for --self-signed).
    #[arg(long, default_value = "mirrord-injector")]
    service: String,
    /// The webhook's namespace (for --self-signed); default: the pod's own
    /// (POD_NAMESPACE from the downward API), else "mirrord".
    #[arg(long)]
    namespace: Option<String>,
    /// The MutatingWebhookConfiguration to write the CA into (for --self-signed).
    #[arg(long, default_value = "mirrord-injector")]
    webhook_config: String,
    /// Image of mirrord-proxy, for the init container and the sidecar.
    #[arg(long, default_value = concat!("ghcr.io/metalbear-co/mirrord-proxy:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Inject the sidecar as a classic container (clusters older than 1.29)
    /// instead of a native sidecar.
    #[arg(long)]
    classic_sidecar: bool,
    /// Worker threads; 0: as many as the CPUs this process may run on. More
    /// threads than CPUs only add scheduler time slices to the tail latency.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MIRRORD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
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
    let certs = match (&args.cert_file, &args.key_file) {
        (Some(cert), Some(key)) => {
            let certs = tls::Certs::new(tls::load(cert, key)?);
            tls::watch(certs.clone(), cert.clone(), key.clone(), Duration::from_secs(2));
            certs
        }
        _ => self_signed(&args).await?,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let metrics = Arc::new(Metrics::default());
    let namespaces = Arc::new(Namespaces::default());
    match mirrord_injector::kube::Api::in_cluster() {
        Ok(api) => {
            tokio::spawn(mirrord_injector::namespaces::keep(api, namespaces.clone()));
        }
        Err(e) => tracing::warn!("namespace opt-in unavailable ({e}); pods opt in by their own annotation"),
    }
    let lookup = namespaces.clone();
    let webhook = Arc::new(Webhook {
        settings: Settings { image: args.image, native_sidecar: !args.classic_sidecar },
        metrics: metrics.clone(),
        namespace_opted_in: Box::new(move |ns| lookup.opted_in(ns)),
        in_flight: tokio::sync::Semaphore::new(mirrord_injector::server::MAX_IN_FLIGHT),
    });
    let admin =
        tokio::net::TcpListener::bind(args.admin).await.with_context(|| format!("cannot listen on {}", args.admin))?;
    tokio::spawn(server::admin(admin, metrics));
    tracing::info!(listen = %args.listen, admin = %args.admin, "webhook listening");
    server::serve(listener, acceptor, webhook, stop_signal()).await;
    Ok(())
}

/// Generates the certificate and publishes its CA, retrying the API a few times.
async fn self_signed(args: &Args) -> anyhow::Result<Arc<tls::Certs>> {
    let ns =
        args.namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok()).unwrap_or_else(|| "mirrord".to_owned());
    let (svc, ns) = (&args.service, &ns);
    let names =
        vec![format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local"), format!("{svc}.{ns}"), svc.clone()];
    let (key, ca) = tls::self_signed(names)?;
    let api = mirrord_injector::kube::Api::in_cluster()?;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=6 {
        match api.patch_ca_bundle(&args.webhook_config, &ca).await {
            Ok(n) => {
                tracing::info!(webhooks = n, config = %args.webhook_config, "CA published in the webhook configuration");
                return Ok(tls::Certs::new(key));
            }
            Err(e) if attempt < 6 => {
                tracing::warn!("publishing the CA failed (attempt {attempt}): {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e).context("cannot publish the CA; the webhook would not be trusted"),
        }
    }
    anyhow::bail!("cannot publish the CA")
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
