//! The gateway's JSON-RPC error codes, one place for all of them.
//!
//! Codes from -32700 to -32600 are JSON-RPC's own; the ones below are ovsb's, in the range
//! JSON-RPC leaves to servers, following EIP-1474's meanings where it has one. None of ovsb's
//! codes is one that jsonrpsee answers with for another reason (jsonrpsee's are -32006 too many
//! subscriptions, -32007/-32008 oversized request/response, -32009 busy, -32010/-32011 batch too
//! big; -32007 is used here for the same meaning). The README's table lists them all. Clients
//! get a stable code and a short message; the details go to the logs.

/// The upstream's codes: -32002 no node reachable, -32003 deadline, -32020 send outcome unknown.
pub use crate::upstream::{DEADLINE_EXCEEDED, SEND_OUTCOME_UNKNOWN, UPSTREAM_UNAVAILABLE};

/// The request carried no key, or a key that is unknown or revoked (HTTP 401).
pub const UNAUTHORIZED: i32 = -32001;
/// A limit was exceeded (connections, an instance's share of plugin calls, upstream calls of a
/// plugin, answer bytes in flight, node sockets); retry later. `data.reason` names the limit.
pub const LIMIT_EXCEEDED: i32 = crate::budget::LIMIT_EXCEEDED;
/// A batch's answers passed the response limit; the batch was cut short (jsonrpsee's own code
/// for the same thing). `data.reason = "response_bytes"`.
pub const OVERSIZED_BATCH_RESPONSE: i32 = jsonrpsee::types::error::TOO_BIG_BATCH_RESPONSE_CODE;
/// The request body is over the limit (jsonrpsee's own code for the same thing).
pub const OVERSIZE: i32 = jsonrpsee::types::error::OVERSIZED_REQUEST_CODE;
/// The response is over the limit (jsonrpsee's own code for the same thing).
pub const OVERSIZED_RESPONSE: i32 = jsonrpsee::types::error::OVERSIZED_RESPONSE_CODE;
/// Invalid request (an id that is not a string, number or null, a body not sent in time):
/// JSON-RPC's own code.
pub const INVALID_REQUEST: i32 = -32600;
/// Internal error (a bug): JSON-RPC's own code.
pub const INTERNAL_ERROR: i32 = -32603;

/// A JSON-RPC error response body with a null id, for failures before any request is read.
pub fn error_body(code: i32, message: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}).to_string()
}
