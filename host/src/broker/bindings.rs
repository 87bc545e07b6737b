//! Service bindings: bind (mint credentials), fetch, unbind (revoke), last_operation.
//!
//! Owns: the binding handlers (typed request, catalog and parameter checks, credentials, the
//! answer). Must not: decide the state matrix (bind and unbind call their pure functions in
//! [`super::decide`] inside the store's transition) or write SQL.
//!
//! Bindings are synchronous: the key exists, and opens the endpoint, when the 201 is sent; after
//! an unbind's 200 the key is refused.
//!
//! OSB 2.17 rotation: on a plan with `binding_rotatable`, a bind naming `predecessor_binding_id`
//! (a live, unexpired binding of the same instance) creates a binding with new credentials; the
//! predecessor keeps working until it is unbound or expires. A plan's `binding_ttl` makes
//! credentials expire: the binding answers `metadata.expires_at` and `metadata.renew_before`, and
//! the gateway's route carries the expiry (see [`crate::gateway::Route`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};

use super::decide::{self, BindingOutcome as Outcome};
use super::requests::BindRequest;
use super::{ApiError, BrokerState, Meta, checked_id, json_object, query, reply, required_query};
use crate::credentials::key_sha256;
use crate::store::{BindingRow, InstanceState, now_ms};

type IdsPath = Result<Path<(String, String)>, PathRejection>;
type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

fn ids(path: IdsPath) -> Result<(String, String), ApiError> {
    let (instance, binding) = match path {
        Ok(Path(ids)) => (Ok(ids.0), Ok(ids.1)),
        Err(err) => return Err(ApiError::bad_request(format!("malformed path: {err}"))),
    };
    Ok((checked_id(instance, "instance_id")?, checked_id(binding, "binding_id")?))
}

/// The credentials of a binding: the endpoint with the key in the path (works with no headers),
/// its WebSocket twin, and the bare key for `Authorization: Bearer`; for validator instances
/// also `keymanager_uri` + `keymanager_token` (Bearer) and `beacon_uri` (key in the path).
fn binding_body(state: &BrokerState, binding: &BindingRow, minor_version: u32, with_parameters: bool) -> Value {
    let key = state.secret.binding_key(&binding.instance_id, &binding.id, &binding.key_salt);
    let base = state.config.public_gateway_url();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        format!("ws://{}", base.trim_start_matches("http://"))
    };
    let mut body = json!({
        "credentials": {
            "uri": format!("{base}/v1/{key}"),
            "ws_uri": format!("{ws_base}/v1/{key}"),
            "http_uri": format!("{base}/"),
            "token": key,
        },
    });
    // Validator instances: their keymanager and beacon APIs, through the gateway.
    let validator = state.catalog.load().plan_by_id(&binding.plan_id).is_some_and(|p| p.plan.driver.is_validator());
    if validator {
        let token = state.secret.keymanager_token(&binding.instance_id, &binding.id, &binding.key_salt);
        body["credentials"]["keymanager_uri"] = json!(format!("{base}/keymanager"));
        body["credentials"]["keymanager_token"] = json!(token);
        body["credentials"]["beacon_uri"] = json!(format!("{base}/beacon/{key}"));
    }
    // `endpoints` arrived in OSB 2.14; older platforms validate against schemas without it.
    if minor_version >= 14
        && let Ok(uri) = base.parse::<http::Uri>()
        && let Some(host) = uri.host()
    {
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        body["endpoints"] = json!([{ "host": host, "ports": [port.to_string()], "protocol": "tcp" }]);
    }
    let parameters = binding.parameters.as_ref();
    // Sealed to the application's wallet key: the platform stores what it cannot read.
    if let Some(key) = parameters.and_then(|p| p.get("encryption_public_key")).and_then(Value::as_str) {
        let plain = body["credentials"].to_string();
        body["credentials"] = match crate::identity::seal_to(key, plain.as_bytes()) {
            Ok(sealed) => json!(sealed),
            // Checked at bind; a key that no longer parses gets no credentials rather than clear ones.
            Err(_) => json!({}),
        };
    }
    if with_parameters && let Some(parameters) = parameters {
        body["parameters"] = parameters.clone();
    }
    // `metadata` (expires_at, renew_before) arrived in OSB 2.16/2.17.
    if minor_version >= 16
        && let Some(expires_ms) = binding.expires_ms
    {
        body["metadata"] = json!({
            "expires_at": timestamp(expires_ms),
            "renew_before": timestamp(renew_before_ms(binding.created_ms, expires_ms)),
        });
    }
    body
}

/// When a binding should be renewed (rotated): four fifths into its life, so that a platform
/// has the last fifth to rotate it.
fn renew_before_ms(created_ms: i64, expires_ms: i64) -> i64 {
    created_ms + (expires_ms - created_ms).max(0) * 4 / 5
}

