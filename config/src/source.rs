//! A config file's text as text: the line and column of an offset or of a
//! key path (for errors), and JSON with comments and trailing commas made
//! plain JSON without moving any position.

/// The 1-based line and column of byte `offset` in `text`.
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
pub(crate) fn blank_comments(text: &str) -> String {
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
pub(crate) fn blank_trailing_commas(text: &str) -> String {
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
pub(crate) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
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
