//! # The Open Service Broker API (v2.17; 2.13 and later accepted)
//!
//! Owns: the broker REST surface (axum): authentication, the version header, request and
//! originating identities, parsing and validating requests, and turning every outcome into the
//! OSB status and body ([`ApiError`] is the one translation point for failures). Must not: write
//! SQL (the [`Store`] does, atomically, on the decision a handler makes) or do slow work in a
//! request (the [`Operations`] runner does, in the background). Request bodies become typed
//! values in `requests`; the OSB state matrix is pure functions in `decide`, table-tested.
//!
//! The order of checks, which satisfies the spec and the OSB checkers: auth (401) → version
//! (412) → body, required fields and catalog ids (400) → `accepts_incomplete` (422
//! `AsyncRequired`) → parameter schema and plugin configuration (400) → `maintenance_info`
//! (422) → existence and idempotency (200 / 202 / 404 / 409 / 410) → concurrency (422) → act.
//!
//! Decisions this broker makes where the spec leaves a choice (documented in the README):
//! instance operations are always asynchronous; bindings are synchronous; deprovisioning an
//! instance that has bindings revokes them (cascade); a finished deprovision answers
//! `last_operation` with `succeeded` for `operations.tombstone_hours`, then 410.

mod bindings;
mod catalog;
pub mod dashboard;
mod decide;
mod history;
mod instances;
mod requests;
pub mod throttle;
mod usage;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};

pub use catalog::{Catalog, MAX_CHAIN_LENGTH};

use crate::config::Config;
use crate::credentials::{BasicAuth, SecretKey};
use crate::plugins::Registry;
use crate::provision::Operations;
use crate::routing::RouteSync;
use crate::store::{AuditEntry, Store, StoreError};

/// The version this broker implements.
pub const API_VERSION: &str = "2.17";
/// The oldest `X-Broker-API-Version` minor (2.x) accepted.
pub const MIN_MINOR_VERSION: u32 = 13;
/// Longest instance or binding id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// What the handlers share.
pub struct BrokerState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The catalog and its schemas; a reload that adds or removes plugins swaps it (with the
    /// registry, under [`Registry::change_names`]).
    pub catalog: arc_swap::ArcSwap<Catalog>,
    /// The store.
    pub store: Store,
    /// The available plugins (to check an instance's chain at provision and update).
    pub registry: Registry,
    /// The route synchronizer (called after every committed change).
    pub routing: Arc<RouteSync>,
    /// The operation runner.
    pub operations: Arc<Operations>,
    /// The key binding credentials derive from.
    pub secret: SecretKey,
    /// The platform's credentials.
    pub auth: BasicAuth,
    /// ovsb's identity: opens sealed parameters, published in the catalog.
    pub identity: crate::identity::Identity,
    /// Failed authentication per source address.
    pub auth_throttle: throttle::AuthThrottle,
    /// The usage meters (flushed before a usage report is read).
    pub usage: Arc<crate::usage::Usage>,
}

/// The broker's router.
pub fn router(state: Arc<BrokerState>) -> Router {
    let max_body = state.config.broker.max_body_bytes;
    Router::new()
        .route("/v2/catalog", get(catalog))
        .route(
            "/v2/service_instances/{instance_id}",
            get(instances::fetch).put(instances::provision).patch(instances::update).delete(instances::deprovision),
        )
        .route("/v2/service_instances/{instance_id}/last_operation", get(instances::last_operation))
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}",
            get(bindings::fetch).put(bindings::bind).delete(bindings::unbind),
        )
        .route(
            "/v2/service_instances/{instance_id}/service_bindings/{binding_id}/last_operation",
            get(bindings::last_operation),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, None, "no such endpoint of the OSB API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(count_request))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone())
        .merge(dashboard::router(state.clone()))
        .merge(history::router(state.clone()))
        .merge(usage::router(state))
}

