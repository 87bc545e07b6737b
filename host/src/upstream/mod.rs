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

mod connector;
mod wire;

use connector::{CappedConnector, SocketsTaken, caused_by, causes, closed_before_answer, out_of_descriptors};
use wire::decode_owned;

use crate::budget::{self, Refusal};
use crate::call::{Blame, Call, Outcome, RpcError, Upstream, blamed};
use crate::telemetry::LogThrottle;

/// The pool's own codes (see [`crate::call::codes`]): no node reachable, the deadline passed, a
/// transaction's fate unknown (it is then not retried).
pub use crate::call::codes::{DEADLINE_EXCEEDED, SEND_OUTCOME_UNKNOWN, UPSTREAM_UNAVAILABLE};

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

/// Methods that only read the node's state, so asking twice cannot do anything twice: the only
/// ones tried again on the same node when a connection closes before its answer.
fn is_read(method: &str) -> bool {
    method.starts_with("eth_get")
        || method.starts_with("net_")
        || matches!(
            method,
            "eth_call"
                | "eth_chainId"
                | "eth_blockNumber"
                | "eth_estimateGas"
                | "eth_gasPrice"
                | "eth_maxPriorityFeePerGas"
                | "eth_feeHistory"
                | "eth_blobBaseFee"
                | "eth_syncing"
                | "eth_accounts"
                | "eth_createAccessList"
                | "eth_simulateV1"
                | "web3_clientVersion"
        )
}

/// How to reach a validator instance's client: given by its driver, used by the gateway's
/// keymanager and beacon proxy.
#[derive(Clone)]
pub struct ValidatorAccess {
    /// The beacon node's REST API, `http://127.0.0.1:<port>`.
    pub beacon: String,
    /// The keymanager API, `http://127.0.0.1:<port>`.
    pub keymanager: String,
    /// The client's own keymanager token (never leaves ovsb).
    pub token: String,
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
    /// The node's round trip, against which an instance's call is slow (see [`budget::pace`]).
    round_trip: Arc<budget::RoundTrip>,
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
    /// The connection closed before any answer came. On a kept-alive connection that is most
    /// often one the node closed while it sat idle (or a node that just died): a read is tried
    /// once more on a new connection, which either answers or names the real cause (refused).
    Dropped(String),
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
                    round_trip: budget::RoundTrip::of(&uri.to_string()),
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

