//! Where an HTTP/1 message body ends, tracked over bytes that are forwarded
//! as they arrive (never buffered whole, never re-encoded).
//!
//! Chunked framing is checked strictly (RFC 9112 §7.1): hex sizes below
//! 2^63, CRLF line ends (a bare LF is a classic smuggling vector), chunk
//! extensions of visible characters after a `;` only, trailer lines that are
//! `name: value` fields without control characters. Their content is passed
//! through unread.

/// Why a body's framing is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk size too large")]
    ChunkTooLarge,
    #[error("bare LF or missing CRLF in chunked framing")]
    LineEnd,
    #[error("invalid chunk extension")]
    ChunkExtension,
    #[error("invalid trailer field")]
    Trailer,
}

/// The remaining framing of one message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (or already complete).
    Empty,
    /// This many bytes remain.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked(Chunked),
    /// A response body delimited by the connection closing.
    UntilClose,
}

impl Body {
    /// Consumes the bytes of `data` that belong to this body. Returns how many
    /// and whether the body is complete after them.
    pub fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), FramingError> {
        self.advance_decoded(data, &mut |_| {})
    }

    /// Like [`Body::advance`], also handing the body's content (without
    /// chunked framing) to `content`, for whoever needs the decoded body.
    pub fn advance_decoded(
        &mut self,
        data: &[u8],
        content: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, bool), FramingError> {
        let (n, done) = match self {
            Body::Empty => return Ok((0, true)),
            Body::Length(remaining) => {
                let n = (*remaining).min(data.len() as u64);
                *remaining -= n;
                (n as usize, *remaining == 0)
            }
            Body::Chunked(c) => return c.advance(data, content),
            Body::UntilClose => (data.len(), false),
        };
        if n > 0 {
            content(&data[..n]);
        }
        Ok((n, done))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// Whitespace after the size: a `;` or the CR must follow.
    SizeWs,
    /// After a `;`: extensions, up to CR.
    Ext,
    /// CR seen at the end of a size line; LF expected.
    SizeLf,
    /// Chunk data.
    Data,
    /// CRLF after chunk data.
    DataCr,
    DataLf,
    /// Start of a trailer line (an empty line ends the message).
    TrailerStart,
    /// The name of a trailer field, up to its colon.
    TrailerName,
    /// Inside a trailer field's value.
    TrailerLine,
    /// CR seen in a trailer line; LF expected.
    TrailerLf,
    /// CR of the final empty line seen; LF expected.
    EndLf,
    Done,
}

/// Progress through a chunked body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunked {
    state: State,
    /// Chunk size being parsed, then data bytes left in the chunk.
    size: u64,
    digits: u8,
}

