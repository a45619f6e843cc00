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
    /// Set to the serving certificate's expiry whenever it changes.
    expiry: std::sync::OnceLock<prometheus_client::metrics::gauge::Gauge>,
}

impl Certs {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Certs { current: RwLock::new(Arc::new(key)), expiry: std::sync::OnceLock::new() })
    }

    fn set(&self, key: CertifiedKey) {
        let expires = leaf_not_after(&key);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        if let (Some(gauge), Some(at)) = (self.expiry.get(), expires) {
            gauge.set(at);
        }
    }

    /// Keeps `gauge` at the serving certificate's expiry (Unix seconds).
    pub fn track_expiry(&self, gauge: prometheus_client::metrics::gauge::Gauge) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(at) = leaf_not_after(&current) {
            gauge.set(at);
        }
        let _ = self.expiry.set(gauge);
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

fn leaf_not_after(key: &CertifiedKey) -> Option<i64> {
    not_after(key.cert.first()?.as_ref())
}

/// A certificate's notAfter (RFC 5280 §4.1.2.5) as Unix seconds, read from
/// its DER: Certificate → TBSCertificate → [version], serial, signature,
/// issuer, validity → notAfter.
pub fn not_after(der: &[u8]) -> Option<i64> {
    /// One DER element: (tag, contents, what follows).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b)), &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = element(der)? else { return None };
    let (SEQUENCE, tbs, _) = element(certificate)? else { return None };
    let (tag, _, after) = element(tbs)?;
    let mut rest = if tag == 0xa0 { after } else { tbs };
    for expected in [0x02, SEQUENCE, SEQUENCE] {
        let (tag, _, after) = element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (SEQUENCE, validity, _) = element(rest)? else { return None };
    let (_, _, after) = element(validity)?;
    let (tag, time, _) = element(after)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSS, years 1950 to 2049.
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// The chain with its key, if the key is the certificate's: a reload that
/// reads a new key beside the old certificate (the files are not replaced
/// at the same instant) keeps the pair it serves instead of one that fails
/// every handshake.
fn certified(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Result<CertifiedKey, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| e.to_string())?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(pair),
        Err(e) => Err(format!("the private key is not the certificate's ({e})")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A key that is not the certificate's is refused, naming the key file.
    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (chain_a, key_a, _) = self_signed_pem(vec!["localhost".to_owned()]).unwrap();
        let (_, key_b, _) = self_signed_pem(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &chain_a).unwrap();
        std::fs::write(&key, &key_a).unwrap();
        assert!(load(&cert, &key).is_ok());
        std::fs::write(&key, &key_b).unwrap();
        let Err(e) = load(&cert, &key) else { panic!("a mismatched key was accepted") };
        let e = e.to_string();
        assert!(e.contains("not the certificate's") && e.contains("tls.key"), "{e}");
    }

    #[test]
    fn expiry_is_read_from_the_certificate() {
        let dates = [((2031, 5, 17), 1_936_742_400), ((2051, 1, 2), 2_556_230_400), ((1999, 12, 31), 946_598_400)];
        for ((y, m, d), unix) in dates {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["x".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(unix), "{y}-{m}-{d}");
        }
        assert_eq!(not_after(b"not a certificate"), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
