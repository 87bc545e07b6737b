//! # Ending a WebSocket with a close code and a reason
//!
//! Owns the socket-level end of a WebSocket that the gateway ends: jsonrpsee (over soketto) owns
//! the WebSocket itself and can only close with code 1000 and no reason, so this wrapper, under
//! the HTTP connection, follows the server's outgoing WebSocket frames (headers only; payloads
//! are counted, not read) and writes a close frame of its own at the next frame boundary when
//! - the key the WebSocket was opened with is revoked (or expires): code [`REVOKED_CLOSE_CODE`],
//!   reason [`REVOKED_CLOSE_REASON`]; or
//! - a subscription on it cannot go on ([`RevocationWatch::end`], see `gateway::subscriptions`:
//!   the client fell behind, the node's side ended): the code and reason given there.
//!
//! It then shuts its side, discards what the client still sends, and ends the stream when the
//! client closes, or after a grace period at the latest ([`CLOSE_GRACE`] after a revocation, the
//! [`Ending`]'s own otherwise), so jsonrpsee ends the connection and its subscriptions.
//!
//! Until [`RevocationWatch::arm`] is called (a successful WebSocket upgrade), the wrapper passes
//! every read and write through untouched; a plain HTTP connection never pays for more than one
//! atomic load per poll.
//!
//! Must not: write a byte in the middle of a frame of the server, or keep a revoked connection
//! open past the grace period.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The WebSocket close code sent when the key of a WebSocket is revoked (private-use range;
/// 4001 after HTTP's 401).
pub const REVOKED_CLOSE_CODE: u16 = 4001;
/// The WebSocket close reason sent when the key of a WebSocket is revoked.
pub const REVOKED_CLOSE_REASON: &str = "the API key was revoked";
/// How long a revoked WebSocket may take to close before its socket is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The WebSocket close code sent to every open WebSocket when ovsb shuts down (RFC 6455's
/// "going away": the client may reconnect to the next ovsb).
pub const GOING_AWAY_CLOSE_CODE: u16 = 1001;
/// The WebSocket close reason sent when ovsb shuts down.
pub const GOING_AWAY_CLOSE_REASON: &str = "ovsb is shutting down; reconnect";

/// Why the gateway ends a WebSocket, other than a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The close code.
    pub code: u16,
    /// The close reason (cut to the 123 bytes a close frame holds).
    pub reason: String,
    /// How long the close frame may take to get out (behind what the server wrote before it)
    /// and the client to close, before the socket is dropped.
    pub grace: Duration,
}

/// Where the front service tells the connection's socket which key's revocation ends it, and
/// where a subscription ends the socket for a reason of its own.
#[derive(Default)]
pub struct RevocationWatch {
    key: OnceLock<(CancellationToken, Option<i64>)>,
    ending: OnceLock<Ending>,
    end: CancellationToken,
}

impl RevocationWatch {
    /// Ends the WebSocket with `ending`'s code and reason, at the next frame boundary. Only the
    /// first call counts (and a revocation that came first wins).
    pub fn end(&self, ending: Ending) {
        if self.ending.set(ending).is_ok() {
            self.end.cancel();
        }
    }

    /// Whether the socket is being ended (revoked, or [`end`](Self::end) called).
    pub fn ending(&self) -> bool {
        self.end.is_cancelled() || self.key.get().is_some_and(|(token, _)| token.is_cancelled())
    }

    /// From now on the socket carries a WebSocket (its upgrade response is being written), to be
    /// closed when `revoked` fires, or at `expires_ms` (the binding's expiry, Unix ms), when the
    /// socket fires `revoked` itself: an expired key ends everything it opened, as a revoked
    /// one does. Only the first call counts.
    pub fn arm(&self, revoked: CancellationToken, expires_ms: Option<i64>) {
        let _ = self.key.set((revoked, expires_ms));
    }

    /// Whether the socket carries a WebSocket ([`arm`](Self::arm) was called).
    pub fn armed(&self) -> bool {
        self.key.get().is_some()
    }
}

/// The server's outgoing bytes, as far as framing goes.
#[derive(Clone, Copy)]
enum Outgoing {
    /// The HTTP upgrade response, up to the blank line; `matched` bytes of `\r\n\r\n` seen.
    Http { matched: u8 },
    /// A frame header, `have` bytes of it seen.
    Header { bytes: [u8; 14], have: u8 },
    /// A frame's payload, `left` bytes to go.
    Payload { left: u64 },
}

