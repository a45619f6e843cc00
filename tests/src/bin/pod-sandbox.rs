//! PID 1 of a simulated pod's shared process namespace, as the sandbox's
//! pause container is on Kubernetes: it does nothing but reap the orphans
//! the namespace hands it.

fn main() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on any child with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            // No children yet: wait for some.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
