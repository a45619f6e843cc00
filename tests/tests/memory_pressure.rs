//! Clients that hold the sidecar's memory on purpose: request heads sent
//! slowly (each up to the 64 KiB head limit), HTTP/2 streams whose large
//! answers they never read. Without a bound they take the sidecar past any
//! memory limit, and an OOM-killed sidecar takes the pod's traffic with it.
//! Under a limit it sheds them first (503, `REFUSED_STREAM`, resets) and
//! keeps serving others.
//!
//! Each attack is first run against a sidecar without a limit, to show that
//! it alone would take more memory than the limit allows. As root the
//! sidecar also runs in a memory cgroup with the limit the injector gives
//! it, and finds the limit there itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mirrord_tests::loopback::{eventually, App};
use mirrord_tests::standalone::{Nghttpd, SidecarProcess};

const MIB: u64 = 1 << 20;

/// The sidecar's memory limit in the injected pod spec
/// (`injector/src/mutate/mod.rs`).
const INJECTED_LIMIT: u64 = 64 * MIB;

/// Raises this process's open-files limit to its hard limit: the attacks
/// hold a connection each.
fn enough_descriptors(needed: u64) {
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        assert!(lim.rlim_cur >= needed, "{needed} open files needed, the hard limit is {}", lim.rlim_cur);
    }
}

/// How many request heads the attack sends, and how much of each.
const HEADS: usize = 1200;
const HEAD_BYTES: usize = 60_000;

/// `HEADS` connections that each send `HEAD_BYTES` of a request head, and
/// not its end.
fn slow_heads(addr: SocketAddr) -> Vec<TcpStream> {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    head.resize(HEAD_BYTES, b'a');
    (0..HEADS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            // A connection the sidecar refused may be closed before all of
            // it is written.
            let _ = s.write_all(&head);
            s
        })
        .collect()
}

/// How many of `conns` have been answered with `status` (what was
/// answered has arrived by now: nothing is waited for).
fn answered(conns: &mut [TcpStream], status: &str) -> usize {
    let mut n = 0;
    for s in conns {
        s.set_nonblocking(true).unwrap();
        let mut head = [0u8; 12];
        if s.read(&mut head).is_ok_and(|got| got == head.len()) && head.ends_with(status.as_bytes()) {
            n += 1;
        }
    }
    n
}

/// The sidecar's peak resident memory after `settle`, once the attack's
/// bytes have arrived.
fn peak_after(sidecar: &SidecarProcess, settle: Duration) -> u64 {
    std::thread::sleep(settle);
    sidecar.peak_rss()
}

#[test]
fn slow_request_heads_are_refused_before_the_memory_limit() {
    const LIMIT: u64 = 40 * MIB;
    enough_descriptors(HEADS as u64 + 64);
    let app = App::start(env!("CARGO_BIN_EXE_sample-app"));

    // Without a limit, the heads alone take more than LIMIT.
    let unbounded = SidecarProcess::start(app.addr, &["--memory-limit", "0"]);
    let held = slow_heads(unbounded.addr);
    let peak = peak_after(&unbounded, Duration::from_secs(1));
    assert!(peak > LIMIT, "{HEADS} slow heads took only {} MiB without a limit", peak / MIB);
    drop((held, unbounded));

    let sidecar = SidecarProcess::start(app.addr, &["--memory-limit", "40Mi"]);
    let mut held = slow_heads(sidecar.addr);
    let peak = peak_after(&sidecar, Duration::from_secs(1));
    assert!(peak < LIMIT, "{HEADS} slow heads took the sidecar to {} MiB, limit {} MiB", peak / MIB, LIMIT / MIB);
    let refused = answered(&mut held, "503");
    assert!(refused > 0, "no slow head was refused");
    assert_eq!(
        sidecar.metric_value("mirrord_proxy_errors_total{reason=\"memory_pressure\"}"),
        i64::try_from(refused).unwrap()
    );
    // Others are served meanwhile: a request that takes no more memory
    // than a connection holds anyway.
    let (status, _) = mirrord_tests::http_get(sidecar.addr, "/").unwrap();
    assert_eq!(status, 200);
}

/// HTTP/2 connections that each open `streams` streams asking for
/// nghttpd's 4 MiB `/big`, grant the largest windows (flow control holds
/// nothing back) and read nothing.
fn unread_streams(addr: SocketAddr, connections: usize, streams: u32) -> Vec<TcpStream> {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    // :method GET, :scheme http (static table), then :path and :authority
    // as literals without indexing (RFC 7541 §6.2.2).
    let block = b"\x82\x86\x00\x05:path\x04/big\x00\x0a:authority\x01x";
    (0..connections)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            out.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
            out.extend(frame(0x8, 0, 0, &(0x7fff_ffff_u32 - 65_535).to_be_bytes()));
            for i in 0..streams {
                out.extend(frame(0x1, 0x5, 1 + 2 * i, block));
            }
            s.write_all(&out).unwrap();
            s
        })
        .collect()
}