    /// Endpoint indexes in the order to try them: round-robin, healthy ones first, and among
    /// those that are up, the ones with a free turn of their cap of calls before the ones at
    /// their cap (a call waits for a busy node only when every node is busy).
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let (mut up, mut down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| self.endpoints[i].healthy.load(Ordering::Relaxed))
            .partition(|&i| self.endpoints[i].down_until_ms.load(Ordering::Relaxed) <= now);
        if up.len() > 1 {
            // A stable sort: round-robin order is kept within each group.
            up.sort_by_key(|&i| self.endpoints[i].calls.available_permits() == 0);
        }
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
            Ok(Err(AttemptError::NotSent(reason) | AttemptError::Failed(reason) | AttemptError::Dropped(reason))) => {
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
                Err(blamed(
                    rpc_error(
                        DEADLINE_EXCEEDED,
                        format!("the node did not answer within {} ms", self.deadline.as_millis()),
                    ),
                    Blame::Node,
                ))
            }
        }
    }

    async fn send_with_failover(&self, call: &Call) -> Outcome {
        if self.endpoints.is_empty() {
            return Err(blamed(rpc_error(UPSTREAM_UNAVAILABLE, "this instance has no upstream node"), Blame::Node));
        }
        let body = self.encode(call);
        let send = is_send(&call.method);
        let mut last = String::new();
        let order = self.order();
        let mut at_cap = None;
        for (tried, &index) in order.iter().enumerate() {
            let mut outcome = self.attempt(index, body.clone(), true).await;
            if is_read(&call.method) && matches!(outcome, Err(AttemptError::Dropped(_))) {
                outcome = self.attempt(index, body.clone(), true).await;
            }
            match outcome {
                Ok(outcome) => return outcome,
                // This node's cap of sockets is taken (not its failure: it stays in rotation);
                // another node may have room.
                Err(AttemptError::Refused(refusal @ Refusal::NodeSockets)) if tried + 1 < order.len() => {
                    at_cap = Some(refusal);
                }
                // Not the node's failure: no other node would do better.
                Err(AttemptError::Refused(refusal)) => return Err(refusal.error()),
                Err(AttemptError::NotSent(reason)) => {
                    crate::telemetry::metrics().upstream_error("connect");
                    self.mark_down(index);
                    last = reason;
                }
                Err(AttemptError::Failed(reason) | AttemptError::Dropped(reason)) => {
                    crate::telemetry::metrics().upstream_error("failed");
                    self.mark_down(index);
                    if send {
                        if let Some(suppressed) = UPSTREAM_FAILURES.admit() {
                            tracing::warn!(method = %call.method, suppressed, "upstream failed after a transaction was sent: {reason}");
                        }
                        return Err(blamed(
                            rpc_error(
                                SEND_OUTCOME_UNKNOWN,
                                "the node failed while handling the transaction; it may or may not have been accepted",
                            ),
                            Blame::Node,
                        ));
                    }
                    last = reason;
                }
            }
        }
        if let Some(refusal) = at_cap.filter(|_| last.is_empty()) {
            return Err(refusal.error());
        }
        if let Some(suppressed) = UPSTREAM_FAILURES.admit() {
            tracing::warn!(method = %call.method, suppressed, "no upstream answered: {last}");
        }
        // The cause, for the caller: what the last try met (never the node's address).
        let cause: String = last.chars().take(300).collect();
        Err(blamed(
            RpcError {
                code: UPSTREAM_UNAVAILABLE,
                message: "no upstream node is reachable".into(),
                data: Some(serde_json::json!({ "cause": cause }).to_string()),
            },
            Blame::Node,
        ))
    }

    /// The JSON-RPC request body, built around the raw params without re-encoding them.
    fn encode(&self, call: &Call) -> Bytes {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let params = call.params.as_deref().unwrap_or("[]");
        let mut body = Vec::with_capacity(64 + call.method.len() + params.len());
        body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        {
            use std::io::Write as _;
            let _ = write!(body, "{id}");
        }
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
        let mut turns = if capped {
            let mut turn = budget::upstream_turn(&endpoint.round_trip).await.map_err(AttemptError::Refused)?;
            let node = budget::node_turn(&endpoint.calls).await.map_err(AttemptError::Refused)?;
            turn.sent();
            Some((turn, node))
        } else {
            None
        };
        let sent = tokio::time::Instant::now();
        let mut request =
            http::Request::post(endpoint.uri.clone()).header(http::header::CONTENT_TYPE, "application/json");
        if let Some(Ok(id)) = crate::call::with_request_id(http::HeaderValue::from_str) {
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
            } else if closed_before_answer(&e) {
                AttemptError::Dropped(causes(&e))
            } else {
                AttemptError::Failed(causes(&e))
            }
        })?;
        let status = response.status();
        let body = self.read_answer(response).await?;
        // Every answered call is a sample of the node's round trip (a probe's too: the quickest
        // calls there are), whether or not its instance is paced.
        if !turns.as_mut().is_some_and(|(turn, _)| turn.answered()) {
            endpoint
                .round_trip
                .observe(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX), tokio::time::Instant::now());
        }
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

impl Upstream for UpstreamPool {
    fn call<'a>(&'a self, call: &'a Call) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.send(call))
    }
}

