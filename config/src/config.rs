//! The validated session config: typed values only, built from [`RawConfig`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::filter::{Filter, HttpFilter};
use crate::names::DEFAULT_HTTP_FILTER_PORTS;
use crate::raw::{
    Port, RawConfig, RawHttpFilter, RawIncoming, RawIncomingDetailed, RawInnerFilter, RawMode, RawTarget,
};
use crate::target::Target;

/// A validated session config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pause the app while the session is connected.
    pub pause: bool,
    /// The workload to attach to, when given.
    pub target: Option<Target>,
    /// What happens to incoming traffic.
    pub incoming: Incoming,
}

/// What happens to incoming traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mirror,
    Steal,
    Off,
}

/// Which remote ports a session applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelection {
    All,
    Only(BTreeSet<u16>),
    Except(BTreeSet<u16>),
}

/// `feature.network.incoming`, validated.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub mode: Mode,
    pub http_filter: Option<HttpFilter>,
    pub ports: PortSelection,
    /// Remote port → local port, where they differ.
    pub port_mapping: BTreeMap<u16, u16>,
}

/// A validation failure: the key path and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub key: String,
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { key: key.into(), message: message.into() }
}

const INCOMING: &str = "feature.network.incoming";
const HTTP_FILTER: &str = "feature.network.incoming.http_filter";

impl Config {
    /// Validates a raw config into typed values.
    pub(crate) fn from_raw(raw: RawConfig) -> Result<Self, Invalid> {
        let target =
            match raw.target {
                None => None,
                Some(RawTarget::Path(p)) => Some(Target::parse(&p, None).map_err(|m| invalid("target", m))?),
                Some(RawTarget::Detailed(d)) => Some(Target::parse(&d.path, d.namespace.as_deref()).map_err(|m| {
                    invalid(if m.contains("namespace") { "target.namespace" } else { "target.path" }, m)
                })?),
            };
        let incoming = match raw.feature.network.incoming {
            RawIncoming::Mode(mode) => Incoming::unfiltered(mode.into()),
            RawIncoming::Detailed(d) => Incoming::from_raw(*d)?,
        };
        Ok(Config { pause: raw.pause, target, incoming })
    }

    /// Likely mistakes in a valid config, in words.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.pause && self.incoming.mode != Mode::Steal {
            warnings.push(
                "pause is on but incoming traffic is not stolen: requests to the pod wait on the paused app until they time out (kubelet's HTTP probes are answered by the sidecar); add \"incoming\": \"steal\" so that the local process answers them"
                    .to_owned(),
            );
        }
        warnings
    }
}

impl Default for Config {
    /// The config of an empty file: mirror everything, no pause.
    fn default() -> Self {
        Config { pause: false, target: None, incoming: Incoming::unfiltered(Mode::Mirror) }
    }
}

impl From<RawMode> for Mode {
    fn from(m: RawMode) -> Self {
        match m {
            RawMode::Mirror => Mode::Mirror,
            RawMode::Steal => Mode::Steal,
            RawMode::Off => Mode::Off,
        }
    }
}

impl Incoming {
    fn unfiltered(mode: Mode) -> Self {
        Incoming { mode, http_filter: None, ports: PortSelection::All, port_mapping: BTreeMap::new() }
    }

    fn from_raw(d: RawIncomingDetailed) -> Result<Self, Invalid> {
        let mode = Mode::from(d.mode);
        let ports = match (d.ports, d.ignore_ports) {
            (Some(_), Some(_)) => {
                return Err(invalid(INCOMING, "`ports` and `ignore_ports` are exclusive: expected at most one of them"))
            }
            (Some(p), None) => PortSelection::Only(port_set(&p, &format!("{INCOMING}.ports"))?),
            (None, Some(p)) => PortSelection::Except(port_set(&p, &format!("{INCOMING}.ignore_ports"))?),
            (None, None) => PortSelection::All,
        };
        let http_filter = d.http_filter.map(HttpFilter::from_raw).transpose()?;
        if http_filter.is_some() && mode == Mode::Off {
            return Err(invalid(
                HTTP_FILTER,
                "http_filter has no effect with mode \"off\": expected mode \"steal\" or \"mirror\"",
            ));
        }
        let mut port_mapping = BTreeMap::new();
        if let Some(pairs) = d.port_mapping {
            let key = format!("{INCOMING}.port_mapping");
            if pairs.is_empty() {
                return Err(invalid(key, "empty list: expected pairs [local, remote] or no port_mapping key"));
            }
            for (i, (Port(local), Port(remote))) in pairs.into_iter().enumerate() {
                if port_mapping.insert(remote, local).is_some() {
                    return Err(invalid(format!("{key}[{i}]"), format!("remote port {remote} is mapped twice")));
                }
            }
        }
        Ok(Incoming { mode, http_filter, ports, port_mapping })
    }

