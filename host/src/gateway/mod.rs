//! # The JSON-RPC data plane
//!
//! One listener serves every instance's endpoint, HTTP and WebSocket on the same port. A caller
//! proves which binding it is with the binding key, either in the path (`/v1/<key>`, works with
//! no headers, like hosted RPC providers' URLs) or as `Authorization: Bearer <key>`. The key
//! selects a [`Route`] from the in-memory [`Routes`] snapshot (no store query per request); the
//! call then runs through the instance's plugin chain to its [`UpstreamPool`].
//!
//! The stack, outermost first:
//! 1. accept loop: [`connections::Admission`] takes a ticket per connection for its whole life
//!    (WebSocket included), per source address, per key and in all; past a limit the client
//!    gets HTTP 429 with a JSON-RPC error. A connection without a valid key is closed after
//!    `anonymous_timeout`, or earlier when a newcomer (of the gateway, or of its source address)
//!    needs its slot; a keyed one is closed when its key is revoked or expires. Headers must arrive
//!    within `header_timeout` (also the keep-alive idle time), bodies within `body_timeout`,
//!    and a declared `Content-Length` over the limit is refused (413) before the body is read;
//!    The socket is a [`revocable::Revocable`]: once it carries a WebSocket, it closes it with
//!    code 4001 when the key the WebSocket was opened with is revoked, and with the code a
//!    subscription gives when one ends for a reason ([`subscriptions`]: 4008, 1012);
//! 2. front service: CORS preflights ([`cors`]), key from path or header (401 with a JSON-RPC
//!    error if unknown); an HTTP JSON body is read and its ids checked ([`ids`]: ids jsonrpsee
//!    cannot hold are answered there, not taken for notifications); `[]` gets -32600, and an
//!    answer to notifications only becomes HTTP 204 with no body; a single call (not a batch,
//!    not a notification, not a subscription method) is answered there, on the lean path
//!    ([`post`]), by the same per-call work as 4., and never reaches jsonrpsee;
//! 3. jsonrpsee: HTTP/WS, parsing (-32700, -32600), body-size (413) and batch-size limits;
//! 4. [`rpc`] middleware (its [`rpc::answer`], shared with the lean path): route re-check per
//!    call (revocation), the request's budget
//!    ([`crate::budget`]: answer bytes counted as they arrive, batches run a bounded number of
//!    entries at a time and are cut short past the response limit), the plan's method rules and
//!    the binding's allowlist ([`allowlist`]), chain, deadline, response; every call that
//!    reaches the node on a binding's behalf (the chain's forward, plugins' `upstream` imports)
//!    passes the same rules again at the node boundary ([`guard`]); `eth_subscribe` takes a slot
//!    and is relayed by [`subscriptions`] over the instance's one node socket, identical ones
//!    sharing one subscription at the node ([`fanout`]); subscriptions end
//!    when their key is revoked.
//!
//! Validator instances also have their keymanager and beacon APIs here (`/keymanager/…`,
//! `/beacon/<key>/…`), behind per-binding credentials: see [`validator_proxy`].
//!
//! It must not: query the store, hold a lock across an await, or log keys.

pub mod allowlist;
pub mod body;
pub mod connections;
mod cors;
pub mod errors;
mod fanout;
mod guard;
mod ids;
mod in_process;
mod post;
pub mod revocable;
pub mod routes;
mod rpc;
pub mod subscriptions;
mod validator_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{BatchRequestConfig, HttpBody, HttpRequest, HttpResponse, Server, ServerConfig, stop_channel};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{GatewayBudget, GatewayLimits};
use body::{Clock, Timed};
use connections::{Admission, AdmissionLimits, Counted, Refused, Ticket};
use post::{call, http_call};
use revocable::{Revocable, RevocationWatch};

pub use in_process::InProcess;
pub use subscriptions::SubscriptionLimits;

pub use crate::upstream::{UpstreamPool, UpstreamSettings};
pub use routes::{Access, InstanceRoute, KeyDigest, Route, RouteTable, Routes, ValidatorRoute, key_digest, new_key};

use rpc::{Caller, ChainLayer, HexIdProvider, RpcState};

