//! HTTP request filters, validated and ready to match.
//!
//! Regexes are compiled case-insensitive, in mirrord's dialect: the `regex`
//! crate's syntax plus look-around and backreferences (fancy-regex), which
//! mirrord's documented probe exclusions use (`^User-Agent: (?!kube-probe)`).
//! A pattern without them runs on `regex` alone (linear time). A header
//! filter is matched against each header rendered as `Name: value` (names as
//! they arrive, which for HTTP/2 and for hyper means lowercase — hence
//! case-insensitive matching); a path filter against the path without the
//! query string and, when there is one, the path with it (as mirrord does);
//! a method filter is an exact, case-insensitive method name.

use std::collections::BTreeSet;
use std::fmt;

use regex::RegexBuilder;

/// Ceiling on a compiled filter regex, so a config cannot make the sidecar
/// allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Ceiling on backtracking steps of a look-around pattern per match: past it
/// the request does not match (a pathological pattern costs bounded time).
const BACKTRACK_LIMIT: usize = 100_000;

thread_local! {
    /// `Name: value` of the header being matched: one buffer per thread
    /// instead of an allocation per header per request.
    static HEADER_LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A compiled filter pattern.
#[derive(Debug, Clone)]
pub enum Regex {
    /// Plain regex: linear-time matching.
    Plain(regex::Regex),
    /// Uses look-around or backreferences: backtracking, bounded per match.
    Fancy(Box<fancy_regex::Regex>),
}

impl Regex {
    /// Whether the pattern matches somewhere in `text`. A fancy pattern that
    /// exceeds its backtracking budget does not match.
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Regex::Plain(re) => re.is_match(text),
            Regex::Fancy(re) => re.is_match(text).unwrap_or(false),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            Regex::Plain(re) => re.as_str(),
            Regex::Fancy(re) => re.as_str().strip_prefix("(?i)").unwrap_or(re.as_str()),
        }
    }

    /// Whether the pattern needed the backtracking engine.
    pub fn is_fancy(&self) -> bool {
        matches!(self, Regex::Fancy(_))
    }
}

/// A single filter or a combination.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Any header, rendered `Name: value`, matches the regex.
    Header(Regex),
    /// The path without its query, or the path with it, matches the regex.
    Path(Regex),
    /// The method equals this one, ignoring case.
    Method(String),
    /// The body is JSON and one value the query selects matches.
    Body(Box<BodyFilter>),
    /// Every filter matches.
    AllOf(Vec<Filter>),
    /// At least one filter matches.
    AnyOf(Vec<Filter>),
}

/// mirrord's JSON body filter: the body parsed as JSON, `query` (JSONPath,
/// RFC 9535, with mirrord's `typeof` function) selects values, and the
/// filter matches when one of them matches `matches` (strings as they are,
/// other values as JSON text). A body that is absent, not JSON, or larger
/// than the sidecar buffers for filters does not match.
#[derive(Debug, Clone)]
pub struct BodyFilter {
    pub query: serde_json_path::JsonPath,
    /// The query as written, for messages.
    pub query_text: String,
    pub matches: Regex,
}

/// A request body as filters see it: parsed as JSON at most once per
/// request, and only if a body filter asks.
#[derive(Debug, Default)]
pub struct RequestBody<'a> {
    bytes: Option<&'a [u8]>,
    json: std::cell::OnceCell<Option<serde_json::Value>>,
}

impl<'a> RequestBody<'a> {
    /// The whole body, or `None` when it was not read (too large, not
    /// complete in time).
    pub fn new(bytes: Option<&'a [u8]>) -> Self {
        RequestBody { bytes, json: std::cell::OnceCell::new() }
    }

    fn json(&self) -> Option<&serde_json::Value> {
        self.json.get_or_init(|| self.bytes.and_then(|b| serde_json::from_slice(b).ok())).as_ref()
    }
}

