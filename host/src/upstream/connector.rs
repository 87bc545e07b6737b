//! The sockets to the nodes: a connector that opens a socket to a node only with one of its
//! permits (so a pool never holds more sockets to a node than its cap), and the reading of
//! hyper's errors (what the caller is told, whether it is ovsb's failure or the node's). Must
//! not: decide about retries (the pool does), or name a node's address to a caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

/// The connector of a pool: a socket to a node is opened only with one of that node's permits,
/// and keeps it until it closes, so the pool never holds more than the cap of sockets to a node,
/// whatever hyper's pool does (it may finish a connection in the background for its idle list).
#[derive(Clone)]
pub(super) struct CappedConnector {
    pub(super) inner: HttpConnector,
    /// Each node's permits, by its `host:port`.
    pub(super) nodes: Arc<[(http::uri::Authority, Arc<tokio::sync::Semaphore>)]>,
    /// Longest wait for a permit (the per-call deadline).
    pub(super) wait: Duration,
}

/// No socket to the node could be had within the wait: not the node's failure.
#[derive(Debug)]
pub(super) struct SocketsTaken;

impl std::fmt::Display for SocketsTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("every socket to the node allowed is in use")
    }
}

impl std::error::Error for SocketsTaken {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for CappedConnector {
    type Response = CappedIo<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        tower::Service::<http::Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let permits = self.nodes.iter().find(|(node, _)| Some(node) == uri.authority()).map(|(_, p)| p.clone());
        let mut inner = self.inner.clone();
        let wait = self.wait;
        Box::pin(async move {
            let permit = match permits {
                Some(permits) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => Some(
                        tokio::time::timeout(wait, permits.acquire_owned())
                            .await
                            .map_err(|_| SocketsTaken)?
                            .map_err(|_| SocketsTaken)?,
                    ),
                },
                None => None,
            };
            let io = tower::Service::call(&mut inner, uri).await?;
            Ok(CappedIo { io, _permit: permit })
        })
    }
}

/// A socket to a node with its permit.
pub(super) struct CappedIo<T> {
    io: T,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CappedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CappedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection> hyper_util::client::legacy::connect::Connection
    for CappedIo<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.io.connected()
    }
}

/// Whether `E` is among the causes of `error`.
pub(super) fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether the connection closed before the node's answer began (hyper's "connection closed
/// before message completed").
pub(super) fn closed_before_answer(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether connecting failed because this process (or the system) is out of descriptors.
pub(super) fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(EMFILE | ENFILE))
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error and its sources, `: `-joined ("client error (Connect): tcp connect error:
/// Connection refused (os error 111)"): hyper's own text alone says only "client error".
pub(super) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
