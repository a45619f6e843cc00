//! The session config in its canonical form. Every struct rejects unknown
//! keys; the JSON schema is generated from these types.
//!
//! A file reaches these types after three steps (see [`crate::load`]): its
//! template is rendered, mirrord's shorthands are spelt out
//! ([`crate::shorthand`]: `"network": true`, `"ports": 80`, target objects,
//! …), and mirrord's keys that this project does not use are set aside
//! ([`crate::keys`]). Values here are unvalidated: regexes are still strings
//! and lists may be empty. [`crate::Config::from_raw`] turns them into typed
//! values.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The whole session config file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mirrord session config")]
pub struct RawConfig {
    /// The JSON schema an editor validates the file with; not used here.
    #[serde(default, rename = "$schema")]
    pub schema: Option<String>,
    /// The session key, `{{ key }}` in templates (e.g. in a `baggage` header
    /// filter). Default: `MIRRORD_KEY`, else a generated one.
    #[serde(default)]
    pub key: Option<String>,
    /// Pause the target's app (SIGSTOP) while the session is connected.
    #[serde(default)]
    pub pause: bool,
    /// What to connect to: `"deployment/api"`, `"pod/NAME/container/C"`, or
    /// `{ "path": …, "namespace": … }`.
    #[serde(default)]
    pub target: Option<RawTarget>,
    /// The kubeconfig context to use (default: the kubeconfig's current one).
    #[serde(default)]
    pub kube_context: Option<String>,
    /// The kubeconfig file to use (default: `KUBECONFIG`, then `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// What the session does.
    #[serde(default)]
    pub feature: RawFeature,
}

/// The `target` key: a path string, or an object with a path and namespace.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum RawTarget {
    /// `kind/name[/container/name]`, e.g. `deployment/api`.
    Path(String),
    /// A path with an explicit namespace.
    Detailed(RawTargetDetailed),
}

/// `target` written as an object.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTargetDetailed {
    /// `kind/name[/container/name]`, e.g. `deployment/api`; `null` or left
    /// out: no target (only a namespace).
    #[serde(default)]
    pub path: Option<String>,
    /// Namespace of the target (default: the kubeconfig's current namespace).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `feature`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    /// Network features.
    #[serde(default)]
    pub network: RawNetwork,
}

/// `feature.network`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// Incoming traffic: `"mirror"` (default), `"steal"`, `"off"`, or an object.
    #[serde(default)]
    pub incoming: RawIncoming,
}

/// `feature.network.incoming`: a mode, or an object with the details.
#[derive(Debug, JsonSchema)]
#[serde(untagged)]
pub enum RawIncoming {
    /// Just the mode, for every port.
    Mode(RawMode),
    /// Mode plus filter and port selection.
    Detailed(Box<RawIncomingDetailed>),
}

impl Default for RawIncoming {
    fn default() -> Self {
        Self::Mode(RawMode::default())
    }
}

/// What happens to incoming traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    /// The app answers; the session gets a copy.
    #[default]
    Mirror,
    /// The session answers instead of the app.
    Steal,
    /// Incoming traffic is left alone.
    Off,
}

/// `feature.network.incoming` written as an object.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIncomingDetailed {
    /// `"mirror"` (default), `"steal"` or `"off"`.
    #[serde(default)]
    pub mode: RawMode,
    /// Only HTTP requests matching this filter are stolen or mirrored.
    #[serde(default)]
    pub http_filter: Option<RawHttpFilter>,
    /// Only these remote ports (exclusive with `ignore_ports`).
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
    /// Every remote port but these (exclusive with `ports`).
    #[serde(default)]
    pub ignore_ports: Option<Vec<Port>>,
    /// `[[local, remote], …]`: deliver traffic of `remote` to `local` on the developer's machine.
    #[serde(default)]
    pub port_mapping: Option<Vec<(Port, Port)>>,
    /// `[[port, actual], …]`: the local app listens on `actual` where the
    /// traffic would go to `port` (after `port_mapping`).
    #[serde(default)]
    pub listen_ports: Option<Vec<(Port, Port)>>,
    /// When another session already steals a port whole: `"abort"` (default:
    /// this session is refused), `"continue"` (this session goes on without
    /// that port) or `"override"` (this session takes the port over).
    #[serde(default)]
    pub on_concurrent_steal: Option<RawConcurrentSteal>,
}