async fn catalog(State(state): State<Arc<BrokerState>>, meta: Meta) -> Response {
    let body = if meta.minor_version >= 17 {
        state.catalog.load().body().to_string()
    } else {
        catalog_for(state.catalog.load().body(), meta.minor_version)
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The catalog as a platform speaking OSB 2.`minor` knows it: fields of later versions left
/// out (strict clients of 2.13 validate plans with `additionalProperties: false`).
fn catalog_for(body: &str, minor: u32) -> String {
    // (field, the minor that introduced it) of services and of plans.
    const SERVICE_FIELDS: &[(&str, u32)] =
        &[("instances_retrievable", 14), ("bindings_retrievable", 14), ("allow_context_updates", 15)];
    const PLAN_FIELDS: &[(&str, u32)] = &[
        ("maintenance_info", 15),
        ("maximum_polling_duration", 15),
        ("plan_updateable", 15),
        ("binding_rotatable", 17),
    ];
    let Ok(mut catalog) = serde_json::from_str::<Value>(body) else { return body.to_string() };
    let strip = |object: &mut Value, fields: &[(&str, u32)]| {
        if let Some(object) = object.as_object_mut() {
            for (field, since) in fields {
                if minor < *since {
                    object.remove(*field);
                }
            }
        }
    };
    for service in catalog["services"].as_array_mut().into_iter().flatten() {
        strip(service, SERVICE_FIELDS);
        for plan in service["plans"].as_array_mut().into_iter().flatten() {
            strip(plan, PLAN_FIELDS);
        }
    }
    catalog.to_string()
}

/// Counts every request by route template, method and status.
async fn count_request(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    let labels = crate::telemetry::BrokerLabels { endpoint, method, status: response.status().as_u16() };
    crate::telemetry::metrics().broker_requests.get_or_create(&labels).inc();
    response
}

/// What the guard learned about a request, for handlers and the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// `X-Broker-API-Request-Identity`.
    pub request_identity: Option<String>,
    /// Platform named by `X-Broker-API-Originating-Identity`.
    pub platform: Option<String>,
    /// Its decoded identity, as JSON text.
    pub identity: Option<String>,
    /// The minor version the platform speaks (2.x).
    pub minor_version: u32,
}

impl RequestMeta {
    /// An audit record of `action` by this request.
    pub fn audit(&self, action: &str, binding_id: Option<&str>) -> AuditEntry {
        AuditEntry {
            action: action.to_string(),
            binding_id: binding_id.map(str::to_string),
            request_identity: self.request_identity.clone(),
            platform: self.platform.clone(),
            identity: self.identity.clone(),
        }
    }
}

const REQUEST_IDENTITY: &str = "x-broker-api-request-identity";

/// Auth, version and identities, for every request; echoes the request identity on every
/// response, errors included.
async fn guard(State(state): State<Arc<BrokerState>>, mut request: Request, next: Next) -> Response {
    let request_identity = request
        .headers()
        .get(REQUEST_IDENTITY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 1024)
        .map(str::to_string);
    // The peer address is known when served with connect info (`ovsb serve`), not in-process.
    let source = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let now = std::time::Instant::now();
    if let Some(wait) = source.and_then(|source| state.auth_throttle.check(source, now).err()) {
        crate::telemetry::metrics().record_broker_auth("throttled");
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            format!("too many failed authentications from this address; retry in {wait} s"),
        )
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let authorized = state.auth.accepts(request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
    if let Some(source) = source {
        state.auth_throttle.record(source, authorized, now);
    }
    if !authorized {
        crate::telemetry::metrics().record_broker_auth("failed");
    }
    let mut response = match admit(&state, request.headers()) {
        Ok(mut meta) => {
            meta.request_identity = request_identity.clone();
            request.extensions_mut().insert(meta);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    };
    if let Some(identity) = request_identity.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(REQUEST_IDENTITY, identity);
    }
    response
}

fn admit(state: &BrokerState, headers: &HeaderMap) -> Result<RequestMeta, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !state.auth.accepts(authorization) {
        return Err(ApiError::unauthorized());
    }
    let version = headers.get("x-broker-api-version").and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    let minor = version
        .strip_prefix("2.")
        .and_then(|minor| minor.parse::<u32>().ok())
        .filter(|minor| *minor >= MIN_MINOR_VERSION)
        .ok_or_else(|| {
            let shown = if version.is_empty() { "missing".to_string() } else { format!("{version:?}") };
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                Some("PreconditionFailed"),
                format!(
                    "X-Broker-API-Version is {shown}; this broker implements {API_VERSION} and accepts 2.{MIN_MINOR_VERSION} or later"
                ),
            )
        })?;
    let mut meta = RequestMeta { minor_version: minor, ..RequestMeta::default() };
    if let Some(value) = headers.get("x-broker-api-originating-identity") {
        if value.len() > MAX_ORIGINATING_IDENTITY {
            return Err(ApiError::bad_request(format!(
                "X-Broker-API-Originating-Identity is over the limit of {MAX_ORIGINATING_IDENTITY} bytes"
            )));
        }
        let (platform, identity) = value.to_str().ok().and_then(decode_originating_identity).ok_or_else(|| {
            ApiError::bad_request("X-Broker-API-Originating-Identity must be '<platform> <base64 of a JSON object>'")
        })?;
        meta.platform = Some(platform);
        meta.identity = Some(identity);
    }
    Ok(meta)
}

