//! Golden scripts per scenario. `UPDATE_GOLDEN=1` rewrites them.

use std::path::PathBuf;

use super::*;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/iptables").join(format!("{name}.rules"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "{name}: rendered script differs from {}", path.display());
}

fn plan(ports: &str, skip: &str) -> Plan {
    Plan { ports: ports.parse().unwrap(), skip_ports: skip.parse::<PortList>().unwrap().ports(), ..Plan::default() }
}

#[test]
fn scenarios() {
    golden("all-ports", &render(&plan("*", ""), ""));
    golden("two-ports", &render(&plan("80,8080", ""), ""));
    golden("skip-ports", &render(&plan("*", "22,9090"), ""));
    golden("many-ports", &render(&plan("8000-8019", "8005"), ""));
    golden("own-port-requested", &render(&plan("80,18006,18090", ""), ""));
}

#[test]
fn second_run_keeps_a_single_jump() {
    let first = render(&plan("80", ""), "");
    let state_after =
        "*nat\n:PREROUTING ACCEPT [0:0]\n:MIRRORD_INBOUND - [0:0]\n-A PREROUTING -p tcp -j MIRRORD_INBOUND\nCOMMIT\n";
    let second = render(&plan("80", ""), state_after);
    golden("rerun", &second);
    assert!(first.contains("-A PREROUTING -p tcp -j MIRRORD_INBOUND"));
    assert!(!second.contains("PREROUTING"));
}

#[test]
fn global_ipv6_detection() {
    let lo_only = "00000000000000000000000000000001 01 80 10 80       lo\n";
    let link_local = "fe80000000000000021122fffe334455 02 40 20 80     eth0\n";
    let global = "fd000000000000000000000000000002 02 40 00 80     eth0\n";
    assert!(!has_global_ipv6(lo_only));
    assert!(!has_global_ipv6(&format!("{lo_only}{link_local}")));
    assert!(has_global_ipv6(&format!("{lo_only}{global}")));
}
