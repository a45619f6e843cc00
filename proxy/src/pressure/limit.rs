//! The memory limit the sidecar sheds load under, and where the memory in
//! use is read: the container's cgroup, or `--memory-limit` against the
//! process's resident memory.

use std::path::{Path, PathBuf};

use crate::cgroup::{self, Version};

/// The memory limit and how the use against it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub usage: Usage,
}

/// Where the memory in use is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Usage {
    /// A cgroup's usage file (v2 `memory.current`, v1
    /// `memory.usage_in_bytes`): what the kernel holds against its limit,
    /// the socket buffers of the process's connections included.
    Cgroup(PathBuf),
    /// The process's resident memory.
    Resident,
}

impl Usage {
    pub(super) fn read(&self) -> Option<u64> {
        match self {
            Usage::Cgroup(file) => std::fs::read_to_string(file).ok()?.trim().parse().ok(),
            Usage::Resident => {
                // statm: size resident shared … in pages.
                let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
                let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
                Some(pages * page_size())
            }
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

impl MemoryLimit {
    /// The container's memory limit: the lowest over this process's
    /// cgroups, with the usage file of the cgroup that sets it.
    pub fn of_this_process() -> Option<(MemoryLimit, PathBuf)> {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let (cgroup, mountinfo) = (read(Path::new("/proc/self/cgroup"))?, read(Path::new("/proc/self/mountinfo"))?);
        Self::in_tree(&cgroup, &mountinfo, Path::new("/"), &read)
    }

    fn in_tree(
        cgroup: &str,
        mountinfo: &str,
        root: &Path,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> Option<(MemoryLimit, PathBuf)> {
        let limit = |version: Version, dir: &Path| match version {
            Version::V2 => read(&dir.join("memory.max")).and_then(|s| parse_limit(&s)),
            Version::V1 => read(&dir.join("memory.limit_in_bytes")).and_then(|s| parse_limit(&s)),
        };
        let found = cgroup::lowest(cgroup, mountinfo, "memory", root, limit)?;
        let usage = match found.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        let on_disk = root.join(found.dir.strip_prefix("/").unwrap_or(&found.dir));
        Some((MemoryLimit { bytes: found.limit, usage: Usage::Cgroup(on_disk.join(usage)) }, found.dir))
    }
}

/// A cgroup memory limit file: a byte count; v2 writes `max` for none, v1
/// the largest page-aligned count (anything from 2^62 on is taken as none).
fn parse_limit(s: &str) -> Option<u64> {
    let bytes: u64 = s.trim().parse().ok()?;
    (bytes > 0 && bytes < 1 << 62).then_some(bytes)
}

/// `--memory-limit`: a byte count, with a Kubernetes quantity's suffix if
/// any (`Ki`, `Mi`, `Gi`, `Ti`; `k`, `M`, `G`, `T`); `0` for none.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let expected = || format!("expected a byte count such as 67108864, 64Mi or 1G, got {s:?}");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(expected()),
    };
    number.checked_mul(unit).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cgroup::fixture::tree;

    fn limit_in(dir: &Path, cgroup: &str, mountinfo: &str) -> Option<(MemoryLimit, PathBuf)> {
        MemoryLimit::in_tree(cgroup, mountinfo, dir, &|p: &Path| std::fs::read_to_string(p).ok())
    }

    #[test]
    fn v2_the_containers_limit_below_the_pods_and_its_usage_file() {
        let dir = tree(&[
            ("sys/fs/cgroup/memory.max", "max\n"),
            ("sys/fs/cgroup/kubepods/pod1/memory.max", "201326592\n"),
            ("sys/fs/cgroup/kubepods/pod1/sidecar/memory.max", "67108864\n"),
        ]);
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let (limit, at) = limit_in(dir.path(), "0::/kubepods/pod1/sidecar\n", mountinfo).unwrap();
        assert_eq!(limit.bytes, 64 << 20);
        assert_eq!(at, PathBuf::from("/sys/fs/cgroup/kubepods/pod1/sidecar"));
        assert_eq!(limit.usage, Usage::Cgroup(dir.path().join("sys/fs/cgroup/kubepods/pod1/sidecar/memory.current")));
        // No limit anywhere.
        std::fs::write(dir.path().join("sys/fs/cgroup/kubepods/pod1/sidecar/memory.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("sys/fs/cgroup/kubepods/pod1/memory.max"), "max\n").unwrap();
        assert_eq!(limit_in(dir.path(), "0::/kubepods/pod1/sidecar\n", mountinfo), None);
    }

    #[test]
    fn v1_no_limit_is_the_largest_page_count() {
        let dir = tree(&[
            ("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
            ("sys/fs/cgroup/memory/pod/c/memory.limit_in_bytes", "9223372036854771712\n"),
        ]);
        let cgroup = "12:memory:/pod/c\n4:cpu,cpuacct:/pod/c\n0::/\n";
        let mountinfo = "25 24 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(limit_in(dir.path(), cgroup, mountinfo), None);
        std::fs::write(dir.path().join("sys/fs/cgroup/memory/pod/c/memory.limit_in_bytes"), "33554432\n").unwrap();
        let (limit, _) = limit_in(dir.path(), cgroup, mountinfo).unwrap();
        assert_eq!(limit.bytes, 32 << 20);
        assert_eq!(limit.usage, Usage::Cgroup(dir.path().join("sys/fs/cgroup/memory/pod/c/memory.usage_in_bytes")));
    }

    #[test]
    fn memory_limit_flag_values() {
        assert_eq!(parse_bytes("67108864"), Ok(64 << 20));
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "Mi", "64 Mi", "64MB", "-1", "1.5Gi", "99999999999999999999", "20000000Ti"] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("expected a byte count") && e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