    /// Whether this session's config covers a remote port at all.
    pub fn applies_to(&self, port: u16) -> bool {
        self.mode != Mode::Off
            && match &self.ports {
                PortSelection::All => true,
                PortSelection::Only(p) => p.contains(&port),
                PortSelection::Except(p) => !p.contains(&port),
            }
    }

    /// The filter that applies on `port`, if any (`http_filter` on one of its ports).
    pub fn filter_for(&self, port: u16) -> Option<&Filter> {
        self.http_filter.as_ref().filter(|f| f.ports.contains(&port)).map(|f| &f.filter)
    }

    /// The local port that traffic of a remote port is delivered to.
    pub fn local_port(&self, remote: u16) -> u16 {
        self.port_mapping.get(&remote).copied().unwrap_or(remote)
    }
}

impl HttpFilter {
    fn from_raw(raw: RawHttpFilter) -> Result<Self, Invalid> {
        let ports = match raw.ports {
            Some(p) => port_set(&p, &format!("{HTTP_FILTER}.ports"))?,
            None => DEFAULT_HTTP_FILTER_PORTS.into_iter().collect(),
        };
        let mut found = Vec::new();
        let single =
            |key: &str, value: Option<String>, found: &mut Vec<Filter>, make: fn(&str) -> Result<Filter, String>| {
                value.map_or(Ok(()), |v| {
                    let f = make(&v).map_err(|m| invalid(format!("{HTTP_FILTER}.{key}"), m))?;
                    found.push(f);
                    Ok(())
                })
            };
        single("header_filter", raw.header_filter, &mut found, |v| Filter::regex(v).map(Filter::Header))?;
        single("path_filter", raw.path_filter, &mut found, |v| Filter::regex(v).map(Filter::Path))?;
        single("method_filter", raw.method_filter, &mut found, |v| Filter::method(v).map(Filter::Method))?;
        if let Some(list) = raw.all_of {
            found.push(Filter::AllOf(inner_list(list, "all_of")?));
        }
        if let Some(list) = raw.any_of {
            found.push(Filter::AnyOf(inner_list(list, "any_of")?));
        }
        let expected = "header_filter, path_filter, method_filter, all_of or any_of";
        match found.len() {
            0 => Err(invalid(HTTP_FILTER, format!("no filter given: expected one of {expected}"))),
            1 => Ok(HttpFilter { filter: found.remove(0), ports }),
            _ => Err(invalid(
                HTTP_FILTER,
                format!("expected only one of {expected}; to combine filters, list them in all_of or any_of"),
            )),
        }
    }
}

fn inner_list(list: Vec<RawInnerFilter>, name: &str) -> Result<Vec<Filter>, Invalid> {
    let key = format!("{HTTP_FILTER}.{name}");
    if list.is_empty() {
        return Err(invalid(key, "empty list: expected at least one filter such as {\"header\": \"x-user: alice\"}"));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, f)| {
            let key = format!("{key}[{i}]");
            let filter = match (f.header, f.path, f.method) {
                (Some(h), None, None) => Filter::regex(&h).map(Filter::Header),
                (None, Some(p), None) => Filter::regex(&p).map(Filter::Path),
                (None, None, Some(m)) => Filter::method(&m).map(Filter::Method),
                _ => Err("expected exactly one of header, path or method".to_owned()),
            };
            filter.map_err(|m| invalid(key, m))
        })
        .collect()
}

fn port_set(ports: &[Port], key: &str) -> Result<BTreeSet<u16>, Invalid> {
    if ports.is_empty() {
        return Err(invalid(key, "empty list: expected at least one port, or leave the key out"));
    }
    Ok(ports.iter().map(|p| p.0).collect())
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
            (Some(h), _) => {
                write!(
                    f,
                    "{verb} requests matching {} on HTTP ports {} and all traffic on ",
                    h.filter,
                    list(&h.ports)
                )?;
                match &inc.ports {
                    PortSelection::All => f.write_str("other ports")?,
                    PortSelection::Only(p) => write!(f, "other ports among {}", list(p))?,
                    PortSelection::Except(p) => write!(f, "other ports except {}", list(p))?,
                }
            }
        }
        for (remote, local) in &inc.port_mapping {
            write!(f, "; remote {remote} -> local {local}")?;
        }
        write!(f, "; pause {}", if self.pause { "on" } else { "off" })?;
        if let Some(t) = &self.target {
            write!(f, "; target {t}")?;
        }
        Ok(())
    }
}
