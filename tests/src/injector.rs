//! The real `mirrord-injector` on loopback, serving its webhook over HTTPS
//! with a certificate made by openssl (`CN=localhost`), which is also the CA
//! a client verifies it with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_get, workspace_bin};

/// A running injector; killed and reaped when dropped.
#[derive(Debug)]
pub struct Injector {
    /// The webhook (HTTPS).
    pub listen: SocketAddr,
    /// `/metrics`, `/ready`.
    pub admin: SocketAddr,
    /// Its certificate, the CA to verify it with.
    pub cert: PathBuf,
    child: Child,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Injector {
    /// Starts it with a certificate valid for `days`, files in `dir`.
    pub fn start(dir: &Path, days: u32) -> Injector {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days"])
            .arg(days.to_string())
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(workspace_bin("mirrord-injector"))
            .arg(format!("--listen={listen}"))
            .arg(format!("--admin={admin}"))
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg("--image=mirrord-proxy:test")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mirrord-injector");
        let injector = Injector { listen, admin, cert, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !http_get(admin, "/ready").is_ok_and(|(status, _)| status == 200) {
            assert!(Instant::now() < deadline, "the injector did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        injector
    }

    /// The webhook's URL, by the name its certificate carries.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/mutate", self.listen.port())
    }
}
