//! The gateway's JSON-RPC error codes, as the call vocabulary defines them ([`crate::call::codes`],
//! the one place for all of them), and the body of an error answered before any request is read.
//!
//! Codes from -32700 to -32600 are JSON-RPC's own; the ones below are ovsb's, in the range
//! JSON-RPC leaves to servers, following EIP-1474's meanings where it has one. None of ovsb's
//! codes is one that jsonrpsee answers with for another reason (jsonrpsee's are -32006 too many
//! subscriptions, -32007/-32008 oversized request/response, -32009 busy, -32010/-32011 batch too
//! big; -32007 is used here for the same meaning). The README's table lists them all. Clients
//! get a stable code and a short message; the details go to the logs.

pub use crate::call::codes::{
    CONTRACT_NOT_ALLOWED, DEADLINE_EXCEEDED, INTERNAL_ERROR, INVALID_REQUEST, LIMIT_EXCEEDED, METHOD_NOT_ALLOWED,
    ORIGIN_NOT_ALLOWED, OVERSIZED_BATCH_RESPONSE, OVERSIZED_RESPONSE, SEND_OUTCOME_UNKNOWN, UNAUTHORIZED,
    UPSTREAM_UNAVAILABLE,
};
/// The request body is over the limit (jsonrpsee's own code for the same thing).
pub const OVERSIZE: i32 = crate::call::codes::OVERSIZED_REQUEST;

/// A JSON-RPC error response body with a null id, for failures before any request is read.
pub fn error_body(code: i32, message: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}).to_string()
}
