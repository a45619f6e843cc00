//! Where this process's cgroups are, and the lowest limit a controller
//! sets on it: the CPU quota (`cpu.rs`) and the memory limit
//! (`pressure/`). A limit counts from the process's own cgroup up to the
//! hierarchy's root, since Kubernetes puts one on the pod's cgroup as well
//! as on the container's. v2 (the unified hierarchy) is read first, then
//! v1's hierarchy of the controller.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V2,
}

/// A limit and the cgroup directory that sets it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found<T> {
    pub limit: T,
    pub version: Version,
    /// The directory as the process sees it (under the hierarchy's mount).
    pub dir: PathBuf,
}

/// The lowest limit that `limit(version, directory)` reads along the path
/// from this process's cgroup of `controller` up to the hierarchy's mount
/// point; `None` where no directory sets one. `cgroup` and `mountinfo` are
/// `/proc/self/cgroup` and `/proc/self/mountinfo`; `root` prefixes every
/// path read (tests give a directory of fixtures).
pub(crate) fn lowest<T: PartialOrd>(
    cgroup: &str,
    mountinfo: &str,
    controller: &str,
    root: &Path,
    limit: impl Fn(Version, &Path) -> Option<T>,
) -> Option<Found<T>> {
    for (version, dir, mount) in dirs(cgroup, mountinfo, controller) {
        let mut lowest: Option<Found<T>> = None;
        // From the process's own cgroup up to the mount point.
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| d.starts_with(&mount)) {
            let on_disk = root.join(d.strip_prefix("/").unwrap_or(d));
            if let Some(found) = limit(version, &on_disk) {
                if lowest.as_ref().is_none_or(|l| found < l.limit) {
                    lowest = Some(Found { limit: found, version, dir: d.to_path_buf() });
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

/// Where this process's cgroups of `controller` are: (version, its
/// directory, the hierarchy's mount point), from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`. v2 first.
fn dirs(cgroup: &str, mountinfo: &str, controller: &str) -> Vec<(Version, PathBuf, PathBuf)> {
    let mut found = Vec::new();
    for line in cgroup.lines() {
        // hierarchy-ID:controller-list:cgroup-path
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let version = if id == "0" && controllers.is_empty() {
            Version::V2
        } else if controllers.split(',').any(|c| c == controller) {
            Version::V1
        } else {
            continue;
        };
        for mount in mountinfo.lines().filter_map(Mount::parse) {
            let fits = match version {
                Version::V2 => mount.fstype == "cgroup2",
                Version::V1 => mount.fstype == "cgroup" && mount.options.split(',').any(|o| o == controller),
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

/// Files of `/proc/self` and a cgroup tree laid out like the kernel's, for
/// the tests of the modules that read limits.
#[cfg(test)]
pub(crate) mod fixture {
    #![allow(clippy::unwrap_used)]

    pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        dir
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mountinfo_lines_and_escapes() {
        let m =
            Mount::parse("35 24 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct")
                .unwrap();
        assert_eq!((m.fstype.as_str(), m.options.as_str()), ("cgroup", "rw,cpu,cpuacct"));
        assert_eq!(m.point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(unescape(r"/a\040b\134c\x"), r"/a b\c\x");
    }

    /// A hybrid host (systemd's unified mount beside v1 controllers): the v2
    /// directory is tried first, and a controller it does not carry is
    /// found in its v1 hierarchy.
    #[test]
    fn hybrid_hosts_fall_back_to_the_controllers_v1_hierarchy() {
        let cgroup = "4:memory:/pod/c\n3:cpu:/pod/c\n0::/pod/c\n";
        let mountinfo = "\
30 24 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 24 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 24 0:33 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        let found = dirs(cgroup, mountinfo, "memory");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (Version::V2, "/sys/fs/cgroup/unified/pod/c".into(), "/sys/fs/cgroup/unified".into()));
        assert_eq!(found[1], (Version::V1, "/sys/fs/cgroup/memory/pod/c".into(), "/sys/fs/cgroup/memory".into()));
        let dir = fixture::tree(&[("sys/fs/cgroup/memory/pod/limit", "5\n"), ("sys/fs/cgroup/memory/limit", "9\n")]);
        let read = |_: Version, d: &Path| std::fs::read_to_string(d.join("limit")).ok()?.trim().parse::<u64>().ok();
        let found = lowest(cgroup, mountinfo, "memory", dir.path(), read).unwrap();
        assert_eq!(found, Found { limit: 5, version: Version::V1, dir: "/sys/fs/cgroup/memory/pod".into() });
    }
}
