//! Signals through pidfds: a pid can be reused between reading `/proc` and
//! signalling; a pidfd opened and then checked against the start time read
//! in the same scan names exactly the process that was scanned.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::procs;

/// A handle on one process.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Opens process `pid` if it is still the one that started at `start`.
    pub fn open(pid: i32, start: u64) -> Option<Pidfd> {
        let fd = sys::pidfd_open(pid);
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pidfd names whichever process had `pid` when it was opened; the
        // start time says whether that is still the scanned one.
        match procs::stat(pid) {
            Some((_, s)) if s == start => Some(Pidfd(fd)),
            _ => None,
        }
    }

    /// Opens a process by pid alone (the guard watching the sidecar).
    pub fn open_pid(pid: i32) -> Option<Pidfd> {
        let (_, start) = procs::stat(pid)?;
        Pidfd::open(pid, start)
    }

    /// Sends `signal`; false if the process is gone or may not be signalled.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        sys::pidfd_send_signal(self.0.as_raw_fd(), signal) == 0
    }

    /// Waits up to `timeout` for the process to exit; true once it has.
    pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }
}

/// The two system calls, Linux only (as a pod's shared PID namespace is);
/// elsewhere they fail, so nothing is ever paused.
#[cfg(target_os = "linux")]
mod sys {
    pub fn pidfd_open(pid: i32) -> libc::c_long {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) }
    }

    pub fn pidfd_send_signal(fd: libc::c_int, signal: libc::c_int) -> libc::c_long {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, signal, std::ptr::null::<()>(), 0) }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn pidfd_open(_pid: i32) -> libc::c_long {
        -1
    }

    pub fn pidfd_send_signal(_fd: libc::c_int, _signal: libc::c_int) -> libc::c_long {
        -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_continue_and_exit_of_a_child() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let (_, start) = procs::stat(pid).unwrap();
        assert!(Pidfd::open(pid, start + 1).is_none(), "a different start time is a different process");
        let fd = Pidfd::open(pid, start).unwrap();
        assert!(fd.signal(libc::SIGSTOP));
        let state = |pid| procs::stat(pid).map(|(s, _)| s);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while state(pid) != Some('T') {
            assert!(std::time::Instant::now() < deadline, "never stopped");
            std::thread::yield_now();
        }
        assert!(fd.signal(libc::SIGCONT));
        while state(pid) == Some('T') {
            assert!(std::time::Instant::now() < deadline, "never continued");
            std::thread::yield_now();
        }
        assert!(!fd.wait_exit(std::time::Duration::from_millis(10)));
        child.kill().unwrap();
        assert!(fd.wait_exit(std::time::Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!fd.signal(libc::SIGCONT), "a reaped process cannot be signalled");
    }
}
