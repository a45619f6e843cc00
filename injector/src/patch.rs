//! RFC 6902 JSON Patch as the difference between two documents, so the
//! patch an admission returns is always exactly what `mutate` changed:
//! missing parents are added whole, and keys are escaped (`~0`, `~1`).

use serde_json::{json, Map, Value};

/// The operations that turn `from` into `to`.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    walk(&mut String::new(), from, to, &mut ops);
    ops
}

fn walk(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => objects(path, a, b, ops),
        (Value::Array(a), Value::Array(b)) => arrays(path, a, b, ops),
        _ if from == to => {}
        _ => ops.push(json!({"op": "replace", "path": path.as_str(), "value": to})),
    }
}

fn objects(path: &mut String, a: &Map<String, Value>, b: &Map<String, Value>, ops: &mut Vec<Value>) {
    for (key, old) in a {
        let len = push(path, key);
        match b.get(key) {
            Some(new) => walk(path, old, new, ops),
            None => ops.push(json!({"op": "remove", "path": path.as_str()})),
        }
        path.truncate(len);
    }
    for (key, new) in b {
        if !a.contains_key(key) {
            let len = push(path, key);
            ops.push(json!({"op": "add", "path": path.as_str(), "value": new}));
            path.truncate(len);
        }
    }
}

/// Arrays: a common prefix and suffix are kept; elements inserted between
/// them become `add`s at their index. Anything else replaces the array.
fn arrays(path: &mut String, a: &[Value], b: &[Value], ops: &mut Vec<Value>) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (old_mid, new_mid) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    if old_mid.is_empty() {
        for (i, value) in new_mid.iter().enumerate() {
            let len = push(path, &(prefix + i).to_string());
            ops.push(json!({"op": "add", "path": path.as_str(), "value": value}));
            path.truncate(len);
        }
    } else if old_mid.len() == new_mid.len() {
        for (i, (old, new)) in old_mid.iter().zip(new_mid).enumerate() {
            let len = push(path, &(prefix + i).to_string());
            walk(path, old, new, ops);
            path.truncate(len);
        }
    } else {
        ops.push(json!({"op": "replace", "path": path.as_str(), "value": b}));
    }
}

/// Appends an escaped path segment; returns the length to truncate back to.
fn push(path: &mut String, key: &str) -> usize {
    let len = path.len();
    path.push('/');
    path.push_str(&key.replace('~', "~0").replace('/', "~1"));
    len
}

/// Applies a patch made by [`diff`] (add, remove, replace), for tests and
/// for checking that a patch does what it says.
pub fn apply(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let path = op["path"].as_str().ok_or("patch operation without a path")?;
        if path.is_empty() && op["op"] == "replace" {
            *doc = op["value"].clone();
            continue;
        }
        let mut segments: Vec<String> =
            path.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
        let last = segments.pop().ok_or("empty path")?;
        let mut parent = &mut *doc;
        for s in &segments {
            parent = match parent {
                Value::Object(m) => m.get_mut(s),
                Value::Array(v) => s.parse::<usize>().ok().and_then(|i| v.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| format!("{path}: no parent at {s:?}"))?;
        }
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match (op["op"].as_str(), parent) {
            (Some("add" | "replace"), Value::Object(m)) => {
                m.insert(last, value);
            }
            (Some("remove"), Value::Object(m)) => {
                m.remove(&last).ok_or_else(|| format!("{path}: nothing to remove"))?;
            }
            (Some("add"), Value::Array(v)) => {
                let i = if last == "-" { v.len() } else { last.parse().map_err(|_| format!("{path}: bad index"))? };
                if i > v.len() {
                    return Err(format!("{path}: index out of range"));
                }
                v.insert(i, value);
            }
            (Some("replace"), Value::Array(v)) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                *v.get_mut(i).ok_or_else(|| format!("{path}: index out of range"))? = value;
            }
            (Some("remove"), Value::Array(v)) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: bad index"))?;
                if i >= v.len() {
                    return Err(format!("{path}: index out of range"));
                }
                v.remove(i);
            }
            (other, _) => return Err(format!("{path}: unsupported operation {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(a: Value, b: Value) -> Vec<Value> {
        let ops = diff(&a, &b);
        let mut patched = a;
        apply(&mut patched, &ops).unwrap();
        assert_eq!(patched, b, "{ops:?}");
        ops
    }

    #[test]
    fn adds_missing_parents_whole_and_escapes_keys() {
        let ops = roundtrip(
            json!({"metadata": {}}),
            json!({"metadata": {"annotations": {"mirrord.dev/status": "x", "a~b": "y"}}}),
        );
        assert_eq!(
            ops,
            vec![
                json!({"op": "add", "path": "/metadata/annotations", "value": {"mirrord.dev/status": "x", "a~b": "y"}})
            ]
        );
        let ops = roundtrip(json!({"a": {"k/1": 1}}), json!({"a": {"k/1": 1, "x~/y": 2}}));
        assert_eq!(ops, vec![json!({"op": "add", "path": "/a/x~0~1y", "value": 2})]);
    }

    #[test]
    fn array_inserts_are_adds_at_their_index() {
        let ops = roundtrip(
            json!({"c": [{"n": "a"}, {"n": "b"}]}),
            json!({"c": [{"n": "x"}, {"n": "y"}, {"n": "a"}, {"n": "b"}]}),
        );
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0]["path"], "/c/0");
        assert_eq!(ops[1]["path"], "/c/1");
        let ops = roundtrip(json!([1, 2, 3]), json!([1, 2, 3, 4]));
        assert_eq!(ops, vec![json!({"op": "add", "path": "/3", "value": 4})]);
        roundtrip(json!([1, 2, 3]), json!([3, 1]));
        roundtrip(json!({"a": 1, "b": 2}), json!({"b": 3}));
    }

    #[test]
    fn identical_documents_give_no_patch() {
        assert!(diff(&json!({"a": [1, {"b": null}]}), &json!({"a": [1, {"b": null}]})).is_empty());
    }
}
