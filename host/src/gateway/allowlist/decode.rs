//! What the allowlist must read exactly as the node will: params as a positional list with no
//! key twice, override parameters that override nothing, and raw transactions of every type
//! (RLP, EIP-2718 envelopes) down to their `to`. Must not: guess; what does not decode is
//! refused by the caller.

use serde_json::{Map, Value};

use super::{CONTRACT_AUTHORIZATION, CONTRACT_OVERRIDES, CONTRACT_UNDECODED, CONTRACT_UNREAD, Refusal};

/// The params as a positional list (`null`/absent: none); anything else cannot be checked,
/// nor can an object with a key twice (parsers disagree on which one counts, so the node might
/// read another `to` than this module did).
pub(super) fn positional(params: Option<&str>) -> Result<Vec<Value>, Refusal> {
    let Some(params) = params else { return Ok(Vec::new()) };
    match serde_json::from_str::<Strict>(params) {
        Ok(Strict(Value::Array(items))) => Ok(items),
        Ok(Strict(Value::Null)) => Ok(Vec::new()),
        _ => Err(CONTRACT_UNREAD),
    }
}

/// A JSON value whose objects have each key once (parsing fails otherwise).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON without duplicate object keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("an object has a key twice"));
            }
        }
        Ok(Value::Object(object))
    }
}

/// Override parameters are allowed only when they override nothing (`null` or `{}`).
pub(super) fn no_overrides(overrides: &[Value]) -> Result<(), Refusal> {
    for value in overrides {
        match value {
            Value::Null => {}
            Value::Object(map) if map.is_empty() => {}
            _ => return Err(CONTRACT_OVERRIDES),
        }
    }
    Ok(())
}

/// One RLP item at the start of `data`: (is a list, its payload, the rest after it).
fn rlp_item(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    let (list, len, rest) = match first {
        0x00..=0x7f => return Some((false, &data[..1], rest)),
        0x80..=0xb7 => (false, usize::from(first - 0x80), rest),
        0xc0..=0xf7 => (true, usize::from(first - 0xc0), rest),
        _ => {
            let (list, len_of_len) = if first >= 0xf8 { (true, first - 0xf7) } else { (false, first - 0xb7) };
            let (len_bytes, rest) = rest.split_at_checked(usize::from(len_of_len))?;
            if len_bytes.len() > 8 || len_bytes.first() == Some(&0) {
                return None;
            }
            let len = len_bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            if len < 56 {
                return None;
            }
            (list, usize::try_from(len).ok()?, rest)
        }
    };
    let (payload, rest) = rest.split_at_checked(len)?;
    Some((list, payload, rest))
}

/// The items of an RLP list's payload: (is a list, payload) each.
fn rlp_items(mut payload: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    let mut items = Vec::with_capacity(16);
    while !payload.is_empty() {
        let (is_list, item, rest) = rlp_item(payload)?;
        items.push((is_list, item));
        payload = rest;
    }
    Some(items)
}

/// A whole RLP list (nothing after it): its items.
fn rlp_list(data: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    match rlp_item(data)? {
        (true, payload, []) => rlp_items(payload),
        _ => None,
    }
}

/// The `to` of a signed transaction: legacy, or typed per EIP-2718 — 1 (EIP-2930), 2
/// (EIP-1559), 3 (EIP-4844, with or without its blobs). `Ok(None)`: a contract creation. A set-code
/// transaction (type 4, EIP-7702) is refused for its authorizations; anything that does not
/// decode exactly (another type, a wrong number of fields, bytes after the transaction) is
/// refused.
pub fn decode_raw_transaction(raw: &[u8]) -> Result<Option<[u8; 20]>, Refusal> {
    let (&first, body) = raw.split_first().ok_or(CONTRACT_UNDECODED)?;
    let (fields, to_index) = match first {
        0xc0..=0xff => (rlp_list(raw).filter(|f| f.len() == 9).ok_or(CONTRACT_UNDECODED)?, 3),
        0x01 => (rlp_list(body).filter(|f| f.len() == 11).ok_or(CONTRACT_UNDECODED)?, 4),
        0x02 => (rlp_list(body).filter(|f| f.len() == 12).ok_or(CONTRACT_UNDECODED)?, 5),
        0x03 => {
            let outer = rlp_list(body).ok_or(CONTRACT_UNDECODED)?;
            // The network form: [tx_payload_body, blobs, commitments, proofs] (proofs: one
            // per blob, or per cell since EIP-7594, which adds a version byte after the body).
            let fields = match outer.as_slice() {
                [(true, inner), rest @ ..] if (3..=4).contains(&rest.len()) => {
                    rlp_items(inner).ok_or(CONTRACT_UNDECODED)?
                }
                _ => outer,
            };
            if fields.len() != 14 {
                return Err(CONTRACT_UNDECODED);
            }
            (fields, 5)
        }
        0x04 => {
            let fields = rlp_list(body).filter(|f| f.len() == 13).ok_or(CONTRACT_UNDECODED)?;
            return match fields[9] {
                (true, []) => Err(CONTRACT_UNDECODED),
                _ => Err(CONTRACT_AUTHORIZATION),
            };
        }
        _ => return Err(CONTRACT_UNDECODED),
    };
    match fields[to_index] {
        (false, []) if first != 0x03 => Ok(None),
        (false, to) => to.try_into().map(Some).map_err(|_| CONTRACT_UNDECODED),
        (true, _) => Err(CONTRACT_UNDECODED),
    }
}

