//! Which keys a config may have: this project's own (from the JSON schema of
//! [`crate::raw::RawConfig`]) and mirrord's whole key tree (`mirrord/keys.txt`,
//! written from mirrord's published schema by `mirrord/keys.py`, and
//! `mirrord/removed.txt`, the keys of earlier mirrord releases, which
//! developers' files still carry).
//!
//! A developer's existing `mirrord.json` carries sections this project does
//! not use (`feature.fs`, `agent`, `operator`, …). They are set aside and
//! listed once, so that the file works unchanged; a key that mirrord does
//! not have either is an error with "did you mean", suggested among the keys
//! of both trees (so a real key is never "corrected" into another). A few
//! keys of mirrord are refused instead of set aside: filters this sidecar
//! does not evaluate, since without them a steal would take requests the
//! developer did not ask for.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::config::Invalid;
use crate::suggest::nearest;

/// Key paths: `.` between keys, `[]` for list items, `*` for any map key.
type Tree = BTreeSet<String>;

/// mirrord's filters that are not evaluated here: refused, never ignored.
/// (mirrord's earlier `http_header_filter` never gets here: it is read as
/// `http_filter` before keys are sifted, [`crate::shorthand`].)
const REFUSED: [(&str, &str); 1] = [("feature.network.incoming.http_filter.header_filter_jq", "jq header filters")];

fn ours() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| schema_keys(&crate::schema()))
}

fn mirrords() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        [include_str!("../mirrord/keys.txt"), include_str!("../mirrord/removed.txt")]
            .into_iter()
            .flat_map(str::lines)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    })
}

/// Removes the keys of mirrord that this project does not use from `value`
/// and returns their paths (outermost only, in file order). Fails on a key
/// that neither knows, and on a refused one.
pub(crate) fn sift(value: &mut Value) -> Result<Vec<String>, Invalid> {
    let mut ignored = Vec::new();
    walk(value, &Path::root(), &mut ignored)?;
    Ok(ignored)
}

/// A position in the config: as the trees spell it and as the user reads it.
#[derive(Debug, Clone)]
struct Path {
    tree: String,
    shown: String,
}

impl Path {
    fn root() -> Path {
        Path { tree: String::new(), shown: String::new() }
    }

    fn key(&self, key: &str, tree_key: &str) -> Path {
        let join = |base: &str, k: &str| if base.is_empty() { k.to_owned() } else { format!("{base}.{k}") };
        Path { tree: join(&self.tree, tree_key), shown: join(&self.shown, key) }
    }

    fn item(&self, i: usize) -> Path {
        Path { tree: format!("{}[]", self.tree), shown: format!("{}[{i}]", self.shown) }
    }
}

fn walk(value: &mut Value, at: &Path, ignored: &mut Vec<String>) -> Result<(), Invalid> {
    match value {
        Value::Object(map) => walk_object(map, at, ignored),
        Value::Array(items) => items.iter_mut().enumerate().try_for_each(|(i, v)| walk(v, &at.item(i), ignored)),
        _ => Ok(()),
    }
}

fn walk_object(map: &mut Map<String, Value>, at: &Path, ignored: &mut Vec<String>) -> Result<(), Invalid> {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let (path, in_ours) = resolve(ours(), at, &key);
        if in_ours {
            if let Some(child) = map.get_mut(&key) {
                walk(child, &path, ignored)?;
            }
            continue;
        }
        let (path, in_mirrords) = resolve(mirrords(), at, &key);
        if !in_mirrords {
            return Err(unknown(at, &key, &[ours(), mirrords()]));
        }
        refuse(&path)?;
        if let Some(child) = map.remove(&key) {
            check_mirrord_only(&child, &path)?;
        }
        ignored.push(path.shown);
    }
    Ok(())
}

/// Keys under a set-aside section must still be mirrord's.
fn check_mirrord_only(value: &Value, at: &Path) -> Result<(), Invalid> {
    match value {
        Value::Object(map) => map.iter().try_for_each(|(key, child)| {
            let (path, known) = resolve(mirrords(), at, key);
            if !known {
                return Err(unknown(at, key, &[mirrords()]));
            }
            refuse(&path)?;
            check_mirrord_only(child, &path)
        }),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| check_mirrord_only(v, &at.item(i))),
        _ => Ok(()),
    }
}

/// The path of `key` under `at` in `tree`, and whether the tree has it
/// (by name, or as any key of a map).
fn resolve(tree: &Tree, at: &Path, key: &str) -> (Path, bool) {
    let named = at.key(key, key);
    if tree.contains(&named.tree) {
        return (named, true);
    }
    let any = at.key(key, "*");
    let known = tree.contains(&any.tree);
    (if known { any } else { named }, known)
}

fn refuse(path: &Path) -> Result<(), Invalid> {
    match REFUSED.iter().find(|(refused, _)| path.tree == *refused || path.tree.starts_with(&format!("{refused}."))) {
        Some((_, what)) => Err(Invalid {
            key: path.shown.clone(),
            message: format!(
                "{what} are mirrord's but not evaluated by this sidecar, and leaving the filter out would take requests it does not match: expected header_filter, path_filter or method_filter (alone or in all_of/any_of)"
            ),
        }),
        None => Ok(()),
    }
}

