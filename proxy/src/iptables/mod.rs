//! `mirrord-proxy init`: the iptables rules that send the pod's inbound
//! traffic to the sidecar.
//!
//! The rules live in a chain of our own, reached from nat PREROUTING, so only
//! traffic entering the pod is redirected; what the pod sends itself (sidecar
//! to app, app to anywhere) never passes PREROUTING and cannot loop.
//!
//! [`render`] is a pure function from the plan and the table's current state
//! to an `iptables-restore --noflush` script; `apply` runs it.

mod apply;

use std::collections::BTreeSet;

use mirrord_config::names::{INBOUND_PORT, PROXY_PORTS};

use crate::ports::PortList;

pub use apply::{init, Backend, Error, InitArgs};

/// Our chain in the nat table.
pub const CHAIN: &str = "MIRRORD_INBOUND";

/// Most ports `-m multiport` takes in one rule.
const MULTIPORT_MAX: usize = 15;

/// What to redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Ports to redirect, or all.
    pub ports: PortList,
    /// Ports never redirected (on top of the sidecar's own).
    pub skip_ports: BTreeSet<u16>,
    /// The sidecar's inbound port, the REDIRECT target.
    pub proxy_port: u16,
}

impl Default for Plan {
    fn default() -> Self {
        Plan { ports: PortList::All, skip_ports: BTreeSet::new(), proxy_port: INBOUND_PORT }
    }
}

impl Plan {
    /// Ports that RETURN before any redirect: the sidecar's own and the skipped.
    fn returned(&self) -> BTreeSet<u16> {
        let mut ports: BTreeSet<u16> = PROXY_PORTS.into_iter().collect();
        ports.insert(self.proxy_port);
        ports.extend(&self.skip_ports);
        ports
    }
}

/// The `iptables-restore --noflush` script for `plan`. `current_nat` is the
/// output of `iptables-save -t nat` (empty if unknown): the jump from
/// PREROUTING is added only when it is not already there, so applying the
/// script again leaves exactly the same rules.
pub fn render(plan: &Plan, current_nat: &str) -> String {
    let jump = format!("-A PREROUTING -p tcp -j {CHAIN}");
    let mut out = String::from("*nat\n");
    out.push_str(&format!(":{CHAIN} - [0:0]\n-F {CHAIN}\n"));
    for group in chunks(&plan.returned()) {
        out.push_str(&format!("-A {CHAIN} -p tcp {} -j RETURN\n", match_ports(&group)));
    }
    let redirect = format!("-j REDIRECT --to-ports {}", plan.proxy_port);
    match &plan.ports {
        PortList::All => out.push_str(&format!("-A {CHAIN} -p tcp {redirect}\n")),
        PortList::Some(ports) => {
            let ports: BTreeSet<u16> = ports.difference(&plan.returned()).copied().collect();
            for group in chunks(&ports) {
                out.push_str(&format!("-A {CHAIN} -p tcp {} {redirect}\n", match_ports(&group)));
            }
        }
    }
    if !current_nat.lines().any(|l| l.trim() == jump) {
        out.push_str(&jump);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

fn chunks(ports: &BTreeSet<u16>) -> Vec<Vec<u16>> {
    let ports: Vec<u16> = ports.iter().copied().collect();
    ports.chunks(MULTIPORT_MAX).map(<[u16]>::to_vec).collect()
}

fn match_ports(ports: &[u16]) -> String {
    match ports {
        [one] => format!("--dport {one}"),
        many => {
            let list: Vec<String> = many.iter().map(u16::to_string).collect();
            format!("-m multiport --dports {}", list.join(","))
        }
    }
}

/// Whether `/proc/net/if_inet6` lists an address of global scope (scope
/// field `00`), in which case IPv6 traffic must be redirected too.
pub fn has_global_ipv6(if_inet6: &str) -> bool {
    if_inet6.lines().any(|line| line.split_whitespace().nth(3) == Some("00"))
}

#[cfg(test)]
mod tests;
