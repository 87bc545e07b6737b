//! EIP-3076 slashing-protection interchange documents (format version 5) as typed values.
//!
//! Owns: turning a document into keys, roots and numbers **where it enters** (a request's
//! `slashing_protection`, a row of the store, a client's export), with an error that names the
//! field as a JSON pointer; the union of several histories of a key; the check that a history
//! holds no surround vote (a client refuses to import one); writing a document back.
//! Must not: do I/O, or import anything of the crate (it is a leaf that the broker, the store
//! and the validator driver all use).
//!
//! Keys and roots are compared as **bytes**, as clients compare them: `0x`-less hex, upper case
//! hex and the like are refused where a document enters, never half-normalised. Slots and
//! epochs are decimal strings (EIP-3076) up to 2^53 − 1, the largest a JavaScript client
//! (Lodestar) reads exactly. An all-zero `signing_root` means "unknown", as in Lodestar, and is
//! kept as no root.
//!
//! What ovsb keeps of a key is the union of every record it was given or exported: every
//! distinct signed block and attestation, once each. The union never narrows (two blocks at
//! one slot stay two) and never grows with the number of moves.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value, json};

/// The largest slot or epoch accepted: 2^53 − 1 (JavaScript clients read numbers as doubles).
pub const MAX_NUMBER: u64 = (1 << 53) - 1;

/// A 32-byte root (`genesis_validators_root`, `signing_root`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Root(pub [u8; 32]);

/// A BLS public key (48 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pubkey(pub [u8; 48]);

/// `Display` and `Debug` as `0x` and lower-case hex, the form clients write.
macro_rules! lower_hex {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "0x{}", hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    )*};
}

lower_hex!(Root, Pubkey);

/// `0x` and exactly `2 * N` hex digits (either case), as bytes.
fn prefixed_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.strip_prefix("0x")?;
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

impl Root {
    /// `0x` and 64 hex digits.
    pub fn parse(text: &str) -> Option<Root> {
        prefixed_hex::<32>(text).map(Root)
    }
}

impl Pubkey {
    /// `0x` and 96 hex digits.
    pub fn parse(text: &str) -> Option<Pubkey> {
        prefixed_hex::<48>(text).map(Pubkey)
    }
}

/// A signed block of a key's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignedBlock {
    /// Its slot.
    pub slot: u64,
    /// Its signing root, when known.
    pub signing_root: Option<Root>,
}

/// A signed attestation of a key's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignedAttestation {
    /// Its target epoch (first, so that a history sorts by target).
    pub target_epoch: u64,
    /// Its source epoch.
    pub source_epoch: u64,
    /// Its signing root, when known.
    pub signing_root: Option<Root>,
}

/// Everything known to be signed by one key: each distinct record once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Signed blocks, by slot then root.
    pub blocks: BTreeSet<SignedBlock>,
    /// Signed attestations, by target, source, root.
    pub attestations: BTreeSet<SignedAttestation>,
}

impl History {
    /// Whether nothing is known to be signed.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.attestations.is_empty()
    }

    /// Adds every record of `other` not already here.
    pub fn absorb(&mut self, other: &History) {
        self.blocks.extend(other.blocks.iter().copied());
        self.attestations.extend(other.attestations.iter().copied());
    }

    /// Two attestations of which one surrounds the other (source before and target after),
    /// if the history holds such a pair: the first one surrounds the second. Slashable, and
    /// refused by clients on import. O(n log n).
    pub fn surround(&self) -> Option<(SignedAttestation, SignedAttestation)> {
        let mut by_source: Vec<&SignedAttestation> = self.attestations.iter().collect();
        by_source.sort_by_key(|a| (a.source_epoch, a.target_epoch));
        // The attestation with the largest target among those with a smaller source.
        let mut widest: Option<&SignedAttestation> = None;
        let mut i = 0;
        while i < by_source.len() {
            let source = by_source[i].source_epoch;
            let group_end =
                by_source[i..].iter().position(|a| a.source_epoch != source).map_or(by_source.len(), |n| i + n);
            for inner in &by_source[i..group_end] {
                if let Some(outer) = widest
                    && outer.target_epoch > inner.target_epoch
                {
                    return Some((*outer, **inner));
                }
            }
            for candidate in &by_source[i..group_end] {
                if widest.is_none_or(|w| candidate.target_epoch > w.target_epoch) {
                    widest = Some(candidate);
                }
            }
            i = group_end;
        }
        None
    }
}