/// Limits of the gateway. Every one is bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Largest request body (HTTP) or message (WebSocket), in bytes.
    pub max_request_bytes: u32,
    /// Largest response, in bytes.
    pub max_response_bytes: u32,
    /// Most calls in one batch.
    pub max_batch: u32,
    /// Most connections open at once (HTTP keep-alive and WebSocket alike), lowered at start
    /// to fit the descriptor limit (see [`connections::connection_budget`]).
    pub max_connections: u32,
    /// Most connections from one source address.
    pub max_connections_per_source: u32,
    /// Most connections carrying one key.
    pub max_connections_per_key: u32,
    /// Most connections carrying the keys of one instance together.
    pub max_connections_per_instance: u32,
    /// Time a connection has to send a request with a valid key.
    pub anonymous_timeout: Duration,
    /// Time a client has to send a request's headers; also the keep-alive idle time.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// Descriptors the gateway leaves to the rest of the process.
    pub fd_reserve: u32,
    /// Most subscriptions on one WebSocket connection.
    pub max_subscriptions_per_connection: u32,
    /// Subscriptions in all, per instance and per key, and each one's buffer at the node socket.
    pub subscriptions: SubscriptionLimits,
    /// Answer bytes all requests may hold at once (see [`crate::budget`]).
    pub answer_bytes_in_flight: usize,
    /// Entries of one batch running at once.
    pub batch_concurrency: u32,
    /// Longest a call waits for answer bytes in flight or an upstream turn.
    pub queue: Duration,
    /// Whether a single call over HTTP is answered by the gateway's lean path (see `post`) rather
    /// than through jsonrpsee's server; both give the same answers. Off only to compare them.
    pub lean_single_calls: bool,
}

impl GatewayConfig {
    /// The limits of the gateway's [`GatewayBudget`], with `upstream_calls` calls to nodes at once.
    pub fn budget_limits(&self, upstream_calls: usize) -> GatewayLimits {
        GatewayLimits {
            response_bytes: self.max_response_bytes as usize,
            answer_bytes_in_flight: self.answer_bytes_in_flight,
            upstream_calls,
            queue: self.queue,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_request_bytes: 1 << 20,
            max_response_bytes: 32 << 20,
            max_batch: 1000,
            max_connections: 8192,
            max_connections_per_source: 512,
            max_connections_per_key: 512,
            max_connections_per_instance: 2048,
            anonymous_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            fd_reserve: 256,
            max_subscriptions_per_connection: 64,
            subscriptions: SubscriptionLimits::default(),
            answer_bytes_in_flight: 128 << 20,
            batch_concurrency: 16,
            queue: Duration::from_secs(1),
            lean_single_calls: true,
        }
    }
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish, and returns.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    routes: Arc<Routes>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let budget = connections::connection_budget(config.max_connections, config.fd_reserve);
    // Each connection may have one call at a node: what the descriptor budget set aside.
    let requests = GatewayBudget::new(config.budget_limits(budget as usize));
    serve_within(listener, config, routes, requests, budget, shutdown).await
}

/// [`serve`] with the requests' budget given (tests read its figures).
pub async fn serve_with_budget(
    listener: TcpListener,
    config: GatewayConfig,
    routes: Arc<Routes>,
    requests: Arc<GatewayBudget>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let budget = connections::connection_budget(config.max_connections, config.fd_reserve);
    serve_within(listener, config, routes, requests, budget, shutdown).await
}

