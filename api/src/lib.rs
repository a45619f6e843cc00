//! The session tunnel's gRPC API: the sidecar serves it (on 127.0.0.1:18010
//! inside the pod), `mirrord-cli` is its client. Generated from
//! `proto/mirrord/tunnel/v1/tunnel.proto` by `build.rs` with a vendored
//! protoc, so a build needs none installed.

/// The generated messages, client and server.
#[allow(clippy::all, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("mirrord.tunnel.v1");
}

/// The protocol the sidecar and the CLI speak, and the oldest client a
/// sidecar accepts.
///
/// 2: `http_filter` without `ports` applies on every port the session takes
/// (1 filtered 80 and 8080 only and took every other port whole), so a
/// client of 2 must not meet a sidecar of 1.
pub const PROTOCOL_VERSION: u32 = 2;
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// HTTP/2 flow-control windows of the tunnel's connection, on both ends.
/// Every exchange of a session travels over that one connection, and an
/// exchange whose far end stops reading (a pod's client that does not take
/// a stolen answer, a local app that does not read a request body) keeps
/// its stream's window full. The connection's window holds 64 of those
/// before the other exchanges (and the session's events) would have to
/// wait; a stream's window still covers a port-forward's round trip at
/// some 17 MB/s per exchange (30 ms).
pub const TUNNEL_STREAM_WINDOW: u32 = 512 * 1024;
pub const TUNNEL_CONNECTION_WINDOW: u32 = 64 * TUNNEL_STREAM_WINDOW;

/// `bytes` random bytes from the kernel, in hex: session ids (16) and the
/// namespace's session token (32).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    // getentropy fills at most 256 bytes per call.
    for chunk in buf.chunks_mut(256) {
        // SAFETY: getentropy writes exactly `len` (at most 256) bytes into
        // the buffer or fails; it exists on Linux (glibc, musl) and macOS.
        if unsafe { libc::getentropy(chunk.as_mut_ptr().cast(), chunk.len()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