/// A parsed interchange document: the chain it belongs to and each key's history (entries of
/// one key given twice are one history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interchange {
    /// The chain (`metadata.genesis_validators_root`).
    pub genesis_validators_root: Root,
    /// Each key's history.
    pub keys: BTreeMap<Pubkey, History>,
}

/// Why a document is not an EIP-3076 interchange: where (a JSON pointer into the document)
/// and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {pointer}: {reason}")]
pub struct InvalidInterchange {
    /// A JSON pointer (RFC 6901) to the offending field; empty for the whole document.
    pub pointer: String,
    /// What is wrong, and what was expected.
    pub reason: String,
}

fn invalid(pointer: impl Into<String>, reason: impl Into<String>) -> InvalidInterchange {
    let pointer = pointer.into();
    InvalidInterchange { pointer: if pointer.is_empty() { "/".into() } else { pointer }, reason: reason.into() }
}

fn field<'a>(object: &'a Map<String, Value>, pointer: &str, name: &str) -> Result<&'a Value, InvalidInterchange> {
    object.get(name).ok_or_else(|| invalid(format!("{pointer}/{name}"), "required (EIP-3076)"))
}

fn object<'a>(value: &'a Value, pointer: &str) -> Result<&'a Map<String, Value>, InvalidInterchange> {
    value.as_object().ok_or_else(|| invalid(pointer, "must be a JSON object"))
}

fn array<'a>(value: &'a Value, pointer: &str) -> Result<&'a Vec<Value>, InvalidInterchange> {
    value.as_array().ok_or_else(|| invalid(pointer, "must be an array"))
}

fn number(object: &Map<String, Value>, pointer: &str, name: &str) -> Result<u64, InvalidInterchange> {
    let at = format!("{pointer}/{name}");
    let text = field(object, pointer, name)?
        .as_str()
        .ok_or_else(|| invalid(&at, "must be a decimal string (EIP-3076), e.g. \"100\""))?;
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(&at, format!("{text:?} is not a decimal string (EIP-3076), e.g. \"100\"")));
    }
    let value: u64 = text.parse().map_err(|_| invalid(&at, "not a decimal number"))?;
    if value > MAX_NUMBER {
        return Err(invalid(&at, format!("{value} is over {MAX_NUMBER}, the largest a client reads exactly")));
    }
    Ok(value)
}

fn signing_root(object: &Map<String, Value>, pointer: &str) -> Result<Option<Root>, InvalidInterchange> {
    match object.get("signing_root") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let root = value
                .as_str()
                .and_then(Root::parse)
                .ok_or_else(|| invalid(format!("{pointer}/signing_root"), "must be 0x and 64 hex digits"))?;
            Ok((root.0 != [0; 32]).then_some(root))
        }
    }
}

