//! The validator endpoints of the gateway: an instance's keymanager API and beacon API, behind
//! ovsb's own per-binding credentials.
//!
//! - `/keymanager/eth/v1/…` with `Authorization: Bearer <keymanager_token>` (a binding's
//!   token; 401 when missing, 403 when unknown or revoked). ovsb forwards to the client's
//!   keymanager with the client's own token, which never leaves ovsb. Lists show the instance's
//!   keys only; per-key settings (`feerecipient`, `gas_limit`, `graffiti`) work on the
//!   instance's keys only; adding and deleting keys is refused (403): keys come and go
//!   through the broker, which claims each key for one instance and keeps the
//!   slashing-protection history a deletion exports.
//! - `/beacon/<binding key>/eth/…`: the beacon node's REST API, read-only (GET). Answers are
//!   streamed as they come (server-sent events such as `/eth/v1/events` included), each
//!   stream ended if the beacon node goes quiet for [`BEACON_IDLE`], and when the binding key
//!   in its URL is revoked (unbind, deprovision) or expires; answers that are not event streams
//!   are bounded by the response limit.
//!
//! Like the JSON-RPC path, it reads only the routing snapshot: no store query.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use serde_json::{Value, json};

use super::body::{Clock, Timed, TimedOut, UntilRevoked};
use super::connections::Ticket;
use super::routes::{KeyDigest, Route, Routes, key_digest};
use tokio_util::sync::CancellationToken;

/// Largest request body forwarded to a keymanager (per-key settings are tiny).
const MAX_REQUEST_BYTES: usize = 64 << 10;
/// A beacon answer (an event stream above all) that sends nothing for this long is ended.
/// Lodestar sends a head event every slot; clients reconnect an ended stream.
pub const BEACON_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether the path is one of this module's.
pub fn handles(path: &str) -> bool {
    path == "/keymanager" || path.starts_with("/keymanager/") || path.starts_with("/beacon/")
}

/// The HTTP client the proxy forwards with (pooled, loopback).
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    routes: Arc<Routes>,
    max_response_bytes: usize,
    body_timeout: std::time::Duration,
}

