//! The session config a developer writes for `mirrord-cli connect`, and the
//! names every mirrord component agrees on.
//!
//! A developer's existing mirrord config works unchanged. Loading a file
//! ([`Config::load`]) renders it as a Tera template (`template`), spells out
//! mirrord's shorthands (`shorthand`), sets aside the keys of mirrord this
//! project does not use and refuses keys that neither has (`keys`), reads
//! the canonical form ([`raw`], unknown keys rejected) and validates it into
//! typed values ([`Config::from_raw`]: compiled regexes, port sets, a parsed
//! target). Errors name the file, the line and column, the key path, and
//! what was expected.
//!
//! The crate is pure: no async runtime, no network, no environment (the
//! caller passes [`Vars`]). The sidecar re-validates the canonical JSON it
//! receives ([`Config::from_json`]), strictly.

mod config;
mod duration;
mod filter;
mod keys;
mod load;
pub mod names;
pub mod raw;
mod shorthand;
mod source;
mod suggest;
mod summary;
mod target;
mod template;

pub use config::{ConcurrentSteal, Config, Incoming, Mode, PortSelection};
pub use duration::{format_duration, parse_duration, parse_lease, MAX_LEASE};
pub use filter::{BodyFilter, Filter, HttpFilter, Regex, RequestBody};
pub use load::{Error, Format, Loaded};
pub use suggest::nearest;
pub use target::{Target, TargetKind};
pub use template::{KeySource, Vars};

/// The JSON schema of the session config, generated from [`raw::RawConfig`].
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawConfig);
    // A schema is a plain JSON value; converting it cannot fail.
    serde_json::to_value(schema).unwrap_or_default()
}