impl Interchange {
    /// Parses a document; the error names the first field that is wrong.
    pub fn parse(doc: &Value) -> Result<Interchange, InvalidInterchange> {
        let top = object(doc, "")?;
        let metadata = object(field(top, "", "metadata")?, "/metadata")?;
        match field(metadata, "/metadata", "interchange_format_version")?.as_str() {
            Some("5") => {}
            _ => return Err(invalid("/metadata/interchange_format_version", "must be \"5\" (the format ovsb reads)")),
        }
        let genesis_validators_root = field(metadata, "/metadata", "genesis_validators_root")?
            .as_str()
            .and_then(Root::parse)
            .ok_or_else(|| invalid("/metadata/genesis_validators_root", "must be 0x and 64 hex digits"))?;
        let mut keys: BTreeMap<Pubkey, History> = BTreeMap::new();
        for (i, entry) in array(field(top, "", "data")?, "/data")?.iter().enumerate() {
            let at = format!("/data/{i}");
            let entry = object(entry, &at)?;
            let pubkey = field(entry, &at, "pubkey")?
                .as_str()
                .and_then(Pubkey::parse)
                .ok_or_else(|| invalid(format!("{at}/pubkey"), "must be 0x and 96 hex digits (a BLS public key)"))?;
            let mut history = History::default();
            for (j, block) in
                array(field(entry, &at, "signed_blocks")?, &format!("{at}/signed_blocks"))?.iter().enumerate()
            {
                let at = format!("{at}/signed_blocks/{j}");
                let block = object(block, &at)?;
                history
                    .blocks
                    .insert(SignedBlock { slot: number(block, &at, "slot")?, signing_root: signing_root(block, &at)? });
            }
            let attestations = array(field(entry, &at, "signed_attestations")?, &format!("{at}/signed_attestations"))?;
            for (j, attestation) in attestations.iter().enumerate() {
                let at = format!("{at}/signed_attestations/{j}");
                let attestation = object(attestation, &at)?;
                let source_epoch = number(attestation, &at, "source_epoch")?;
                let target_epoch = number(attestation, &at, "target_epoch")?;
                if source_epoch > target_epoch {
                    return Err(invalid(
                        format!("{at}/source_epoch"),
                        format!("source epoch {source_epoch} is after target epoch {target_epoch}"),
                    ));
                }
                history.attestations.insert(SignedAttestation {
                    source_epoch,
                    target_epoch,
                    signing_root: signing_root(attestation, &at)?,
                });
            }
            keys.entry(pubkey).or_default().absorb(&history);
        }
        Ok(Interchange { genesis_validators_root, keys })
    }

    /// Parses JSON text (a stored row, a client's export).
    pub fn from_text(text: &str) -> Result<Interchange, InvalidInterchange> {
        let doc: Value = serde_json::from_str(text).map_err(|e| invalid("", format!("not JSON: {e}")))?;
        Interchange::parse(&doc)
    }

    /// An empty document of a chain.
    pub fn empty(genesis_validators_root: Root) -> Interchange {
        Interchange { genesis_validators_root, keys: BTreeMap::new() }
    }

    /// The same document with only `pubkeys`' entries.
    pub fn only(&self, pubkeys: &[Pubkey]) -> Interchange {
        Interchange {
            genesis_validators_root: self.genesis_validators_root,
            keys: self.keys.iter().filter(|(k, _)| pubkeys.contains(k)).map(|(k, h)| (*k, h.clone())).collect(),
        }
    }

    /// Adds every record of `other` (of the same chain; the caller checks) not already here.
    pub fn absorb(&mut self, other: &Interchange) {
        for (key, history) in &other.keys {
            self.keys.entry(*key).or_default().absorb(history);
        }
    }

    /// The first key whose history holds a surround vote, with the pair.
    pub fn surround(&self) -> Option<(Pubkey, SignedAttestation, SignedAttestation)> {
        self.keys.iter().find_map(|(key, history)| history.surround().map(|(a, b)| (*key, a, b)))
    }

