//! Where validator operators get a key's slashing-protection history back:
//! `GET /ovsb/v1/slashing-protection/<pubkey>` on the broker listener, with the broker's Basic
//! credentials (no OSB headers: this is ovsb's own operator API, not part of OSB).
//!
//! The answer is one EIP-3076 interchange document (format version 5) for the chain of the
//! key's newest stored history: the union of every record ovsb was given with the key or
//! exported from a client it left on that chain, each distinct record once, ready to import
//! into any client; 404 when ovsb holds no history of the key. A stored row that does not
//! decode fails the request (500, naming the row) rather than hand back a narrowed history.
//! The `X-Ovsb-Key-Holder` header names the instance that holds the key now, if one does.

use std::sync::Arc;

use super::{ApiError, BrokerState, reply};
use crate::interchange::Pubkey;
use crate::store::StoreError;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

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
    let rows = match state.store.history(&pubkey).await {
        Ok(rows) => rows,
        Err(StoreError::Corrupt(reason)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("InternalError"),
                format!("{reason}; no history is returned rather than a narrowed one: repair or remove the row"),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let Some(newest) = rows.iter().max_by_key(|row| row.exported_ms) else {
        return Err(ApiError::not_found(format!("ovsb holds no slashing-protection history of {pubkey}")));
    };
    let key = Pubkey::parse(&pubkey).expect("checked above");
    let (mut merged, _) = crate::store::union_on_chain(&rows, newest.interchange.genesis_validators_root, key);
    merged.keys.entry(key).or_default();
    let mut response = reply(StatusCode::OK, merged.to_json());
    if let Some(holder) = state.store.validator_key_holder(&pubkey).await?
        && let Ok(value) = HeaderValue::from_str(&holder)
    {
        response.headers_mut().insert("x-ovsb-key-holder", value);
    }
    Ok(response)
}