async fn serve_within(
    listener: TcpListener,
    config: GatewayConfig,
    routes: Arc<Routes>,
    requests: Arc<GatewayBudget>,
    budget: u32,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let local: SocketAddr = listener.local_addr()?;
    // Every task of the gateway: connections, refusals, the node subscriptions' pumps.
    let tracker = TaskTracker::new();
    let state = RpcState::new(routes.clone(), &config, requests.clone(), tracker.clone());
    let methods = rpc::subscription_module(state.clone());
    let rpc_state = state.clone();
    let server_config = ServerConfig::builder()
        .max_request_body_size(config.max_request_bytes)
        .max_response_body_size(config.max_response_bytes)
        // The accept loop enforces the connection cap with a JSON-RPC error body.
        .max_connections(u32::MAX)
        .max_subscriptions_per_connection(config.max_subscriptions_per_connection)
        .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch))
        .set_id_provider(HexIdProvider)
        .build();
    let builder = Server::builder()
        .set_config(server_config)
        .set_rpc_middleware(RpcServiceBuilder::new().layer(ChainLayer(state)))
        .to_service_builder();
    let proxy = validator_proxy::Proxy::new(routes.clone(), config.max_response_bytes as usize, config.body_timeout);
    let (stop_handle, server_handle) = stop_channel();
    let sockets = OpenSockets::default();
    let admission = Admission::new(AdmissionLimits {
        total: budget,
        per_source: config.max_connections_per_source.min(budget),
        per_key: config.max_connections_per_key.min(budget),
        per_instance: config.max_connections_per_instance.min(budget),
    });
    // Refused connections get their 429 while few are being refused; past that they are closed
    // at once, so a flood of refusals cannot hold descriptors either.
    let refusals = Arc::new(tokio::sync::Semaphore::new(64));
    // HTTP/1.1 only (what JSON-RPC clients speak): an HTTP/2 connection would carry many calls
    // at once, each with its own upstream socket, past the descriptor budget.
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    http.http1().timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    let accept_failures = crate::telemetry::LogThrottle::new(Duration::from_secs(1));
    tracing::info!(%local, max_connections = budget, "gateway listening");

    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if let Some(suppressed) = accept_failures.admit() {
                        tracing::warn!(suppressed, "gateway accept failed: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                crate::telemetry::metrics().record_connection_refused(refused.reason());
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tracker.spawn(async move {
                        refuse(socket, refused).await;
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let watch = Arc::new(RevocationWatch::default());
        sockets.add(&watch);
        let front = Front {
            jsonrpc: builder.clone().build(methods.clone(), stop_handle.clone()),
            connection: Arc::new(FrontConnection {
                routes: routes.clone(),
                proxy: proxy.clone(),
                ticket: ticket.clone(),
                watch: watch.clone(),
                max_request_bytes: config.max_request_bytes,
                max_response_bytes: config.max_response_bytes,
                max_batch: config.max_batch,
                body_timeout: config.body_timeout,
                budget: requests.clone(),
                batch_concurrency: config.batch_concurrency.max(1) as usize,
                rpc: rpc_state.clone(),
                lean: config.lean_single_calls,
            }),
        };
        let stopped = stop_handle.clone().shutdown();
        let (http, anonymous_timeout) = (http.clone(), config.anonymous_timeout);
        tracker.spawn(async move {
            let io = TokioIo::new(Revocable::new(Counted::new(socket, ticket.clone()), watch));
            let service = tower::service_fn(move |request| front.clone().serve(request));
            let connection = http.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
            tokio::pin!(connection, stopped);
            let anonymous = async {
                tokio::time::sleep(anonymous_timeout).await;
                if ticket.keyed() {
                    std::future::pending::<()>().await;
                }
            };
            let served = tokio::select! {
                served = connection.as_mut() => served,
                _ = &mut stopped => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                // Closing: the connection is dropped, and its socket with it.
                _ = ticket.evicted().cancelled() => Ok(()),
                // Its key was revoked or expired: the request in progress (if any) is answered,
                // then the connection closes and its slot comes back. (A WebSocket has left
                // this task at its upgrade: its socket closes it, see `revocable`.)
                _ = ticket.key_gone() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(revocable::CLOSE_GRACE, connection.as_mut()).await;
                    Ok(())
                }
                _ = anonymous => Ok(()),
            };
            if let Err(err) = served {
                tracing::debug!("gateway connection ended with an error: {err}");
            }
        });
    }

    // WebSockets end with 1001 "going away" and a reason (jsonrpsee's own close is 1000 with
    // none), before the server stops; the frames get a moment to go out first.
    let going_away = sockets.end_websockets();
    if going_away > 0 {
        tracing::info!(websockets = going_away, "shutting down: closing the open WebSockets with 1001 (going away)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = server_handle.stop();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The sockets of the gateway's live connections, to end their WebSockets at shutdown.
#[derive(Default)]
struct OpenSockets {
    watches: std::sync::Mutex<Vec<std::sync::Weak<RevocationWatch>>>,
}

impl OpenSockets {
    /// Adds a connection's watch; forgets the ended ones whenever the list has doubled.
    fn add(&self, watch: &Arc<RevocationWatch>) {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if watches.len() >= 64 && watches.len().is_power_of_two() {
            watches.retain(|w| w.strong_count() > 0);
        }
        watches.push(Arc::downgrade(watch));
    }

    /// Ends every open WebSocket with [`revocable::GOING_AWAY_CLOSE_CODE`]; how many.
    fn end_websockets(&self) -> usize {
        let watches = std::mem::take(&mut *self.watches.lock().unwrap_or_else(|p| p.into_inner()));
        let mut ended = 0;
        for watch in watches.iter().filter_map(std::sync::Weak::upgrade).filter(|w| w.armed()) {
            watch.end(revocable::Ending {
                code: revocable::GOING_AWAY_CLOSE_CODE,
                reason: revocable::GOING_AWAY_CLOSE_REASON.to_string(),
                grace: revocable::CLOSE_GRACE,
            });
            ended += 1;
        }
        ended
    }
}

/// Answers a refused connection's first request with 429 and closes it, within a second or two.
async fn refuse(socket: TcpStream, refused: Refused) {
    let service = tower::service_fn(move |_request: HttpRequest<hyper::body::Incoming>| {
        let mut response = limit_error(refused);
        response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        std::future::ready(Ok::<_, std::convert::Infallible>(response))
    });
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(1)).keep_alive(false);
    let connection = http.serve_connection(TokioIo::new(socket), TowerToHyperService::new(service));
    let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
}

/// HTTP 429 with a JSON-RPC error naming the limit.
fn limit_error(refused: Refused) -> HttpResponse {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": null,
        "error": {"code": errors::LIMIT_EXCEEDED, "message": refused.message(), "data": {"reason": refused.reason()}},
    });
    let mut response = HttpResponse::new(HttpBody::from(body.to_string()));
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    response
}

/// The front service of one connection: limits on the request itself, then key → jsonrpsee, or
/// the validator proxy.
#[derive(Clone)]
struct Front<J> {
    jsonrpc: J,
    /// What the connection's requests share (one clone per request, not one per field).
    connection: Arc<FrontConnection>,
}

struct FrontConnection {
    routes: Arc<Routes>,
    proxy: validator_proxy::Proxy,
    ticket: Arc<Ticket>,
    /// Armed when the connection becomes a WebSocket: its socket closes when the key goes.
    watch: Arc<RevocationWatch>,
    max_request_bytes: u32,
    max_response_bytes: u32,
    max_batch: u32,
    body_timeout: Duration,
    /// What requests may hold (the rare path of [`answer_each`] charges it as jsonrpsee does).
    budget: Arc<GatewayBudget>,
    batch_concurrency: usize,
    /// What jsonrpsee's middleware has, for the lean path of a single call ([`post`]).
    rpc: Arc<RpcState>,
    /// Whether single calls take the lean path.
    lean: bool,
}

/// The body jsonrpsee gets: the request's own (WebSocket upgrades, and what is not a JSON POST)
/// or the body the front service read to look at its ids.
type FrontBody = http_body_util::Either<Timed<hyper::body::Incoming>, http_body_util::Full<bytes::Bytes>>;

impl<J> Front<J>
where
    J: tower::Service<HttpRequest<FrontBody>, Response = HttpResponse> + Clone + Send + 'static,
    J::Future: Send,
    J::Error: std::fmt::Display,
{
    fn serve(self, mut request: HttpRequest<hyper::body::Incoming>) -> BoxedResponse {
        let Front { jsonrpc, connection } = self;
        if let Some(declared) = declared_length(&request)
            && declared > u64::from(connection.max_request_bytes)
        {
            let message = format!("the request body is over the limit of {} bytes", connection.max_request_bytes);
            let mut response = json_error(http::StatusCode::PAYLOAD_TOO_LARGE, errors::OVERSIZE, &message);
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            return Box::pin(std::future::ready(Ok(response)));
        }
        if validator_proxy::handles(request.uri().path()) {
            return Box::pin(async move { Ok(connection.proxy.handle(request, &connection.ticket).await) });
        }
        let cors = request.headers().contains_key(http::header::ORIGIN);
        if request.method() == http::Method::OPTIONS {
            return Box::pin(std::future::ready(Ok(cors::preflight())));
        }
        let (digest, allowlist) = match authenticate(&request, &connection.routes) {
            Ok(caller) => caller,
            Err(message) => return Box::pin(std::future::ready(Ok(cors::allow(unauthorized(message), cors)))),
        };
        if let Some(allowlist) = &allowlist
            && let Err(refusal) = allowlist.check_origin(request.headers().get(http::header::ORIGIN))
        {
            // No CORS header: the page may not read the answer either.
            return Box::pin(std::future::ready(Ok(json_error(
                http::StatusCode::FORBIDDEN,
                refusal.code,
                refusal.message,
            ))));
        }
        if !connection.ticket.keyed() {
            // Once per connection: counted under the key and its instance, and ended when the
            // key goes.
            let access = connection.routes.access(&digest);
            let instance = access.as_ref().map(|access| &access.route.instance.instance_id);
            if let Err(refused) = connection.ticket.present_key_of(&digest, instance) {
                return Box::pin(std::future::ready(Ok(cors::allow(limit_error(refused), cors))));
            }
            watch_key(&connection.ticket, access);
        }
        // A WebSocket outlives this request: it waits on the key's revocation token.
        let revoked = if is_websocket_upgrade(&request) {
            let Some(revoked) = connection.routes.revocation(&digest) else {
                return Box::pin(std::future::ready(Ok(unauthorized("unknown or revoked API key"))));
            };
            Some(revoked)
        } else {
            None
        };
        let websocket = revoked.is_some();
        let watch = websocket.then(|| connection.watch.clone());
        // Over HTTP, under a quota: the calls say whether they were all refused for it (429).
        let quota = (!websocket
            && connection.routes.lookup_digest(&digest).is_some_and(|route| route.instance.usage.plan.quota.is_some()))
        .then(|| Arc::new(rpc::QuotaSignal::default()));
        request.extensions_mut().insert(Caller { digest, websocket, allowlist, watch, quota: quota.clone() });
        let timeout = connection.body_timeout;
        let request =
            request.map(|body| Timed::new(body, Clock::Total(timeout), "the request body did not arrive in time"));
        Box::pin(async move {
            if let Some(revoked) = revoked {
                let response = call(jsonrpc, request.map(http_body_util::Either::Left)).await?;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // From here on the socket carries this key's WebSocket: it ends when the key goes.
                    let expires_ms = connection.routes.lookup_digest(&digest).and_then(|route| route.expires_ms);
                    connection.watch.arm(revoked, expires_ms);
                }
                return Ok(response);
            }
            let mut response = http_call(jsonrpc, &connection, request).await?;
            if let Some(retry_after_ms) = quota.and_then(|quota| quota.all_refused()) {
                *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                let seconds = retry_after_ms.div_ceil(1000).max(1);
                response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
            }
            Ok(cors::allow(response, cors))
        })
    }
}

