//! How many worker threads the sidecar runs when `--threads` is not given:
//! the CPU limit of its container, rounded up and no more than the CPUs it
//! may run on. The limit is the cgroup's CPU quota (v2 `cpu.max`, v1
//! `cpu.cfs_quota_us` over `cpu.cfs_period_us`), the lowest along the path
//! from the container's cgroup up to the hierarchy's root, since Kubernetes
//! puts a limit on the pod's cgroup as well as on the container's.
//!
//! Without a limit the sidecar runs one thread: it shares the node with the
//! app it serves, and one thread already forwards faster than the usual
//! proxies do with one (`bench/README.md`). Give the sidecar container a
//! CPU limit, or `--threads`, for more.

use std::path::{Path, PathBuf};

use crate::cgroup::{self, Version};

/// The default thread count and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Threads {
    pub count: usize,
    /// The CPU quota found, in CPUs, and the cgroup directory that set it.
    pub quota: Option<(f64, PathBuf)>,
    /// The CPUs this process may run on.
    pub cpus: usize,
}

impl Threads {
    /// Reads the limit of this process's own cgroups.
    pub fn of_this_process() -> Threads {
        let cpus = usable_cpus();
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let quota = match (read(Path::new("/proc/self/cgroup")), read(Path::new("/proc/self/mountinfo"))) {
            (Some(cgroup), Some(mountinfo)) => quota(&cgroup, &mountinfo, Path::new("/"), &read),
            _ => None,
        };
        Threads::from(quota, cpus)
    }

    fn from(quota: Option<(f64, PathBuf)>, cpus: usize) -> Threads {
        let count = match &quota {
            // Rounded up: a limit of 1.5 CPUs keeps two threads busy in turn.
            Some((q, _)) => (q.ceil() as usize).clamp(1, cpus.max(1)),
            None => 1,
        };
        Threads { count, quota, cpus }
    }
}

/// The CPUs this process may run on (its affinity mask). Not
/// `available_parallelism`, which also rounds the cgroup quota down.
#[cfg(target_os = "linux")]
fn usable_cpus() -> usize {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // writes at most its size into it.
    let count = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            usize::try_from(libc::CPU_COUNT(&set)).unwrap_or(0)
        } else {
            0
        }
    };
    if count > 0 {
        count
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

#[cfg(not(target_os = "linux"))]
fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The lowest CPU quota over the cgroup directories of this process (v2
/// first, then v1's `cpu` controller), with the directory that sets it.
/// `root` prefixes every path (tests give a directory of fixtures).
fn quota(cgroup: &str, mountinfo: &str, root: &Path, read: &dyn Fn(&Path) -> Option<String>) -> Option<(f64, PathBuf)> {
    let limit = |version: Version, dir: &Path| match version {
        Version::V2 => read(&dir.join("cpu.max")).and_then(|s| parse_cpu_max(&s)),
        Version::V1 => match (read(&dir.join("cpu.cfs_quota_us")), read(&dir.join("cpu.cfs_period_us"))) {
            (Some(q), Some(p)) => parse_cfs(&q, &p),
            _ => None,
        },
    };
    cgroup::lowest(cgroup, mountinfo, "cpu", root, limit).map(|found| (found.limit, found.dir))
}

/// v2 `cpu.max`: `$MAX $PERIOD` in microseconds, `max` for no limit.
fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut parts = s.split_whitespace();
    let max = parts.next()?;
    let period: f64 = parts.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    if max == "max" || period <= 0.0 {
        return None;
    }
    let max: f64 = max.parse().ok()?;
    (max > 0.0).then_some(max / period)
}

/// v1: a quota of -1 is no limit.
fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quota_files_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("x 100000"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
        assert_eq!(parse_cfs("", "100000"), None);
    }

    #[test]
    fn thread_count_is_the_quota_rounded_up_within_the_cpus() {
        let q = |c: f64| Some((c, PathBuf::from("/x")));
        assert_eq!(Threads::from(None, 64).count, 1);
        assert_eq!(Threads::from(q(0.1), 8).count, 1);
        assert_eq!(Threads::from(q(1.5), 8).count, 2);
        assert_eq!(Threads::from(q(4.0), 8).count, 4);
        assert_eq!(Threads::from(q(16.0), 2).count, 2);
    }

    fn quota_in(dir: &Path, cgroup: &str, mountinfo: &str) -> Option<(f64, PathBuf)> {
        quota(cgroup, mountinfo, dir, &|p: &Path| std::fs::read_to_string(p).ok())
    }

    #[test]
    fn v2_the_lowest_limit_from_the_container_up() {
        let dir = cgroup::fixture::tree(&[
            ("sys/fs/cgroup/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n"),
            ("sys/fs/cgroup/kubepods/pod1/sidecar/cpu.max", "max 100000\n"),
        ]);
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let found = quota_in(dir.path(), "0::/kubepods/pod1/sidecar\n", mountinfo).unwrap();
        assert_eq!(found, (3.0, PathBuf::from("/sys/fs/cgroup/kubepods/pod1")));
        // The container's own limit, lower than the pod's.
        std::fs::write(dir.path().join("sys/fs/cgroup/kubepods/pod1/sidecar/cpu.max"), "120000 100000\n").unwrap();
        let found = quota_in(dir.path(), "0::/kubepods/pod1/sidecar\n", mountinfo).unwrap();
        assert_eq!(found.0, 1.2);
        // No limit anywhere.
        assert_eq!(quota_in(dir.path(), "0::/\n", mountinfo), None);
    }

    #[test]
    fn v2_in_a_cgroup_namespace_sees_its_own_cgroup_as_root() {
        let dir = cgroup::fixture::tree(&[("sys/fs/cgroup/cpu.max", "200000 100000\n")]);
        let mountinfo = "1 0 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(quota_in(dir.path(), "0::/\n", mountinfo).map(|q| q.0), Some(2.0));
    }

    #[test]
    fn v1_the_cpu_controller_among_others() {
        let dir = cgroup::fixture::tree(&[
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
            ("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            ("sys/fs/cgroup/cpu,cpuacct/pod/c/cpu.cfs_quota_us", "50000\n"),
            ("sys/fs/cgroup/cpu,cpuacct/pod/c/cpu.cfs_period_us", "100000\n"),
        ]);
        let cgroup = "12:memory:/pod/c\n4:cpu,cpuacct:/pod/c\n1:name=systemd:/pod/c\n0::/\n";
        let mountinfo = "\
25 24 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
26 24 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        assert_eq!(quota_in(dir.path(), cgroup, mountinfo).map(|q| q.0), Some(0.5));
    }
}
