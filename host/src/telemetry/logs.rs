//! What keeps the log readable and bounded: a throttle for repeated lines, and a writer that
//! keeps every event on one line whatever its fields hold. Must not: drop a line without
//! counting it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::metrics;

/// Rate-limits one kind of repeated log line: at most one per `every`, each written one carrying
/// the count of those kept out since the last (also counted in `ovsb_log_lines_suppressed_total`),
/// so one failure mode cannot fill the disk. One atomic load when a line is kept out.
pub struct LogThrottle {
    every_ms: u64,
    /// Milliseconds since `started` of the last line written (`u64::MAX`: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    started: std::time::Instant,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every_ms: every.as_millis() as u64,
            last_ms: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// `Some(kept out since the last line)` when a line may be written now; else counts it out.
    pub fn admit(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every_ms;
        if due && self.last_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        metrics().record_suppressed_lines(1);
        None
    }
}

/// The writer of the text log: each event is one line, whatever its fields hold. Control
/// characters from clients or plugins (a method name with `\n` and a forged line, ANSI escapes,
/// C1 controls) are written escaped (`\n`, `\x1b`, `\u{9b}`); only the newline that ends
/// the event is written as is. (The JSON log needs none of this: JSON escapes them.)
#[derive(Debug, Clone, Copy, Default)]
pub struct OneLineStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for OneLineStderr {
    type Writer = OneLine<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        OneLine(std::io::stderr())
    }
}

/// See [`OneLineStderr`]: escapes what it is given, but a final newline, into `W`.
pub struct OneLine<W>(pub W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&escape_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `line` with its control characters escaped, a final `\n` kept.
pub fn escape_line(line: &[u8]) -> Vec<u8> {
    let (body, end) = match line.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (line, &b""[..]),
    };
    let mut out = Vec::with_capacity(line.len() + 8);
    let mut bytes = body.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // C1 controls (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8.
            0xc2 if bytes.peek().is_some_and(|next| (0x80..=0x9f).contains(next)) => {
                let next = bytes.next().unwrap_or_default();
                out.extend_from_slice(format!("\\u{{{next:x}}}").as_bytes());
            }
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_writes_the_first_line_then_counts_the_repeats() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(throttle.admit(), None);
        }
        let open = LogThrottle::new(Duration::ZERO);
        assert_eq!(open.admit(), Some(0));
        assert_eq!(open.admit(), Some(0));
    }

    #[test]
    fn a_log_line_stays_one_line_whatever_its_fields_hold() {
        let forged = "INFO method=eth_call\n2026-12-01T00:00:00Z  INFO ovsb: forged\x1b[31m\u{9b}\r\tend\n";
        let escaped = String::from_utf8(escape_line(forged.as_bytes())).unwrap();
        assert_eq!(escaped, "INFO method=eth_call\\n2026-12-01T00:00:00Z  INFO ovsb: forged\\x1b[31m\\u{9b}\\r\tend\n");
        assert_eq!(escaped.matches('\n').count(), 1);
        assert_eq!(escape_line("plain é ü\n".as_bytes()), "plain é ü\n".as_bytes(), "text is kept");
    }
}
