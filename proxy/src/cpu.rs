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
    for (version, dir, mount) in cgroup_dirs(cgroup, mountinfo) {
        let mut lowest: Option<(f64, PathBuf)> = None;
        // From the process's own cgroup up to the mount point.
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| d.starts_with(&mount)) {
            let on_disk = root.join(d.strip_prefix("/").unwrap_or(d));
            let found = match version {
                Version::V2 => read(&on_disk.join("cpu.max")).and_then(|s| parse_cpu_max(&s)),
                Version::V1 => {
                    match (read(&on_disk.join("cpu.cfs_quota_us")), read(&on_disk.join("cpu.cfs_period_us"))) {
                        (Some(q), Some(p)) => parse_cfs(&q, &p),
                        _ => None,
                    }
                }
            };
            if let Some(q) = found {
                if lowest.as_ref().is_none_or(|(l, _)| q < *l) {
                    lowest = Some((q, d.to_path_buf()));
                }
            }
            at = d.parent();
        }
        if lowest.is_some() {
            return lowest;
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where this process's CPU cgroups are: (version, its directory, the
/// hierarchy's mount point), from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`. v2 first.
fn cgroup_dirs(cgroup: &str, mountinfo: &str) -> Vec<(Version, PathBuf, PathBuf)> {
    let mut found = Vec::new();
    for line in cgroup.lines() {
        // hierarchy-ID:controller-list:cgroup-path
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let version = if id == "0" && controllers.is_empty() {
            Version::V2
        } else if controllers.split(',').any(|c| c == "cpu") {
            Version::V1
        } else {
            continue;
        };
        for mount in mountinfo.lines().filter_map(Mount::parse) {
            let fits = match version {
                Version::V2 => mount.fstype == "cgroup2",
                Version::V1 => mount.fstype == "cgroup" && mount.options.split(',').any(|o| o == "cpu"),
            };
            // The mount shows the hierarchy from `mount.root` down (a
            // container's cgroup namespace shows its own cgroup as root).
            let Some(rel) = Path::new(path).strip_prefix(&mount.root).ok().filter(|_| fits) else { continue };
            found.push((version, mount.point.join(rel), mount.point));
            break;
        }
    }
    found.sort_by_key(|(v, _, _)| *v != Version::V2);
    found
}

/// One line of `/proc/self/mountinfo` (proc(5)): the fields used here.
struct Mount {
    root: PathBuf,
    point: PathBuf,
    fstype: String,
    options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let (before, after) = line.split_once(" - ")?;
        let mut before = before.split(' ');
        let root = unescape(before.nth(3)?);
        let point = unescape(before.next()?);
        let mut after = after.split(' ');
        let fstype = after.next()?.to_owned();
        let options = after.nth(1).unwrap_or_default().to_owned();
        Some(Mount { root: root.into(), point: point.into(), fstype, options })
    }
}

/// Mount paths escape space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
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

    #[test]
    fn mountinfo_lines_and_escapes() {
        let m =
            Mount::parse("35 24 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct")
                .unwrap();
        assert_eq!((m.fstype.as_str(), m.options.as_str()), ("cgroup", "rw,cpu,cpuacct"));
        assert_eq!(m.point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(unescape(r"/a\040b\134c\x"), r"/a b\c\x");
    }

    /// A cgroup tree on disk, laid out like the kernel's, and the
    /// `/proc/self` files that point into it.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }

    fn quota_in(dir: &Path, cgroup: &str, mountinfo: &str) -> Option<(f64, PathBuf)> {
        quota(cgroup, mountinfo, dir, &|p: &Path| std::fs::read_to_string(p).ok())
    }

    #[test]
    fn v2_the_lowest_limit_from_the_container_up() {
        let dir = tree(&[
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
        let dir = tree(&[("sys/fs/cgroup/cpu.max", "200000 100000\n")]);
        let mountinfo = "1 0 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(quota_in(dir.path(), "0::/\n", mountinfo).map(|q| q.0), Some(2.0));
    }

    #[test]
    fn v1_the_cpu_controller_among_others() {
        let dir = tree(&[
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