/// "unknown key" with the closest key either tree has at that place.
fn unknown(at: &Path, key: &str, trees: &[&Tree]) -> Invalid {
    let prefix = if at.tree.is_empty() { String::new() } else { format!("{}.", at.tree) };
    let siblings: BTreeSet<&str> = trees
        .iter()
        .flat_map(|t| t.iter())
        .filter_map(|k| k.strip_prefix(&prefix))
        .filter(|rest| !rest.is_empty() && !rest.contains('.') && !rest.contains('[') && *rest != "*")
        .collect();
    let message = match nearest(key, siblings.iter().copied()) {
        Some(best) => format!("unknown key `{key}`, did you mean `{best}`?"),
        None if siblings.is_empty() => format!("unknown key `{key}`, no keys are allowed here"),
        None => format!(
            "unknown key `{key}`: neither this project nor mirrord has it (keys here: {})",
            siblings.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ),
    };
    Invalid { key: at.key(key, key).shown, message }
}

/// Every key path a JSON schema describes (properties, items, maps),
/// following `$ref`s and combinators.
fn schema_keys(schema: &Value) -> Tree {
    let defs = schema.get("$defs").or_else(|| schema.get("definitions")).cloned().unwrap_or(Value::Null);
    let mut keys = Tree::new();
    schema_walk(schema, "", &defs, &mut keys, 0);
    keys
}

fn schema_walk(node: &Value, prefix: &str, defs: &Value, keys: &mut Tree, depth: usize) {
    let mut node = node;
    while let Some(name) = node.get("$ref").and_then(Value::as_str).and_then(|r| r.rsplit('/').next()) {
        match defs.get(name) {
            Some(def) => node = def,
            None => return,
        }
    }
    // The config's own schema is shallow; the bound only guards recursion.
    if depth > 16 {
        return;
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        for branch in node.get(combinator).and_then(Value::as_array).into_iter().flatten() {
            schema_walk(branch, prefix, defs, keys, depth + 1);
        }
    }
    let join = |k: &str| if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
    for (name, sub) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let path = join(name);
        keys.insert(path.clone());
        schema_walk(sub, &path, defs, keys, depth + 1);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.as_object().is_some_and(|o| !o.is_empty())) {
        let path = join("*");
        keys.insert(path.clone());
        schema_walk(extra, &path, defs, keys, depth + 1);
    }
    if let Some(items) = node.get("items").filter(|v| v.is_object()) {
        schema_walk(items, &format!("{prefix}[]"), defs, keys, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sifted(json: &str) -> Result<(Value, Vec<String>), Invalid> {
        let mut value: Value = serde_json::from_str(json).unwrap();
        let ignored = sift(&mut value)?;
        Ok((value, ignored))
    }

    #[test]
    fn our_tree_comes_from_the_schema() {
        for key in [
            "pause",
            "target.path",
            "feature.network.incoming.http_filter.all_of[].header",
            "feature.network.incoming.on_concurrent_steal",
        ] {
            assert!(ours().contains(key), "{key} missing from {:?}", ours());
        }
        assert!(mirrords().len() > 300, "mirrord's key tree is loaded");
        assert!(mirrords().contains("feature.env.override.*"));
    }

    #[test]
    fn keys_of_earlier_mirrord_releases_are_set_aside_too() {
        let (value, ignored) = sifted(
            r#"{"connect_tcp":null,"agent":{"network_interface":"eth0","image_pull_secrets":[{"secret-key":"s"}]},"experimental":{"readlink":true},"feature":{"network":{"incoming":"steal"}}}"#,
        )
        .unwrap();
        assert_eq!(ignored, ["agent", "connect_tcp", "experimental"]);
        assert_eq!(value, serde_json::json!({"feature":{"network":{"incoming":"steal"}}}));
        // Still a typo when no release ever had it.
        let e = sifted(r#"{"experimental":{"readlinks":true}}"#).unwrap_err();
        assert!(e.message.contains("did you mean `readlink`?"), "{e:?}");
    }

    #[test]
    fn mirrords_other_sections_are_set_aside_and_listed() {
        let (value, ignored) = sifted(
            r#"{"agent":{"ttl":30},"feature":{"fs":"read","env":{"override":{"A":"1"}},"network":{"outgoing":true,"incoming":{"mode":"steal","ignore_localhost":false}}},"kube_context":"dev","operator":true}"#,
        )
        .unwrap();
        assert_eq!(
            ignored,
            [
                "agent",
                "feature.env",
                "feature.fs",
                "feature.network.incoming.ignore_localhost",
                "feature.network.outgoing",
                "operator"
            ]
        );
        // kube_context is this project's too: it stays.
        assert_eq!(
            value,
            serde_json::json!({"feature":{"network":{"incoming":{"mode":"steal"}}},"kube_context":"dev"})
        );
    }

    #[test]
    fn a_key_nobody_has_is_an_error_with_the_nearest_real_key() {
        let e = sifted(r#"{"feature":{"network":{"incomming":"steal"}}}"#).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("feature.network.incomming", "unknown key `incomming`, did you mean `incoming`?")
        );
        // A typo inside a section this project does not use is still a typo.
        let e = sifted(r#"{"agent":{"namespce":"x"}}"#).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("agent.namespce", "unknown key `namespce`, did you mean `namespace`?")
        );
        let e = sifted(r#"{"feature":{"network":{"incoming":{"http_filter":{"header_filtr":"a"}}}}}"#).unwrap_err();
        assert!(e.message.contains("did you mean `header_filter`?"), "{e:?}");
    }

    #[test]
    fn a_real_key_is_never_corrected_into_another() {
        let e =
            sifted(r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter_jq":"."}}}}}"#)
                .unwrap_err();
        assert_eq!(e.key, "feature.network.incoming.http_filter.header_filter_jq");
        assert!(e.message.starts_with("jq header filters are mirrord's but not evaluated"), "{e:?}");
        assert!(!e.message.contains("did you mean"));
    }
}