impl Proxy {
    /// A proxy that finds instances in `routes`.
    pub fn new(routes: Arc<Routes>, max_response_bytes: usize, body_timeout: std::time::Duration) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Proxy { client, routes, max_response_bytes, body_timeout }
    }

    /// Answers one request on the connection of `ticket` (which a valid credential keys).
    pub async fn handle(&self, request: HttpRequest<hyper::body::Incoming>, ticket: &Ticket) -> HttpResponse {
        let path = request.uri().path().to_string();
        let result = if let Some(rest) = path.strip_prefix("/beacon/") {
            self.beacon(rest, request, ticket).await
        } else {
            self.keymanager(path.trim_start_matches("/keymanager").to_string(), request, ticket).await
        };
        result.unwrap_or_else(|(status, message)| error(status, &message))
    }

    async fn beacon(
        &self,
        rest: &str,
        request: HttpRequest<hyper::body::Incoming>,
        ticket: &Ticket,
    ) -> Result<HttpResponse, Failure> {
        let (key, api_path) = rest.split_once('/').map_or((rest, ""), |(k, p)| (k, p));
        let digest = key_digest(key);
        let super::Access { route, revoked, .. } =
            self.routes.access(&digest).ok_or((StatusCode::UNAUTHORIZED, "unknown or revoked key".to_string()))?;
        present(ticket, &digest, &route, revoked.clone())?;
        let validator = route.instance.validator.as_ref().ok_or((StatusCode::NOT_FOUND, not_validator()))?;
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Err((StatusCode::METHOD_NOT_ALLOWED, "the beacon API is read-only here (GET)".into()));
        }
        let access = (validator.access)().ok_or((StatusCode::SERVICE_UNAVAILABLE, client_down()))?;
        let target = format!("{}/{}{}", access.beacon, api_path, query(&request));
        let mut upstream = http::Request::builder().method(request.method().clone()).uri(&target);
        if let Some(accept) = request.headers().get(header::ACCEPT) {
            upstream = upstream.header(header::ACCEPT, accept);
        }
        let upstream = upstream
            .body(Full::new(Bytes::new()))
            .map_err(|_| (StatusCode::BAD_REQUEST, "the request path cannot be forwarded".to_string()))?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), self.client.request(upstream))
            .await
            .map_err(|_| (StatusCode::GATEWAY_TIMEOUT, "the beacon node did not answer in 30 s".to_string()))?
            .map_err(|_| (StatusCode::BAD_GATEWAY, client_down()))?;
        let (parts, body) = response.into_parts();
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_response_bytes) {
            return Err((StatusCode::BAD_GATEWAY, "the beacon node's answer is too large".to_string()));
        }
        let streaming = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = Timed::new(body, Clock::Idle(BEACON_IDLE), "the beacon node went quiet");
        let body = if streaming {
            // An event stream lives as long as its key: it ends when the key is revoked or expires.
            HttpBody::new(UntilRevoked::new(body, revoked, route.expires_ms))
        } else {
            HttpBody::new(Limited::new(body, self.max_response_bytes))
        };
        let mut answer = HttpResponse::new(body);
        *answer.status_mut() = parts.status;
        for name in [header::CONTENT_TYPE, header::CACHE_CONTROL, header::CONTENT_LENGTH] {
            if let Some(value) = parts.headers.get(&name) {
                answer.headers_mut().insert(name, value.clone());
            }
        }
        Ok(answer)
    }

    async fn keymanager(
        &self,
        api_path: String,
        request: HttpRequest<hyper::body::Incoming>,
        ticket: &Ticket,
    ) -> Result<HttpResponse, Failure> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .map(|(_, token)| token.trim().to_string())
            .ok_or((
                StatusCode::UNAUTHORIZED,
                "missing keymanager token: `Authorization: Bearer <keymanager_token>`".into(),
            ))?;
        let digest = key_digest(&token);
        let route = self
            .routes
            .lookup_keymanager(&digest)
            .ok_or((StatusCode::FORBIDDEN, "unknown or revoked keymanager token".to_string()))?;
        let revoked = self
            .routes
            .revocation(&digest)
            .ok_or((StatusCode::FORBIDDEN, "unknown or revoked keymanager token".to_string()))?;
        present(ticket, &digest, &route, revoked)?;
        let validator = route.instance.validator.as_ref().ok_or((StatusCode::NOT_FOUND, not_validator()))?;
        let method = request.method().clone();
        let segments: Vec<&str> = api_path.trim_matches('/').split('/').collect();
        let list = match (&method, segments.as_slice()) {
            (&Method::GET, ["eth", "v1", "keystores" | "remotekeys"]) => true,
            (_, ["eth", "v1", "keystores" | "remotekeys"]) => {
                return Err((
                    StatusCode::FORBIDDEN,
                    "keys are added and removed through the broker (update the instance with keystores or remove_keys), \
                     so that each key is in one client only and its slashing-protection history is kept"
                        .into(),
                ));
            }
            (
                &Method::GET | &Method::POST,
                ["eth", "v1", "validator", pubkey, "feerecipient" | "gas_limit" | "graffiti"],
            ) => {
                if !validator.pubkeys.contains(&pubkey.to_ascii_lowercase()) {
                    return Err((StatusCode::FORBIDDEN, format!("{pubkey} is not a key of this instance")));
                }
                false
            }
            (_, ["eth", "v1", "validator", _, "feerecipient" | "gas_limit" | "graffiti"]) => {
                return Err((
                    StatusCode::METHOD_NOT_ALLOWED,
                    "per-key settings can be read (GET) and set (POST) here; the instance's defaults come from the broker".into(),
                ));
            }
            _ => return Err((StatusCode::NOT_FOUND, format!("no keymanager route {method} {api_path}"))),
        };
        let body = Limited::new(
            Timed::new(request.into_body(), Clock::Total(self.body_timeout), "the request body did not arrive in time"),
            MAX_REQUEST_BYTES,
        )
        .collect()
        .await
        .map_err(|err| match err.downcast_ref::<TimedOut>() {
            Some(late) => (StatusCode::REQUEST_TIMEOUT, late.to_string()),
            None => (StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_REQUEST_BYTES} bytes")),
        })?
        .to_bytes();
        let access = (validator.access)().ok_or((StatusCode::SERVICE_UNAVAILABLE, client_down()))?;
        let target = format!("{}{}", access.keymanager, api_path);
        let (status, content_type, body) = self.forward(method, &target, Some(&access.token), body).await?;
        if !(list && status.is_success()) {
            return Ok(respond(status, content_type, body));
        }
        // Lists show this instance's keys only.
        let mut answer: Value = serde_json::from_slice(&body)
            .map_err(|_| (StatusCode::BAD_GATEWAY, "the client's key list is not JSON".to_string()))?;
        if let Some(keys) = answer.get_mut("data").and_then(Value::as_array_mut) {
            keys.retain(|entry| {
                let key = entry.get("validating_pubkey").or_else(|| entry.get("pubkey")).and_then(Value::as_str);
                key.is_some_and(|k| validator.pubkeys.contains(&k.to_ascii_lowercase()))
            });
        }
        Ok(respond(status, Some(header::HeaderValue::from_static("application/json")), answer.to_string().into()))
    }

    async fn forward(
        &self,
        method: Method,
        target: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Option<header::HeaderValue>, Bytes), Failure> {
        let mut builder = http::Request::builder().method(method).uri(target);
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|_| (StatusCode::BAD_REQUEST, "the request path cannot be forwarded".to_string()))?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| (StatusCode::GATEWAY_TIMEOUT, "the validator client did not answer in 30 s".to_string()))?
            .map_err(|_| (StatusCode::BAD_GATEWAY, client_down()))?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = Limited::new(response.into_body(), self.max_response_bytes)
            .collect()
            .await
            .map_err(|_| (StatusCode::BAD_GATEWAY, "the client's answer is too large or broke off".to_string()))?
            .to_bytes();
        Ok((status, content_type, body))
    }
}

