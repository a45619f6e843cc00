//! The session config a developer writes for `mirrord-cli connect`, and the
//! names every mirrord component agrees on.
//!
//! Loading is two steps, so that nothing invalid ever reaches a sidecar:
//! [`raw`] mirrors the file exactly as written (JSON, YAML or TOML, keys in the
//! user's spelling, unknown keys rejected), then [`Config::from_raw`] validates
//! it into typed values (compiled regexes, port sets, a parsed target). Errors
//! name the file, the line and column where the format reports one, the key
//! path, and what was expected.
//!
//! The crate is pure: no async runtime, no network. The sidecar re-validates the
//! config it receives with the same code ([`Config::from_json`]).

mod config;
mod duration;
mod filter;
mod load;
pub mod names;
pub mod raw;
mod suggest;
mod target;

pub use config::{Config, Incoming, Mode, PortSelection};
pub use duration::{format_duration, parse_duration};
pub use filter::{Filter, HttpFilter};
pub use load::{to_json_value, Error, Format};
pub use target::{Target, TargetKind};

/// The JSON schema of the session config, generated from [`raw::RawConfig`].
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawConfig);
    // A schema is a plain JSON value; converting it cannot fail.
    serde_json::to_value(schema).unwrap_or_default()
}
