//! Raw TCP passthrough.
//!
//! Bytes move socket → pipe → socket with splice(2), never entering user
//! space: higher throughput than a copy loop and no per-connection buffer
//! memory. A direction's pipe is made when its first bytes arrive and given
//! back after a second without any, so a silent connection holds its two
//! sockets only. If a pipe cannot be had (the descriptor budget or the
//! kernel's limit), a buffered copy takes over that direction.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::budget::Budget;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::pool::AppConn;
use crate::session::{open_copies, open_steal, Copies, Exchange};
use crate::session::{Announced, Frame};

/// Per-direction copy buffer for the fallback and for upgraded HTTP
/// connections. tokio's default of 8 KiB halves loopback throughput.
const COPY_BUFFER: usize = 64 * 1024;

/// Proxies a raw TCP connection (its first bytes already read, `prefix`):
/// stolen whole by a session, or passed to the app at `dst` with copies of
/// the client's bytes for mirroring sessions.
pub async fn forward(
    mut client: TcpStream,
    prefix: Bytes,
    dst: std::net::SocketAddr,
    inbound: &Inbound,
    idle_limit: Option<std::time::Duration>,
) {
    let (sessions, metrics) = (&inbound.sessions, &*inbound.metrics);
    let client_fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    let port = dst.port();
    let announce = || Announced::Tcp(prefix.clone());
    let decision = sessions.decide(port, None);
    if let Some(session) = &decision.steal {
        if let Some(exchange) = open_steal(session, port, announce(), metrics).await {
            // Announced: the detection buffer goes back for the
            // connection's life (a pooled database connection lasts hours).
            drop(prefix);
            tokio::select! {
                () = to_session(client, exchange) => {}
                () = idle::watch(client_fd, idle_limit) => metrics.error(crate::metrics::Fault::TcpIdleTimeout),
            }
            return;
        }
    }
    let AppConn { stream: mut app, fds: _app_fd } = match AppConn::connect(dst, &inbound.budget).await {
        Ok(app) => app,
        Err(e) => {
            tracing::debug!("{e}");
            metrics.error(e.reason());
            // Reset rather than close: the client sees the same refusal it
            // would have seen without the sidecar.
            crate::socket::reset_on_close(&client);
            return;
        }
    };
    if let Err(e) = app.write_all(&prefix).await {
        tracing::debug!("write to the app failed: {e}");
        return;
    }
    let copies = open_copies(&decision.mirrors, port, announce(), metrics).await;
    drop(prefix);
    let transfer = async {
        if copies.is_empty() {
            splice(&mut client, &mut app, &inbound.budget).await.map(drop)
        } else {
            copy_mirrored(&mut client, &mut app, copies, metrics).await
        }
    };
    tokio::select! {
        result = transfer => {
            if let Err(e) = result {
                tracing::debug!("TCP connection ended: {e}");
                // Passed on as it came: each side sees the other's abort.
                crate::socket::reset_on_close(&client);
                crate::socket::reset_on_close(&app);
            }
        }
        () = idle::watch(client_fd, idle_limit) => {
            tracing::debug!("TCP connection idle for too long: closed");
            metrics.error(crate::metrics::Fault::TcpIdleTimeout);
        }
    }
}

/// How long a connection has carried no data, from the kernel's own
/// bookkeeping (`TCP_INFO`), so the copy loops need no timestamps.
mod idle {
    use std::os::fd::RawFd;
    use std::time::Duration;

    /// Resolves once the socket `fd` has neither sent nor received data for
    /// `limit`; never without a limit (or where the kernel cannot tell).
    pub async fn watch(fd: RawFd, limit: Option<Duration>) {
        let Some(limit) = limit else { return std::future::pending().await };
        let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        loop {
            tokio::time::sleep(tick).await;
            match since_last_data(fd) {
                Some(idle) if idle >= limit => return,
                Some(_) => {}
                None => return std::future::pending().await,
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn since_last_data(fd: RawFd) -> Option<Duration> {
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a writable tcp_info of `len` bytes; the fd is
        // the client socket, open for as long as the caller's select runs.
        let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised plain data, filled by the kernel.
        let info = unsafe { info.assume_init() };
        Some(Duration::from_millis(u64::from(info.tcpi_last_data_recv.min(info.tcpi_last_data_sent))))
    }

    #[cfg(not(target_os = "linux"))]
    fn since_last_data(_fd: RawFd) -> Option<Duration> {
        None
    }
}

/// Copies both ways until both sides have closed. A FIN from one side is
/// passed on as a FIN (half-close), the other direction keeps flowing.
pub async fn copy<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, COPY_BUFFER, COPY_BUFFER).await
}

/// Like [`copy`], for two TCP sockets, through the kernel (splice(2) on
/// Linux, its pipes taken from `budget`; elsewhere a plain copy).
pub async fn splice(a: &mut TcpStream, b: &mut TcpStream, budget: &Arc<Budget>) -> io::Result<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        // A clean end of one direction (FIN) lets the other go on; a
        // failure (a reset) ends both at once: the other side would
        // otherwise wait for ever on a peer that is gone.
        tokio::try_join!(kernel::one_way(a, b, budget), kernel::one_way(b, a, budget))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = budget;
        copy(a, b).await
    }
}

