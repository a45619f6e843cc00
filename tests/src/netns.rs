//! Entering a network namespace from a thread, as kubelet's port-forward and
//! the test clients do: sockets created there stay in that namespace and can
//! be used from any thread afterwards.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Runs `f` on a thread that has joined the named network namespace.
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let ns = File::open(format!("/var/run/netns/{name}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("thread in netns panicked"))?
}

/// Connects to `addr` from inside the namespace.
pub fn connect(name: &str, addr: SocketAddr) -> io::Result<TcpStream> {
    in_netns(name, move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
}

/// Waits until something accepts connections at `addr` in the namespace.
pub fn wait_listening(name: &str, addr: SocketAddr, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match connect(name, addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("nothing listening at {addr} in {name} after {within:?}: {e}"),
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
