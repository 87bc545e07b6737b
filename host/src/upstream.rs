//! Forwarding calls to an instance's node(s): a pooled keep-alive HTTP client, failover between
//! several upstreams, a per-call deadline, and the rules for what may be retried.
//!
//! A call goes to the next upstream in round-robin order, healthy ones first. A connection
//! error or an HTTP 5xx marks that upstream down for a while and, if the call is safe to
//! repeat, the next one is tried. Transactions (`eth_sendRawTransaction`,
//! `eth_sendTransaction`) are only retried when the request provably never left (connection
//! refused); otherwise their outcome is reported as unknown. The node's own JSON-RPC errors are
//! answers, passed through unchanged.
//!
//! Each node gets at most `max_sockets_per_node` calls in flight from one pool, and the pool
//! holds at most as many sockets to it, open, idle or connecting (each socket carries a permit
//! for its whole life, see [`CappedConnector`]), so the node sees a bounded number of sockets
//! whatever the fan-out of batches; a call that finds the cap taken waits its turn (up to the request's
//! queue time, see [`crate::budget`]) and is then refused with -32005 `node_sockets`. Inside a
//! request, a call also takes a turn of its instance's share of upstream calls and charges the
//! answer's bytes to the request's budget as they arrive (read only up to what is left). A call
//! refused by a budget, or failing because the process is out of descriptors, is ovsb's failure,
//! not the node's: the node stays in rotation. Repeated failures are logged through a
//! [`LogThrottle`](crate::telemetry::LogThrottle), not once per call.
//!
//! Used by the drivers (which build and health-check pools) and by the gateway (which sends
//! calls through them); it depends on neither. It owns the JSON-RPC codes of the failures it
//! reports, which `gateway::errors` lists with the others.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::budget::{self, Refusal};
use crate::plugins::{Call, Outcome, RpcError, Upstream};
use crate::telemetry::LogThrottle;

tokio::task_local! {
    /// The id of the call being served (set by the gateway): plugins see it in their context,
    /// the node gets it as `X-Request-Id`, and log lines under the call's `rpc` span carry it.
    pub static REQUEST_ID: Arc<str>;
}

/// No upstream node could be reached (connection refused, all down, bad answer).
pub const UPSTREAM_UNAVAILABLE: i32 = -32002;
/// The call did not finish within the per-call deadline.
pub const DEADLINE_EXCEEDED: i32 = -32003;
/// A transaction was sent but the node's answer was lost: it may or may not have been accepted,
/// so it is not retried. Check with `eth_getTransactionByHash`.
pub const SEND_OUTCOME_UNKNOWN: i32 = -32020;

/// How long an upstream that failed is skipped (unless all are down).
const DOWN_FOR: Duration = Duration::from_secs(2);

/// Calls in flight to one node from one pool when nothing else is configured.
pub const DEFAULT_SOCKETS_PER_NODE: usize = 64;

/// "No upstream answered" and "a transaction's outcome is unknown": at most one line a second.
static UPSTREAM_FAILURES: std::sync::LazyLock<LogThrottle> =
    std::sync::LazyLock::new(|| LogThrottle::new(Duration::from_secs(1)));

/// Methods whose repetition could do something twice.
fn is_send(method: &str) -> bool {
    matches!(method, "eth_sendRawTransaction" | "eth_sendTransaction" | "eth_sendRawTransactionSync")
}

/// Settings of an upstream pool.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// HTTP JSON-RPC URLs of the nodes, in order of preference.
    pub http: Vec<http::Uri>,
    /// WebSocket URLs of the same nodes (for subscriptions).
    pub ws: Vec<String>,
    /// Longest time one call may take, retries included.
    pub deadline: Duration,
    /// Largest response body accepted from a node.
    pub max_response_bytes: usize,
    /// Calls in flight to each node (and idle keep-alive sockets kept to it).
    pub max_sockets_per_node: usize,
}

struct Endpoint {
    uri: http::Uri,
    /// Set by health checks (true until a check says otherwise); unhealthy endpoints get no calls.
    healthy: AtomicBool,
    /// Milliseconds since the pool's start until which this endpoint is skipped.
    down_until_ms: AtomicU64,
    /// Turns of the node's cap of calls in flight.
    calls: Arc<tokio::sync::Semaphore>,
}

/// The node(s) behind one instance.
pub struct UpstreamPool {
    endpoints: Vec<Endpoint>,
    ws: Vec<String>,
    next: AtomicUsize,
    next_id: AtomicU64,
    started: Instant,
    deadline: Duration,
    max_response_bytes: usize,
    /// Calls in flight to each node.
    sockets: usize,
    client: Client<CappedConnector, Full<Bytes>>,
}