impl Outgoing {
    /// The frame header's length, once enough of it is known.
    fn header_len(bytes: &[u8; 14], have: u8) -> Option<usize> {
        if have < 2 {
            return None;
        }
        let extended = match bytes[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if bytes[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }

    fn payload_len(bytes: &[u8; 14]) -> u64 {
        match bytes[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            127 => u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        }
    }

    /// Follows `data`, written by the server.
    fn track(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self {
                Outgoing::Http { matched } => {
                    let byte = data[0];
                    data = &data[1..];
                    *matched = match (*matched, byte) {
                        (0 | 2, b'\r') => *matched + 1,
                        (1 | 3, b'\n') => *matched + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if *matched == 4 {
                        *self = Outgoing::Header { bytes: [0; 14], have: 0 };
                    }
                }
                Outgoing::Header { bytes, have } => {
                    bytes[*have as usize] = data[0];
                    *have += 1;
                    data = &data[1..];
                    if Outgoing::header_len(bytes, *have) == Some(*have as usize) {
                        let left = Outgoing::payload_len(bytes);
                        *self = if left == 0 {
                            Outgoing::Header { bytes: [0; 14], have: 0 }
                        } else {
                            Outgoing::Payload { left }
                        };
                    }
                }
                Outgoing::Payload { left } => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        *self = Outgoing::Header { bytes: [0; 14], have: 0 };
                    }
                }
            }
        }
    }

    /// Bytes the server may still write before the current frame ends (0 at a boundary).
    fn left_in_frame(&self) -> u64 {
        match *self {
            Outgoing::Http { .. } => u64::MAX,
            Outgoing::Header { have: 0, .. } => 0,
            // One at a time: the header's length is known only as it comes.
            Outgoing::Header { .. } => 1,
            Outgoing::Payload { left } => left,
        }
    }
}

/// The close frame: unmasked (server), FIN + opcode 8, code, reason (cut at a character
/// boundary to the 123 bytes a control frame leaves it).
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

enum State {
    /// Passing through (a WebSocket not revoked, or not a WebSocket).
    Open,
    /// Revoked: the current frame is being finished, then the close frame goes out.
    Revoked,
    /// Writing the close frame; `written` bytes of it are out.
    Closing { frame: Vec<u8>, written: usize },
    /// The close frame is out and the write side shut: discarding the client's bytes until it
    /// closes.
    Closed,
    /// Done: reads end, writes fail.
    Ended,
}

/// A socket that closes its WebSocket with [`REVOKED_CLOSE_CODE`] when the WebSocket's key is
/// revoked.
pub struct Revocable<S> {
    io: S,
    watch: Arc<RevocationWatch>,
    /// Set once the watch is armed.
    armed: Option<Armed>,
}

struct Armed {
    outgoing: Outgoing,
    token: CancellationToken,
    /// Polled by the reader only (the task that waits while the socket is idle), so that the
    /// revocation wakes it.
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    /// [`RevocationWatch::end`]'s token, and its future for the reader.
    end: CancellationToken,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The close frame to send, chosen when the end is noticed.
    frame: Vec<u8>,
    /// The key's expiry, when it has one.
    expiry: Option<Pin<Box<Sleep>>>,
    state: State,
    /// Ends a revoked connection that does not close in time.
    grace: Option<Pin<Box<Sleep>>>,
    /// The reader waiting for the current frame to end.
    reader: Option<Waker>,
}

impl<S> Revocable<S> {
    /// Wraps `io`; `watch` is armed by the front service on a WebSocket upgrade.
    pub fn new(io: S, watch: Arc<RevocationWatch>) -> Self {
        Revocable { io, watch, armed: None }
    }
}

/// The armed state in `slot`, set up from `watch` once it is armed.
fn arm<'a>(slot: &'a mut Option<Armed>, watch: &RevocationWatch) -> Option<&'a mut Armed> {
    if slot.is_none() {
        let (token, expires_ms) = watch.key.get()?;
        // One kernel tick (at most 10 ms) after the expiry: by then the gateway's coarse
        // clock refuses the key too, so a client that reconnects at once is refused.
        let expiry = expires_ms.map(|at| {
            let left = u64::try_from(at.saturating_sub(crate::store::now_ms())).unwrap_or(0) + 10;
            Box::pin(tokio::time::sleep(std::time::Duration::from_millis(left)))
        });
        *slot = Some(Armed {
            outgoing: Outgoing::Http { matched: 0 },
            token: token.clone(),
            revoked: Box::pin(token.clone().cancelled_owned()),
            end: watch.end.clone(),
            ended: Box::pin(watch.end.clone().cancelled_owned()),
            frame: Vec::new(),
            expiry,
            state: State::Open,
            grace: None,
            reader: None,
        });
    }
    slot.as_mut()
}

impl Armed {
    /// Notices a revocation or an [`Ending`] (`ending`: the watch's), waking `cx` on them if
    /// `wake`; true once the socket is to close.
    fn poll_revoked(&mut self, cx: &mut Context<'_>, wake: bool, ending: Option<&Ending>) -> bool {
        if matches!(self.state, State::Open) {
            let revoked = if wake { self.revoked.as_mut().poll(cx).is_ready() } else { self.token.is_cancelled() };
            let expired = wake && self.expiry.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
            let ended = if wake { self.ended.as_mut().poll(cx).is_ready() } else { self.end.is_cancelled() };
            if expired {
                // The key's other sockets and its subscriptions end with this one.
                self.token.cancel();
            }
            let (frame, grace) = match ending {
                _ if revoked || expired => (close_frame(REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON), CLOSE_GRACE),
                Some(ending) if ended => (close_frame(ending.code, &ending.reason), ending.grace),
                _ => return false,
            };
            self.frame = frame;
            self.state = State::Revoked;
            self.grace = Some(Box::pin(tokio::time::sleep(grace)));
        }
        true
    }

