//! Secrets: random session ids, and comparing presented tokens and ids
//! without revealing through timing how much of them matched.

/// Compares without an early exit, so timing does not reveal a prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

/// 128 random bits from the kernel, in hex.
pub fn random_id() -> std::io::Result<String> {
    mirrord_api::random_hex(16)
}

/// What a session must present to open.
#[derive(Debug, Clone)]
pub enum SessionToken {
    /// The token in a file (an injected pod's mounted Secret).
    File(TokenFile),
    /// A token made for this run (explicit mode without `--token-file`).
    Generated(String),
}

impl SessionToken {
    /// Accepts `presented` when it equals the token (surrounding whitespace
    /// ignored).
    pub fn check(&self, presented: &str) -> Result<(), TokenError> {
        match self {
            SessionToken::File(file) => file.check(presented),
            SessionToken::Generated(token) if constant_time_eq(token.as_bytes(), presented.trim_ascii().as_bytes()) => {
                Ok(())
            }
            SessionToken::Generated(_) => Err(TokenError::Generated),
        }
    }
}

/// The session token, read from its file at every session open: the file is
/// a mounted Secret, which the kubelet swaps in place when the Secret is
/// rotated, so a new token takes effect without a restart (sessions already
/// open stay open).
#[derive(Debug, Clone)]
pub struct TokenFile(pub std::path::PathBuf);

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "this pod has no session token yet ({path} {missing}); on an injected pod it is the Secret {secret} of the \
         pod's namespace, mounted when it appears (`mirrord-cli inject` creates it; the kubelet updates the volume \
         within a minute or two)",
        missing = if *.empty { "is empty" } else { "does not exist" },
        secret = mirrord_config::names::TOKEN_SECRET
    )]
    Missing { path: std::path::PathBuf, empty: bool },
    #[error("cannot read the session token {path}: {error}")]
    Unreadable { path: std::path::PathBuf, error: std::io::Error },
    #[error(
        "the session token given does not match this sidecar's (was the Secret {} rotated?)",
        mirrord_config::names::TOKEN_SECRET
    )]
    Mismatch,
    #[error(
        "this sidecar runs with a token of its own (explicit mode without --token-file): pass the one it logged at \
         start with --token or MIRRORD_TOKEN"
    )]
    Generated,
}

impl TokenFile {
    /// Accepts `presented` when it equals the file's token (surrounding
    /// whitespace ignored).
    pub fn check(&self, presented: &str) -> Result<(), TokenError> {
        let path = &self.0;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TokenError::Missing { path: path.clone(), empty: false })
            }
            Err(error) => return Err(TokenError::Unreadable { path: path.clone(), error }),
        };
        let token = text.trim_ascii();
        if token.is_empty() {
            return Err(TokenError::Missing { path: path.clone(), empty: true });
        }
        if constant_time_eq(token, presented.trim_ascii().as_bytes()) {
            Ok(())
        } else {
            Err(TokenError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_read_at_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile(dir.path().join("token"));
        assert!(matches!(file.check("x"), Err(TokenError::Missing { empty: false, .. })));
        std::fs::write(&file.0, "\n").unwrap();
        assert!(matches!(file.check(""), Err(TokenError::Missing { empty: true, .. })));
        std::fs::write(&file.0, "first\n").unwrap();
        file.check("first").unwrap();
        assert!(matches!(file.check("firs"), Err(TokenError::Mismatch)));
        assert!(matches!(file.check(""), Err(TokenError::Mismatch)));
        // Rotated the way the kubelet does it: a new file renamed over.
        std::fs::write(dir.path().join("next"), "second").unwrap();
        std::fs::rename(dir.path().join("next"), &file.0).unwrap();
        file.check("second").unwrap();
        assert!(matches!(file.check("first"), Err(TokenError::Mismatch)));
        let message = TokenFile(dir.path().join("absent")).check("x").unwrap_err().to_string();
        assert!(message.contains("mirrord-session-token") && message.contains("does not exist"), "{message}");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (random_id().unwrap(), random_id().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