    /// The document as EIP-3076 JSON, keys and records in order.
    pub fn to_json(&self) -> Value {
        let root = |r: &Option<Root>| r.map(|r| r.to_string());
        let data: Vec<Value> = self
            .keys
            .iter()
            .map(|(key, history)| {
                let blocks: Vec<Value> = history
                    .blocks
                    .iter()
                    .map(|b| {
                        let mut out = json!({"slot": b.slot.to_string()});
                        if let Some(r) = root(&b.signing_root) {
                            out["signing_root"] = json!(r);
                        }
                        out
                    })
                    .collect();
                let attestations: Vec<Value> = history
                    .attestations
                    .iter()
                    .map(|a| {
                        let mut out = json!({"source_epoch": a.source_epoch.to_string(), "target_epoch": a.target_epoch.to_string()});
                        if let Some(r) = root(&a.signing_root) {
                            out["signing_root"] = json!(r);
                        }
                        out
                    })
                    .collect();
                json!({"pubkey": key.to_string(), "signed_blocks": blocks, "signed_attestations": attestations})
            })
            .collect();
        json!({
            "metadata": {"interchange_format_version": "5", "genesis_validators_root": self.genesis_validators_root.to_string()},
            "data": data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "0xa3a32b0f8b4ddb83f1a0a853d81dd725dfe577d4f4c3db8ece52ce2b026eca84815c1a7e8e92a4de3d755733bf7e4a9b";

    fn root(byte: char) -> String {
        format!("0x{}", byte.to_string().repeat(64))
    }

    fn doc(data: Value) -> Value {
        json!({"metadata": {"interchange_format_version": "5", "genesis_validators_root": root('1')}, "data": data})
    }

    fn entry(blocks: Value, attestations: Value) -> Value {
        json!({"pubkey": KEY, "signed_blocks": blocks, "signed_attestations": attestations})
    }

    fn refused(doc: Value) -> InvalidInterchange {
        Interchange::parse(&doc).expect_err("refused")
    }

    #[test]
    fn a_well_formed_document_parses_into_bytes_and_numbers() {
        let upper = format!("0x{}", KEY[2..].to_ascii_uppercase());
        let parsed = Interchange::parse(&doc(json!([
            entry(json!([{"slot": "100", "signing_root": root('a')}]), json!([{"source_epoch": "50", "target_epoch": "51"}])),
            {"pubkey": upper, "signed_blocks": [{"slot": "007"}], "signed_attestations": [{"source_epoch": "1", "target_epoch": "2", "signing_root": root('0')}]},
        ])))
        .unwrap();
        assert_eq!(parsed.keys.len(), 1, "one key whatever the case of its hex: {parsed:?}");
        let history = &parsed.keys[&Pubkey::parse(KEY).unwrap()];
        assert_eq!(history.blocks.iter().map(|b| b.slot).collect::<Vec<_>>(), vec![7, 100]);
        assert_eq!(history.attestations.len(), 2);
        assert!(history.attestations.iter().all(|a| a.signing_root.is_none()), "a zero root is no root");
        assert_eq!(Interchange::parse(&parsed.to_json()).unwrap(), parsed, "it round-trips");
    }

    #[test]
    fn every_departure_from_eip_3076_is_refused_with_the_field_named() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!([]), "/", "JSON object"),
            (json!({"data": []}), "/metadata", "required"),
            (
                json!({"metadata": {"interchange_format_version": 5, "genesis_validators_root": root('1')}, "data": []}),
                "/metadata/interchange_format_version",
                "\"5\"",
            ),
            (
                json!({"metadata": {"interchange_format_version": "5", "genesis_validators_root": &root('1')[2..]}, "data": []}),
                "/metadata/genesis_validators_root",
                "0x",
            ),
            (
                json!({"metadata": {"interchange_format_version": "5", "genesis_validators_root": root('1')}}),
                "/data",
                "required",
            ),
            (
                doc(json!([{"pubkey": &KEY[2..], "signed_blocks": [], "signed_attestations": []}])),
                "/data/0/pubkey",
                "0x",
            ),
            (
                doc(json!([{"pubkey": format!("{KEY}00"), "signed_blocks": [], "signed_attestations": []}])),
                "/data/0/pubkey",
                "96",
            ),
            (doc(json!([{"pubkey": KEY, "signed_attestations": []}])), "/data/0/signed_blocks", "required"),
            (doc(json!([{"pubkey": KEY, "signed_blocks": []}])), "/data/0/signed_attestations", "required"),
            (doc(json!([entry(json!([{"slot": "0x64"}]), json!([]))])), "/data/0/signed_blocks/0/slot", "decimal"),
            (doc(json!([entry(json!([{"slot": 100}]), json!([]))])), "/data/0/signed_blocks/0/slot", "decimal"),
            (doc(json!([entry(json!([{"slot": "-1"}]), json!([]))])), "/data/0/signed_blocks/0/slot", "decimal"),
            (
                doc(json!([entry(json!([{"slot": "9007199254740992"}]), json!([]))])),
                "/data/0/signed_blocks/0/slot",
                "over",
            ),
            (
                doc(json!([entry(json!([{"slot": "1", "signing_root": "0x12"}]), json!([]))])),
                "/data/0/signed_blocks/0/signing_root",
                "64",
            ),
            (
                doc(json!([entry(json!([]), json!([{"source_epoch": "1"}]))])),
                "/data/0/signed_attestations/0/target_epoch",
                "required",
            ),
            (
                doc(json!([entry(json!([]), json!([{"source_epoch": "3", "target_epoch": "2"}]))])),
                "/data/0/signed_attestations/0/source_epoch",
                "after",
            ),
        ];
        for (given, pointer, reason) in cases {
            let err = refused(given.clone());
            assert_eq!(err.pointer, pointer, "{given}: {err}");
            assert!(err.reason.contains(reason), "{given}: {err} should say {reason}");
        }
    }