    /// Whether the grace period is over (and the connection must end).
    fn poll_grace(&mut self, cx: &mut Context<'_>) -> bool {
        let over = self.grace.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if over {
            self.state = State::Ended;
        }
        over
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, REVOKED_CLOSE_REASON)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Revocable<S> {
    /// Drives the close once revoked: the frame out, flushed, the write side shut. Ready when
    /// done (or when it cannot be done).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(armed) = self.armed.as_mut() else { return Poll::Ready(()) };
        loop {
            match &mut armed.state {
                State::Open => return Poll::Ready(()),
                State::Revoked => {
                    if armed.outgoing.left_in_frame() != 0 {
                        return Poll::Pending;
                    }
                    armed.state = State::Closing { frame: std::mem::take(&mut armed.frame), written: 0 };
                }
                State::Closing { frame, written } => {
                    while *written < frame.len() {
                        match Pin::new(&mut self.io).poll_write(cx, &frame[*written..]) {
                            Poll::Ready(Ok(n)) if n > 0 => *written += n,
                            Poll::Ready(_) => {
                                armed.state = State::Ended;
                                return Poll::Ready(());
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    match Pin::new(&mut self.io).poll_shutdown(cx) {
                        Poll::Ready(_) => armed.state = State::Closed,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Closed | State::Ended => return Poll::Ready(()),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Revocable<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(armed) = arm(&mut this.armed, &this.watch) else { return Pin::new(&mut this.io).poll_read(cx, buf) };
        if !armed.poll_revoked(cx, true, this.watch.ending.get()) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if matches!(armed.state, State::Ended) || armed.poll_grace(cx) {
            return Poll::Ready(Ok(()));
        }
        armed.reader = Some(cx.waker().clone());
        if this.poll_close(cx).is_pending() {
            return Poll::Pending;
        }
        if this.armed.as_ref().is_some_and(|armed| matches!(armed.state, State::Ended)) {
            return Poll::Ready(Ok(()));
        }
        // The close frame is out: take what the client still sends, unseen, until it closes.
        let mut scratch = [0u8; 512];
        loop {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                // End of stream, or an error: the client is gone.
                Poll::Ready(_) => {
                    if let Some(armed) = this.armed.as_mut() {
                        armed.state = State::Ended;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Revocable<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(armed) = arm(&mut this.armed, &this.watch) else { return Pin::new(&mut this.io).poll_write(cx, buf) };
        let revoked = armed.poll_revoked(cx, false, this.watch.ending.get());
        let mut allowed = buf;
        if revoked {
            let left = armed.outgoing.left_in_frame();
            if left == 0 || !matches!(armed.state, State::Revoked) {
                // The server's frame is done: the close frame goes out instead of anything else.
                if let Some(reader) = armed.reader.take() {
                    reader.wake();
                }
                return match this.poll_close(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Err(closed())),
                };
            }
            allowed = &buf[..buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
        }
        let written = Pin::new(&mut this.io).poll_write(cx, allowed);
        if let (Poll::Ready(Ok(n)), Some(armed)) = (&written, this.armed.as_mut()) {
            armed.outgoing.track(&allowed[..*n]);
            if revoked
                && armed.outgoing.left_in_frame() == 0
                && let Some(reader) = armed.reader.take()
            {
                reader.wake();
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.watch.key.get().is_none() {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        // Armed: one buffer at a time, so that every byte is followed.
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_followed_through_any_split_of_the_bytes() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        stream.extend_from_slice(&[0x81, 3, b'a', b'b', b'c']);
        stream.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        stream.extend(std::iter::repeat_n(b'x', 256));
        stream.extend_from_slice(&[0x89, 0]);
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        stream.extend_from_slice(&long);
        stream.extend(std::iter::repeat_n(b'y', 70_000));
        for chunk in [1, 2, 3, 7, 100, 5000, stream.len()] {
            let mut outgoing = Outgoing::Http { matched: 0 };
            for piece in stream.chunks(chunk) {
                outgoing.track(piece);
            }
            assert_eq!(outgoing.left_in_frame(), 0, "chunks of {chunk}");
            let mut partial = Outgoing::Http { matched: 0 };
            partial.track(&stream[..stream.len() - 10]);
            assert_eq!(partial.left_in_frame(), 10, "ten bytes before the end");
        }
    }

    #[test]
    fn the_close_frame_carries_the_code_and_reason() {
        let frame = close_frame(REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON);
        assert_eq!(frame[0], 0x88);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), REVOKED_CLOSE_CODE);
        assert_eq!(&frame[4..], REVOKED_CLOSE_REASON.as_bytes());
        let long = close_frame(1012, &"é".repeat(100));
        assert_eq!(long[1] as usize, long.len() - 2);
        assert!(long.len() - 4 <= 123 && std::str::from_utf8(&long[4..]).is_ok(), "cut at a character boundary");
    }
}
