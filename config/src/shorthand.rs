//! mirrord's shorthands, spelt out into the canonical form of [`crate::raw`]:
//!
//! - `"network": true | false | null` (`false`: incoming traffic off);
//! - `"incoming": true | false | null` (`true`: mirror, `false`: off);
//! - `"http_filter": true | false | null` (no filter);
//! - `ports`, `ignore_ports`, `http_filter.ports` as one number;
//! - targets as objects: `{"deployment": "api", "container": "app"}`, the
//!   same under `path`, `{"labels": {…}}`, `path: null`;
//! - the places earlier mirrord releases had for keys that decide what a
//!   session takes: `agent.pause` (now `pause`) and
//!   `incoming.http_header_filter: {filter, ports}` (now
//!   `http_filter: {header_filter, ports}`). Setting aside either would
//!   pause nothing, or steal every request.

use serde_json::{Map, Value};

use crate::config::Invalid;

/// Target kinds as mirrord's target objects name them, and as a path.
const KINDS: [(&str, &str); 9] = [
    ("deployment", "deployment"),
    ("pod", "pod"),
    ("rollout", "rollout"),
    ("job", "job"),
    ("cron_job", "cronjob"),
    ("stateful_set", "statefulset"),
    ("service", "service"),
    ("replica_set", "replicaset"),
    ("labels", "label"),
];

/// Rewrites the shorthands in a config value, in place.
pub(crate) fn expand(config: &mut Value) -> Result<(), Invalid> {
    let Value::Object(root) = config else { return Ok(()) };
    agent_pause(root)?;
    if let Some(target) = root.get_mut("target") {
        if target.is_null() {
            root.remove("target");
        } else {
            expand_target(target)?;
        }
    }
    let Some(Value::Object(feature)) = root.get_mut("feature") else { return Ok(()) };
    match feature.get("network") {
        Some(Value::Bool(true)) => {
            feature.insert("network".into(), Value::Object(Map::new()));
        }
        Some(Value::Bool(false)) => {
            feature.insert("network".into(), serde_json::json!({ "incoming": "off" }));
        }
        Some(Value::Null) => {
            feature.remove("network");
        }
        _ => {}
    }
    let Some(Value::Object(network)) = feature.get_mut("network") else { return Ok(()) };
    match network.get("incoming") {
        Some(Value::Bool(on)) => {
            let mode = if *on { "mirror" } else { "off" };
            network.insert("incoming".into(), Value::from(mode));
        }
        Some(Value::Null) => {
            network.remove("incoming");
        }
        _ => {}
    }
    let Some(Value::Object(incoming)) = network.get_mut("incoming") else { return Ok(()) };
    http_header_filter(incoming)?;
    one_port_as_list(incoming, "ports");
    one_port_as_list(incoming, "ignore_ports");
    if matches!(incoming.get("http_filter"), Some(Value::Bool(_) | Value::Null)) {
        incoming.remove("http_filter");
    }
    if let Some(Value::Object(filter)) = incoming.get_mut("http_filter") {
        one_port_as_list(filter, "ports");
    }
    Ok(())
}

/// `agent.pause`, where mirrord first had `pause`, moves to `pause`.
fn agent_pause(root: &mut Map<String, Value>) -> Result<(), Invalid> {
    let Some(Value::Object(agent)) = root.get_mut("agent") else { return Ok(()) };
    let Some(pause) = agent.remove("pause") else { return Ok(()) };
    let invalid = |message: &str| Invalid { key: "agent.pause".into(), message: message.into() };
    match (pause, root.get("pause")) {
        (Value::Null, _) => Ok(()),
        (Value::Bool(old), Some(Value::Bool(new))) if old != *new => Err(invalid(
            "agent.pause (where earlier mirrord releases had pause) and pause disagree: expected one of them",
        )),
        (Value::Bool(old), None | Some(Value::Null)) => {
            root.insert("pause".into(), Value::Bool(old));
            Ok(())
        }
        // The same value, or a `pause` of the wrong type, which is reported
        // as such.
        (Value::Bool(_), Some(_)) => Ok(()),
        _ => Err(invalid("expected true or false")),
    }
}