/// splice(2): socket → pipe → socket inside the kernel.
#[cfg(target_os = "linux")]
mod kernel {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::Arc;
    use std::time::Duration;

    use socket2::SockRef;
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use crate::budget::{Budget, Fds};

    /// Pipe capacity asked for (the kernel default is 64 KiB).
    const PIPE_SIZE: libc::c_int = 256 * 1024;

    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub(super) fn new() -> io::Result<Self> {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 writes two fds into the array on success.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both fds were just created and are owned by nobody else.
            let pipe = unsafe { Pipe { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } };
            // A bigger pipe means fewer splices per byte; the default is fine too.
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(pipe.write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            Ok(pipe)
        }
    }

    fn splice_fd(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        // SAFETY: both fds are open for the duration of the call; null offsets
        // mean "current position", as required for sockets and pipes.
        let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// How long a direction keeps its pipe without bytes to move.
    const PIPE_IDLE: Duration = Duration::from_secs(1);

    /// Moves bytes from `src` to `dst` until EOF, then half-closes `dst`.
    pub(super) async fn one_way(src: &TcpStream, dst: &TcpStream, budget: &Arc<Budget>) -> io::Result<u64> {
        let mut pipe: Option<(Pipe, Fds)> = None;
        let mut total = 0u64;
        // One timer for the connection's life, pushed later at every wait:
        // moving a deadline later touches no timer wheel, so a busy
        // connection pays nothing for it.
        let idle = tokio::time::sleep(PIPE_IDLE);
        tokio::pin!(idle);
        loop {
            let queued = loop {
                if pipe.is_some() {
                    idle.as_mut().reset(tokio::time::Instant::now() + PIPE_IDLE);
                    tokio::select! {
                        biased;
                        ready = src.readable() => ready?,
                        () = &mut idle => {
                            pipe = None;
                            continue;
                        }
                    }
                } else {
                    src.readable().await?;
                }
                let write_end = match &pipe {
                    Some((p, _)) => p.write.as_raw_fd(),
                    None => match budget.take(2).and_then(|fds| Some((Pipe::new().ok()?, fds))) {
                        Some((p, fds)) => pipe.insert((p, fds)).0.write.as_raw_fd(),
                        None => return Ok(total + copy_one_way(src, dst).await?),
                    },
                };
                let sock = src.as_raw_fd();
                match src.try_io(Interest::READABLE, || splice_fd(sock, write_end, PIPE_SIZE as usize)) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if queued == 0 {
                SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
                return Ok(total);
            }
            let Some((p, _)) = &pipe else { unreachable!("bytes were queued into the pipe") };
            let mut left = queued;
            while left > 0 {
                dst.writable().await?;
                let sock = dst.as_raw_fd();
                match dst.try_io(Interest::WRITABLE, || splice_fd(p.read.as_raw_fd(), sock, left)) {
                    Ok(n) => left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            total += queued as u64;
        }
    }

    /// The same through a buffer in user space, for when no pipe can be had.
    async fn copy_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
        let mut buf = vec![0u8; super::COPY_BUFFER];
        let mut total = 0u64;
        loop {
            src.readable().await?;
            let n = match src.try_read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
                return Ok(total);
            }
            let mut written = 0;
            while written < n {
                dst.writable().await?;
                match dst.try_write(&buf[written..n]) {
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
        }
    }
}

/// Like [`copy`], with the client's bytes also copied to mirroring sessions.
pub async fn copy_mirrored(
    client: &mut TcpStream,
    app: &mut TcpStream,
    mut copies: Copies,
    metrics: &Metrics,
) -> io::Result<()> {
    let (mut client_rd, mut client_wr) = client.split();
    let (mut app_rd, mut app_wr) = app.split();
    let upstream = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                copies.send(&Frame::End, metrics);
                return app_wr.shutdown().await;
            }
            app_wr.write_all(&buf[..n]).await?;
            copies.send(&Frame::Data(Bytes::copy_from_slice(&buf[..n])), metrics);
        }
    };
    let downstream = async {
        tokio::io::copy(&mut app_rd, &mut client_wr).await?;
        client_wr.shutdown().await
    };
    tokio::try_join!(upstream, downstream).map(drop)
}

/// A whole connection stolen by a session: the client's bytes go to the
/// session, the session's to the client. If the session goes away, the
/// client gets a reset, as it would from a crashed server.
pub async fn to_session(mut client: TcpStream, exchange: Exchange) {
    let Exchange { to_client, mut from_client } = exchange;
    let (mut rd, mut wr) = client.split();
    let upstream = async {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to_client.send(Frame::End).await;
                    return;
                }
                Ok(n) => {
                    if to_client.send(Frame::Data(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async {
        loop {
            match from_client.recv().await {
                Some(Frame::Data(data)) => {
                    if wr.write_all(&data).await.is_err() {
                        return false;
                    }
                }
                Some(Frame::End) => return wr.shutdown().await.is_ok(),
                Some(_) => {}
                None => return false,
            }
        }
    };
    let ((), clean) = tokio::join!(upstream, downstream);
    if !clean {
        crate::socket::reset_on_close(&client);
    }
}
