//! The webhook's serving certificate: from PEM files, reloaded when they
//! change (cert-manager and Secret rotations), or generated at start with a
//! CA of its own (`--self-signed`). The certificate is chosen per handshake,
//! so a reload never fails a connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read certificate {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{0}: expected a PEM certificate chain")]
    NoCertificate(PathBuf),
    #[error("unsupported private key in {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// rcgen's message (kept as text: an error that both prints and chains
    /// its cause shows it twice in `{:#}`).
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("cannot use the generated key: {0}")]
    Sign(String),
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e.to_string())
    }
}

/// The certificate in use; swapped whole on reload.
#[derive(Debug)]
pub struct Certs {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certs {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Certs { current: RwLock::new(Arc::new(key)) })
    }

    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }

    /// A rustls server config that picks the current certificate per handshake.
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Loads a chain and its key from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let read = |path: &Path, e: &dyn std::fmt::Display| Error::Read { path: path.to_owned(), message: e.to_string() };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(cert, &e))?;
    if chain.is_empty() {
        return Err(Error::NoCertificate(cert.to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?;
    certified(chain, &private).map_err(|message| Error::Key { path: key.to_owned(), message })
}

fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Result<CertifiedKey, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(chain, signing))
}

/// A new CA and a serving certificate for `dns_names`, signed by it, as
/// PEM: (certificate chain, private key, CA certificate for the caBundle).
pub fn self_signed_pem(dns_names: Vec<String>) -> Result<(String, String, String), Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "mirrord-injector CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(dns_names.clone())?;
    leaf_params.distinguished_name.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
    let leaf = leaf_params.signed_by(&leaf_key, &Issuer::new(ca_params, &ca_key))?;
    Ok((format!("{}{}", leaf.pem(), ca.pem()), leaf_key.serialize_pem(), ca.pem()))
}

/// [`self_signed_pem`], ready to serve: the serving key and the CA (PEM).
pub fn self_signed(dns_names: Vec<String>) -> Result<(CertifiedKey, String), Error> {
    let (chain_pem, key_pem, ca_pem) = self_signed_pem(dns_names)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Sign(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Sign(e.to_string()))?;
    Ok((certified(chain, &key).map_err(Error::Sign)?, ca_pem))
}

/// Reloads the files whenever either changes; a bad new pair is reported
/// and the current certificate kept.
pub fn watch(certs: Arc<Certs>, cert: PathBuf, key: PathBuf, every: Duration) {
    let stamp = move |cert: &Path, key: &Path| -> Option<(SystemTime, SystemTime)> {
        Some((std::fs::metadata(cert).ok()?.modified().ok()?, std::fs::metadata(key).ok()?.modified().ok()?))
    };
    tokio::spawn(async move {
        let mut last = stamp(&cert, &key);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = stamp(&cert, &key);
            if now == last {
                continue;
            }
            match load(&cert, &key) {
                Ok(new) => {
                    certs.set(new);
                    last = now;
                    info!(cert = %cert.display(), "serving certificate reloaded");
                }
                Err(e) => warn!("keeping the current certificate: {e}"),
            }
        }
    });
}
