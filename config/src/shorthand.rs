//! mirrord's shorthands, spelt out into the canonical form of [`crate::raw`]:
//!
//! - `"network": true | false | null` (`false`: incoming traffic off);
//! - `"incoming": true | false | null` (`true`: mirror, `false`: off);
//! - `"http_filter": true | false | null` (no filter);
//! - `ports`, `ignore_ports`, `http_filter.ports` as one number;
//! - targets as objects: `{"deployment": "api", "container": "app"}`, the
//!   same under `path`, `{"labels": {…}}`, `path: null`.

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
