//! # The JSON-RPC data plane
//!
//! One listener serves every instance's endpoint, HTTP and WebSocket on the same port. A caller
//! proves which binding it is with the binding key, either in the path (`/v1/<key>`, works with
//! no headers, like hosted RPC providers' URLs) or as `Authorization: Bearer <key>`. The key
//! selects a [`Route`] from the in-memory [`Routes`] snapshot (no store query per request); the
//! call then runs through the instance's plugin chain to its [`UpstreamPool`].
//!
//! The stack, outermost first:
//! 1. accept loop: connection cap (HTTP 429 with a JSON-RPC error past it);
//! 2. front service: key from path or header, 401 with a JSON-RPC error if unknown;
//! 3. jsonrpsee: HTTP/WS, parsing (-32700, -32600), body-size (413) and batch-size limits;
//! 4. [`rpc`] middleware: route re-check per call (revocation), chain, deadline, response.
//!
//! Validator instances also have their keymanager and beacon APIs here (`/keymanager/…`,
//! `/beacon/<key>/…`), behind per-binding credentials: see [`validator_proxy`].
//!
//! It must not: query the store, hold a lock across an await, or log keys.

pub mod errors;
pub mod routes;
mod rpc;
pub mod upstream;
mod validator_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{
    BatchRequestConfig, HttpBody, HttpRequest, HttpResponse, Server, ServerConfig, serve_with_graceful_shutdown,
    stop_channel,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use routes::{InstanceRoute, KeyDigest, Route, RouteTable, Routes, ValidatorRoute, key_digest, new_key};
pub use upstream::{UpstreamPool, UpstreamSettings};

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
    /// Most connections open at once (HTTP keep-alive and WebSocket alike).
    pub max_connections: u32,
    /// Most subscriptions on one WebSocket connection.
    pub max_subscriptions_per_connection: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_request_bytes: 1 << 20,
            max_response_bytes: 32 << 20,
            max_batch: 100,
            max_connections: 1024,
            max_subscriptions_per_connection: 64,
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
    let local: SocketAddr = listener.local_addr()?;
    let state = Arc::new(RpcState {
        routes: routes.clone(),
        max_response_bytes: config.max_response_bytes as usize,
        request_ids: AtomicU64::new(1),
        id_prefix: format!("{:x}", std::process::id()),
    });
    let methods = rpc::subscription_module(state.clone());
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
    let proxy = validator_proxy::Proxy::new(routes.clone(), config.max_response_bytes as usize);
    let (stop_handle, server_handle) = stop_channel();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections as usize));
    let tracker = TaskTracker::new();
    tracing::info!(%local, "gateway listening");

    loop {
        let socket = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("gateway accept failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let permit = connections.clone().try_acquire_owned().ok();
        let jsonrpc = builder.clone().build(methods.clone(), stop_handle.clone());
        let routes = routes.clone();
        let proxy = proxy.clone();
        let stopped = stop_handle.clone().shutdown();
        tracker.spawn(async move {
            let over_limit = permit.is_none();
            let service = tower::service_fn(move |mut request: HttpRequest<hyper::body::Incoming>| -> BoxedResponse {
                if over_limit {
                    let status = http::StatusCode::TOO_MANY_REQUESTS;
                    return Box::pin(std::future::ready(Ok(json_error(
                        status,
                        errors::LIMIT_EXCEEDED,
                        "too many connections; retry later",
                    ))));
                }
                if validator_proxy::handles(request.uri().path()) {
                    let proxy = proxy.clone();
                    return Box::pin(async move { Ok(proxy.handle(request).await) });
                }
                match authenticate(&request, &routes) {
                    Ok(caller) => {
                        request.extensions_mut().insert(caller);
                        let mut jsonrpc = jsonrpc.clone();
                        Box::pin(async move {
                            tower::Service::call(&mut jsonrpc, request).await.map_err(|e| anyhow::anyhow!("{e}"))
                        })
                    }
                    Err(message) => Box::pin(std::future::ready(Ok(unauthorized(message)))),
                }
            });
            if let Err(err) = serve_with_graceful_shutdown(socket, service, stopped).await {
                tracing::debug!("gateway connection ended with an error: {err}");
            }
            drop(permit);
        });
    }

    let _ = server_handle.stop();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Result<HttpResponse, anyhow::Error>> + Send + 'static>>;

/// The caller's key, if it opens a route; else the message of the 401 to send.
fn authenticate<B>(request: &HttpRequest<B>, routes: &Routes) -> Result<Caller, &'static str> {
    let Some(key) = key_of(request) else {
        return Err("missing API key: use /v1/<key> or the header `Authorization: Bearer <key>`");
    };
    let digest = key_digest(key);
    if routes.lookup_digest(&digest).is_none() {
        return Err("unknown or revoked API key");
    }
    Ok(Caller(digest))
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
