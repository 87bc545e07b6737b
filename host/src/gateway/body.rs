//! Bodies with a clock: a request body that must arrive whole within a deadline, a streamed
//! answer that must not go quiet for longer than an idle time, and a streamed answer that ends
//! when the key that opened it is revoked or expires ([`UntilRevoked`]).
//!
//! Owns only the timing; sizes are bounded where the body is read (jsonrpsee's body limit, the
//! proxies' `Limited`).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The error a timed body ends with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub &'static str);

/// How the clock of a [`Timed`] body runs.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The whole body within this time of the first wait for it.
    Total(Duration),
    /// No gap between frames longer than this.
    Idle(Duration),
}

/// `inner`, failing with [`TimedOut`] when its [`Clock`] runs out.
pub struct Timed<B> {
    inner: B,
    clock: Clock,
    sleep: Option<Pin<Box<Sleep>>>,
    what: &'static str,
}

impl<B> Timed<B> {
    /// Wraps `inner`; `what` is the error's message.
    pub fn new(inner: B, clock: Clock, what: &'static str) -> Self {
        Timed { inner, clock, sleep: None, what }
    }

    fn period(&self) -> Duration {
        match self.clock {
            Clock::Total(d) | Clock::Idle(d) => d,
        }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let (Clock::Idle(idle), Some(Ok(_)), Some(sleep)) = (this.clock, &frame, this.sleep.as_mut()) {
                    sleep.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                // The clock starts the first time the body makes us wait: a body that came with
                // its headers (the usual JSON-RPC request) never arms a timer.
                let period = this.period();
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TimedOut(this.what))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `inner`, ended when the key that opened it is revoked (`revoked` fires) or expires (at
/// `expires_ms`, Unix ms): the stream ends there, cleanly, whatever it was in the middle of
/// sending (a server-sent event stream's client sees the end and reconnects, and is refused).
pub struct UntilRevoked<B> {
    inner: B,
    revoked: Pin<Box<WaitForCancellationFutureOwned>>,
    expiry: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl<B> UntilRevoked<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, revoked: CancellationToken, expires_ms: Option<i64>) -> Self {
        let expiry = expires_ms.map(|at| {
            let left = u64::try_from(at.saturating_sub(crate::store::now_ms())).unwrap_or(0);
            Box::pin(tokio::time::sleep(Duration::from_millis(left)))
        });
        UntilRevoked { inner, revoked: Box::pin(revoked.cancelled_owned()), expiry, ended: false }
    }
}

impl<B> Body for UntilRevoked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let expired = this.expiry.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired || this.revoked.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(None);
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