    #[test]
    fn the_union_keeps_every_distinct_record_once() {
        let a = Interchange::parse(&doc(json!([entry(
            json!([{"slot": "10", "signing_root": root('a')}, {"slot": "10", "signing_root": root('b')}]),
            json!([{"source_epoch": "1", "target_epoch": "2"}])
        )])))
        .unwrap();
        let b = Interchange::parse(&doc(json!([entry(
            json!([{"slot": "10", "signing_root": root('a')}, {"slot": "11"}]),
            json!([{"source_epoch": "1", "target_epoch": "2"}, {"source_epoch": "2", "target_epoch": "3"}])
        )])))
        .unwrap();
        let mut union = a.clone();
        for _ in 0..5 {
            union.absorb(&b);
            union.absorb(&a);
        }
        let history = &union.keys[&Pubkey::parse(KEY).unwrap()];
        assert_eq!(history.blocks.len(), 3, "two blocks at slot 10 stay two, repeats are one: {history:?}");
        assert_eq!(history.attestations.len(), 2);
        let only_other = union.only(&[Pubkey([7; 48])]);
        assert!(only_other.keys.is_empty());
    }

    #[test]
    fn surround_votes_are_found_in_any_order() {
        let history = |pairs: &[(u64, u64)]| History {
            blocks: BTreeSet::new(),
            attestations: pairs
                .iter()
                .map(|&(s, t)| SignedAttestation { source_epoch: s, target_epoch: t, signing_root: None })
                .collect(),
        };
        assert!(history(&[(1, 2), (2, 3), (3, 4), (3, 5), (4, 5)]).surround().is_none(), "no strict surround");
        assert!(history(&[(2, 3), (1, 5)]).surround().is_some(), "1→5 surrounds 2→3");
        let (outer, inner) = history(&[(12, 15), (1, 2), (10, 20)]).surround().unwrap();
        assert_eq!((outer.source_epoch, outer.target_epoch, inner.source_epoch, inner.target_epoch), (10, 20, 12, 15));
        assert!(history(&[(5, 6), (4, 9), (6, 7)]).surround().is_some());
        assert!(history(&[(5, 9), (5, 6)]).surround().is_none(), "same source: a double vote at most, not a surround");
    }
}