type Failure = (StatusCode, String);

/// Keys the connection with a valid credential (counted under it and its instance's share, and
/// closed when it is revoked or expires, as a JSON-RPC connection is), or refuses it (429) past
/// the key's or the instance's share.
fn present(ticket: &Ticket, digest: &KeyDigest, route: &Route, revoked: CancellationToken) -> Result<(), Failure> {
    if ticket.keyed() {
        return Ok(());
    }
    ticket
        .present_key_of(digest, Some(&route.instance.instance_id))
        .map_err(|refused| (StatusCode::TOO_MANY_REQUESTS, refused.message().to_string()))?;
    ticket.watch_key(revoked, route.expires_ms);
    Ok(())
}

fn query<B>(request: &HttpRequest<B>) -> String {
    request.uri().query().map_or(String::new(), |q| format!("?{q}"))
}

fn not_validator() -> String {
    "this instance has no validator client".into()
}

fn client_down() -> String {
    "the instance's validator client is not reachable right now".into()
}

fn respond(status: StatusCode, content_type: Option<header::HeaderValue>, body: Bytes) -> HttpResponse {
    let mut response = HttpResponse::new(HttpBody::from(body.to_vec()));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// A keymanager-API style error: `{"message": …}`.
fn error(status: StatusCode, message: &str) -> HttpResponse {
    let mut response = respond(
        status,
        Some(header::HeaderValue::from_static("application/json")),
        json!({ "message": message }).to_string().into(),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}