/// `on_concurrent_steal`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawConcurrentSteal {
    #[default]
    Abort,
    Continue,
    Override,
}

/// `http_filter`: one filter at the top (combine several with `all_of` / `any_of`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttpFilter {
    /// Regex matched against each header as `Name: value` (case-insensitive).
    #[serde(default)]
    pub header_filter: Option<String>,
    /// Regex matched against the request path, without and with its query (case-insensitive).
    #[serde(default)]
    pub path_filter: Option<String>,
    /// HTTP method, e.g. `POST` (case-insensitive).
    #[serde(default)]
    pub method_filter: Option<String>,
    /// JSON body filter: `{"body": "json", "query": JSONPath, "matches": regex}`.
    #[serde(default)]
    pub body_filter: Option<RawBodyFilter>,
    /// Matches when every listed filter matches.
    #[serde(default)]
    pub all_of: Option<Vec<RawInnerFilter>>,
    /// Matches when any listed filter matches.
    #[serde(default)]
    pub any_of: Option<Vec<RawInnerFilter>>,
    /// Ports on which the filter applies; other ports stay with the app
    /// unless `incoming.ports` names them. Default: every port the session
    /// takes (HTTP is detected per connection).
    #[serde(default)]
    pub ports: Option<Vec<Port>>,
}

/// A filter on the request body; only JSON bodies (`"body": "json"`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBodyFilter {
    /// The body's format: `"json"`.
    pub body: RawBodyFormat,
    /// JSONPath (RFC 9535) selecting values in the body, e.g. `$.user.id`.
    pub query: String,
    /// Regex one selected value must match (non-strings as JSON text).
    pub matches: String,
}

/// Body formats a body filter understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawBodyFormat {
    Json,
}

/// One element of `all_of` / `any_of`: exactly one of `header`, `path`,
/// `method`, or a body filter (`body`, `query` and `matches` together).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 3))]
pub struct RawInnerFilter {
    /// Regex matched against each header as `Name: value`.
    #[serde(default)]
    pub header: Option<String>,
    /// Regex matched against the request path.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Body format of a body filter: `"json"`.
    #[serde(default)]
    pub body: Option<RawBodyFormat>,
    /// JSONPath of a body filter.
    #[serde(default)]
    pub query: Option<String>,
    /// Regex of a body filter.
    #[serde(default)]
    pub matches: Option<String>,
}

/// A TCP port, 1–65535. Deserialized from any integer so that an out-of-range
/// value gets a message about ports rather than about `u16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(de::Error::custom(format!("invalid port {n}: expected a port number 1-65535"))),
        }
    }
}

impl JsonSchema for Port {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "minimum": 1, "maximum": 65535 })
    }
}

/// Implements `Deserialize` for a "string or object" enum by hand: serde's
/// untagged enums replace every inner error with "did not match any variant",
/// which would hide the key path and the typo in the object form.
macro_rules! string_or_object {
    ($ty:ident, $string:ident($sty:ty), $object:ident($oty:ty), $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> Result<$ty, E> {
                        <$sty>::deserialize(de::value::StrDeserializer::<E>::new(s)).map($ty::$string)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        <$oty>::deserialize(de::value::MapAccessDeserializer::new(map)).map($ty::$object)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

string_or_object!(
    RawIncoming,
    Mode(RawMode),
    Detailed(Box<RawIncomingDetailed>),
    "\"mirror\", \"steal\", \"off\" or an object with `mode`"
);
string_or_object!(
    RawTarget,
    Path(String),
    Detailed(RawTargetDetailed),
    "a target path such as \"deployment/api\" or an object with `path`"
);
