//! Reading a config file: format by extension, parse with key paths and
//! positions, then validate.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Invalid};
use crate::raw::RawConfig;
use crate::source::{blank_comments, blank_trailing_commas, line_col, locate};
use crate::suggest::improve_serde_message;
use crate::template::{self, KeySource, Vars};
use crate::{keys, shorthand};

/// Config file formats, chosen by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    Toml,
}

impl Format {
    /// The format of a file, from its extension.
    pub fn from_path(path: &Path) -> Result<Self, Error> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Ok(Format::Json),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("toml") => Ok(Format::Toml),
            _ => Err(Error::Format { file: path.to_owned() }),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config {}: {error}", file.display())]
    Read { file: PathBuf, error: std::io::Error },
    #[error("{}: unknown config format: expected a file name ending in .json, .yaml, .yml or .toml", file.display())]
    Format { file: PathBuf },
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// An error at a place in the config: file, position when known, key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: Option<PathBuf>,
    /// 1-based line and column, where the format or the key path locate it.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `feature.network.incoming.http_filter`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("config")?,
        }
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Error {
    /// The located error, for callers that want its parts.
    pub fn located(&self) -> Option<&Located> {
        match self {
            Error::Invalid(l) => Some(l),
            _ => None,
        }
    }
}

/// A config file loaded for a session.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// Keys of mirrord's config that this project does not use: set aside,
    /// in file order (outermost key of each).
    pub ignored: Vec<String>,
    /// What the sidecar receives: the rendered config in canonical form
    /// (shorthands spelt out, set-aside keys removed), as JSON.
    pub json: String,
    /// Whether the file is a template (uses `{{ … }}` or `{% … %}`).
    pub templated: bool,
    /// The session key the template saw (`{{ key }}`).
    pub key: String,
    pub key_source: KeySource,
}

impl Config {
    /// Reads, renders and validates a config file; the format comes from
    /// its extension.
    pub fn load(file: &Path, vars: &Vars) -> Result<Loaded, Error> {
        let format = Format::from_path(file)?;
        let text = std::fs::read_to_string(file).map_err(|error| Error::Read { file: file.to_owned(), error })?;
        // Some editors begin a UTF-8 file with a byte order mark; parsers
        // may ignore it (RFC 8259 §8.1), and positions are counted after it.
        Self::parse(text.strip_prefix('\u{feff}').unwrap_or(&text), format, Some(file), vars)
    }

    /// Renders and validates config text, as a developer wrote it in any of
    /// mirrord's forms. `file` only labels errors.
    pub fn parse(text: &str, format: Format, file: Option<&Path>, vars: &Vars) -> Result<Loaded, Error> {
        let at = |position, key: String, message| {
            Error::Invalid(Box::new(Located { file: file.map(Path::to_owned), position, key, message }))
        };
        let rendered = template::render(text, format, vars).map_err(|(pos, key, message)| at(pos, key, message))?;
        let text = rendered.text.as_str();
        let located = |Invalid { key, message }| at(locate(text, &key), key, message);
        let mut value = parse_value(text, format).map_err(|(pos, key, message)| at(pos, key, message))?;
        if value.is_null() {
            value = serde_json::Value::Object(serde_json::Map::new());
        }
        shorthand::expand(&mut value).map_err(located)?;
        let ignored = keys::sift(&mut value).map_err(located)?;
        drop_nulls(&mut value);
        let raw: RawConfig = serde_path_to_error::deserialize(&value).map_err(|e| {
            let key = key_of(e.path());
            at(locate(text, &key), key, improve_serde_message(&e.inner().to_string()))
        })?;
        let config = Config::from_raw(raw).map_err(located)?;
        let json = value.to_string();
        Ok(Loaded {
            config,
            ignored,
            json,
            templated: rendered.templated,
            key: rendered.key,
            key_source: rendered.key_source,
        })
    }

    /// Validates the canonical JSON a CLI sends to the sidecar: no template,
    /// no shorthand, no key this sidecar does not use (the CLI removed
    /// mirrord's others; one left means the CLI is newer).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let at = |position, key, message| Error::Invalid(Box::new(Located { file: None, position, key, message }));
        let raw = parse_json(text).map_err(|(position, key, message)| at(position, key, message))?;
        Config::from_raw(raw).map_err(|Invalid { key, message }| at(locate(text, &key), key, message))
    }
}

/// A key set to `null` is a key left out, as in mirrord (whose every
/// config field is optional): `"pause": null`, `"mode": null`,
/// `"connect_tcp": null`. Items of lists are kept, so a `null` port is
/// still an error; so is a key nobody has, `null` or not (keys are checked
/// first).
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

