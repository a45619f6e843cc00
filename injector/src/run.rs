//! The injector process, assembled: certificates, the namespace watch, the
//! webhook and its admin port. `main` only parses flags and starts a runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::mutate::Settings;
use crate::namespaces::Namespaces;
use crate::server::{self, Webhook};
use crate::tls;

/// The mirrord admission webhook: adds the sidecar to opted-in pods.
#[derive(Debug, clap::Parser)]
#[command(name = "mirrord-injector", version)]
pub struct Args {
    /// HTTPS address of the webhook (`POST /mutate`).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (`/metrics`, `/ready`, `/live`).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin: SocketAddr,
    /// Serving certificate chain (PEM); reloaded when it changes.
    #[arg(long, value_name = "PATH", requires = "key_file", required_unless_present = "self_signed")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "PATH", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Generate a CA and a serving certificate for the Service at start, and
    /// add the CA to the caBundle of the webhook configuration (in-cluster).
    #[arg(long, conflicts_with_all = ["cert_file", "key_file"])]
    pub self_signed: bool,
    /// The webhook's Service name (for --self-signed).
    #[arg(long, default_value = "mirrord-injector")]
    pub service: String,
    /// The webhook's namespace (for --self-signed); default: the pod's own
    /// (POD_NAMESPACE from the downward API), else "mirrord".
    #[arg(long)]
    pub namespace: Option<String>,
    /// The MutatingWebhookConfiguration to write the CA into (for --self-signed).
    #[arg(long, default_value = "mirrord-injector")]
    pub webhook_config: String,
    /// Image of mirrord-proxy, for the init container and the sidecar.
    #[arg(long, default_value = concat!("ghcr.io/metalbear-co/mirrord-proxy:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Inject the sidecar as a classic container (clusters older than 1.29)
    /// instead of a native sidecar.
    #[arg(long)]
    pub classic_sidecar: bool,
    /// Worker threads; 0: as many as the CPUs this process may run on. More
    /// threads than CPUs only add scheduler time slices to the tail latency.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The injector, bound and ready to serve.
pub struct Injector {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    admin: TcpListener,
    webhook: Arc<Webhook>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector").field("listener", &self.listener).field("admin", &self.admin).finish_non_exhaustive()
    }
}

impl Injector {
    /// Loads or makes the certificates, starts the namespace watch (in a
    /// cluster), and binds both ports.
    pub async fn bind(args: Args) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let certs = match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => {
                let certs = tls::Certs::new(tls::load(cert, key)?);
                tls::watch(certs.clone(), cert.clone(), key.clone(), Duration::from_secs(2));
                certs
            }
            _ => self_signed(&args, &metrics).await?,
        };
        certs.track_expiry(metrics.certificate_expiry.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config()));
        let listener =
            TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
        let admin = TcpListener::bind(args.admin).await.with_context(|| format!("cannot listen on {}", args.admin))?;
        let namespaces = Arc::new(Namespaces::default());
        match crate::kube::Api::in_cluster() {
            Ok(api) => {
                tokio::spawn(crate::namespaces::keep(api, namespaces.clone(), metrics.clone()));
            }
            Err(e) => tracing::warn!("namespace opt-in unavailable ({e}); pods opt in by their own annotation"),
        }
        let webhook = Arc::new(Webhook {
            settings: Settings { image: args.image, native_sidecar: !args.classic_sidecar },
            metrics: metrics.clone(),
            namespace_opted_in: Box::new(move |ns| namespaces.opted_in(ns)),
            in_flight: tokio::sync::Semaphore::new(server::MAX_IN_FLIGHT),
        });
        Ok(Injector { listener, acceptor, admin, webhook, metrics })
    }

    /// The webhook's HTTPS address.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin address (`/metrics`, `/ready`, `/live`).
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `stop`, then lets open connections finish their requests.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) {
        if let (Ok(listen), Ok(admin)) = (self.listener.local_addr(), self.admin.local_addr()) {
            tracing::info!(%listen, %admin, "webhook listening");
        }
        tokio::spawn(server::admin(self.admin, self.metrics));
        server::serve(self.listener, self.acceptor, self.webhook, stop).await;
    }
}

/// Generates the certificate and publishes its CA, retrying the API a few times.
async fn self_signed(args: &Args, metrics: &Metrics) -> anyhow::Result<Arc<tls::Certs>> {
    let ns =
        args.namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok()).unwrap_or_else(|| "mirrord".to_owned());
    let (svc, ns) = (&args.service, &ns);
    let names =
        vec![format!("{svc}.{ns}.svc"), format!("{svc}.{ns}.svc.cluster.local"), format!("{svc}.{ns}"), svc.clone()];
    let (key, ca) = tls::self_signed(names)?;
    let api = crate::kube::Api::in_cluster()?;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=6 {
        match api.patch_ca_bundle(&args.webhook_config, &ca).await {
            Ok(n) => {
                tracing::info!(webhooks = n, config = %args.webhook_config, "CA published in the webhook configuration");
                return Ok(tls::Certs::new(key));
            }
            Err(e) if attempt < 6 => {
                metrics.api_error(crate::metrics::ApiCall::PatchCaBundle);
                tracing::warn!("publishing the CA failed (attempt {attempt}): {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                metrics.api_error(crate::metrics::ApiCall::PatchCaBundle);
                return Err(e).context("cannot publish the CA; the webhook would not be trusted");
            }
        }
    }
    anyhow::bail!("cannot publish the CA")
}
