//! Reading a config file: format by extension, parse with key paths and
//! positions, then validate.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Invalid};
use crate::raw::RawConfig;
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

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, col)
}

/// Tracks whether the bytes of JSON text are inside a string literal.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Whether `b`, the next byte, belongs to a string literal (quotes included).
    fn holds(&mut self, b: u8) -> bool {
        if self.inside {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.inside = false,
                _ => {}
            }
            true
        } else {
            self.inside = b == b'"';
            self.inside
        }
    }
}

/// Replaces `// …` and `/* … */` comments outside strings by spaces
/// (keeping line breaks, so positions stay those of the file).
fn blank_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let (mut i, mut strings) = (0, Strings::default());
    while i < bytes.len() {
        if !strings.holds(bytes[i]) && bytes[i] == b'/' && matches!(bytes.get(i + 1), Some(b'/' | b'*')) {
            let end = if bytes[i + 1] == b'*' {
                text[i + 2..].find("*/").map_or(bytes.len(), |e| i + 2 + e + 2)
            } else {
                text[i..].find('\n').map_or(bytes.len(), |e| i + e)
            };
            for c in out[i..end].iter_mut().filter(|c| **c != b'\n') {
                *c = b' ';
            }
            i = end;
            continue;
        }
        i += 1;
    }
    // Whole comments (all of their bytes, multi-byte characters included)
    // became spaces, so the text is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// Replaces each comma that is followed (after whitespace) by `}` or `]`, and
/// is outside a string, by a space.
fn blank_trailing_commas(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let mut strings = Strings::default();
    for i in 0..bytes.len() {
        if !strings.holds(bytes[i]) && bytes[i] == b',' {
            let next = bytes[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}' | b']')) {
                bytes[i] = b' ';
            }
        }
    }
    // Only an ASCII byte was replaced by another, so the text is still UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|_| text.to_owned())
}

/// Best-effort position of a key path in the source, for validation errors
/// (the formats' parsers do not keep positions once parsing succeeded). Each
/// segment is searched as a key after the previous one; the key path in the
/// message stays the authoritative pointer.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    let mut found = None;
    for segment in key.split('.').map(|s| s.split('[').next().unwrap_or(s)).filter(|s| !s.is_empty()) {
        let at = find_key(&text[from..], segment)? + from;
        found = Some(at);
        from = at + segment.len();
    }
    found.map(|at| line_col(text, at))
}

fn find_key(text: &str, key: &str) -> Option<usize> {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let bytes = text.as_bytes();
    text.match_indices(key).map(|(i, _)| i).find(|&i| {
        let end = i + key.len();
        let before_ok = i == 0 || !is_ident(bytes[i - 1]);
        let after = text[end..].trim_start_matches(['"', '\'']).trim_start_matches([' ', '\t']);
        before_ok && (end == bytes.len() || !is_ident(bytes[end])) && after.starts_with([':', '=', '.', ']'])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_commas_blanked_outside_strings_only() {
        assert_eq!(blank_trailing_commas("{\"a\": [1,2,],}"), "{\"a\": [1,2 ] }");
        assert_eq!(blank_trailing_commas("{\"a\": \",}\"}"), "{\"a\": \",}\"}");
        assert_eq!(blank_trailing_commas("{\"a\": \"\\\",}\"}"), "{\"a\": \"\\\",}\"}");
    }

    #[test]
    fn comments_blanked_outside_strings_only() {
        let text = "{\n  // a comment: \"x\"\n  \"url\": \"http://a/*b*/\", /* block\n over lines */ \"b\": 1\n}";
        let blanked = blank_comments(text);
        assert_eq!(blanked.len(), text.len());
        let value: serde_json::Value = serde_json::from_str(&blanked).unwrap();
        assert_eq!(value, serde_json::json!({"url": "http://a/*b*/", "b": 1}));
        assert_eq!(blanked.lines().count(), text.lines().count());
        assert_eq!(blank_comments("{} // é"), "{}      ", "one space per byte");
    }

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

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
        let text = "{\n  \"feature\": {\n    \"network\": { \"incoming\": {\"ports\": []} }\n  }\n}";
        assert_eq!(locate(text, "feature.network.incoming.ports"), Some((3, 32)));
        let yaml = "feature:\n  network:\n    incoming:\n      mode: steal\n      ports: []\n";
        assert_eq!(locate(yaml, "feature.network.incoming.ports"), Some((5, 7)));
        assert_eq!(locate(yaml, "feature.network.incoming.http_filter"), None);
    }
}