/// The largest `X-Broker-API-Originating-Identity` header taken (it is stored in the audit log).
pub const MAX_ORIGINATING_IDENTITY: usize = 4096;

fn decode_originating_identity(value: &str) -> Option<(String, String)> {
    let (platform, encoded) = value.trim().split_once(' ')?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.trim()))
        .ok()?;
    let identity: Value = serde_json::from_slice(&bytes).ok()?;
    (!platform.is_empty() && identity.is_object()).then(|| (platform.to_string(), identity.to_string()))
}

/// A failure, as the platform sees it: a status and an OSB error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: Option<&'static str>,
    description: String,
    instance_usable: Option<bool>,
    update_repeatable: Option<bool>,
}

impl ApiError {
    /// A failure with this status, OSB `error` code and description.
    pub fn new(status: StatusCode, error: Option<&'static str>, description: impl Into<String>) -> Self {
        ApiError { status, error, description: description.into(), instance_usable: None, update_repeatable: None }
    }

    /// 400.
    pub fn bad_request(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, Some("BadRequest"), description)
    }

    /// 401 with `WWW-Authenticate`.
    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, Some("Unauthorized"), "HTTP Basic credentials are missing or wrong")
    }

    /// 404.
    pub fn not_found(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, Some("NotFound"), description)
    }

    /// 409.
    pub fn conflict(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, Some("Conflict"), description)
    }

    /// 410.
    pub fn gone(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::GONE, Some("Gone"), description)
    }

    /// 422 `AsyncRequired`.
    pub fn async_required() -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("AsyncRequired"),
            "this operation runs asynchronously: send accepts_incomplete=true",
        )
    }

    /// 422 `ConcurrencyError`.
    pub fn concurrency(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some("ConcurrencyError"), description)
    }

    /// 422 `MaintenanceInfoConflict`.
    pub fn maintenance_conflict(description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some("MaintenanceInfoConflict"), description)
    }

    /// 422 without a spec-defined code.
    pub fn unprocessable(error: &'static str, description: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(error), description)
    }

    /// Adds `instance_usable` (only for failed updates and deprovisions).
    pub fn with_instance_usable(mut self, usable: bool) -> Self {
        self.instance_usable = Some(usable);
        self
    }

    /// Adds `update_repeatable` (only for failed updates and deprovisions): `false` tells the
    /// platform not to retry the same request.
    pub fn with_update_repeatable(mut self, repeatable: bool) -> Self {
        self.update_repeatable = Some(repeatable);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The OSB `error` code, if the failure has one.
    pub fn code(&self) -> Option<&'static str> {
        self.error
    }

    /// The description the platform is shown.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// `update_repeatable`, if set.
    pub fn update_repeatable(&self) -> Option<bool> {
        self.update_repeatable
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!("broker request failed in the store: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("InternalError"),
            "the broker could not reach its store; the request changed nothing, retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "description": self.description });
        if let Some(error) = self.error {
            body["error"] = json!(error);
        }
        if let Some(usable) = self.instance_usable {
            body["instance_usable"] = json!(usable);
        }
        if let Some(repeatable) = self.update_repeatable {
            body["update_repeatable"] = json!(repeatable);
        }
        let mut response =
            (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ovsb\""));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read, so the connection cannot carry another request:
            // say so, or a client may reuse it and see it closed under its next request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON response.
pub fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The request body as a JSON object.
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, Some("PayloadTooLarge"), "the request body is too large")
        } else {
            ApiError::bad_request(format!("cannot read the request body: {rejection}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!("malformed JSON: {err}"))),
    }
}

/// The query string, or a 400.
pub fn query(
    query: Result<axum::extract::Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    query.map(|q| q.0).map_err(|err| ApiError::bad_request(format!("malformed query string: {err}")))
}

/// `accepts_incomplete`: absent or `false` is false; anything but `true`/`false` is a 400.
pub fn accepts_incomplete(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("accepts_incomplete").map(String::as_str) {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("accepts_incomplete must be true or false, not {other:?}"))),
    }
}

/// A required query parameter (empty is missing).
pub fn required_query<'q>(query: &'q HashMap<String, String>, name: &str) -> Result<&'q str, ApiError> {
    query
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {name} is required")))
}

/// A path id, percent-decoded by axum: non-empty, at most [`MAX_ID_BYTES`], no control characters.
pub fn checked_id(path: Result<String, PathRejection>, what: &str) -> Result<String, ApiError> {
    let id = path.map_err(|err| ApiError::bad_request(format!("{what}: {err}")))?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(id)
}

/// The request metadata the guard attached.
pub type Meta = Extension<RequestMeta>;
