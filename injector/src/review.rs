//! AdmissionReview `admission.k8s.io/v1`: a request in, a response out.
//! Every policy outcome is an HTTP 200 carrying the request's uid (allowed,
//! patched, or allowed unchanged with the reason); only a review that cannot
//! be read at all is an error, and it says what was expected.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::metrics::{Admission, Failure};
use crate::mutate::{self, Mutation, Settings, Skip};

/// What happened to one admission, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(Skip),
    /// An annotation could not be honoured: the pod is admitted unchanged,
    /// with a warning that names the annotation.
    Invalid(mutate::Invalid),
}

impl Outcome {
    /// As the metrics count it.
    pub fn admission(&self) -> Admission {
        match self {
            Outcome::Injected => Admission::Injected,
            Outcome::Skipped(s) => Admission::Skipped(*s),
            Outcome::Invalid(i) => Admission::Invalid(i.key),
        }
    }
}

/// Why a body is not an AdmissionReview that can be answered; each message
/// says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("invalid AdmissionReview: too large to inspect: about {values} JSON values nested {depth} deep, expected at most {MAX_VALUES} values and {MAX_DEPTH} levels")]
    TooLarge { values: usize, depth: usize },
    /// serde_json's message (a leaf: it has no source of its own worth printing).
    #[error("invalid AdmissionReview: not JSON: {0}")]
    NotJson(String),
    #[error("invalid AdmissionReview: {0}")]
    Shape(String),
    #[error("invalid AdmissionReview: expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {api_version:?} and {kind:?}")]
    NotAReview { api_version: String, kind: String },
    #[error("invalid AdmissionReview: request.uid is missing")]
    MissingUid,
}

impl BadReview {
    pub fn failure(&self) -> Failure {
        match self {
            BadReview::TooLarge { .. } => Failure::TooLarge,
            _ => Failure::BadReview,
        }
    }
}

/// The envelope, as much of it as is read; of the pod, the fields the
/// mutation reads, as JSON values.
#[derive(Debug, Deserialize)]
struct Review {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<ReviewRequest>,
}

#[derive(Debug, Deserialize)]
struct ReviewRequest {
    uid: Option<String>,
    #[serde(default)]
    kind: GroupVersionKind,
    #[serde(default)]
    operation: String,
    namespace: Option<String>,
    /// Only what is read of it ([`mutate::read`]).
    #[serde(default, deserialize_with = "mutate::read::pod")]
    object: Value,
}

#[derive(Debug, Default, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The most JSON values an AdmissionReview may hold (a large real pod has a
/// few thousand): each parsed value costs tens of bytes, and the pod is
/// held about three times (parsed, mutated, diffed), so this bounds an
/// admission's memory to some tens of MiB whatever the body holds.
pub const MAX_VALUES: usize = 100_000;
/// The deepest nesting accepted (real pods: about 12).
pub const MAX_DEPTH: usize = 64;

/// Counts the JSON values and the nesting depth of `body` without parsing it
/// (commas and brackets outside strings), so that a body built to exhaust
/// memory is refused before it is parsed.
pub fn shape(body: &[u8]) -> (usize, usize) {
    let (mut values, mut depth, mut deepest) = (1usize, 0usize, 0usize);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // To the closing quote, skipping escaped characters; most of
                // a pod is strings, crossed here a vector at a time.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[i.min(body.len())..]) {
                        Some(at) if body[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                        None => return (values, deepest),
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                values += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => values += 1,
            _ => {}
        }
        i += 1;
    }
    (values, deepest)
}

/// Answers one AdmissionReview. `namespace_opted_in` tells whether the
/// request's namespace carries the opt-in annotation.
pub fn answer(
    body: &[u8],
    namespace_opted_in: impl Fn(&str) -> bool,
    settings: &Settings,
) -> Result<(Value, Outcome), BadReview> {
    let (values, depth) = shape(body);
    if values > MAX_VALUES || depth > MAX_DEPTH {
        return Err(BadReview::TooLarge { values, depth });
    }
    // JSON is UTF-8 (RFC 8259 §8.1). Checked here once, for the whole body:
    // from bytes, serde would check each string it reads again, and skip
    // the fields it does not use without looking inside them.
    let body = match std::str::from_utf8(body) {
        Ok(body) => body,
        Err(e) => return Err(BadReview::NotJson(format!("invalid UTF-8 at byte {}", e.valid_up_to()))),
    };
    let review: Review = serde_json::from_str(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => BadReview::Shape(e.to_string()),
        _ => BadReview::NotJson(e.to_string()),
    })?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview::NotAReview { api_version: review.api_version, kind: review.kind });
    }
    let Some(request) = review.request else { return Err(BadReview::MissingUid) };
    let Some(uid) = request.uid else { return Err(BadReview::MissingUid) };
    let is_pod = request.kind.kind == "Pod" && request.kind.group.is_empty();
    let object = &request.object;
    let namespace = request
        .namespace
        .as_deref()
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("");
    let span = tracing::Span::current();
    span.record("uid", uid.as_str());
    span.record("namespace", namespace);
    let name = object.pointer("/metadata/name").or_else(|| object.pointer("/metadata/generateName"));
    if let Some(name) = name.and_then(Value::as_str) {
        span.record("pod", name);
    }
    let mut response = json!({ "uid": uid, "allowed": true });
    let mutation = if is_pod && request.operation == "CREATE" {
        mutate::pod(object, namespace_opted_in(namespace), settings)
    } else {
        Mutation::Skip(Skip::NotAPod)
    };
    let outcome = match mutation {
        Mutation::Inject(ops) => {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64(serde_json::to_string(&ops).unwrap_or_default().as_bytes()));
            Outcome::Injected
        }
        Mutation::Skip(skip) => Outcome::Skipped(skip),
        Mutation::Invalid(invalid) => {
            response["warnings"] = json!([format!("mirrord: not injected: {invalid}")]);
            Outcome::Invalid(invalid)
        }
    };
    let answer = json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response });
    Ok((answer, outcome))
}