/// Has the connection's ticket watch `digest`'s revocation and expiry (a key revoked a moment
/// ago ends the connection at once).
fn watch_key(ticket: &Ticket, access: Option<Access>) {
    let Some(access) = access else {
        let gone = tokio_util::sync::CancellationToken::new();
        gone.cancel();
        ticket.watch_key(gone, None);
        return;
    };
    ticket.watch_key(access.revoked, access.route.expires_ms);
}

/// Whether the request asks for a WebSocket.
fn is_websocket_upgrade<B>(request: &HttpRequest<B>) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The request's declared `Content-Length`, if any.
fn declared_length<B>(request: &HttpRequest<B>) -> Option<u64> {
    request.headers().get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, anyhow::Error>> + Send + 'static>>;

/// The caller's key (by digest) and its binding's allowlist, if it opens a route; else the
/// message of the 401 to send.
fn authenticate<B>(
    request: &HttpRequest<B>,
    routes: &Routes,
) -> Result<(KeyDigest, Option<Arc<allowlist::Allowlist>>), &'static str> {
    let Some(key) = key_of(request) else {
        return Err("missing API key: use /v1/<key> or the header `Authorization: Bearer <key>`");
    };
    let digest = key_digest(key);
    let Some(allowlist) = routes.lookup_allowlist(&digest) else {
        return Err("unknown or revoked API key");
    };
    Ok((digest, allowlist))
}