/// A time (ms since the Unix epoch) as OSB writes it, `yyyy-mm-ddThh:mm:ss.sssZ` (UTC).
pub fn timestamp(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// `PUT /v2/service_instances/:instance_id/service_bindings/:binding_id`
pub async fn bind(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    path: IdsPath,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (instance_id, binding_id) = ids(path)?;
    let request = BindRequest::parse(json_object(body)?)?;
    let predecessor = request.predecessor.clone();
    let (service_id, plan_id) = match (request.service_id.clone(), request.plan_id.clone()) {
        (Some(service_id), Some(plan_id)) => (service_id, plan_id),
        // Only a rotation request (v2.17) may leave them out ([`BindRequest::parse`] requires
        // them otherwise): the ids default to the instance's, the parameters and bind_resource
        // to the predecessor's.
        given => {
            let instance = state.store.instance(&instance_id).await?.filter(|i| i.state != InstanceState::Deleted);
            let default = |pick: fn(&crate::store::InstanceRow) -> &String| instance.as_ref().map(|i| pick(i).clone());
            match (given.0.or_else(|| default(|i| &i.service_id)), given.1.or_else(|| default(|i| &i.plan_id))) {
                (Some(service_id), Some(plan_id)) => (service_id, plan_id),
                _ => return Err(ApiError::not_found("no such instance")),
            }
        }
    };
    let catalog = state.catalog.load_full();
    let entry = catalog.plan(&service_id, &plan_id)?;
    if predecessor.is_some() && !entry.binding_rotatable() {
        return Err(ApiError::bad_request(
            "binding rotation is not supported by this plan (binding_rotatable is false)",
        ));
    }
    if predecessor.as_deref() == Some(binding_id.as_str()) {
        return Err(ApiError::bad_request("predecessor_binding_id must name another binding than this one"));
    }
    let parameters = request.parameters.as_ref();
    entry.check_binding_parameters(parameters.unwrap_or(&json!({})))?;
    if let Some(key) = parameters.and_then(|p| p.get("encryption_public_key")).and_then(Value::as_str) {
        crate::identity::parse_public_key(key)
            .map_err(|reason| ApiError::bad_request(format!("parameters.encryption_public_key: {reason}")))?;
    }

    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system's random source failed");
    let key_salt = hex::encode(salt);
    let key = state.secret.binding_key(&instance_id, &binding_id, &key_salt);
    let created_ms = now_ms();
    let row = BindingRow {
        instance_id: instance_id.clone(),
        id: binding_id.clone(),
        service_id,
        plan_id,
        parameters: request.parameters.clone(),
        bind_resource: request.bind_resource.clone(),
        context: request.context.clone(),
        key_salt,
        key_sha256: key_sha256(&key),
        created_ms,
        predecessor_id: predecessor.clone(),
        expires_ms: entry.plan.binding_ttl.map(|ttl| created_ms.saturating_add(ttl as i64 * 1000)),
    };
    let audit = meta.audit(if predecessor.is_some() { "rotate" } else { "bind" }, Some(&binding_id));
    let bind = decide::Bind { request, row, audit, now_ms: created_ms };
    let outcome = state
        .store
        .rotation_transition(&instance_id, &binding_id, predecessor.as_deref(), |instance, existing, previous| {
            decide::bind(bind, instance, existing, previous)
        })
        .await?;
    match outcome {
        Outcome::Created(binding) => {
            state.routing.sync_instance(&instance_id).await;
            tracing::info!(instance = %instance_id, binding = %binding_id, "bound");
            Ok(reply(StatusCode::CREATED, binding_body(&state, &binding, meta.minor_version, false)))
        }
        Outcome::Exists(binding) => {
            Ok(reply(StatusCode::OK, binding_body(&state, &binding, meta.minor_version, false)))
        }
        Outcome::Deleted => Ok(reply(StatusCode::OK, json!({}))),
        Outcome::Refused(err) => Err(err),
    }
}

/// `GET /v2/service_instances/:instance_id/service_bindings/:binding_id`
pub async fn fetch(State(state): State<Arc<BrokerState>>, meta: Meta, path: IdsPath) -> Result<Response, ApiError> {
    let (instance_id, binding_id) = ids(path)?;
    match state.store.binding(&instance_id, &binding_id).await? {
        Some(binding) => Ok(reply(StatusCode::OK, binding_body(&state, &binding, meta.minor_version, true))),
        None => Err(ApiError::not_found("no such binding")),
    }
}

/// `DELETE /v2/service_instances/:instance_id/service_bindings/:binding_id?service_id&plan_id`
pub async fn unbind(
    State(state): State<Arc<BrokerState>>,
    meta: Meta,
    path: IdsPath,
    query_string: QueryMap,
) -> Result<Response, ApiError> {
    let (instance_id, binding_id) = ids(path)?;
    let query = query(query_string)?;
    let service_id = required_query(&query, "service_id")?;
    let plan_id = required_query(&query, "plan_id")?;
    let audit = meta.audit("unbind", Some(&binding_id));
    let outcome = state
        .store
        .binding_transition(&instance_id, &binding_id, |instance, existing| {
            decide::unbind(service_id, plan_id, audit, instance, existing)
        })
        .await?;
    match outcome {
        Outcome::Deleted => {
            // The key is refused from the next request on: the snapshot is swapped before the 200.
            state.routing.sync_instance(&instance_id).await;
            tracing::info!(instance = %instance_id, binding = %binding_id, "unbound");
            Ok(reply(StatusCode::OK, json!({})))
        }
        Outcome::Refused(err) => Err(err),
        Outcome::Created(_) | Outcome::Exists(_) => unreachable!("unbind neither creates nor finds"),
    }
}

/// `GET …/service_bindings/:binding_id/last_operation`: bindings finish synchronously, so an
/// existing binding's last operation succeeded.
pub async fn last_operation(State(state): State<Arc<BrokerState>>, path: IdsPath) -> Result<Response, ApiError> {
    let (instance_id, binding_id) = ids(path)?;
    match state.store.binding(&instance_id, &binding_id).await? {
        Some(_) => Ok(reply(StatusCode::OK, json!({ "state": "succeeded", "description": "bound" }))),
        None => Err(ApiError::not_found("no such binding")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_milliseconds_as_osb_writes_them() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(timestamp(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn renewal_is_due_four_fifths_into_a_bindings_life() {
        assert_eq!(renew_before_ms(1_000, 11_000), 9_000);
        assert_eq!(renew_before_ms(1_000, 3_000), 2_600);
        assert!(renew_before_ms(5, 5) <= 5);
    }
}
