//! A hasher for the sidecar's small maps keyed by the app's ports and
//! addresses. std's SipHash protects a map from keys chosen to collide; these
//! keys reach the sidecar only through its own redirect rules (the pod's
//! addresses, the redirected ports), so there is nothing to protect, and
//! SipHash would cost a few hundred instructions on every new connection.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash's step over the bytes written.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map hashed with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::net::SocketAddr;

    use super::*;

    /// Keys that differ in any part hash apart, and the hashes spread over
    /// the low bits (the map's bucket) and the top ones (its tag).
    #[test]
    fn ports_and_addresses_spread() {
        let build = BuildHasherDefault::<FastHasher>::default();
        let mut seen = std::collections::HashSet::new();
        let (mut low, mut top) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        for port in 1..=2000u16 {
            for addr in ["10.0.0.7", "10.0.0.8", "[fd00::7]", "127.0.0.1"] {
                let key: SocketAddr = format!("{addr}:{port}").parse().unwrap();
                let h = build.hash_one(key);
                assert!(seen.insert(h), "{key} collides");
                low.insert(h & 0x3ff);
                top.insert(h >> 57);
            }
        }
        assert_eq!(low.len(), 1024, "the low 10 bits take every value");
        assert_eq!(top.len(), 128, "the top 7 bits take every value");
    }
}
