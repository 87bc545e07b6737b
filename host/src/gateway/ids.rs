//! # Request ids that jsonrpsee cannot carry
//!
//! JSON-RPC 2.0 allows any string, number or null as an id; jsonrpsee's `Id` holds only
//! strings, null and unsigned 64-bit integers, and it takes a request whose id it cannot hold
//! (`-1`, `1.5`, a 30-digit number, and the invalid `{…}`, `[…]`, `true`) for a *notification*:
//! it would run the call and answer nothing. This module owns the check made on every HTTP body
//! before jsonrpsee sees it ([`scan`], a skim that allocates nothing for a single call), and the
//! rare path for a body that has such an id: each entry is answered on its own, an invalid id
//! with -32600 (id null) without running anything, a valid one by running the entry under an id
//! jsonrpsee can carry and echoing the original id, byte for byte, in its answer.
//!
//! Over WebSocket the messages never pass here: a message jsonrpsee takes for a notification is
//! answered with -32600 and not run (see `rpc`).

use serde::Deserialize;
use serde_json::value::RawValue;

/// What an entry's id is, for jsonrpsee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// jsonrpsee handles it as it is: a string, null, absent (a notification), a u64, or an
    /// entry that is not a request at all (jsonrpsee answers it).
    Carried,
    /// Not a valid id (object, array, boolean): -32600, nothing runs.
    Invalid,
    /// A valid id jsonrpsee cannot hold; the raw JSON text of the id.
    Foreign(String),
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The entries of a body, when at least one of them has an id jsonrpsee cannot carry; `None`
/// when jsonrpsee can take the body as it is (nearly always). `Some((entries, batch))`.
pub(crate) fn scan(body: &[u8]) -> Option<(Vec<(Entry, &RawValue)>, bool)> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    match first {
        b'{' => {
            let entry = classify(serde_json::from_slice::<IdOnly<'_>>(body).ok()?.id);
            if entry == Entry::Carried {
                return None;
            }
            let raw: &RawValue = serde_json::from_slice(body).ok()?;
            Some((vec![(entry, raw)], false))
        }
        b'[' => {
            let entries: Vec<&RawValue> = serde_json::from_slice(body).ok()?;
            // A batch of only non-objects or of ids jsonrpsee holds is jsonrpsee's to answer; the
            // classified list is built only for the rare batch that is not.
            let special = |raw: &RawValue| raw.get().starts_with('{') && batch_entry(raw) != Entry::Carried;
            if !entries.iter().any(|raw| special(raw)) {
                return None;
            }
            Some((entries.into_iter().map(|raw| (batch_entry(raw), raw)).collect(), true))
        }
        _ => None,
    }
}

/// An entry of a batch: what its id is; an entry that is not an object is invalid.
fn batch_entry(raw: &RawValue) -> Entry {
    match serde_json::from_str::<IdOnly<'_>>(raw.get()) {
        Ok(id) => classify(id.id),
        Err(_) if raw.get().starts_with('{') => Entry::Carried,
        Err(_) => Entry::Invalid,
    }
}

fn classify(id: Option<&RawValue>) -> Entry {
    let Some(id) = id else { return Entry::Carried };
    let text = id.get();
    match text.as_bytes().first() {
        Some(b'"') => Entry::Carried,
        Some(b'-' | b'0'..=b'9') => {
            let canonical = text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
            if canonical && text.parse::<u64>().is_ok() { Entry::Carried } else { Entry::Foreign(text.to_string()) }
        }
        _ => Entry::Invalid,
    }
}

/// The answer to an entry with an invalid id.
pub(crate) const INVALID_ID_ANSWER: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request: the id must be a string, a number or null"}}"#;

/// The entry with its id replaced by `0` (which jsonrpsee carries), for running it.
pub(crate) fn with_carried_id(entry: &RawValue) -> Option<Vec<u8>> {
    let raw: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_str(entry.get()).ok()?;
    // The fields stay raw (params are passed on as sent); only the id changes.
    let mut out = Vec::with_capacity(entry.get().len());
    out.push(b'{');
    for (i, (name, value)) in raw.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).ok()?;
        out.push(b':');
        out.extend_from_slice(if name == "id" { b"0" } else { value.get().as_bytes() });
    }
    out.push(b'}');
    Some(out)
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// jsonrpsee's answer to an entry run under id `0`, with the original id put back.
pub(crate) fn with_original_id(answer: &[u8], id: &str) -> Option<String> {
    let answer: Answer<'_> = serde_json::from_slice(answer).ok()?;
    let (field, value) = match (answer.result, answer.error) {
        (_, Some(error)) => ("error", error),
        (Some(result), None) => ("result", result),
        (None, None) => return None,
    };
    Some(format!(r#"{{"jsonrpc":"2.0","id":{id},"{field}":{}}}"#, value.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(body: &str) -> Option<Vec<Entry>> {
        scan(body.as_bytes()).map(|(entries, _)| entries.into_iter().map(|(e, _)| e).collect())
    }

    #[test]
    fn ids_jsonrpsee_carries_pass_untouched() {
        for id in ["1", "0", "18446744073709551615", r#""abc""#, "null"] {
            assert_eq!(kinds(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#)), None, "{id}");
        }
        assert_eq!(kinds(r#"{"jsonrpc":"2.0","method":"m"}"#), None, "a notification");
        assert_eq!(kinds(r#"[{"jsonrpc":"2.0","id":1,"method":"m"},{"jsonrpc":"2.0","id":"x","method":"m"}]"#), None);
        assert_eq!(kinds("not json"), None, "jsonrpsee answers parse errors");
        assert_eq!(kinds("[]"), None);
    }

    #[test]
    fn other_valid_ids_are_foreign_and_invalid_ids_are_invalid() {
        for id in ["-1", "1.5", "123456789012345678901234567890", "1e3", "-0"] {
            assert_eq!(
                kinds(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#)),
                Some(vec![Entry::Foreign(id.into())]),
                "{id}"
            );
        }
        for id in [r#"{"a":1}"#, "[1]", "true", "false"] {
            assert_eq!(kinds(&format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#)), Some(vec![Entry::Invalid]));
        }
        assert_eq!(
            kinds(r#"[{"id":1,"method":"m"},{"id":-1,"method":"m"},{"id":true,"method":"m"},{"method":"n"}]"#),
            Some(vec![Entry::Carried, Entry::Foreign("-1".into()), Entry::Invalid, Entry::Carried])
        );
    }

    #[test]
    fn a_foreign_id_is_swapped_out_and_back_exactly() {
        let (entries, _) = scan(br#"{"jsonrpc":"2.0","id":-1.50,"method":"m","params":[1, "x"]}"#).unwrap();
        let run: serde_json::Value = serde_json::from_slice(&with_carried_id(entries[0].1).unwrap()).unwrap();
        assert_eq!(run, serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "m", "params": [1, "x"]}));
        let back = with_original_id(br#"{"jsonrpc":"2.0","id":0,"result":"0x1"}"#, "-1.50").unwrap();
        assert_eq!(back, r#"{"jsonrpc":"2.0","id":-1.50,"result":"0x1"}"#);
        let back = with_original_id(br#"{"jsonrpc":"2.0","id":0,"error":{"code":1,"message":"m"}}"#, "-1.50");
        assert_eq!(back.unwrap(), r#"{"jsonrpc":"2.0","id":-1.50,"error":{"code":1,"message":"m"}}"#);
    }
}