/// `http_header_filter: {filter, ports}`, mirrord's first header filter,
/// becomes `http_filter: {header_filter, ports}`.
fn http_header_filter(incoming: &mut Map<String, Value>) -> Result<(), Invalid> {
    let Some(old) = incoming.remove("http_header_filter") else { return Ok(()) };
    let key = "feature.network.incoming.http_header_filter";
    let invalid = |message: String| Invalid { key: key.into(), message };
    let expected = "expected {\"filter\": \"<header regex>\", \"ports\": [<port>, …]}";
    let old = match old {
        Value::Null => return Ok(()),
        Value::Object(old) => old,
        _ => return Err(invalid(expected.into())),
    };
    if incoming.get("http_filter").is_some_and(|f| !f.is_null()) {
        return Err(invalid(
            "http_header_filter is where earlier mirrord releases had http_filter, and both are given: expected one of them".into(),
        ));
    }
    let mut filter = Map::new();
    for (name, value) in old {
        let name = match name.as_str() {
            "filter" => "header_filter",
            "ports" => "ports",
            other => return Err(invalid(format!("unknown key `{other}`: {expected}"))),
        };
        filter.insert(name.into(), value);
    }
    incoming.insert("http_filter".into(), Value::Object(filter));
    Ok(())
}

fn one_port_as_list(map: &mut Map<String, Value>, key: &str) {
    if let Some(port @ Value::Number(_)) = map.get_mut(key) {
        *port = Value::Array(vec![port.take()]);
    }
}

/// `target` in every form mirrord takes, as a path string or `{path, namespace}`.
fn expand_target(target: &mut Value) -> Result<(), Invalid> {
    let Value::Object(map) = target else { return Ok(()) };
    if map.contains_key("path") {
        match map.get("path") {
            Some(Value::Null) => {
                map.remove("path");
            }
            Some(Value::Object(object)) => {
                let path = object_path(object, "target.path")?;
                map.insert("path".into(), Value::from(path));
            }
            _ => {}
        }
        return Ok(());
    }
    if !KINDS.iter().any(|(key, _)| map.contains_key(*key)) {
        return Ok(()); // only a namespace, or a mistake the schema reports
    }
    if map.contains_key("namespace") {
        return Err(Invalid {
            key: "target.namespace".into(),
            message: "a namespace does not go with the short target form: expected {\"path\": {…}, \"namespace\": …}"
                .into(),
        });
    }
    *target = Value::from(object_path(map, "target")?);
    Ok(())
}

