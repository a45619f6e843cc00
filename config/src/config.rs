//! The validated session config: typed values only, built from [`RawConfig`].

use std::collections::{BTreeMap, BTreeSet};

use crate::filter::{Filter, HttpFilter};
use crate::raw::{
    Port, RawConcurrentSteal, RawConfig, RawHttpFilter, RawIncoming, RawIncomingDetailed, RawInnerFilter, RawMode,
    RawTarget,
};
use crate::target::Target;

/// A validated session config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pause the app while the session is connected.
    pub pause: bool,
    /// The workload to attach to, when given (`None` also for `targetless`).
    pub target: Option<Target>,
    /// The namespace given with the target (or alone).
    pub namespace: Option<String>,
    /// What happens to incoming traffic.
    pub incoming: Incoming,
    /// `kube_context`: the kubeconfig context to reach the target with.
    pub kube_context: Option<String>,
    /// `kubeconfig`: the kubeconfig file to reach the target with.
    pub kubeconfig: Option<String>,
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
    /// Local port → the port the local app actually listens on (`listen_ports`).
    pub listen_ports: BTreeMap<u16, u16>,
    /// What happens when another session already steals a port whole.
    pub on_concurrent_steal: ConcurrentSteal,
}

/// `on_concurrent_steal`: when a port this session would steal whole is
/// already stolen whole by another session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConcurrentSteal {
    /// This session is refused (the default).
    #[default]
    Abort,
    /// This session goes on without the contested ports, and is told.
    Continue,
    /// This session takes the ports; the other session is told and stops
    /// stealing them.
    Override,
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
        let (path, namespace) = match raw.target {
            None => (None, None),
            Some(RawTarget::Path(p)) => (Some(p), None),
            Some(RawTarget::Detailed(d)) => (d.path, d.namespace),
        };
        let key = if namespace.is_some() { "target.namespace" } else { "target" };
        let target = match &path {
            Some(p) => Target::parse(p, namespace.as_deref())
                .map_err(|m| invalid(if m.contains("namespace") { key } else { "target" }, m))?,
            None => {
                if let Some(ns) = &namespace {
                    Target::parse("targetless", Some(ns)).map_err(|m| invalid(key, m))?;
                }
                None
            }
        };
        let incoming = match raw.feature.network.incoming {
            RawIncoming::Mode(mode) => Incoming::unfiltered(mode.into()),
            RawIncoming::Detailed(d) => Incoming::from_raw(*d)?,
        };
        Ok(Config {
            pause: raw.pause,
            target,
            namespace,
            incoming,
            kube_context: raw.kube_context,
            kubeconfig: raw.kubeconfig,
        })
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
        Config {
            pause: false,
            target: None,
            namespace: None,
            incoming: Incoming::unfiltered(Mode::Mirror),
            kube_context: None,
            kubeconfig: None,
        }
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
        Incoming {
            mode,
            http_filter: None,
            ports: PortSelection::All,
            port_mapping: BTreeMap::new(),
            listen_ports: BTreeMap::new(),
            on_concurrent_steal: ConcurrentSteal::Abort,
        }
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
        let port_mapping = pairs(d.port_mapping, "port_mapping", "remote port", |(local, remote)| (remote, local))?;
        let listen_ports = pairs(d.listen_ports, "listen_ports", "port", |pair| pair)?;
        let on_concurrent_steal = match d.on_concurrent_steal.unwrap_or_default() {
            RawConcurrentSteal::Abort => ConcurrentSteal::Abort,
            RawConcurrentSteal::Continue => ConcurrentSteal::Continue,
            RawConcurrentSteal::Override => ConcurrentSteal::Override,
        };
        Ok(Incoming { mode, http_filter, ports, port_mapping, listen_ports, on_concurrent_steal })
    }

    /// Whether this session takes traffic of a remote port at all.
    ///
    /// `incoming.ports` / `ignore_ports` select ports. A filter with
    /// `http_filter.ports` and no `incoming.ports` takes only those ports:
    /// every other port stays with the app (never stolen whole because a
    /// filter was given). A filter without `ports` applies on every port
    /// taken.
    pub fn applies_to(&self, port: u16) -> bool {
        if self.mode == Mode::Off {
            return false;
        }
        let filter_ports = self.http_filter.as_ref().and_then(|f| f.ports.as_ref());
        match (&self.ports, filter_ports) {
            (PortSelection::Only(p), _) => p.contains(&port),
            (PortSelection::All, Some(f)) => f.contains(&port),
            (PortSelection::Except(p), Some(f)) => f.contains(&port) && !p.contains(&port),
            (PortSelection::All, None) => true,
            (PortSelection::Except(p), None) => !p.contains(&port),
        }
    }

    /// The filter that applies on `port`, if any. `None` on a port the
    /// session takes means all of its traffic (only on a port that
    /// `incoming.ports` names outside `http_filter.ports`).
    pub fn filter_for(&self, port: u16) -> Option<&Filter> {
        self.http_filter.as_ref().filter(|f| f.ports.as_ref().is_none_or(|p| p.contains(&port))).map(|f| &f.filter)
    }

    /// Whether deciding on a request on `port` needs its body (a body
    /// filter applies there).
    pub fn needs_body(&self, port: u16) -> bool {
        self.applies_to(port) && self.filter_for(port).is_some_and(Filter::needs_body)
    }

    /// The local port that traffic of a remote port is delivered to:
    /// `port_mapping`, then `listen_ports`.
    pub fn local_port(&self, remote: u16) -> u16 {
        let local = self.port_mapping.get(&remote).copied().unwrap_or(remote);
        self.listen_ports.get(&local).copied().unwrap_or(local)
    }
}