fn rpc_error(code: i32, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into(), data: None }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Reads a request's head from `socket` (its short body is left to the next read); false
    /// when the client closed first.
    async fn read_head(socket: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf[read..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => read += k,
            }
        }
        true
    }

    /// Writes a 200 whose JSON-RPC result is the string `result`, with `connection: close` when
    /// `close`.
    async fn write_answer(socket: &mut tokio::net::TcpStream, result: &str, close: bool) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{result}"}}"#);
        let connection = if close { "connection: close\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}\r\n",
            body.len()
        );
        socket.write_all(format!("{head}{body}").as_bytes()).await
    }

    /// A test double of a node (anvil cannot hold a call open on demand): it reads each call and
    /// answers `result` once `release` is notified (at once when `release` is `None`).
    async fn node_double(result: &'static str, release: Option<Arc<tokio::sync::Notify>>) -> http::Uri {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://127.0.0.1:{}/", listener.local_addr().unwrap().port()).parse().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let release = release.clone();
                tokio::spawn(async move {
                    while read_head(&mut socket).await {
                        if let Some(release) = &release {
                            release.notified().await;
                        }
                        if write_answer(&mut socket, result, false).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        uri
    }

    /// With two nodes and a cap of one call each, a call whose round-robin turn names the node
    /// that is busy goes to the free one, instead of waiting for the busy node's turn.
    #[tokio::test]
    async fn a_call_goes_to_a_node_with_room_before_one_at_its_cap() {
        let release = Arc::new(tokio::sync::Notify::new());
        let busy = node_double("busy", Some(release.clone())).await;
        let free = node_double("free", None).await;
        let pool = Arc::new(UpstreamPool::new(UpstreamSettings {
            http: vec![busy, free],
            ws: vec![],
            deadline: Duration::from_secs(3),
            max_response_bytes: 1024,
            max_sockets_per_node: 1,
        }));
        let held = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(&Call { method: "eth_blockNumber".into(), params: None }).await })
        };
        while pool.in_flight(0) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Round-robin names the free node next, then the busy one: both calls go to the free one.
        for _ in 0..2 {
            let answer = pool.send(&Call { method: "eth_blockNumber".into(), params: None }).await;
            assert_eq!(answer, Ok("\"free\"".into()), "the busy node is at its cap");
        }
        release.notify_one();
        assert_eq!(held.await.unwrap(), Ok("\"busy\"".into()));
    }

    /// A node that closes a connection after reading a call, without answering (a kept-alive
    /// socket it dropped, or a node that just died): a read is asked again on a new connection and
    /// answered; a transaction is not sent twice.
    #[tokio::test]
    async fn a_read_is_asked_again_once_when_the_connection_closes_before_the_answer() {
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        // Every odd connection reads the request and closes; every even one answers.
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if read_head(&mut socket).await && n % 2 == 1 {
                    let _ = write_answer(&mut socket, "0x7a69", true).await;
                }
            }
        });
        let pool = || {
            UpstreamPool::new(UpstreamSettings {
                http: vec![format!("http://127.0.0.1:{port}/").parse().unwrap()],
                ws: vec![],
                deadline: Duration::from_secs(5),
                max_response_bytes: 1024,
                max_sockets_per_node: 4,
            })
        };
        let read = pool().send(&Call { method: "eth_chainId".into(), params: None }).await;
        assert_eq!(read, Ok("\"0x7a69\"".into()));
        assert_eq!(connections.load(Ordering::SeqCst), 2, "asked once more, on a new connection");

        let sent =
            pool().send(&Call { method: "eth_sendRawTransaction".into(), params: Some("[\"0x00\"]".into()) }).await;
        assert_eq!(sent.unwrap_err().code, SEND_OUTCOME_UNKNOWN);
        assert_eq!(connections.load(Ordering::SeqCst), 3, "a transaction is never sent twice");

        let mined = pool().send(&Call { method: "evm_mine".into(), params: None }).await;
        assert_eq!(mined, Ok("\"0x7a69\"".into()), "the fourth connection answers");
        let again = pool().send(&Call { method: "evm_mine".into(), params: None }).await;
        assert_eq!(again.unwrap_err().code, UPSTREAM_UNAVAILABLE, "a call that changes state is not asked twice");
        assert_eq!(connections.load(Ordering::SeqCst), 5);
    }
}
