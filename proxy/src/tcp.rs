//! Raw TCP passthrough.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction copy buffer. tokio's default of 8 KiB halves loopback
/// throughput; 64 KiB matches the kernel's default window growth steps.
const COPY_BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides have closed. A FIN from one side is
/// passed on as a FIN (half-close), the other direction keeps flowing.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await
}
