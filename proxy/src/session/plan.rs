//! What a session will do, port by port, in words; and which sessions cannot
//! be connected side by side.

use std::collections::BTreeSet;

use mirrord_config::{Config, Mode};

use super::Session;
use crate::ports::PortList;
use crate::proto::PortPlan;

/// What `config` does on `port`.
pub fn describe(config: &Config, port: u16) -> String {
    config.incoming.describe(port)
}

/// The plan for a session: one line per port the sidecar is known to
/// intercept (`known`), or per port the config names plus "other ports"
/// when the sidecar intercepts every port. Warnings for likely mistakes.
pub fn plan(session: &Session, known: &PortList) -> (Vec<PortPlan>, Vec<String>) {
    let config = &session.config;
    let mut warnings = Vec::new();
    let ports: BTreeSet<u16> = match known {
        PortList::Some(ports) => ports.clone(),
        PortList::All => named_ports(config),
    };
    let action = |p: u16| match session.yielded.holder(p) {
        Some(holder) => format!("untouched (stolen whole by session {holder:?})"),
        None => describe(config, p),
    };
    let mut lines: Vec<PortPlan> = ports.iter().map(|&p| PortPlan { port: u32::from(p), action: action(p) }).collect();
    if *known == PortList::All {
        // Port 0 stands for every other port.
        lines.push(PortPlan { port: 0, action: describe(config, 0) });
    }
    if let PortList::Some(pod_ports) = known {
        warnings.extend(filter_ports_warning(config, pod_ports));
    }
    if config.incoming.mode == Mode::Off {
        warnings.push("incoming traffic is off: this session receives nothing".to_owned());
    }
    warnings.extend(config.warnings());
    (lines, warnings)
}

/// `http_filter.ports` that name none of the pod's intercepted ports: what
/// that means for this session, in words.
fn filter_ports_warning(config: &Config, pod_ports: &BTreeSet<u16>) -> Option<String> {
    let filter_ports = config.incoming.http_filter.as_ref()?.ports.as_ref()?;
    if !filter_ports.is_disjoint(pod_ports) {
        return None;
    }
    let list = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let whole: BTreeSet<u16> = pod_ports.iter().copied().filter(|&p| config.incoming.applies_to(p)).collect();
    let outcome = if whole.is_empty() {
        "the filter matches nothing and this session receives no traffic".to_owned()
    } else {
        format!("the filter matches nothing; ports {} are taken whole because incoming.ports names them", list(&whole))
    };
    Some(format!(
        "http_filter.ports [{}] match none of the pod's ports [{}]: {outcome}; list the pod's HTTP ports in http_filter.ports, or leave it out to filter HTTP on every port",
        list(filter_ports),
        list(pod_ports)
    ))
}

fn named_ports(config: &Config) -> BTreeSet<u16> {
    config.incoming.named_ports()
}

/// The ports `existing` and `new` would both steal whole (no filter on
/// either): on the ports the sidecar is known to intercept, or else on the
/// ports both configs name; elsewhere the first connected wins and the
/// other is told when it loses a match. A port `existing` gave up does not
/// count.
pub fn conflicting_ports(existing: &Session, new: &Session, known: &PortList) -> Vec<u16> {
    let (a, b) = (&existing.config.incoming, &new.config.incoming);
    if a.mode != Mode::Steal || b.mode != Mode::Steal {
        return Vec::new();
    }
    let candidates: BTreeSet<u16> = match known {
        PortList::Some(ports) => ports.clone(),
        PortList::All => named_ports(&existing.config).intersection(&named_ports(&new.config)).copied().collect(),
    };
    candidates
        .into_iter()
        .filter(|&p| existing.takes(p) && b.applies_to(p) && a.filter_for(p).is_none() && b.filter_for(p).is_none())
        .collect()
}

/// The refusal when `on_concurrent_steal` is `abort`: a port the new
/// session would steal whole is already stolen whole by `holder`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {port} is already stolen whole by session {holder:?}; two sessions cannot both steal a port without a filter: add an http_filter (for example a header that names you), choose other ports, or set on_concurrent_steal to \"continue\" or \"override\"")]
pub struct Conflict {
    pub port: u16,
    pub holder: String,
}

