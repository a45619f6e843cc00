//! What a config does, in words: one line for the whole config (`config
//! check`, the sidecar's log) and one per port (plans).

use std::collections::BTreeSet;
use std::fmt;

use crate::config::{ConcurrentSteal, Config, Incoming, Mode, PortSelection};

impl Incoming {
    /// What this session does on `port`, in words (port 0: any port the
    /// config does not name).
    pub fn describe(&self, port: u16) -> String {
        if !self.applies_to(port) {
            return "untouched".to_owned();
        }
        let verb = if self.mode == Mode::Steal { "steal" } else { "mirror" };
        let local = self.local_port(port);
        let target = if local == port || port == 0 { String::new() } else { format!(" (to local port {local})") };
        match self.filter_for(port) {
            Some(filter) => format!("{verb} requests matching {filter}{target}"),
            None => format!("{verb} all traffic{target}"),
        }
    }

    /// The ports this config names anywhere (selection, filter, mapping).
    pub fn named_ports(&self) -> BTreeSet<u16> {
        let mut ports = BTreeSet::new();
        if let PortSelection::Only(p) | PortSelection::Except(p) = &self.ports {
            ports.extend(p);
        }
        if let Some(filter_ports) = self.http_filter.as_ref().and_then(|f| f.ports.as_ref()) {
            ports.extend(filter_ports);
        }
        ports.extend(self.port_mapping.keys());
        // listen_ports names local ports; traffic reaches them from the
        // remote port of the same number unless port_mapping says otherwise.
        ports.extend(self.listen_ports.keys().filter(|local| !self.port_mapping.values().any(|l| l == *local)));
        ports
    }
}

fn list(ports: &BTreeSet<u16>) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for PortSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSelection::All => f.write_str("all ports"),
            PortSelection::Only(p) => write!(f, "ports {}", list(p)),
            PortSelection::Except(p) => write!(f, "all ports except {}", list(p)),
        }
    }
}

/// One line: what the session will do.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inc = &self.incoming;
        let verb = match inc.mode {
            Mode::Mirror => "mirror",
            Mode::Steal => "steal",
            Mode::Off => "incoming traffic off",
        };
        match (&inc.http_filter, inc.mode) {
            (_, Mode::Off) => f.write_str(verb)?,
            (None, _) => write!(f, "{verb} all traffic on {}", inc.ports)?,
            (Some(h), _) => match (&h.ports, &inc.ports) {
                (None, ports) => write!(f, "{verb} HTTP requests matching {} on {ports}", h.filter)?,
                (Some(fp), PortSelection::Only(p)) => {
                    let filtered: BTreeSet<u16> = fp.intersection(p).copied().collect();
                    let whole: BTreeSet<u16> = p.difference(fp).copied().collect();
                    match filtered.is_empty() {
                        true => write!(
                            f,
                            "no HTTP requests matched (http_filter.ports {} are not among incoming.ports)",
                            list(fp)
                        )?,
                        false => write!(f, "{verb} HTTP requests matching {} on ports {}", h.filter, list(&filtered))?,
                    }
                    if !whole.is_empty() {
                        write!(f, "; {verb} all traffic on ports {}", list(&whole))?;
                    }
                }
                (Some(fp), PortSelection::All) => write!(
                    f,
                    "{verb} HTTP requests matching {} on ports {}; other ports untouched",
                    h.filter,
                    list(fp)
                )?,
                (Some(fp), PortSelection::Except(ignored)) => {
                    let filtered: BTreeSet<u16> = fp.difference(ignored).copied().collect();
                    write!(
                        f,
                        "{verb} HTTP requests matching {} on ports {}; other ports untouched",
                        h.filter,
                        list(&filtered)
                    )?
                }
            },
        }
        for (remote, local) in &inc.port_mapping {
            write!(f, "; remote {remote} -> local {local}")?;
        }
        for (local, actual) in &inc.listen_ports {
            write!(f, "; local {local} listened on at {actual}")?;
        }
        match inc.on_concurrent_steal {
            ConcurrentSteal::Abort => {}
            ConcurrentSteal::Continue => f.write_str("; on concurrent steal: continue")?,
            ConcurrentSteal::Override => f.write_str("; on concurrent steal: override")?,
        }
        write!(f, "; pause {}", if self.pause { "on" } else { "off" })?;
        if let Some(t) = &self.target {
            write!(f, "; target {t}")?;
        }
        Ok(())
    }
}