/// Builders of RLP and typed transactions, for the tests here and in the parent module.
#[cfg(test)]
pub(crate) mod rlp {
    /// RLP of a byte string.
    pub(crate) fn bytes(data: &[u8]) -> Vec<u8> {
        match data {
            [b] if *b < 0x80 => vec![*b],
            _ => [length(0x80, data.len()), data.to_vec()].concat(),
        }
    }

    /// RLP of a list of encoded items.
    pub(crate) fn list(items: &[Vec<u8>]) -> Vec<u8> {
        let payload = items.concat();
        [length(0xc0, payload.len()), payload].concat()
    }

    pub(crate) fn length(offset: u8, len: usize) -> Vec<u8> {
        if len < 56 {
            return vec![offset + len as u8];
        }
        let be = (len as u64).to_be_bytes();
        let be: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
        [vec![offset + 55 + be.len() as u8], be].concat()
    }

    pub(crate) const TO: [u8; 20] = [0x70; 20];

    pub(crate) fn typed(kind: u8, fields: Vec<Vec<u8>>) -> Vec<u8> {
        [vec![kind], list(&fields)].concat()
    }

    pub(crate) fn n(v: u8) -> Vec<u8> {
        bytes(if v == 0 { &[] } else { std::slice::from_ref(&v) })
    }

    pub(crate) fn legacy(to: &[u8]) -> Vec<u8> {
        list(&[n(0), n(1), n(0x52), bytes(to), n(1), bytes(&[]), n(27), n(1), n(1)])
    }

    pub(crate) fn eip1559(to: &[u8]) -> Vec<u8> {
        typed(2, vec![n(1), n(0), n(1), n(1), n(0x52), bytes(to), n(1), bytes(&[]), list(&[]), n(1), n(1), n(1)])
    }

    pub(crate) fn eip2930(to: &[u8]) -> Vec<u8> {
        typed(1, vec![n(1), n(0), n(1), n(0x52), bytes(to), n(1), bytes(&[]), list(&[]), n(1), n(1), n(1)])
    }

    pub(crate) fn blob_fields(to: &[u8]) -> Vec<Vec<u8>> {
        let hashes = list(&[bytes(&[1; 32])]);
        vec![n(1), n(0), n(1), n(1), n(0x52), bytes(to), n(1), bytes(&[]), list(&[]), n(1), hashes, n(1), n(1), n(1)]
    }

    pub(crate) fn set_code(authorizations: Vec<u8>) -> Vec<u8> {
        typed(
            4,
            vec![
                n(1),
                n(0),
                n(1),
                n(1),
                n(0x52),
                bytes(&TO),
                n(1),
                bytes(&[]),
                list(&[]),
                authorizations,
                n(1),
                n(1),
                n(1),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::rlp::*;
    use super::*;

    #[test]
    fn every_transaction_type_is_decoded_exactly() {
        assert_eq!(decode_raw_transaction(&legacy(&TO)), Ok(Some(TO)));
        assert_eq!(decode_raw_transaction(&eip2930(&TO)), Ok(Some(TO)));
        assert_eq!(decode_raw_transaction(&eip1559(&TO)), Ok(Some(TO)));
        assert_eq!(decode_raw_transaction(&eip1559(&[])), Ok(None), "a creation");
        assert_eq!(decode_raw_transaction(&typed(3, blob_fields(&TO))), Ok(Some(TO)));
        let body = list(&blob_fields(&TO));
        let network = [vec![3], list(&[body.clone(), list(&[]), list(&[]), list(&[])])].concat();
        assert_eq!(decode_raw_transaction(&network), Ok(Some(TO)), "the network form, with blobs");
        let cells = [vec![3], list(&[body, n(1), list(&[]), list(&[]), list(&[])])].concat();
        assert_eq!(decode_raw_transaction(&cells), Ok(Some(TO)), "EIP-7594's network form");
        assert_eq!(decode_raw_transaction(&typed(3, blob_fields(&[]))), Err(CONTRACT_UNDECODED));
        let authorization = list(&[n(1), bytes(&TO), n(0), n(1), n(1), n(1)]);
        assert_eq!(decode_raw_transaction(&set_code(list(&[authorization]))), Err(CONTRACT_AUTHORIZATION));
        assert_eq!(decode_raw_transaction(&set_code(list(&[]))), Err(CONTRACT_UNDECODED));
        // Trailing bytes, a field too many or too few, other types, garbage.
        let trailing = [legacy(&TO), vec![0x80]].concat();
        let mut long = eip1559(&TO);
        long.push(0);
        let eleven = typed(2, vec![n(1); 11]);
        let long_bytes = bytes(&[7; 60]);
        assert!(long_bytes.len() > 60, "a long string");
        for junk in [
            trailing,
            long,
            eleven,
            typed(0x05, vec![n(1)]),
            typed(0x7e, vec![n(1)]),
            vec![],
            vec![0x02],
            vec![0xff, 0xff],
            vec![0x02, 0xf8, 0xff, 0x01],
            vec![0x02, 0xf8, 0x01, 0x01],
            long_bytes,
        ] {
            assert!(decode_raw_transaction(&junk).is_err(), "{junk:?}");
        }
    }
}