/// `{"deployment": "api", "container": "app"}` → `deployment/api/container/app`.
fn object_path(object: &Map<String, Value>, key: &str) -> Result<String, Invalid> {
    let expected = "expected one of deployment, pod, rollout, job, cron_job, stateful_set, service, replica_set or labels, and optionally container";
    let fail = |message: String| Invalid { key: key.to_owned(), message };
    let kinds: Vec<&(&str, &str)> = KINDS.iter().filter(|(k, _)| object.contains_key(*k)).collect();
    let [(kind_key, kind)] = kinds.as_slice() else {
        return Err(fail(format!("expected exactly one kind of target: {expected}")));
    };
    if let Some(other) = object.keys().find(|k| *k != kind_key && *k != "container") {
        return Err(fail(format!("unknown key `{other}` in a target: {expected}")));
    }
    let name = match &object[*kind_key] {
        Value::String(name) => name.clone(),
        Value::Object(labels) if *kind == "label" => labels
            .iter()
            .map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| fail("labels: expected string values".into()))?
            .join(","),
        _ => return Err(fail(format!("{kind_key}: expected a name"))),
    };
    let mut path = format!("{kind}/{name}");
    match object.get("container") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) => path.push_str(&format!("/container/{c}")),
        Some(_) => return Err(fail("container: expected a container name".into())),
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn expanded(v: Value) -> Value {
        let mut v = v;
        expand(&mut v).unwrap();
        v
    }

    #[test]
    fn toggles_and_single_ports() {
        assert_eq!(expanded(json!({"feature":{"network":true}})), json!({"feature":{"network":{}}}));
        assert_eq!(expanded(json!({"feature":{"network":false}})), json!({"feature":{"network":{"incoming":"off"}}}));
        assert_eq!(
            expanded(json!({"feature":{"network":{"incoming":true}}})),
            json!({"feature":{"network":{"incoming":"mirror"}}})
        );
        assert_eq!(
            expanded(json!({"feature":{"network":{"incoming":false}}})),
            json!({"feature":{"network":{"incoming":"off"}}})
        );
        assert_eq!(expanded(json!({"feature":{"network":{"incoming":null}}})), json!({"feature":{"network":{}}}));
        assert_eq!(
            expanded(json!({"feature":{"network":{"incoming":{"ports":80,"http_filter":true}}}})),
            json!({"feature":{"network":{"incoming":{"ports":[80]}}}})
        );
        assert_eq!(
            expanded(json!({"feature":{"network":{"incoming":{"http_filter":{"ports":8080}}}}})),
            json!({"feature":{"network":{"incoming":{"http_filter":{"ports":[8080]}}}}})
        );
    }

    #[test]
    fn keys_in_the_places_of_earlier_mirrord_releases() {
        assert_eq!(
            expanded(
                json!({"feature":{"network":{"incoming":{"mode":"steal","http_header_filter":{"filter":"host: api","ports":[80, 8080]}}}}})
            ),
            json!({"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"host: api","ports":[80, 8080]}}}}})
        );
        assert_eq!(
            expanded(json!({"feature":{"network":{"incoming":{"http_header_filter":{"filter":"x: 1","ports":80}}}}})),
            json!({"feature":{"network":{"incoming":{"http_filter":{"header_filter":"x: 1","ports":[80]}}}}})
        );
        assert_eq!(expanded(json!({"agent":{"pause":true,"ttl":3}})), json!({"agent":{"ttl":3},"pause":true}));
        assert_eq!(expanded(json!({"agent":{"pause":false},"pause":false})), json!({"agent":{},"pause":false}));
        assert_eq!(expanded(json!({"agent":{"pause":true},"pause":null})), json!({"agent":{},"pause":true}));
        let fails = |v: Value| {
            let mut v = v;
            expand(&mut v).unwrap_err()
        };
        let both = fails(
            json!({"feature":{"network":{"incoming":{"http_filter":{"path_filter":"/a"},"http_header_filter":{"filter":"x: 1"}}}}}),
        );
        assert_eq!(both.key, "feature.network.incoming.http_header_filter");
        assert!(both.message.contains("both are given"), "{both:?}");
        assert!(fails(json!({"agent":{"pause":true},"pause":false})).message.contains("disagree"));
        let other = fails(json!({"feature":{"network":{"incoming":{"http_header_filter":{"filtr":"x: 1"}}}}}));
        assert!(other.message.starts_with("unknown key `filtr`"), "{other:?}");
        assert_eq!(fails(json!({"agent":{"pause":true},"pause":false})).key, "agent.pause");
        assert_eq!(fails(json!({"agent":{"pause":"yes"}})).message, "expected true or false");
    }

    #[test]
    fn every_target_form() {
        let t = |v: Value| expanded(json!({ "target": v }));
        assert_eq!(t(json!({"deployment":"api"})), json!({"target":"deployment/api"}));
        assert_eq!(t(json!({"pod":"p","container":"c"})), json!({"target":"pod/p/container/c"}));
        assert_eq!(
            t(json!({"path":{"stateful_set":"db"},"namespace":"prod"})),
            json!({"target":{"path":"statefulset/db","namespace":"prod"}})
        );
        assert_eq!(t(json!({"path":null,"namespace":"prod"})), json!({"target":{"namespace":"prod"}}));
        assert_eq!(t(json!({"labels":{"app":"api","tier":"web"}})), json!({"target":"label/app=api,tier=web"}));
        assert_eq!(expanded(json!({"target":null})), json!({}));
        let mut two = json!({"target":{"deployment":"a","pod":"b"}});
        assert!(expand(&mut two).unwrap_err().message.starts_with("expected exactly one kind of target"));
        let mut with_ns = json!({"target":{"deployment":"a","namespace":"x"}});
        assert_eq!(expand(&mut with_ns).unwrap_err().key, "target.namespace");
    }
}