/// Whether a new client gets `/big` whole, with `curl` over h2c.
fn curl_gets_big(addr: SocketAddr) -> bool {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--max-time", "2"])
        .args(["--http2-prior-knowledge", &format!("http://{addr}/big")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout) == format!("200 {}", 4 << 20)
}

#[test]
fn http2_streams_that_are_never_read_are_shed_before_the_memory_limit() {
    const LIMIT: u64 = 40 * MIB;
    const CONNECTIONS: usize = 12;
    const STREAMS: u32 = 200;
    let app = Nghttpd::start();

    let unbounded = SidecarProcess::start(app.addr, &["--memory-limit", "0"]);
    let held = unread_streams(unbounded.addr, CONNECTIONS, STREAMS);
    let peak = peak_after(&unbounded, Duration::from_secs(2));
    assert!(peak > LIMIT, "{CONNECTIONS} unread connections took only {} MiB without a limit", peak / MIB);
    drop((held, unbounded));

    let sidecar = SidecarProcess::start(app.addr, &["--memory-limit", "40Mi"]);
    let held = unread_streams(sidecar.addr, CONNECTIONS, STREAMS);
    let peak = peak_after(&sidecar, Duration::from_secs(2));
    assert!(peak < LIMIT, "unread streams took the sidecar to {} MiB, limit {} MiB", peak / MIB, LIMIT / MIB);
    // Streams and connections that take the memory are shed (how soon
    // depends on how much the clients' socket buffers take first), and a new
    // client is served meanwhile.
    eventually("streams or connections shed for memory", || {
        sidecar.metric_value("mirrord_proxy_errors_total{reason=\"memory_pressure\"}") > 0
    });
    eventually("a new HTTP/2 client gets /big", || curl_gets_big(sidecar.addr));
    drop(held);
}

/// A memory cgroup of this test's own, removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn create(limit: u64) -> MemoryCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts: Vec<Vec<&str>> = mountinfo
            .lines()
            .filter_map(|l| l.split_once(" - "))
            .map(|(before, after)| vec![before.split(' ').nth(4).unwrap(), after])
            .collect();
        let v2 = mounts.iter().find(|m| m[1].starts_with("cgroup2 ")).map(|m| PathBuf::from(m[0])).filter(|root| {
            std::fs::read_to_string(root.join("cgroup.subtree_control")).is_ok_and(|c| c.contains("memory"))
        });
        let v1 = || {
            let m =
                mounts.iter().find(|m| m[1].starts_with("cgroup ") && m[1].split([' ', ',']).any(|o| o == "memory"));
            PathBuf::from(m.expect("no memory cgroup hierarchy")[0])
        };
        let (root, is_v2) = match v2 {
            Some(root) => (root, true),
            None => (v1(), false),
        };
        let dir = root.join(format!("mirrord-test-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup = MemoryCgroup { dir, v2: is_v2 };
        let file = if is_v2 { "memory.max" } else { "memory.limit_in_bytes" };
        std::fs::write(cgroup.dir.join(file), limit.to_string()).unwrap();
        // No swap to escape to, where the kernel offers it.
        let _ =
            std::fs::write(cgroup.dir.join(if is_v2 { "memory.swap.max" } else { "memory.memsw.limit_in_bytes" }), {
                if is_v2 {
                    "0".to_owned()
                } else {
                    limit.to_string()
                }
            });
        cgroup
    }

    /// Runs a program in this cgroup: the shell puts itself in, then execs.
    fn wrap(&self) -> String {
        format!("echo $$ > '{}' && exec", self.dir.join("cgroup.procs").display())
    }

    /// How many times the kernel's OOM killer acted in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap();
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")).map_or(0, |n| n.trim().parse().unwrap())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes are gone once killed and reaped; the kernel may
        // take a moment to let the directory go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !Path::new(&self.dir).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The sidecar as injected: in a memory cgroup with the injected limit and
/// no `--memory-limit`. It reads the limit from its cgroup, and both
/// attacks leave it running, never killed, and serving.
#[test]
fn in_a_memory_cgroup_the_sidecar_finds_its_limit_and_outlives_both_attacks() {
    if !mirrord_tests::root_or_skip("in_a_memory_cgroup_the_sidecar_finds_its_limit_and_outlives_both_attacks") {
        return;
    }
    enough_descriptors(HEADS as u64 + 64);
    let app = App::start(env!("CARGO_BIN_EXE_sample-app"));
    let h2_app = Nghttpd::start();
    // Declared before the sidecars: dropped after them.
    let cgroup = MemoryCgroup::create(INJECTED_LIMIT);

    let mut sidecar = SidecarProcess::start_in(Some(&cgroup.wrap()), app.addr, &[]);
    let found = sidecar.log.iter().find(|l| l.contains("memory limit from the cgroup"));
    assert!(found.is_some_and(|l| l.contains("limit_mib=64")), "{:#?}", sidecar.log);
    let mut held = slow_heads(sidecar.addr);
    std::thread::sleep(Duration::from_secs(1));
    assert!(sidecar.alive(), "the sidecar died under slow heads");
    assert!(answered(&mut held, "503") > 0, "no slow head was refused");
    assert_eq!(mirrord_tests::http_get(sidecar.addr, "/").unwrap().0, 200);
    drop(held);
    drop(sidecar);

    let mut sidecar = SidecarProcess::start_in(Some(&cgroup.wrap()), h2_app.addr, &[]);
    let held = unread_streams(sidecar.addr, 16, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert!(sidecar.alive(), "the sidecar died under unread streams");
    eventually("a new HTTP/2 client gets /big", || curl_gets_big(sidecar.addr));
    drop(held);
    assert_eq!(cgroup.oom_kills(), 0, "the OOM killer acted in the sidecar's cgroup");
}
