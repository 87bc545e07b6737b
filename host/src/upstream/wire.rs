//! The node's side of the wire: a JSON-RPC response body decoded into an [`Outcome`], the
//! result cut out of the body's own buffer when it can be. Must not: allocate a second copy of
//! a large answer, or change a node's error.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::call::{Outcome, RpcError};

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    code: i32,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Keeps `"result": null` as `Some(null)`: null is a valid result.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// [`decode`], taking the body: a result is cut out of the body's own buffer (when the buffer is
/// not shared) rather than copied, so a large answer is held once, not twice.
pub(super) fn decode_owned(body: Bytes) -> Option<Outcome> {
    let (start, len) = {
        let response: WireResponse = serde_json::from_slice(&body).ok()?;
        match (response.result, &response.error) {
            (Some(result), None) => (result.get().as_ptr() as usize - body.as_ptr() as usize, result.get().len()),
            _ => return decode(&body),
        }
    };
    let mut bytes = Vec::from(body);
    bytes.truncate(start + len);
    bytes.drain(..start);
    Some(Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
}

/// The outcome in a node's JSON-RPC response; `None` if the body is not one.
fn decode(body: &[u8]) -> Option<Outcome> {
    let response: WireResponse = serde_json::from_slice(body).ok()?;
    match (response.result, response.error) {
        (_, Some(error)) => Some(Err(RpcError {
            code: error.code,
            message: error.message.into_owned(),
            data: error.data.map(|d| d.get().to_string()),
        })),
        (Some(result), None) => Some(Ok(result.get().to_string())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_null_results_and_node_errors_as_they_are() {
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1,"result":null}"#), Some(Ok("null".into())));
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1,"result":{"a": [1]}}"#), Some(Ok(r#"{"a": [1]}"#.into())));
        let err = decode(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#,
        );
        assert_eq!(
            err,
            Some(Err(RpcError { code: 3, message: "execution reverted".into(), data: Some("\"0x08c379a0\"".into()) }))
        );
        assert_eq!(decode(b"<html>bad gateway</html>"), None);
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1}"#), None);
        let owned = |text: &'static [u8]| decode_owned(Bytes::from(text.to_vec()));
        assert_eq!(owned(br#"{"jsonrpc":"2.0","id":1,"result":{"a": [1]}}"#), Some(Ok(r#"{"a": [1]}"#.into())));
        assert_eq!(owned(br#"{"id":1,"result":"0x1","jsonrpc":"2.0"}"#), Some(Ok(r#""0x1""#.into())));
        assert_eq!(owned(br#"{"jsonrpc":"2.0","id":1,"result":null}"#), Some(Ok("null".into())));
        assert!(matches!(owned(br#"{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"m"}}"#), Some(Err(_))));
        assert_eq!(owned(b"<html>"), None);
    }
}
