//! The header fields that decide an HTTP/1 message's framing (RFC 9112
//! §6), read over a parsed head's fields in one pass: Content-Length,
//! Transfer-Encoding, Connection, Upgrade, Host. [`head`](super::head)
//! turns what they say into a body kind, or a refusal.

/// Transfer codings other than chunked that a request may list before it
/// (RFC 9112 §7); any other is refused with 501.
const KNOWN_CODINGS: [&[u8]; 5] = [b"gzip", b"deflate", b"compress", b"x-gzip", b"x-compress"];

pub(super) enum FramingHeader {
    DuplicateLength,
    InvalidLength,
}

/// The headers that decide framing.
#[derive(Default)]
pub(super) struct Framing {
    pub length: Option<u64>,
    pub codings: Codings,
    /// How many Host fields.
    pub hosts: usize,
    pub upgrade: bool,
    pub close: bool,
    pub keep_alive: bool,
    pub kube_probe: bool,
    pub connection: ConnectionField,
}

/// What the Connection field lines say, as a whole.
#[derive(Default, PartialEq, Eq)]
pub(super) enum ConnectionField {
    #[default]
    Absent,
    /// One line, whose only option is `close`.
    OnlyClose,
    /// Anything else.
    Other,
}

/// The Transfer-Encoding list, over all its field lines.
#[derive(Default)]
pub(super) struct Codings {
    pub seen: bool,
    /// How many times `chunked` is listed.
    pub chunked: usize,
    /// Whether `chunked` is the last coding.
    pub last_chunked: bool,
    /// Whether a coding is not one of [`KNOWN_CODINGS`].
    pub unknown: bool,
}

impl Codings {
    fn add(&mut self, line: &[u8]) {
        self.seen = true;
        for coding in line.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if self.last_chunked {
                self.chunked += 1;
            } else if !KNOWN_CODINGS.iter().any(|k| coding.eq_ignore_ascii_case(k)) {
                self.unknown = true;
            }
        }
    }
}

impl Framing {
    pub(super) fn of(headers: &[httparse::Header<'_>]) -> Result<Self, FramingHeader> {
        let mut f = Framing::default();
        let (mut has_upgrade, mut connection_upgrade) = (false, false);
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                if f.length.is_some() {
                    return Err(FramingHeader::DuplicateLength);
                }
                f.length = Some(parse_length(h.value).ok_or(FramingHeader::InvalidLength)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Several Transfer-Encoding lines form one list.
                f.codings.add(h.value);
            } else if name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
            } else if name.eq_ignore_ascii_case("user-agent") {
                f.kube_probe |= h.value.starts_with(b"kube-probe/");
            } else if name.eq_ignore_ascii_case("upgrade") {
                has_upgrade = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let only_close = h
                    .value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|t| !t.is_empty())
                    .all(|t| t.eq_ignore_ascii_case(b"close"));
                f.connection = match f.connection {
                    ConnectionField::Absent if only_close => ConnectionField::OnlyClose,
                    _ => ConnectionField::Other,
                };
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                    f.close |= token.eq_ignore_ascii_case(b"close");
                    f.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        f.upgrade = has_upgrade && connection_upgrade;
        Ok(f)
    }
}

/// A Content-Length: digits only, below 2^63 (many parsers read it as a
/// signed 64-bit number).
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok().filter(|n| *n <= i64::MAX as u64)
}
