//! The gateway's JSON-RPC error codes, one place for all of them.
//!
//! Codes from -32700 to -32600 are JSON-RPC's own; the ones below are ovsb's, in the range
//! JSON-RPC leaves to servers. Clients get a stable code and a short message; the details go to
//! the logs.

/// The request carried no key, or a key that is unknown or revoked (HTTP 401).
pub const UNAUTHORIZED: i32 = -32001;
/// No upstream node could be reached (connection refused, all down, bad answer).
pub const UPSTREAM_UNAVAILABLE: i32 = -32002;
/// The call did not finish within the per-call deadline.
pub const DEADLINE_EXCEEDED: i32 = -32003;
/// A limit was exceeded (connections, subscriptions); retry later.
pub const LIMIT_EXCEEDED: i32 = -32005;
/// A transaction was sent but the node's answer was lost: it may or may not have been accepted,
/// so it is not retried. Check with `eth_getTransactionByHash`.
pub const SEND_OUTCOME_UNKNOWN: i32 = -32006;
/// Internal error (a bug): JSON-RPC's own code.
pub const INTERNAL_ERROR: i32 = -32603;

/// A JSON-RPC error response body with a null id, for failures before any request is read.
pub fn error_body(code: i32, message: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}}).to_string()
}