impl Chunked {
    fn advance(&mut self, data: &[u8], content: &mut dyn FnMut(&[u8])) -> Result<(usize, bool), FramingError> {
        let mut i = 0;
        while i < data.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = self.size.min((data.len() - i) as u64);
                self.size -= n;
                content(&data[i..i + n as usize]);
                i += n as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(data[i])?;
            i += 1;
        }
        Ok((i, self.state == State::Done))
    }

    fn step(&mut self, b: u8) -> Result<(), FramingError> {
        use State::*;
        let expect = |want: u8, next: State| if b == want { Ok(next) } else { Err(FramingError::LineEnd) };
        let visible_or_blank = |b: u8| b.is_ascii_graphic() || b == b' ' || b == b'\t';
        self.state = match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                // A size of 2^63 or more is refused (16 hex digits fit a u64;
                // many parsers take sizes as signed 64-bit numbers).
                if self.digits == 16 || self.size >> 59 != 0 {
                    return Err(FramingError::ChunkTooLarge);
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                Size
            }
            (Size | SizeWs | Ext, b'\n') => return Err(FramingError::LineEnd),
            (Size, _) if self.digits == 0 => return Err(FramingError::ChunkSize),
            (Size | SizeWs | Ext, b'\r') => SizeLf,
            (Size | SizeWs, b' ' | b'\t') => SizeWs,
            (Size | SizeWs, b';') => Ext,
            (Size, _) => return Err(FramingError::ChunkSize),
            (SizeWs, _) => return Err(FramingError::ChunkExtension),
            (Ext, _) if visible_or_blank(b) => Ext,
            (Ext, _) => return Err(FramingError::ChunkExtension),
            (SizeLf, _) => {
                expect(b'\n', Size)?;
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (DataCr, _) => expect(b'\r', DataLf)?,
            (DataLf, _) => expect(b'\n', Size)?,
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | TrailerName | TrailerLine, b'\n') => return Err(FramingError::LineEnd),
            (TrailerStart | TrailerName, _) if crate::detect::is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerLine,
            (TrailerStart | TrailerName, _) => return Err(FramingError::Trailer),
            (TrailerLine, _) if visible_or_blank(b) || b == b'\r' || b >= 0x80 => TrailerLine,
            (TrailerLine, _) => return Err(FramingError::Trailer),
            // A CR inside a trailer line must end it.
            (TrailerLf, _) => expect(b'\n', TrailerStart)?,
            (EndLf, _) => expect(b'\n', Done)?,
            (Data | Done, _) => self.state,
        };
        if self.state == TrailerLine && b == b'\r' {
            self.state = TrailerLf;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Body {
        Body::Chunked(Chunked::default())
    }

    /// Feeds `data` split at every position; each split must agree with the
    /// whole on where the body ends.
    fn end_at_every_split(data: &[u8]) -> Result<usize, FramingError> {
        let mut whole = chunked();
        let (n, done) = whole.advance(data)?;
        assert!(done, "body did not end in {:?}", String::from_utf8_lossy(data));
        for split in 0..=data.len() {
            let mut b = chunked();
            let (a, done_a) = b.advance(&data[..split])?;
            let total = if done_a {
                a
            } else {
                assert_eq!(a, split);
                let (c, done_c) = b.advance(&data[split..])?;
                assert!(done_c);
                split + c
            };
            assert_eq!(total, n, "split at {split}");
        }
        Ok(n)
    }

    #[test]
    fn chunked_ends_exactly_after_the_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(end_at_every_split(&with_next), Ok(body.len()));
        let trailers = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n";
        assert_eq!(end_at_every_split(trailers), Ok(trailers.len()));
        assert_eq!(end_at_every_split(b"A \r\n0123456789\r\n0\r\n\r\n"), Ok(21));
        assert_eq!(end_at_every_split(b"2 ; name=\"q v\"\r\nab\r\n0\r\n\r\n"), Ok(25));
        assert_eq!(chunked().advance(b"7fffffffffffffff\r\n"), Ok((18, false)), "2^63 - 1 is the largest size");
    }

    #[test]
    fn chunked_rejects_ambiguous_framing() {
        let cases: [(&[u8], FramingError); 14] = [
            (b"5\nhello\r\n0\r\n\r\n", FramingError::LineEnd),
            (b"5\r\nhello\n0\r\n\r\n", FramingError::LineEnd),
            (b"x\r\n", FramingError::ChunkSize),
            (b"\r\n", FramingError::ChunkSize),
            (b"11111111111111111\r\n", FramingError::ChunkTooLarge),
            (b"8000000000000000\r\n", FramingError::ChunkTooLarge),
            (b"0\r\nx-t: 1\n\r\n", FramingError::LineEnd),
            (b"5;a=\x00\r\nhello\r\n0\r\n\r\n", FramingError::ChunkExtension),
            (b"5 junk\r\nhello\r\n0\r\n\r\n", FramingError::ChunkExtension),
            (b"5;\x7f\r\nhello\r\n0\r\n\r\n", FramingError::ChunkExtension),
            (b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n", FramingError::Trailer),
            (b"0\r\nx-t 1\r\n\r\n", FramingError::Trailer),
            (b"0\r\n: v\r\n\r\n", FramingError::Trailer),
            (b"0\r\nx-t: a\x00b\r\n\r\n", FramingError::Trailer),
        ];
        for (data, want) in cases {
            assert_eq!(chunked().advance(data), Err(want), "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn decoded_content_drops_the_chunk_framing() {
        let data = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..=data.len() {
            let mut body = chunked();
            let mut content = Vec::new();
            body.advance_decoded(&data[..split], &mut |c| content.extend_from_slice(c)).unwrap();
            body.advance_decoded(&data[split..], &mut |c| content.extend_from_slice(c)).unwrap();
            assert_eq!(content, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn length_and_until_close() {
        let mut b = Body::Length(5);
        assert_eq!(b.advance(b"abc"), Ok((3, false)));
        assert_eq!(b.advance(b"defgh"), Ok((2, true)));
        assert_eq!(Body::Empty.advance(b"xyz"), Ok((0, true)));
        assert_eq!(Body::UntilClose.advance(b"xyz"), Ok((3, false)));
    }
}
