//! Reading a pod for the mutation: only the fields it reads are parsed into
//! JSON values; the rest of the pod (most of it: the containers' env,
//! probes, resources, images, the pod's managed fields) is skipped as it is
//! parsed, never allocated. The lists the injection adds to are read for
//! their length and the names it checks: the patch adds to their ends, or
//! before their first element, so their elements need not be whole.
//!
//! A field of an unexpected type (an array where an object was expected,
//! a string where an array was) is read whole, for the mutation to see it
//! as it is.

use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// What of a value is read.
#[derive(Debug)]
pub enum Keep {
    /// The whole value.
    All,
    /// These fields of an object, each as its [`Keep`] says.
    Fields(&'static [(&'static str, Keep)]),
    /// Each element of an array, as the [`Keep`] says.
    Each(&'static Keep),
}

use Keep::{All, Each, Fields};

/// Everything of a pod that `mutate` and `review` read.
pub const POD: Keep = Fields(&[
    ("metadata", Fields(&[("annotations", All), ("name", All), ("generateName", All), ("namespace", All)])),
    (
        "spec",
        Fields(&[
            ("hostNetwork", All),
            ("hostPID", All),
            ("securityContext", All),
            ("shareProcessNamespace", All),
            ("volumes", Each(&Fields(&[]))),
            ("initContainers", Each(&Fields(&[("name", All)]))),
            ("containers", Each(&Fields(&[("name", All), ("ports", All), ("securityContext", All)]))),
        ]),
    ),
]);

/// Reads a pod as [`POD`] says (for `#[serde(deserialize_with)]`).
pub fn pod<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Read(&POD).deserialize(d)
}

/// Reads a value as the [`Keep`] says.
#[derive(Debug, Clone, Copy)]
pub struct Read(pub &'static Keep);

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            All => Value::deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Fields(fields) = self.0 else { return Value::deserialize(MapAccessDeserializer::new(map)) };
        let mut out = Map::new();
        while let Some(field) = map.next_key_seed(Field(fields))? {
            match field {
                Some((name, keep)) => {
                    out.insert((*name).to_owned(), map.next_value_seed(Read(keep))?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Each(item) = self.0 else { return Value::deserialize(SeqAccessDeserializer::new(seq)) };
        let mut out = Vec::new();
        while let Some(value) = seq.next_element_seed(Read(item))? {
            out.push(value);
        }
        Ok(Value::Array(out))
    }
}

/// An object's key: the field it names among those read, or `None`
/// (compared where it lies, not copied).
struct Field(&'static [(&'static str, Keep)]);

impl<'de> DeserializeSeed<'de> for Field {
    type Value = Option<&'static (&'static str, Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Field {
    type Value = Option<&'static (&'static str, Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|(name, _)| *name == v))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(text: &str) -> Value {
        pod(&mut serde_json::Deserializer::from_str(text)).unwrap()
    }

    #[test]
    fn only_what_is_read_is_kept_and_odd_types_are_kept_whole() {
        let pod = json!({
            "apiVersion": "v1",
            "metadata": {"name": "api", "labels": {"a": "b"}, "annotations": {"x": "y"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {
                "containers": [{"name": "api", "image": "i", "env": [{"name": "A", "value": "\"1\""}],
                                "ports": [{"containerPort": 80}], "securityContext": {"runAsUser": 1}}],
                "initContainers": [{"name": "migrate", "image": "m"}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w"}],
                "hostPID": false, "nodeName": "n", "securityContext": {"runAsUser": 2.5}
            },
            "status": {"phase": "Pending"}
        });
        assert_eq!(
            read(&pod.to_string()),
            json!({
                "metadata": {"name": "api", "annotations": {"x": "y"}},
                "spec": {
                    "containers": [{"name": "api", "ports": [{"containerPort": 80}],
                                    "securityContext": {"runAsUser": 1}}],
                    "initContainers": [{"name": "migrate"}],
                    "volumes": [{}, {}],
                    "hostPID": false, "securityContext": {"runAsUser": 2.5}
                }
            })
        );
        let odd = json!({"metadata": ["m"], "spec": {"containers": {"name": "c"}, "volumes": "v",
                                                     "initContainers": [3, null, [1]]}});
        assert_eq!(read(&odd.to_string()), odd);
        assert_eq!(read("[1, {\"a\": 2}]"), json!([1, {"a": 2}]));
        assert_eq!(read("\"pod\""), json!("pod"));
    }

    #[test]
    fn escaped_keys_are_compared_decoded_and_bad_json_is_an_error() {
        assert_eq!(read(r#"{"met\u0061data": {"n\u0061me": "a", "other": 1}}"#), json!({"metadata": {"name": "a"}}));
        for bad in [r#"{"metadata": {"name": }"#, r#"{"spec": [1,]}"#, r#"{"x": tru}"#] {
            assert!(pod(&mut serde_json::Deserializer::from_str(bad)).is_err(), "{bad}");
        }
    }
}