impl HttpFilter {
    fn from_raw(raw: RawHttpFilter) -> Result<Self, Invalid> {
        let ports = raw.ports.map(|p| port_set(&p, &format!("{HTTP_FILTER}.ports"))).transpose()?;
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
        if let Some(b) = raw.body_filter {
            found.push(
                Filter::body(&b.query, &b.matches).map_err(|m| invalid(format!("{HTTP_FILTER}.body_filter"), m))?,
            );
        }
        if let Some(list) = raw.all_of {
            found.push(Filter::AllOf(inner_list(list, "all_of")?));
        }
        if let Some(list) = raw.any_of {
            found.push(Filter::AnyOf(inner_list(list, "any_of")?));
        }
        let expected = "header_filter, path_filter, method_filter, body_filter, all_of or any_of";
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

/// A list of `[a, b]` pairs as a map keyed by `key_of(pair).0`; a key given
/// twice is an error naming the entry.
fn pairs(
    list: Option<Vec<(Port, Port)>>,
    name: &str,
    what: &str,
    key_of: fn((u16, u16)) -> (u16, u16),
) -> Result<BTreeMap<u16, u16>, Invalid> {
    let mut map = BTreeMap::new();
    let Some(list) = list else { return Ok(map) };
    let key = format!("{INCOMING}.{name}");
    if list.is_empty() {
        return Err(invalid(key, "empty list: expected pairs [local, remote] or no key"));
    }
    for (i, (Port(a), Port(b))) in list.into_iter().enumerate() {
        let (k, v) = key_of((a, b));
        if map.insert(k, v).is_some() {
            return Err(invalid(format!("{key}[{i}]"), format!("{what} {k} is mapped twice")));
        }
    }
    Ok(map)
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
            let body = (f.body, f.query, f.matches);
            let filter = match (f.header, f.path, f.method, body) {
                (Some(h), None, None, (None, None, None)) => Filter::regex(&h).map(Filter::Header),
                (None, Some(p), None, (None, None, None)) => Filter::regex(&p).map(Filter::Path),
                (None, None, Some(m), (None, None, None)) => Filter::method(&m).map(Filter::Method),
                (None, None, None, (Some(_), Some(q), Some(m))) => Filter::body(&q, &m),
                _ => Err("expected exactly one of header, path or method, or a body filter (body, query and matches)"
                    .to_owned()),
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