/// Why a single attempt failed.
enum AttemptError {
    /// The request never reached the node (connect refused, DNS): safe to retry anything.
    NotSent(String),
    /// The request may have reached the node.
    Failed(String),
    /// A budget of ovsb's refused the call (not the node's fault).
    Refused(Refusal),
}

impl UpstreamPool {
    /// A pool over these upstreams.
    pub fn new(settings: UpstreamSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.deadline));
        let sockets = settings.max_sockets_per_node.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let capped = CappedConnector {
            inner: connector,
            nodes: settings
                .http
                .iter()
                .filter_map(|uri| uri.authority().cloned())
                .map(|authority| (authority, Arc::new(tokio::sync::Semaphore::new(sockets))))
                .collect(),
            wait: settings.deadline,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(sockets)
            .build(capped);
        UpstreamPool {
            endpoints: settings
                .http
                .into_iter()
                .map(|uri| Endpoint {
                    uri,
                    healthy: AtomicBool::new(true),
                    down_until_ms: AtomicU64::new(0),
                    calls: Arc::new(tokio::sync::Semaphore::new(sockets)),
                })
                .collect(),
            ws: settings.ws,
            next: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            deadline: settings.deadline,
            max_response_bytes: settings.max_response_bytes,
            sockets,
            client,
        }
    }

    /// The WebSocket URLs, in order of preference.
    pub fn ws_urls(&self) -> &[String] {
        &self.ws
    }

    /// The per-call deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Endpoint indexes in the order to try them: round-robin, healthy ones first.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let (mut up, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| self.endpoints[i].healthy.load(Ordering::Relaxed))
            .partition(|&i| self.endpoints[i].down_until_ms.load(Ordering::Relaxed) <= now);
        up.append(&mut down);
        up
    }

    fn mark_down(&self, index: usize) {
        let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
        self.endpoints[index].down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the pool has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The HTTP URL of endpoint `index`.
    pub fn url(&self, index: usize) -> String {
        self.endpoints[index].uri.to_string()
    }

    /// Whether endpoint `index` is in rotation.
    pub fn is_healthy(&self, index: usize) -> bool {
        self.endpoints[index].healthy.load(Ordering::Relaxed)
    }

    /// Takes endpoint `index` out of rotation or puts it back (health checks); returns the
    /// previous state.
    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        self.endpoints[index].healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Calls in flight to endpoint `index` now (through this pool).
    pub fn in_flight(&self, index: usize) -> usize {
        self.sockets - self.endpoints[index].calls.available_permits()
    }

    /// One call to endpoint `index` only, whatever its health, within the deadline (for health
    /// checks and readiness probes). It does not wait for the node's cap of calls: a node busy
    /// with the gateway's calls is not a node that fails its check. A budget's refusal (such as
    /// the process being out of descriptors) is -32005, which health checks do not hold
    /// against the node.
    pub async fn probe(&self, index: usize, call: &Call) -> Outcome {
        let body = self.encode(call);
        match tokio::time::timeout(self.deadline, self.attempt(index, body, false)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(AttemptError::NotSent(reason) | AttemptError::Failed(reason))) => {
                Err(rpc_error(UPSTREAM_UNAVAILABLE, reason))
            }
            Ok(Err(AttemptError::Refused(refusal))) => Err(refusal.error()),
            Err(_) => Err(rpc_error(DEADLINE_EXCEEDED, "the node did not answer in time")),
        }
    }

    /// Sends one call, with failover, within the deadline.
    pub async fn send(&self, call: &Call) -> Outcome {
        match tokio::time::timeout(self.deadline, self.send_with_failover(call)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                crate::telemetry::metrics().upstream_error("timeout");
                Err(rpc_error(
                    DEADLINE_EXCEEDED,
                    format!("the node did not answer within {} ms", self.deadline.as_millis()),
                ))
            }
        }
    }

    async fn send_with_failover(&self, call: &Call) -> Outcome {
        if self.endpoints.is_empty() {
            return Err(rpc_error(UPSTREAM_UNAVAILABLE, "this instance has no upstream node"));
        }
        let body = self.encode(call);
        let send = is_send(&call.method);
        let mut last = String::new();
        for index in self.order() {
            match self.attempt(index, body.clone(), true).await {
                Ok(outcome) => return outcome,
                // Not the node's failure: no other node would do better.
                Err(AttemptError::Refused(refusal)) => return Err(refusal.error()),
                Err(AttemptError::NotSent(reason)) => {
                    crate::telemetry::metrics().upstream_error("connect");
                    self.mark_down(index);
                    last = reason;
                }
                Err(AttemptError::Failed(reason)) => {
                    crate::telemetry::metrics().upstream_error("failed");
                    self.mark_down(index);
                    if send {
                        if let Some(suppressed) = UPSTREAM_FAILURES.admit() {
                            tracing::warn!(method = %call.method, suppressed, "upstream failed after a transaction was sent: {reason}");
                        }
                        return Err(rpc_error(
                            SEND_OUTCOME_UNKNOWN,
                            "the node failed while handling the transaction; it may or may not have been accepted",
                        ));
                    }
                    last = reason;
                }
            }
        }
        if let Some(suppressed) = UPSTREAM_FAILURES.admit() {
            tracing::warn!(method = %call.method, suppressed, "no upstream answered: {last}");
        }
        // The cause, for the caller: what the last try met (never the node's address).
        let cause: String = last.chars().take(300).collect();
        Err(RpcError {
            code: UPSTREAM_UNAVAILABLE,
            message: "no upstream node is reachable".into(),
            data: Some(serde_json::json!({ "cause": cause }).to_string()),
        })
    }

    /// The JSON-RPC request body, built around the raw params without re-encoding them.
    fn encode(&self, call: &Call) -> Bytes {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = call.params.as_deref().unwrap_or("[]");
        let mut body = Vec::with_capacity(64 + call.method.len() + params.len());
        body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        body.extend_from_slice(id.to_string().as_bytes());
        body.extend_from_slice(br#","method":"#);
        // A method name is a JSON string; serde escapes it.
        serde_json::to_writer(&mut body, &call.method).expect("writing to a Vec cannot fail");
        body.extend_from_slice(br#","params":"#);
        body.extend_from_slice(params.as_bytes());
        body.push(b'}');
        Bytes::from(body)
    }

    /// One try at endpoint `index`. `capped`: within the node's cap of calls and the request's
    /// budget (every call but probes).
    async fn attempt(&self, index: usize, body: Bytes, capped: bool) -> Result<Outcome, AttemptError> {
        let endpoint = &self.endpoints[index];
        let _turns = if capped {
            let turn = budget::upstream_turn().await.map_err(AttemptError::Refused)?;
            let node = budget::node_turn(&endpoint.calls).await.map_err(AttemptError::Refused)?;
            Some((turn, node))
        } else {
            None
        };
        let mut request =
            http::Request::post(endpoint.uri.clone()).header(http::header::CONTENT_TYPE, "application/json");
        if let Ok(Ok(id)) = REQUEST_ID.try_with(|id| http::HeaderValue::from_str(id)) {
            request = request.header("x-request-id", id);
        }
        let request = request.body(Full::new(body)).map_err(|e| AttemptError::NotSent(e.to_string()))?;
        let response = self.client.request(request).await.map_err(|e| {
            if out_of_descriptors(&e) {
                AttemptError::Refused(Refusal::Descriptors)
            } else if caused_by::<SocketsTaken>(&e) {
                AttemptError::Refused(Refusal::NodeSockets)
            } else if e.is_connect() {
                AttemptError::NotSent(causes(&e))
            } else {
                AttemptError::Failed(causes(&e))
            }
        })?;
        let status = response.status();
        let body = self.read_answer(response).await?;
        match decode_owned(body) {
            Some(outcome) => Ok(outcome),
            None if status.is_server_error() => Err(AttemptError::Failed(format!("HTTP {status}"))),
            None => Err(AttemptError::Failed(format!("HTTP {status} with a body that is not a JSON-RPC response"))),
        }
    }

    /// The answer's body, read only up to the pool's limit and charged to the request's budget as
    /// it arrives (at once when the node declares its length).
    async fn read_answer(&self, response: http::Response<hyper::body::Incoming>) -> Result<Bytes, AttemptError> {
        let too_large = || AttemptError::Refused(Refusal::Response(self.max_response_bytes));
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(declared) = declared {
            if declared > self.max_response_bytes {
                return Err(too_large());
            }
            budget::charge_answer(declared).await.map_err(AttemptError::Refused)?;
        }
        let mut body = response.into_body();
        // One frame (the usual case) is kept as it is; more are gathered.
        let mut first: Option<Bytes> = None;
        let mut gathered: Vec<u8> = Vec::new();
        let mut read = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| AttemptError::Failed(format!("reading the answer: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            read += data.len();
            if read > self.max_response_bytes || declared.is_some_and(|declared| read > declared) {
                return Err(too_large());
            }
            if declared.is_none() {
                budget::charge_answer(data.len()).await.map_err(AttemptError::Refused)?;
            }
            match first.take() {
                None if gathered.is_empty() => first = Some(data),
                None => gathered.extend_from_slice(&data),
                Some(earlier) => {
                    gathered.reserve(declared.unwrap_or(earlier.len() + data.len()));
                    gathered.extend_from_slice(&earlier);
                    gathered.extend_from_slice(&data);
                }
            }
        }
        Ok(match first {
            Some(only) => only,
            None => Bytes::from(gathered),
        })
    }
}

/// The connector of a pool: a socket to a node is opened only with one of that node's permits,
/// and keeps it until it closes, so the pool never holds more than the cap of sockets to a node,
/// whatever hyper's pool does (it may finish a connection in the background for its idle list).
#[derive(Clone)]
struct CappedConnector {
    inner: HttpConnector,
    /// Each node's permits, by its `host:port`.
    nodes: Arc<[(http::uri::Authority, Arc<tokio::sync::Semaphore>)]>,
    /// Longest wait for a permit (the per-call deadline).
    wait: Duration,
}

/// No socket to the node could be had within the wait: not the node's failure.
#[derive(Debug)]
struct SocketsTaken;

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
struct CappedIo<T> {
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
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.is::<E>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Whether connecting failed because this process (or the system) is out of descriptors.
fn out_of_descriptors(error: &(dyn std::error::Error + 'static)) -> bool {
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

impl Upstream for UpstreamPool {
    fn call<'a>(&'a self, call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.send(call))
    }
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    code: i32,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Keeps `"result": null` as `Some(null)`: null is a valid result.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// [`decode`], taking the body: a result is cut out of the body's own buffer (when the buffer is
/// not shared) rather than copied, so a large answer is held once, not twice.
fn decode_owned(body: Bytes) -> Option<Outcome> {
    let (start, len) = {
        let response: WireResponse = serde_json::from_slice(&body).ok()?;
        match (response.result, &response.error) {
            (Some(result), None) => (result.get().as_ptr() as usize - body.as_ptr() as usize, result.get().len()),
            _ => return decode(&body),
        }
    };
    let mut bytes = Vec::from(body);
    bytes.truncate(start + len);
    bytes.drain(..start);
    Some(Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
}

/// The outcome in a node's JSON-RPC response; `None` if the body is not one.
fn decode(body: &[u8]) -> Option<Outcome> {
    let response: WireResponse = serde_json::from_slice(body).ok()?;
    match (response.result, response.error) {
        (_, Some(error)) => Some(Err(RpcError {
            code: error.code,
            message: error.message.into_owned(),
            data: error.data.map(|d| d.get().to_string()),
        })),
        (Some(result), None) => Some(Ok(result.get().to_string())),
        (None, None) => None,
    }
}

/// An error and its sources, `: `-joined ("client error (Connect): tcp connect error:
/// Connection refused (os error 111)"): hyper's own text alone says only "client error".
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn rpc_error(code: i32, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into(), data: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_null_results_and_node_errors_as_they_are() {
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1,"result":null}"#), Some(Ok("null".into())));
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1,"result":{"a": [1]}}"#), Some(Ok(r#"{"a": [1]}"#.into())));
        let err = decode(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#,
        );
        assert_eq!(
            err,
            Some(Err(RpcError { code: 3, message: "execution reverted".into(), data: Some("\"0x08c379a0\"".into()) }))
        );
        assert_eq!(decode(b"<html>bad gateway</html>"), None);
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1}"#), None);
        let owned = |text: &'static [u8]| decode_owned(Bytes::from(text.to_vec()));
        assert_eq!(owned(br#"{"jsonrpc":"2.0","id":1,"result":{"a": [1]}}"#), Some(Ok(r#"{"a": [1]}"#.into())));
        assert_eq!(owned(br#"{"id":1,"result":"0x1","jsonrpc":"2.0"}"#), Some(Ok(r#""0x1""#.into())));
        assert_eq!(owned(br#"{"jsonrpc":"2.0","id":1,"result":null}"#), Some(Ok("null".into())));
        assert!(matches!(owned(br#"{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"m"}}"#), Some(Err(_))));
        assert_eq!(owned(b"<html>"), None);
    }

    #[test]
    fn the_request_body_escapes_the_method_and_keeps_params_raw() {
        let pool = UpstreamPool::new(UpstreamSettings {
            http: vec![],
            ws: vec![],
            deadline: Duration::from_secs(1),
            max_response_bytes: 1024,
            max_sockets_per_node: 4,
        });
        let body = pool.encode(&Call { method: "we\"ird".into(), params: Some("[1, {\"a\":2}]".into()) });
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["method"], "we\"ird");
        assert_eq!(parsed["params"], serde_json::json!([1, {"a": 2}]));
    }
}