pub(crate) type ParseFailure = (Option<(usize, usize)>, String, String);

/// The canonical JSON form, strictly: unknown keys are errors.
fn parse_json(text: &str) -> Result<RawConfig, ParseFailure> {
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let pos = Some((e.inner().line(), e.inner().column()));
        (pos, key_of(e.path()), improve_serde_message(&strip_position(&e.inner().to_string())))
    })?;
    de.end().map_err(|e| (Some((e.line(), e.column())), String::new(), strip_position(&e.to_string())))?;
    Ok(raw)
}

/// The file's syntax, into a JSON value; errors with the format's position.
pub(crate) fn parse_value(text: &str, format: Format) -> Result<serde_json::Value, ParseFailure> {
    let value: serde_json::Value = match format {
        // The documented examples carry trailing commas, and editors treat
        // mirrord.json as JSON with comments; JSON proper allows neither.
        // Blanking them keeps every position intact.
        Format::Json => serde_json::from_str(&blank_trailing_commas(&blank_comments(text)))
            .map_err(|e| (Some((e.line(), e.column())), String::new(), strip_position(&e.to_string())))?,
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| {
            (e.location().map(|l| (l.line(), l.column())), String::new(), strip_position(&e.to_string()))
        })?,
        Format::Toml => toml::from_str(text).map_err(|e| toml_failure(text, String::new(), &e))?,
    };
    match value {
        serde_json::Value::Object(_) | serde_json::Value::Null => Ok(value),
        other => {
            Err((Some((1, 1)), String::new(), format!("expected an object of config keys, found {}", kind(&other))))
        }
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        _ => "something else",
    }
}

fn toml_failure(text: &str, key: String, e: &toml::de::Error) -> ParseFailure {
    let pos = e.span().map(|s| line_col(text, s.start));
    (pos, key, e.message().trim().to_owned())
}

fn key_of(path: &serde_path_to_error::Path) -> String {
    let key = path.to_string();
    if key == "." || key == "?" {
        String::new()
    } else {
        key
    }
}

/// serde_json and serde_yaml append " at line L column C"; the position is
/// reported separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped_and_positions_count_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let vars = Vars { key: None, generated_key: "k3y00".into(), git_branch: None };
        for (name, text) in [
            (
                "a.json",
                "\u{feff}{\"target\": \"deploy/api\",\r\n \"feature\": {\"network\": {\"incoming\": \"steal\"}}}\r\n",
            ),
            ("a.yaml", "\u{feff}target: deploy/api\r\nfeature:\r\n  network:\r\n    incoming: steal\r\n"),
            ("a.toml", "\u{feff}target = \"deploy/api\"\r\n[feature.network]\r\nincoming = \"steal\"\r\n"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let loaded = Config::load(&path, &vars).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                loaded.config.target.as_ref().map(ToString::to_string).as_deref(),
                Some("deployment/api"),
                "{name}"
            );
        }
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "\u{feff}{\"feature\": {\"network\": {\"incomming\": \"steal\"}}}").unwrap();
        let Err(Error::Invalid(e)) = Config::load(&path, &vars) else { panic!("a typo is an error") };
        assert_eq!(e.position, Some((1, 27)), "{e:?}");
    }

    #[test]
    fn a_key_set_to_null_is_a_key_left_out() {
        let vars = Vars { key: None, generated_key: "k3y00".into(), git_branch: None };
        let text = r#"{"pause": null, "key": null, "kube_context": null, "target": {"path": "pod/x", "namespace": null},
            "feature": {"network": {"incoming": {"mode": null, "ports": null, "http_filter": {"header_filter": null, "path_filter": "/a"}}}}}"#;
        let loaded = Config::parse(text, Format::Json, None, &vars).unwrap();
        let defaults = Config::parse(
            r#"{"target": {"path": "pod/x"}, "feature": {"network": {"incoming": {"http_filter": {"path_filter": "/a"}}}}}"#,
            Format::Json,
            None,
            &vars,
        )
        .unwrap();
        assert_eq!(loaded.json, defaults.json);
        assert_eq!(loaded.key, "k3y00");
        let Err(Error::Invalid(e)) = Config::parse(
            r#"{"feature": {"network": {"incoming": {"ports": [80, null]}}}}"#,
            Format::Json,
            None,
            &vars,
        ) else {
            panic!("a null port is an error");
        };
        assert_eq!(e.key, "feature.network.incoming.ports[1]", "{e:?}");
        let Err(Error::Invalid(e)) = Config::parse(r#"{"paus": null}"#, Format::Json, None, &vars) else {
            panic!("a typo is an error, null or not");
        };
        assert!(e.message.contains("did you mean `pause`?"), "{e:?}");
    }
}
