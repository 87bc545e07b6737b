//! Where validator operators get a key's slashing-protection history back:
//! `GET /ovsb/v1/slashing-protection/<pubkey>` on the broker listener, with the broker's Basic
//! credentials (no OSB headers: this is ovsb's own operator API, not part of OSB).
//!
//! The answer is one EIP-3076 interchange document (format version 5) holding every entry ovsb
//! stored for the key on the chain of its newest export (every client it left there), ready to
//! import into any client; 404 when ovsb never exported the key. The `X-Ovsb-Key-Holder` header names the instance that holds the key
//! now, if one does.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use super::{ApiError, BrokerState, reply};

/// The history route.
pub(super) fn router(state: Arc<BrokerState>) -> Router {
    Router::new().route("/ovsb/v1/slashing-protection/{pubkey}", get(history)).with_state(state)
}

async fn history(State(state): State<Arc<BrokerState>>, headers: HeaderMap, Path(pubkey): Path<String>) -> Response {
    match answer(&state, &headers, &pubkey).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn answer(state: &BrokerState, headers: &HeaderMap, pubkey: &str) -> Result<Response, ApiError> {
    if !state.auth.accepts(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        return Err(ApiError::unauthorized());
    }
    let hex = pubkey.trim_start_matches("0x");
    if hex.len() != 96 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("the key must be a BLS public key: 0x and 96 hex digits"));
    }
    let pubkey = format!("0x{}", hex.to_ascii_lowercase());
    let rows = state.store.history(&pubkey).await?;
    let documents: Vec<Value> = rows.iter().filter_map(|row| serde_json::from_str(&row.interchange).ok()).collect();
    let Some(merged) = crate::provision::merge_interchanges(&documents, std::slice::from_ref(&pubkey)) else {
        return Err(ApiError::not_found(format!("ovsb holds no slashing-protection history of {pubkey}")));
    };
    let mut response = reply(StatusCode::OK, merged);
    if let Some(holder) = state.store.validator_key_holder(&pubkey).await?
        && let Ok(value) = HeaderValue::from_str(&holder)
    {
        response.headers_mut().insert("x-ovsb-key-holder", value);
    }
    Ok(response)
}