/// `typeof(nodes)`, the JSONPath function extension mirrord provides:
/// `"null" | "bool" | "number" | "string" | "array" | "object"`, or nothing
/// when the nodes differ in type.
#[serde_json_path::function(name = "typeof")]
fn type_of(nodes: serde_json_path::functions::NodesType) -> serde_json_path::functions::ValueType {
    use serde_json::Value;
    use serde_json_path::functions::ValueType;
    let name = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut names = nodes.iter().map(|v| name(v));
    match names.next() {
        Some(first) if names.all(|n| n == first) => ValueType::Value(Value::String(first.to_owned())),
        _ => ValueType::Nothing,
    }
}

/// `http_filter`: which requests, on which ports.
#[derive(Debug, Clone)]
pub struct HttpFilter {
    /// The request filter.
    pub filter: Filter,
    /// `http_filter.ports`: the ports the filter applies on. `None`: every
    /// port the session takes (the sidecar detects HTTP per connection).
    pub ports: Option<BTreeSet<u16>>,
}

impl Filter {
    /// Compiles a header or path regex. `Err` holds a message naming the
    /// pattern and what is wrong with it.
    pub(crate) fn regex(pattern: &str) -> Result<Regex, String> {
        if pattern.is_empty() {
            return Err("empty regex: expected a pattern such as \"x-user: alice\"".into());
        }
        let plain = RegexBuilder::new(pattern).case_insensitive(true).size_limit(REGEX_SIZE_LIMIT).build();
        match plain {
            Ok(re) => Ok(Regex::Plain(re)),
            // Look-around and backreferences are syntax errors for `regex`.
            Err(regex::Error::Syntax(plain_error)) => fancy_regex::RegexBuilder::new(&format!("(?i){pattern}"))
                .backtrack_limit(BACKTRACK_LIMIT)
                .delegate_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map(|re| Regex::Fancy(Box::new(re)))
                .map_err(|fancy_error| match fancy_error {
                    // Not a fancy construct either: the plain engine's message
                    // points at the spot.
                    fancy_regex::Error::ParseError(..) => format!("invalid regex {pattern:?}: {plain_error}"),
                    other => format!("invalid regex {pattern:?}: {other}"),
                }),
            Err(e) => Err(format!("invalid regex {pattern:?}: {e}")),
        }
    }

    /// Compiles a JSON body filter. `Err` names what is wrong.
    pub(crate) fn body(query: &str, matches: &str) -> Result<Filter, String> {
        let parsed = serde_json_path::JsonPath::parse(query)
            .map_err(|e| format!("invalid JSONPath query {query:?}: {e}: expected e.g. \"$.user.id\""))?;
        let matches = Filter::regex(matches)?;
        Ok(Filter::Body(Box::new(BodyFilter { query: parsed, query_text: query.to_owned(), matches })))
    }

    /// Whether matching needs the request body.
    pub fn needs_body(&self) -> bool {
        match self {
            Filter::Body(_) => true,
            Filter::AllOf(fs) | Filter::AnyOf(fs) => fs.iter().any(Filter::needs_body),
            _ => false,
        }
    }