/// Why `new` cannot connect while `existing` is, when it would abort.
pub fn conflict(existing: &Session, new: &Session, known: &PortList) -> Option<Conflict> {
    conflicting_ports(existing, new, known).first().map(|&port| Conflict { port, holder: existing.name.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::from_json(json).unwrap()
    }

    fn plan(c: &Config, known: &PortList) -> (Vec<PortPlan>, Vec<String>) {
        let (s, _rx) = Session::new(0, String::new(), "s".to_owned(), "s".into(), c.clone());
        super::plan(&s, known)
    }

    fn session(name: &str, json: &str) -> Session {
        let (s, _rx) = Session::new(0, String::new(), name.to_owned(), name.into(), config(json));
        Arc::try_unwrap(s).unwrap()
    }

    use std::sync::Arc;

    #[test]
    fn describes_ports() {
        let c = config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"},"port_mapping":[[3000,80]]}}}}"#,
        );
        assert_eq!(describe(&c, 80), "steal requests matching header \"x-user: alice\" (to local port 3000)");
        // Without http_filter.ports the filter applies on every port: a
        // filtered config never steals a port whole.
        assert_eq!(describe(&c, 9090), "steal requests matching header \"x-user: alice\"");
        let known = PortList::Some([80, 9090].into());
        let (lines, warnings) = plan(&c, &known);
        assert_eq!(lines.len(), 2);
        assert!(warnings.is_empty());
        let paused_mirror = config(r#"{"pause":true,"feature":{"network":{"incoming":"mirror"}}}"#);
        let (_, warnings) = plan(&paused_mirror, &known);
        assert!(warnings[0].starts_with("pause is on but incoming traffic is not stolen"), "{warnings:?}");
        let paused_steal = config(r#"{"pause":true,"feature":{"network":{"incoming":"steal"}}}"#);
        assert!(plan(&paused_steal, &known).1.is_empty());
    }

    #[test]
    fn filter_ports_keep_other_ports_with_the_app_unless_incoming_ports_names_them() {
        let only_80 = config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice","ports":[80]}}}}}"#,
        );
        assert_eq!(describe(&only_80, 80), "steal requests matching header \"x-user: alice\"");
        assert_eq!(describe(&only_80, 9090), "untouched");
        let named = config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","ports":[80,9090],"http_filter":{"header_filter":"x-user: alice","ports":[80]}}}}}"#,
        );
        assert_eq!(describe(&named, 9090), "steal all traffic");
        assert_eq!(describe(&named, 3000), "untouched");
        // The filter's ports are none of the pod's: say what happens.
        let (_, warnings) = plan(&only_80, &PortList::Some([3000].into()));
        assert!(
            warnings[0].starts_with("http_filter.ports [80] match none of the pod's ports [3000]: the filter matches nothing and this session receives no traffic"),
            "{warnings:?}"
        );
        let whole = config(
            r#"{"feature":{"network":{"incoming":{"mode":"steal","ports":[3000],"http_filter":{"header_filter":"x-user: alice","ports":[80]}}}}}"#,
        );
        let (_, warnings) = plan(&whole, &PortList::Some([3000].into()));
        assert!(warnings[0].contains("ports 3000 are taken whole because incoming.ports names them"), "{warnings:?}");
    }

    #[test]
    fn unfiltered_steals_of_one_port_conflict_filtered_ones_do_not() {
        let known = PortList::Some([80].into());
        let steal = r#"{"feature":{"network":{"incoming":"steal"}}}"#;
        let alice =
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: alice"}}}}}"#;
        let bob =
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: bob"}}}}}"#;
        let reason = conflict(&session("a", steal), &session("b", steal), &known).unwrap().to_string();
        assert!(reason.starts_with("port 80 is already stolen whole by session \"a\""), "{reason}");
        assert!(conflict(&session("a", alice), &session("b", bob), &known).is_none());
        // Two header filters never conflict, on an HTTP port or any other.
        assert!(conflict(&session("a", alice), &session("b", bob), &PortList::Some([80, 5432].into())).is_none());
        assert!(conflict(&session("a", steal), &session("b", r#"{}"#), &known).is_none());
        // Unknown pod ports: only ports both configs name can conflict.
        assert!(conflict(&session("a", steal), &session("b", steal), &PortList::All).is_none());
    }
}
