//! The playbook's output on its way in: pipes split into bounded lines, and
//! the last 64 KiB kept for the result, redacted before it is cut.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::secrets::Redactor;

/// The contract's `output_tail` limit (CONTRACT.md section 3).
pub(crate) const TAIL_BYTES: usize = 64 * 1024;

/// A line longer than this is handed on in pieces, so one runaway line
/// cannot grow memory without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Splits one pipe into lines. `next_line` is cancel-safe (it may lose a race
/// in `select!` without losing bytes): all state changes happen after its
/// only await point.
pub(crate) struct LineReader<R> {
    reader: BufReader<R>,
    partial: Vec<u8>,
}

/// One piece of output: a whole line with its `\n`, or a piece of a longer one.
pub(crate) type Chunk = Vec<u8>;

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(pipe: R) -> LineReader<R> {
        LineReader {
            reader: BufReader::new(pipe),
            partial: Vec::new(),
        }
    }

    /// The next chunk, or `None` once the pipe is closed (or broken).
    pub(crate) async fn next_line(&mut self) -> Option<Chunk> {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::debug!(error.message = %error, "reading playbook output failed");
                    &[]
                }
            };
            if available.is_empty() {
                return (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial));
            }
            let room = MAX_LINE_BYTES - self.partial.len();
            let (take, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(at) if at < room => (at + 1, true),
                _ => (available.len().min(room), false),
            };
            self.partial.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if complete {
                return Some(std::mem::take(&mut self.partial));
            }
            if self.partial.len() >= MAX_LINE_BYTES {
                return Some(self.split_long_line());
            }
        }
    }

    /// Hands on a full buffer, keeping an incomplete UTF-8 sequence at its
    /// end for the next piece.
    fn split_long_line(&mut self) -> Chunk {
        let keep_from = match std::str::from_utf8(&self.partial) {
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            _ => self.partial.len(),
        };
        let rest = self.partial.split_off(keep_from);
        std::mem::replace(&mut self.partial, rest)
    }
}

/// The last [`TAIL_BYTES`] of the combined output.
///
/// Raw text is kept with a margin as long as the longest secret needle, and
/// redacted as a whole at the end: a secret cut in two when old output is
/// dropped lies entirely inside the margin or is masked as a whole.
#[derive(Debug)]
pub(crate) struct OutputTail {
    raw: String,
    limit: usize,
    margin: usize,
    /// Whether text was dropped from the front (so the margin may hold a
    /// fragment of a secret).
    dropped: bool,
}

impl OutputTail {
    /// A tail of `limit` bytes, keeping `margin` more raw bytes until redaction.
    pub(crate) fn new(limit: usize, margin: usize) -> OutputTail {
        OutputTail {
            raw: String::new(),
            limit,
            margin,
            dropped: false,
        }
    }

    /// Appends output; drops old text once twice the window has piled up.
    pub(crate) fn push(&mut self, text: &str) {
        self.raw.push_str(text);
        let window = self.limit + self.margin;
        if self.raw.len() > 2 * window {
            let cut = self.raw.ceil_char_boundary(self.raw.len() - window);
            self.raw.drain(..cut);
            self.dropped = true;
        }
    }

    /// The redacted tail, at most `limit` bytes, cut on a char boundary.
    pub(crate) fn finish(self, redactor: &Redactor) -> String {
        let start = if self.dropped {
            self.raw.ceil_char_boundary(self.margin.min(self.raw.len()))
        } else {
            0
        };
        let mut redacted = redactor.redact_from(&self.raw, start);
        if redacted.len() > self.limit {
            // Cutting redacted text can only shorten a `***`, never expose a secret.
            let cut = redacted.ceil_char_boundary(redacted.len() - self.limit);
            redacted.drain(..cut);
        }
        redacted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn redactor(value: &str) -> Redactor {
        Redactor::new([&SecretString::from(value)])
    }

    #[test]
    fn a_short_output_is_kept_whole_and_redacted() {
        let mut tail = OutputTail::new(100, 10);
        tail.push("a secretvalue here\n");
        assert_eq!(tail.finish(&redactor("secretvalue")), "a *** here\n");
    }

    #[test]
    fn a_long_output_keeps_only_the_last_bytes() {
        let mut tail = OutputTail::new(1000, 0);
        for i in 0..1000 {
            tail.push(&format!("line {i:04}\n"));
        }
        let out = tail.finish(&Redactor::default());
        assert_eq!(out.len(), 1000);
        assert!(out.ends_with("line 0999\n"));
        assert!(!out.contains("line 0899\n"));
    }

    /// Pushes filler, then the secret followed by `after` bytes, so that the
    /// drop of old text cuts through the secret `after` bytes before the end.
    fn tail_cut_through_secret(secret: &str, margin: usize, cut_at: usize) -> String {
        let r = redactor(secret);
        let limit = 64;
        let window = limit + margin;
        let mut tail = OutputTail::new(limit, margin);
        tail.push(&"y".repeat(window));
        // After this push the last `window` bytes start `cut_at` bytes into the secret.
        let after = window - (secret.len() - cut_at);
        tail.push(&format!("{secret}{}", "z".repeat(after)));
        assert!(tail.dropped);
        tail.finish(&r)
    }

    #[test]
    fn a_secret_straddling_the_dropped_front_leaves_no_fragment() {
        let secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let margin = redactor(secret).longest_needle();
        for cut_at in 1..secret.len() {
            let out = tail_cut_through_secret(secret, margin, cut_at);
            assert!(out.len() <= 64);
            assert!(
                !out.contains(&secret[secret.len() - 1..]),
                "cut {cut_at}: {out}"
            );
        }
    }

    #[test]
    fn without_the_margin_a_straddling_secret_would_leave_a_fragment() {
        // Guards the test above: it does cut through the secret.
        let secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let out = tail_cut_through_secret(secret, 0, 30);
        assert!(out.starts_with("456789"), "{out}");
    }

    #[test]
    fn the_cut_falls_on_a_char_boundary() {
        let mut tail = OutputTail::new(10, 0);
        tail.push(&"é".repeat(50));
        let out = tail.finish(&Redactor::default());
        assert!(out.len() <= 10);
        assert!(out.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn lines_are_split_and_a_last_line_without_newline_is_kept() {
        let input: &[u8] = b"one\ntwo\nthree";
        let mut reader = LineReader::new(input);
        assert_eq!(reader.next_line().await.unwrap(), b"one\n");
        assert_eq!(reader.next_line().await.unwrap(), b"two\n");
        assert_eq!(reader.next_line().await.unwrap(), b"three");
        assert_eq!(reader.next_line().await, None);
    }

    #[tokio::test]
    async fn an_overlong_line_comes_in_pieces_split_between_chars() {
        let mut input = vec![b'a'; MAX_LINE_BYTES - 1];
        input.extend_from_slice("é tail\n".as_bytes());
        let mut reader = LineReader::new(&input[..]);
        let first = reader.next_line().await.unwrap();
        assert_eq!(first.len(), MAX_LINE_BYTES - 1);
        assert_eq!(reader.next_line().await.unwrap(), "é tail\n".as_bytes());
    }
}