/// The key from the path (`/v1/<key>`), else from `Authorization: Bearer <key>`.
fn key_of<B>(request: &HttpRequest<B>) -> Option<&str> {
    let path = request.uri().path().trim_end_matches('/');
    if let Some(key) = path.strip_prefix("/v1/").filter(|key| !key.is_empty() && !key.contains('/')) {
        return Some(key);
    }
    let header = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = header.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty()).then(|| key.trim())
}

fn unauthorized(message: &str) -> HttpResponse {
    let mut response = json_error(http::StatusCode::UNAUTHORIZED, errors::UNAUTHORIZED, message);
    response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    response
}

fn json_error(status: http::StatusCode, code: i32, message: &str) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(errors::error_body(code, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, auth: Option<&str>) -> HttpRequest<()> {
        let mut builder = http::Request::get(path);
        if let Some(auth) = auth {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_key_comes_from_the_path_or_the_bearer_header() {
        assert_eq!(key_of(&request("/v1/abc", None)), Some("abc"));
        assert_eq!(key_of(&request("/v1/abc/", None)), Some("abc"));
        assert_eq!(key_of(&request("/", Some("Bearer xyz"))), Some("xyz"));
        assert_eq!(key_of(&request("/v1", Some("bearer xyz"))), Some("xyz"));
        assert_eq!(key_of(&request("/v1/abc", Some("Bearer xyz"))), Some("abc"), "the path wins");
        assert_eq!(key_of(&request("/", Some("Basic dXNlcjpwdw=="))), None);
        assert_eq!(key_of(&request("/", Some("Bearer "))), None);
        assert_eq!(key_of(&request("/v1/a/b", None)), None);
        assert_eq!(key_of(&request("/", None)), None);
    }
}