/// Standard base64 with padding (the encoding of `response.patch` and of a
/// caBundle).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64 (padding optional); `None` on anything else.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('=')).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { image: "proxy:1".to_owned(), native_sidecar: true }
    }

    #[test]
    fn bodies_built_to_exhaust_memory_are_refused_before_parsing() {
        assert_eq!(shape(br#"{"a":[1,2,{"b":"x,[y"}],"c":"\"]"}"#), (7, 3));
        let wide = format!(r#"{{"object":{{"spec":{{"x":[{}0]}}}}}}"#, "0,".repeat(1_500_000));
        let e = answer(wide.as_bytes(), |_| true, &settings()).unwrap_err().to_string();
        assert!(e.starts_with("invalid AdmissionReview: too large to inspect: about 1500005 JSON values"), "{e}");
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(answer(deep.as_bytes(), |_| true, &settings()).unwrap_err().to_string().contains("nested 100 deep"));
    }

    /// The byte-at-a-time scan `shape` must agree with.
    fn shape_model(body: &[u8]) -> (usize, usize) {
        let (mut values, mut depth, mut deepest) = (1usize, 0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &b in body {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    values += 1;
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b',' => values += 1,
                _ => {}
            }
        }
        (values, deepest)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        #[test]
        fn shape_agrees_with_a_byte_at_a_time_scan(
            body in proptest::collection::vec(proptest::sample::select(b"\"\\[]{},a :".to_vec()), 0..200)
        ) {
            proptest::prop_assert_eq!(shape(&body), shape_model(&body));
        }
    }

    fn review(object: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "namespace": "shop", "object": object}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        for text in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", &[0, 255, 128, 7]] {
            assert_eq!(unbase64(&base64(text)).as_deref(), Some(text));
        }
        assert_eq!(unbase64("not base64!"), None);
    }

    #[test]
    fn injected_pod_gets_a_patch_and_the_uid() {
        let pod = json!({"metadata": {"annotations": {"mirrord.dev/inject": "enabled"}},
                         "spec": {"containers": [{"name": "app", "image": "a", "ports": [{"containerPort": 80}]}]}});
        let (answer, outcome) = answer(&review(pod), |_| false, &settings()).unwrap();
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn namespace_opt_in_and_skips_are_allowed_unchanged() {
        let pod = json!({"metadata": {}, "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80}]}]}});
        let (_, outcome) = answer(&review(pod.clone()), |ns| ns == "shop", &settings()).unwrap();
        assert_eq!(outcome, Outcome::Injected);
        let (answer, outcome) = answer(&review(pod), |_| false, &settings()).unwrap();
        assert_eq!(outcome, Outcome::Skipped(Skip::NotOptedIn));
        assert!(answer["response"].get("patch").is_none());
    }

    #[test]
    fn bad_annotations_are_admitted_with_a_warning() {
        let pod = json!({"metadata": {"annotations": {"mirrord.dev/inject": "yes"}}, "spec": {"containers": []}});
        let (answer, outcome) = answer(&review(pod), |_| false, &settings()).unwrap();
        assert!(matches!(outcome, Outcome::Invalid(_)));
        assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("mirrord.dev/inject"));
    }

    #[test]
    fn unreadable_reviews_say_what_was_expected() {
        let error = |body: &[u8]| answer(body, |_| false, &settings()).unwrap_err().to_string();
        assert!(error(b"{").contains("not JSON"));
        // Found by the admission fuzz target: bytes that are not UTF-8 in a
        // field the review does not use were read past.
        let mut bad = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "x": "ab"}).to_string();
        bad = bad.replace("ab", "a\u{0}b");
        let mut bytes = bad.into_bytes();
        let at = bytes.iter().position(|&b| b == 0).unwrap();
        bytes[at] = 0xff;
        assert_eq!(error(&bytes), format!("invalid AdmissionReview: not JSON: invalid UTF-8 at byte {at}"));
        let wrong = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}).to_string();
        assert_eq!(
            error(wrong.as_bytes()),
            "invalid AdmissionReview: expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got \"admission.k8s.io/v1beta1\" and \"AdmissionReview\""
        );
        let no_uid = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).to_string();
        assert_eq!(error(no_uid.as_bytes()), "invalid AdmissionReview: request.uid is missing");
        let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string();
        assert_eq!(error(no_request.as_bytes()), "invalid AdmissionReview: request.uid is missing");
        let uid_number = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}});
        let e = error(uid_number.to_string().as_bytes());
        assert!(e.starts_with("invalid AdmissionReview: invalid type: integer `7`, expected a string"), "{e}");
        let object_string = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                   "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": "pod"}});
        let (answer, outcome) = answer(object_string.to_string().as_bytes(), |_| true, &settings()).unwrap();
        assert_eq!(outcome, Outcome::Skipped(Skip::NotAPod), "{answer}");
    }
}