    /// Validates a method name (an HTTP token).
    pub(crate) fn method(name: &str) -> Result<String, String> {
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(format!("invalid method {name:?}: expected an HTTP method such as \"GET\" or \"POST\""));
        }
        Ok(name.to_ascii_uppercase())
    }

    /// Whether a request matches. `headers` yields `(name, value)` pairs and
    /// is cloned when a combination needs to look at them again.
    pub fn matches<'h, H>(&self, method: &str, path: &str, headers: H) -> bool
    where
        H: Iterator<Item = (&'h str, &'h [u8])> + Clone,
    {
        self.matches_with_body(method, path, headers, &RequestBody::default())
    }

    /// [`Filter::matches`] for a request whose body was read (body filters).
    pub fn matches_with_body<'h, H>(&self, method: &str, path: &str, headers: H, body: &RequestBody<'_>) -> bool
    where
        H: Iterator<Item = (&'h str, &'h [u8])> + Clone,
    {
        match self {
            Filter::Header(re) => HEADER_LINE.with(|line| {
                let mut line = line.borrow_mut();
                headers.into_iter().any(|(name, value)| {
                    line.clear();
                    line.push_str(name);
                    line.push_str(": ");
                    match std::str::from_utf8(value) {
                        Ok(v) => line.push_str(v),
                        Err(_) => line.push_str(&String::from_utf8_lossy(value)),
                    }
                    re.is_match(&line)
                })
            }),
            Filter::Path(re) => match path.split_once('?') {
                Some((bare, _)) => re.is_match(bare) || re.is_match(path),
                None => re.is_match(path),
            },
            Filter::Method(m) => m.eq_ignore_ascii_case(method),
            Filter::Body(b) => body.json().is_some_and(|json| {
                b.query.query(json).all().into_iter().any(|v| match v {
                    serde_json::Value::String(s) => b.matches.is_match(s),
                    other => b.matches.is_match(&other.to_string()),
                })
            }),
            Filter::AllOf(fs) => fs.iter().all(|f| f.matches_with_body(method, path, headers.clone(), body)),
            Filter::AnyOf(fs) => fs.iter().any(|f| f.matches_with_body(method, path, headers.clone(), body)),
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, fs: &[Filter], sep: &str| {
            f.write_str("(")?;
            for (i, x) in fs.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write!(f, "{x}")?;
            }
            f.write_str(")")
        };
        match self {
            Filter::Header(re) => write!(f, "header {:?}", re.as_str()),
            Filter::Path(re) => write!(f, "path {:?}", re.as_str()),
            Filter::Method(m) => write!(f, "method {m}"),
            Filter::Body(b) => write!(f, "JSON body {} matching {:?}", b.query_text, b.matches.as_str()),
            Filter::AllOf(fs) => join(f, fs, " and "),
            Filter::AnyOf(fs) => join(f, fs, " or "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs<'a>(h: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a [u8])> + Clone {
        h.iter().map(|(n, v)| (*n, v.as_bytes()))
    }

    fn header(p: &str) -> Filter {
        Filter::Header(Filter::regex(p).unwrap())
    }
    fn path(p: &str) -> Filter {
        Filter::Path(Filter::regex(p).unwrap())
    }

    #[test]
    fn header_is_matched_as_name_colon_value_ignoring_case() {
        let f = header("X-My-Header: my-header-value");
        assert!(f.matches("GET", "/", hdrs(&[("x-my-header", "MY-HEADER-VALUE")])));
        assert!(!f.matches("GET", "/", hdrs(&[("x-my-header", "other")])));
        assert!(!f.matches("GET", "/", hdrs(&[("x-other", "my-header-value")])));
        let f = header("X-Header-.+: header-value-.+");
        assert!(f.matches("GET", "/", hdrs(&[("accept", "*/*"), ("x-header-a", "header-value-1")])));
    }

    #[test]
    fn path_is_matched_with_and_without_query_ignoring_case() {
        let f = path("my/path");
        assert!(f.matches("GET", "/api/My/Path/1", hdrs(&[])));
        assert!(!f.matches("GET", "/other", hdrs(&[])));
        let anchored = path("^/api$");
        assert!(anchored.matches("GET", "/api?x=1", hdrs(&[])), "the bare path matches");
        let query = path("[?&]debug=1");
        assert!(query.matches("GET", "/api?debug=1", hdrs(&[])), "the path with its query matches");
        assert!(!query.matches("GET", "/api?debug=0", hdrs(&[])));
    }

    #[test]
    fn look_around_as_in_mirrords_probe_exclusions() {
        let f = header("^User-Agent: (?!kube-probe)");
        assert!(f.matches("GET", "/", hdrs(&[("user-agent", "curl/8.5")])));
        assert!(!f.matches("GET", "/", hdrs(&[("user-agent", "kube-probe/1.31")])));
        let not_health = path("^(?!/health/)");
        assert!(not_health.matches("GET", "/api", hdrs(&[])));
        assert!(!not_health.matches("GET", "/health/ready", hdrs(&[])));
        assert!(matches!(&not_health, Filter::Path(re) if re.is_fancy() && re.as_str() == "^(?!/health/)"));
        assert!(matches!(header("x-user: alice"), Filter::Header(re) if !re.is_fancy()));
        // Backreferences are fancy too.
        assert!(header(r"^x-pair: (\w+)-\1$").matches("GET", "/", hdrs(&[("x-pair", "ab-AB")])));
    }

    #[test]
    fn runaway_backtracking_is_a_non_match_not_a_hang() {
        let f = path("^(a+)+(?=b)");
        let long = format!("/{}", "a".repeat(64));
        assert!(!f.matches("GET", &long, hdrs(&[])));
    }

    #[test]
    fn method_and_combinations() {
        let post = Filter::Method(Filter::method("post").unwrap());
        assert!(post.matches("POST", "/", hdrs(&[])));
        assert!(!post.matches("GET", "/", hdrs(&[])));
        let all = Filter::AllOf(vec![post.clone(), path("^/orders")]);
        assert!(all.matches("POST", "/orders/1", hdrs(&[])));
        assert!(!all.matches("POST", "/users", hdrs(&[])));
        let any = Filter::AnyOf(vec![post, header("x-user: alice")]);
        assert!(any.matches("GET", "/", hdrs(&[("x-user", "alice")])));
        assert!(!any.matches("GET", "/", hdrs(&[("x-user", "bob")])));
        assert_eq!(any.to_string(), "(method POST or header \"x-user: alice\")");
    }

    fn body_filter(query: &str, matches: &str) -> Filter {
        Filter::body(query, matches).unwrap()
    }

    fn with_body(f: &Filter, body: &str) -> bool {
        f.matches_with_body("POST", "/", hdrs(&[]), &RequestBody::new(Some(body.as_bytes())))
    }

    #[test]
    fn json_body_filters_as_mirrord_documents_them() {
        let books = body_filter("$.library.books[*]", r"^\d{3,5}$");
        assert!(books.needs_body());
        assert!(with_body(&books, r#"{"library":{"books":[34555,1233,234,23432]}}"#));
        assert!(!with_body(&books, r#"{"library":{"books":[12,123456]}}"#));
        assert!(!with_body(&books, "not json"), "a body that is not JSON does not match");
        assert!(!books.matches("POST", "/", hdrs(&[])), "a body that was not read does not match");
        let numbers = body_filter("$.books[?(typeof(@) == 'number')]", "4$");
        assert!(with_body(&numbers, r#"{"books":[1111,2222,4444]}"#));
        assert!(!with_body(&numbers, r#"{"books":["1111","2222","4444"]}"#), "typeof tells strings from numbers");
        let user = body_filter("$.user.id", "^alice$");
        assert!(with_body(&user, r#"{"user":{"id":"Alice"}}"#), "case-insensitive like every filter");
        let all = Filter::AllOf(vec![path("^/orders"), user.clone()]);
        assert!(all.needs_body());
        let body = RequestBody::new(Some(br#"{"user":{"id":"alice"}}"#.as_slice()));
        assert!(all.matches_with_body("POST", "/orders", hdrs(&[]), &body));
        assert!(!all.matches_with_body("POST", "/users", hdrs(&[]), &body));
        assert_eq!(user.to_string(), "JSON body $.user.id matching \"^alice$\"");
        assert!(Filter::body("$.a[", "x").unwrap_err().starts_with("invalid JSONPath query \"$.a[\""));
        assert!(!path("x").needs_body());
    }

    #[test]
    fn non_utf8_header_values_do_not_panic() {
        let f = header("x-bin: .*");
        let v: &[u8] = &[0xff, 0xfe];
        assert!(f.matches("GET", "/", [("x-bin", v)].into_iter()));
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = Filter::regex("a(b").unwrap_err();
        assert!(e.starts_with("invalid regex \"a(b\""), "{e}");
        let e = Filter::regex("(?<!a+)b").unwrap_err();
        assert!(e.starts_with("invalid regex \"(?<!a+)b\""), "{e}");
        assert!(Filter::regex("").unwrap_err().contains("empty regex"));
        assert!(Filter::method("GE T").unwrap_err().contains("invalid method \"GE T\""));
    }
}
