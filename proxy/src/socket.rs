//! Socket plumbing: listeners, TCP options, and the original destination of a
//! redirected connection.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Kernel buffer size asked for on proxied sockets: large enough that a
/// loopback or in-pod hop never limits throughput.
const SOCKET_BUFFER: usize = 1 << 20;

/// Binds a listener with `SO_REUSEADDR` and a deep accept backlog. An IPv6
/// address is bound v6-only so that a separate IPv4 listener can share the port.
/// The listener carries the options of `tune`: Linux gives them to every
/// connection it accepts, which saves three system calls per connection.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    tune(SockRef::from(&socket));
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Options every proxied socket gets: no Nagle delay, roomy buffers.
fn tune(sock: SockRef<'_>) {
    // Failing to tune a socket is not a reason to drop the connection.
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
}

/// Closing `stream` resets it (SO_LINGER 0) instead of ending it with a
/// FIN: a refusal the client sees at once.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Raises the soft limit on open files to the hard limit: every proxied
/// connection holds at least two sockets, and the default soft limit
/// (often 1024) would refuse clients long before memory runs short.
/// Returns the limit now in force.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = open_files()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads one rlimit we own; raising the soft limit
        // up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
    }
    Ok(limit.rlim_cur)
}

/// The open-files limit in force (the soft limit).
pub fn open_files_limit() -> io::Result<u64> {
    Ok(open_files()?.rlim_cur)
}

fn open_files() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Connects to `addr` with the proxy's socket options.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    tune(SockRef::from(&stream));
    Ok(stream)
}

#[cfg(target_os = "linux")]
pub use netfilter::original_dst;

/// netfilter's record of where a redirected connection was headed.
#[cfg(target_os = "linux")]
mod netfilter {
    use std::io;
    use std::mem::{size_of, MaybeUninit};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    use tokio::net::TcpStream;

    /// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
    /// (linux/netfilter_ipv6/ip6_tables.h) share the value 80.
    const SO_ORIGINAL_DST: libc::c_int = 80;

    /// The destination a client asked for before iptables redirected it here.
    /// For a connection that was not redirected this is the local address itself.
    pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
        let fd = stream.as_raw_fd();
        match stream.local_addr()? {
            SocketAddr::V4(_) => {
                let addr: libc::sockaddr_in = getsockopt(fd, libc::SOL_IP)?;
                let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                Ok(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)).into())
            }
            SocketAddr::V6(_) => {
                let addr: libc::sockaddr_in6 = getsockopt(fd, libc::SOL_IPV6)?;
                let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
                Ok(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), addr.sin6_flowinfo, addr.sin6_scope_id).into())
            }
        }
    }

    fn getsockopt<T>(fd: libc::c_int, level: libc::c_int) -> io::Result<T> {
        let mut value = MaybeUninit::<T>::zeroed();
        let mut len = size_of::<T>() as libc::socklen_t;
        // SAFETY: `value` is a writable buffer of `len` bytes that outlives the
        // call; the kernel writes at most `len` bytes and reports how many.
        let rc = unsafe { libc::getsockopt(fd, level, SO_ORIGINAL_DST, value.as_mut_ptr().cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised plain-old-data sockaddr, filled by the kernel.
        Ok(unsafe { value.assume_init() })
    }
}

/// Redirect mode needs netfilter: elsewhere (a developer's Mac running the
/// demo) only explicit upstreams exist.
#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "the original destination (SO_ORIGINAL_DST) is Linux only"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test]
    async fn accepted_connections_inherit_the_listeners_options() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        let sock = socket2::SockRef::from(&accepted);
        // The kernel doubles what is asked for (socket(7)), within its maximum.
        let plain = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            socket2::SockRef::from(&a).recv_buffer_size().unwrap()
        };
        assert!(sock.recv_buffer_size().unwrap() > plain, "{} vs {plain}", sock.recv_buffer_size().unwrap());
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let limit = super::raise_fd_limit().unwrap();
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!((now.rlim_cur, limit), (now.rlim_max, now.rlim_max));
    }
}
