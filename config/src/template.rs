//! Config files are Tera templates, as in mirrord: rendered before they are
//! parsed, with `key` (the session key) and `git_branch` in the context and
//! Tera's core functions and filters (`get_env`, `default`, `lower`, …).
//! Tera's optional built-ins that need extra libraries (`now`, `date`,
//! `get_random`, `slugify`, `filesizeformat`, `urlencode`) are not compiled
//! in: using one is an error that names it.
//!
//! The key is resolved before the rest of the file is rendered, as mirrord
//! does: `MIRRORD_KEY` from the environment, else the file's own `key` field
//! rendered on its own (it may use `git_branch`), else a generated one.

use crate::load::Format;

/// What a template can refer to, given by the caller (which reads the
/// environment, asks git and draws randomness: this crate does neither).
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// `MIRRORD_KEY`, when set: overrides the file's `key`.
    pub key: Option<String>,
    /// The key when neither the environment nor the file gives one.
    pub generated_key: String,
    /// The current git branch (`MIRRORD_BRANCH_NAME` or git), when known.
    pub git_branch: Option<String>,
}

/// Where the session key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Environment,
    File,
    Generated,
}

/// A rendered config file.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    /// Whether the file uses Tera at all (`{{`, `{%`).
    pub templated: bool,
    pub key: String,
    pub key_source: KeySource,
}

/// A render failure: where (when Tera says) and why.
pub(crate) type Failure = (Option<(usize, usize)>, String, String);

/// Renders a config file's text.
pub(crate) fn render(text: &str, format: Format, vars: &Vars) -> Result<Rendered, Failure> {
    let mut context = tera::Context::new();
    if let Some(branch) = &vars.git_branch {
        context.insert("git_branch", branch);
    }
    let (key, key_source) = match &vars.key {
        Some(key) => (key.clone(), KeySource::Environment),
        None => match file_key(text, format, &context)? {
            Some(key) => (key, KeySource::File),
            None => (vars.generated_key.clone(), KeySource::Generated),
        },
    };
    context.insert("key", &key);
    let templated = text.contains("{{") || text.contains("{%");
    let text = one_off(text, &context).map_err(|e| failure("", &e))?;
    Ok(Rendered { text, templated, key, key_source })
}

fn one_off(text: &str, context: &tera::Context) -> Result<String, tera::Error> {
    tera::Tera::one_off(text, context, false)
}

/// Stands for the key while the file's own `key` is worked out.
const KEY_PENDING: &str = "mirrord-key-pending-7f3a9c0e";

/// The file's root `key`, rendered: the whole file is rendered once with
/// the key pending and the `key` field read from the result. (mirrord reads
/// the field before rendering, which silently falls back to a generated key
/// when any other field's template makes the raw file unparsable.)
fn file_key(text: &str, format: Format, context: &tera::Context) -> Result<Option<String>, Failure> {
    if !text.contains("key") {
        return Ok(None);
    }
    let mut pending = context.clone();
    pending.insert("key", KEY_PENDING);
    let rendered = one_off(text, &pending).map_err(|e| failure("", &e))?;
    let Ok(value) = crate::load::parse_value(&rendered, format) else { return Ok(None) };
    match value.get("key").and_then(|k| k.as_str()) {
        Some(key) if key.contains(KEY_PENDING) => {
            Err((None, "key".to_owned(), "template: the key cannot refer to {{ key }} itself".to_owned()))
        }
        Some(key) => Ok(Some(key.to_owned())),
        None => Ok(None),
    }
}

/// Tera's message with its causes, and the position it gives (`--> L:C`).
/// Positions inside the `key` field cannot be mapped back to the file; the
/// key path says where.
fn failure(key: &str, error: &tera::Error) -> Failure {
    let mut parts = Vec::new();
    let mut position = None;
    let mut cause: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = cause {
        let text = e.to_string();
        if position.is_none() && key.is_empty() {
            position = arrow_position(&text);
        }
        parts.push(text.replace("'__tera_one_off'", "the config template"));
        cause = e.source();
    }
    let detail = parts.iter().skip(1).map(|p| p.trim()).collect::<Vec<_>>().join(": ");
    let message = if detail.is_empty() { parts.join("") } else { format!("{}: {detail}", parts[0]) };
    (position, key.to_owned(), format!("template: {message}"))
}

/// `--> 3:14` in a Tera parse error.
fn arrow_position(text: &str) -> Option<(usize, usize)> {
    let after = text.split("--> ").nth(1)?;
    let (line, rest) = after.split_once(':')?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars { key: None, generated_key: "a1b2c".into(), git_branch: Some("feat/x".into()) }
    }

    #[test]
    fn key_from_environment_file_or_generated() {
        let text = r#"{"key": "{{ git_branch }}", "f": "mirrord-session={{ key }}"}"#;
        let r = render(text, Format::Json, &vars()).unwrap();
        assert_eq!((r.key.as_str(), r.key_source), ("feat/x", KeySource::File));
        assert!(r.text.contains("mirrord-session=feat/x"), "{}", r.text);
        let env = Vars { key: Some("alice".into()), ..vars() };
        assert_eq!(render(text, Format::Json, &env).unwrap().key, "alice");
        let r = render(r#"{"f": "{{ key }}"}"#, Format::Json, &vars()).unwrap();
        assert_eq!((r.text.as_str(), r.key_source), (r#"{"f": "a1b2c"}"#, KeySource::Generated));
        // Another field's template makes the raw file invalid JSON: the
        // file's key still counts.
        let text = r#"{"key": "k-{{ git_branch }}", "t": "{{ get_env(name="X_SURELY_UNSET", default="d/a") }}"}"#;
        assert_eq!(render(text, Format::Json, &vars()).unwrap().key, "k-feat/x");
        let (_, key, message) = render(r#"{"key": "{{ key }}"}"#, Format::Json, &vars()).unwrap_err();
        assert_eq!((key.as_str(), message.as_str()), ("key", "template: the key cannot refer to {{ key }} itself"));
    }

    #[test]
    fn get_env_with_default_and_filters() {
        let text = r#"{"target": "{{ get_env(name="MIRRORD_TEST_SURELY_UNSET", default="deployment/api") | lower }}"}"#;
        let r = render(text, Format::Json, &vars()).unwrap();
        assert_eq!(r.text, r#"{"target": "deployment/api"}"#);
    }

    #[test]
    fn errors_name_the_problem_and_the_line() {
        let (pos, _, message) = render("{\n  \"a\": \"{{ key \"\n}", Format::Json, &vars()).unwrap_err();
        assert_eq!(pos.map(|p| p.0), Some(2), "{message}");
        assert!(message.starts_with("template: "), "{message}");
        let no_branch = Vars { git_branch: None, ..vars() };
        let (_, _, message) = render(r#"{"k": "{{ git_branch }}"}"#, Format::Json, &no_branch).unwrap_err();
        assert!(message.contains("Variable `git_branch` not found in context"), "{message}");
        let (_, _, message) = render(r#"{"k": "{{ now() }}"}"#, Format::Json, &vars()).unwrap_err();
        assert!(message.contains("now"), "{message}");
    }
}
