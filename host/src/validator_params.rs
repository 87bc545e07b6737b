//! Validator parameters: their JSON Schema for the catalog, their checks, and which of them are
//! secret (keystores, passwords, a given history) and so are sealed rather than stored.
//!
//! Owns: turning a provision's or update's parameters into the public part kept with the
//! instance and the [`KeySecrets`] to import. A leaf: it depends on nothing above
//! [`crate::config`] (its names of parameters), [`crate::interchange`] and
//! [`crate::identity`] (the sealed-value schema). Must not: reach a client, the store or the
//! network (the validator driver in [`crate::provision`] does), and the broker, catalog and
//! routing call it only through these functions.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::interchange::{Interchange, Root};

pub use crate::config::{VALIDATOR_PARAMETERS, VALIDATOR_TEMPLATE_NAMES};

/// Most keys in one request.
const MAX_KEYS: usize = 100;

/// JSON Schema properties of the validator parameters (draft-04), for the catalog.
pub fn validator_parameter_schema() -> Value {
    let pubkey = json!({"type": "string", "pattern": "^0x[0-9a-fA-F]{96}$"});
    json!({
        "keystores": {
            "type": "array", "minItems": 1, "maxItems": MAX_KEYS,
            // anyOf rather than a union type: strict validators (ajv) refuse union types.
            "items": {"anyOf": [{"type": "object"}, {"type": "string"}]},
            "description": "EIP-2335 keystores (objects or JSON text, or sealed to ovsb's encryptionPublicKey) to load; never stored in clear, never returned",
        },
        "passwords": {
            "type": "array", "maxItems": MAX_KEYS,
            "items": {"anyOf": [{"type": "string", "maxLength": 1024}, crate::identity::sealed_schema()]},
            "description": "The keystores' passwords, in the same order; each may be sealed to ovsb's encryptionPublicKey",
        },
        "slashing_protection": {
            "anyOf": [{"type": "object"}, {"type": "string"}],
            "description": "EIP-3076 interchange (format version 5) of the keys' history; merged with what ovsb kept",
        },
        "fee_recipient": {
            "type": "string", "pattern": "^0x[0-9a-fA-F]{40}$",
            "description": "Where execution rewards go (required at provision; not the zero address)",
        },
        "graffiti": {"type": "string", "minLength": 1, "maxLength": 32, "description": "Graffiti of proposed blocks (UTF-8, at most 32 bytes; set at provision)"},
        "gas_limit": {"type": "integer", "minimum": 5000, "maximum": 1_000_000_000u64, "description": "Gas limit of proposed blocks"},
        "doppelganger_protection": {"type": "boolean", "description": "Wait to see that a key is not active elsewhere before signing (set at provision)"},
        "remove_keys": {
            "type": "array", "maxItems": MAX_KEYS, "items": pubkey,
            "description": "Update only: keys to unload (their history is kept by ovsb)",
        },
        "pubkeys": {"type": "array", "items": pubkey, "description": "The instance's keys; set by ovsb, ignored on input"},
    })
}

/// The secret part of a request: what is imported. Never logged (no field in `Debug`).
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct KeySecrets {
    /// EIP-2335 keystores, JSON text.
    pub keystores: Vec<String>,
    /// Their passwords.
    pub passwords: Vec<String>,
    /// Their public keys, in the same order.
    pub pubkeys: Vec<String>,
    /// EIP-3076 interchange given with them, JSON text.
    pub slashing_protection: Option<String>,
}

impl std::fmt::Debug for KeySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySecrets").field("pubkeys", &self.pubkeys).finish_non_exhaustive()
    }
}

/// Validator parameters split into what is stored and shown (`public`) and what is sealed.
#[derive(Debug)]
pub struct Prepared {
    /// The parameters as kept and returned: no keystore, password or history; `pubkeys` added.
    pub public: Value,
    /// Keys to import, if the request brings any.
    pub secrets: Option<KeySecrets>,
}

/// Checks provision parameters; the error names the field and the reason.
pub fn prepare_provision(parameters: &Value) -> Result<Prepared, String> {
    if parameters.get("fee_recipient").is_none() {
        return Err("parameters.fee_recipient: required".into());
    }
    if parameters.get("remove_keys").is_some() {
        return Err("parameters.remove_keys: only an update removes keys".into());
    }
    let secrets = read_keys(parameters)?;
    let mut public = common(parameters, &Value::Null)?;
    if secrets.is_none() {
        return Err("parameters.keystores: required (at least one EIP-2335 keystore)".into());
    }
    public["pubkeys"] = json!(secrets.as_ref().map_or(Vec::new(), |s| s.pubkeys.clone()));
    Ok(Prepared { public, secrets })
}

/// Checks update parameters against the instance's current (public) ones; what the update
/// names changes, the rest stays. The error names the field and the reason.
pub fn prepare_update(current: &Value, parameters: &Value) -> Result<Prepared, String> {
    for name in VALIDATOR_TEMPLATE_NAMES {
        if let Some(value) = parameters.get(*name)
            && current.get(*name) != Some(value)
        {
            // A start option: changing it restarts the client, and a restarted `lodestar dev`
            // wipes its keys and databases. Refused rather than risk the keys' history.
            return Err(format!(
                "parameters.{name}: set at provision only (the client takes it as a start option and has no API to change it)"
            ));
        }
    }
    let secrets = read_keys(parameters)?;
    let mut public = common(parameters, current)?;
    let mut keys: Vec<String> = pubkeys_of(current);
    // Idempotent, as a replayed update must be: removing a key the instance does not have and
    // adding one it has are no-ops.
    let mut secrets = secrets;
    if let Some(remove) = parameters.get("remove_keys").and_then(Value::as_array) {
        for key in remove {
            let key = key.as_str().unwrap_or_default().to_ascii_lowercase();
            keys.retain(|k| *k != key);
            if secrets.as_ref().is_some_and(|s| s.pubkeys.contains(&key)) {
                return Err(format!("parameters.remove_keys: {key} is also in keystores"));
            }
        }
    }
    if let Some(given) = secrets.take() {
        let current_keys = pubkeys_of(current);
        let mut adding = KeySecrets { slashing_protection: given.slashing_protection.clone(), ..KeySecrets::default() };
        for (i, key) in given.pubkeys.iter().enumerate() {
            if !current_keys.contains(key) {
                adding.pubkeys.push(key.clone());
                adding.keystores.push(given.keystores[i].clone());
                adding.passwords.push(given.passwords[i].clone());
                keys.push(key.clone());
            }
        }
        secrets = (!adding.pubkeys.is_empty()).then_some(adding);
    }
    public["pubkeys"] = json!(keys);
    Ok(Prepared { public, secrets })
}

/// The instance's keys, from its public parameters.
pub fn pubkeys_of(parameters: &Value) -> Vec<String> {
    parameters
        .get("pubkeys")
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The non-secret parameters: the request's over the current ones, defaults filled in.
fn common(parameters: &Value, current: &Value) -> Result<Value, String> {
    let mut public = match current {
        Value::Object(map) => Value::Object(map.clone()),
        _ => json!({"graffiti": "ovsb", "doppelganger_protection": false}),
    };
    for (name, value) in parameters.as_object().into_iter().flatten() {
        if !["keystores", "passwords", "slashing_protection", "remove_keys", "pubkeys"].contains(&name.as_str()) {
            public[name] = value.clone();
        }
    }
    if let Some(fee) = parameters.get("fee_recipient").and_then(Value::as_str) {
        let hex = fee.trim_start_matches("0x");
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("parameters.fee_recipient: not an address (0x and 40 hex digits)".into());
        }
        if hex.bytes().all(|b| b == b'0') {
            return Err("parameters.fee_recipient: the zero address would burn the rewards".into());
        }
        public["fee_recipient"] = json!(format!("0x{}", hex.to_ascii_lowercase()));
    }
    if let Some(graffiti) = parameters.get("graffiti").and_then(Value::as_str) {
        if graffiti.len() > 32 {
            return Err(format!("parameters.graffiti: {} bytes, at most 32", graffiti.len()));
        }
        // It becomes a command-line argument of the client: never an option of its own.
        if graffiti.starts_with('-') || graffiti.chars().any(char::is_control) {
            return Err("parameters.graffiti: must not start with '-' or contain control characters".into());
        }
    }
    Ok(public)
}

/// The keys a request brings, checked: EIP-2335 keystores, one password each, no key twice,
/// an EIP-3076 history if given.
fn read_keys(parameters: &Value) -> Result<Option<KeySecrets>, String> {
    let keystores = parameters.get("keystores").and_then(Value::as_array);
    let passwords = parameters.get("passwords").and_then(Value::as_array);
    let (keystores, passwords) = match (keystores, passwords) {
        (None, None) => {
            if parameters.get("slashing_protection").is_some() {
                return Err("parameters.slashing_protection: given without keystores".into());
            }
            return Ok(None);
        }
        (Some(_), None) => return Err("parameters.passwords: required with keystores (one per keystore)".into()),
        (None, Some(_)) => return Err("parameters.keystores: required with passwords".into()),
        (Some(k), Some(p)) => (k, p),
    };
    if keystores.len() != passwords.len() {
        return Err(format!("parameters.passwords: {} passwords for {} keystores", passwords.len(), keystores.len()));
    }
    let mut secrets = KeySecrets::default();
    for (i, keystore) in keystores.iter().enumerate() {
        let keystore = match keystore {
            Value::String(text) => {
                serde_json::from_str::<Value>(text).map_err(|e| format!("parameters.keystores[{i}]: not JSON: {e}"))?
            }
            other => other.clone(),
        };
        let pubkey = check_keystore(&keystore).map_err(|reason| format!("parameters.keystores[{i}]: {reason}"))?;
        if secrets.pubkeys.contains(&pubkey) {
            return Err(format!("parameters.keystores[{i}]: key {pubkey} is given twice"));
        }
        secrets.pubkeys.push(pubkey);
        secrets.keystores.push(keystore.to_string());
    }
    for (i, password) in passwords.iter().enumerate() {
        let Some(password) = password.as_str() else {
            return Err(format!("parameters.passwords[{i}]: not a string"));
        };
        secrets.passwords.push(password.to_string());
    }
    if let Some(history) = parameters.get("slashing_protection") {
        let history = match history {
            Value::String(text) => serde_json::from_str::<Value>(text)
                .map_err(|e| format!("parameters.slashing_protection: not JSON: {e}"))?,
            other => other.clone(),
        };
        // Kept as parsed: keys and roots normalised once, here.
        secrets.slashing_protection = Some(read_interchange(&history)?.to_json().to_string());
    }
    Ok(Some(secrets))
}

/// The public key of an EIP-2335 keystore (`0x` + lowercase hex), or why it is not one.
fn check_keystore(keystore: &Value) -> Result<String, String> {
    if !keystore.is_object() {
        return Err("not an EIP-2335 keystore (a JSON object)".into());
    }
    if keystore.get("version").and_then(Value::as_u64) != Some(4) {
        return Err("not an EIP-2335 keystore: version must be 4".into());
    }
    let crypto = keystore.get("crypto").ok_or("not an EIP-2335 keystore: no crypto")?;
    for part in ["kdf", "checksum", "cipher"] {
        if !crypto.get(part).is_some_and(Value::is_object) {
            return Err(format!("not an EIP-2335 keystore: no crypto.{part}"));
        }
    }
    let pubkey = keystore.get("pubkey").and_then(Value::as_str).ok_or("no pubkey (ovsb needs it to track the key)")?;
    let hex = pubkey.trim_start_matches("0x");
    if hex.len() != 96 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("pubkey is not a BLS public key (96 hex digits)".into());
    }
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

/// Reads a given EIP-3076 interchange: well formed (see [`crate::interchange`]), and free of
/// surround votes (slashable, and refused by clients on import). The error names the field.
pub fn read_interchange(doc: &Value) -> Result<Interchange, String> {
    let what = "parameters.slashing_protection";
    let parsed = Interchange::parse(doc).map_err(|err| format!("{what} {err}"))?;
    if let Some((key, outer, inner)) = parsed.surround() {
        return Err(format!(
            "{what}: the history of {key} holds a surround vote (attestation {}→{} surrounds {}→{}): slashable, and no client imports it",
            outer.source_epoch, outer.target_epoch, inner.source_epoch, inner.target_epoch
        ));
    }
    Ok(parsed)
}

/// The chain of the history a request gives, if it gives one.
pub fn given_history_root(secrets: &KeySecrets) -> Option<Root> {
    let text = secrets.slashing_protection.as_deref()?;
    Interchange::from_text(text).ok().map(|doc| doc.genesis_validators_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keystore(pubkey: &str) -> Value {
        json!({"version": 4, "pubkey": pubkey, "path": "m/12381/3600/3/0/0", "uuid": "u",
            "crypto": {"kdf": {}, "checksum": {}, "cipher": {}}})
    }

    const KEY: &str =
        "a3a32b0f8b4ddb83f1a0a853d81dd725dfe577d4f4c3db8ece52ce2b026eca84815c1a7e8e92a4de3d755733bf7e4a9b";
    const FEE: &str = "0x00000000000000000000000000000000000000Bb";

    #[test]
    fn provision_parameters_keep_secrets_apart_and_name_what_is_wrong() {
        let params = json!({"keystores": [keystore(KEY)], "passwords": ["pw"], "fee_recipient": FEE});
        let prepared = prepare_provision(&params).unwrap();
        assert_eq!(prepared.public["pubkeys"], json!([format!("0x{KEY}")]));
        assert_eq!(prepared.public["fee_recipient"], json!(FEE.to_ascii_lowercase()));
        assert!(prepared.public.get("keystores").is_none() && prepared.public.get("passwords").is_none());
        let secrets = prepared.secrets.unwrap();
        assert_eq!(secrets.passwords, vec!["pw"]);
        assert!(!format!("{secrets:?}").contains("pw\""), "Debug hides the passwords");

        let bad = |params: Value, expected: &str| {
            let err = prepare_provision(&params).unwrap_err();
            assert!(err.contains(expected), "{err} should contain {expected}");
        };
        bad(json!({"keystores": [keystore(KEY)], "passwords": ["pw"]}), "fee_recipient: required");
        bad(
            json!({"keystores": [keystore(KEY)], "passwords": ["pw"], "fee_recipient": format!("0x{}", "0".repeat(40))}),
            "zero address",
        );
        bad(json!({"keystores": [keystore(KEY)], "fee_recipient": FEE}), "passwords: required");
        bad(
            json!({"keystores": [keystore(KEY)], "passwords": [], "fee_recipient": FEE}),
            "0 passwords for 1 keystores",
        );
        bad(
            json!({"keystores": [keystore(KEY), keystore(KEY)], "passwords": ["a", "b"], "fee_recipient": FEE}),
            "given twice",
        );
        bad(json!({"keystores": ["{nope"], "passwords": ["a"], "fee_recipient": FEE}), "keystores[0]: not JSON");
        bad(json!({"keystores": [{"version": 3}], "passwords": ["a"], "fee_recipient": FEE}), "version must be 4");
        bad(json!({"keystores": [keystore("12")], "passwords": ["a"], "fee_recipient": FEE}), "not a BLS public key");
        bad(json!({"fee_recipient": FEE}), "keystores: required");
        bad(
            json!({"keystores": [keystore(KEY)], "passwords": ["a"], "fee_recipient": FEE,
                "slashing_protection": {"metadata": {"interchange_format_version": "4"}, "data": []}}),
            "interchange_format_version",
        );
        bad(
            json!({"keystores": [keystore(KEY)], "passwords": ["a"], "fee_recipient": FEE, "graffiti": "x".repeat(33)}),
            "33 bytes",
        );
        bad(
            json!({"keystores": [keystore(KEY)], "passwords": ["a"], "fee_recipient": FEE, "graffiti": "--keymanager.authEnabled=false"}),
            "must not start with '-'",
        );
    }

    #[test]
    fn updates_change_what_they_name_and_add_or_remove_keys() {
        let current = json!({"fee_recipient": "0xbb", "graffiti": "g", "doppelganger_protection": false, "pubkeys": [format!("0x{KEY}")]});
        let fee_only = prepare_update(&current, &json!({"gas_limit": 30000000, "graffiti": "g"})).unwrap();
        assert_eq!(fee_only.public["graffiti"], "g");
        assert_eq!(fee_only.public["gas_limit"], 30000000);
        assert_eq!(fee_only.public["pubkeys"], current["pubkeys"]);
        assert!(fee_only.secrets.is_none());
        assert!(prepare_update(&current, &json!({"graffiti": "h"})).unwrap_err().contains("set at provision only"));
        let removed =
            prepare_update(&current, &json!({"remove_keys": [format!("0x{}", KEY.to_ascii_uppercase())]})).unwrap();
        assert_eq!(removed.public["pubkeys"], json!([]));
        let other = "b".repeat(96);
        // Replays are no-ops: removing an absent key, adding a present one.
        let absent = prepare_update(&current, &json!({"remove_keys": [format!("0x{other}")]})).unwrap();
        assert_eq!(absent.public, current);
        let present = prepare_update(&current, &json!({"keystores": [keystore(KEY)], "passwords": ["p"]})).unwrap();
        assert_eq!(present.public, current);
        assert!(present.secrets.is_none(), "nothing to import");
        let added =
            prepare_update(&current, &json!({"keystores": [keystore(KEY), keystore(&other)], "passwords": ["p", "q"]}))
                .unwrap();
        assert_eq!(added.public["pubkeys"], json!([format!("0x{KEY}"), format!("0x{other}")]));
        let secrets = added.secrets.unwrap();
        assert_eq!((secrets.pubkeys, secrets.passwords), (vec![format!("0x{other}")], vec!["q".to_string()]));
        assert!(
            prepare_update(
                &current,
                &json!({"keystores": [keystore(&other)], "passwords": ["p"], "remove_keys": [format!("0x{other}")]})
            )
            .unwrap_err()
            .contains("also in keystores")
        );
    }

    #[test]
    fn a_given_history_is_refused_with_its_field_named_or_kept_normalised() {
        let meta =
            json!({"interchange_format_version": "5", "genesis_validators_root": format!("0x{}", "1".repeat(64))});
        let with = |history: Value| json!({"keystores": [keystore(KEY)], "passwords": ["a"], "fee_recipient": FEE, "slashing_protection": history});
        let entry = |key: &str, atts: Value| json!({"pubkey": key, "signed_blocks": [], "signed_attestations": atts});
        for (history, expected) in [
            (json!({"metadata": meta, "data": [entry(KEY, json!([]))]}), "at /data/0/pubkey: must be 0x"),
            (
                json!({"metadata": meta, "data": [{"pubkey": format!("0x{KEY}"), "signed_blocks": [{"slot": "0x64"}], "signed_attestations": []}]}),
                "at /data/0/signed_blocks/0/slot",
            ),
            (
                json!({"metadata": meta, "data": [{"pubkey": format!("0x{KEY}"), "signed_attestations": []}]}),
                "at /data/0/signed_blocks: required",
            ),
            (
                json!({"metadata": meta, "data": [entry(&format!("0x{KEY}"), json!([{"source_epoch": "10", "target_epoch": "20"}, {"source_epoch": "12", "target_epoch": "15"}]))]}),
                "surround vote (attestation 10→20 surrounds 12→15)",
            ),
        ] {
            let err = prepare_provision(&with(history)).unwrap_err();
            assert!(err.starts_with("parameters.slashing_protection"), "{err}");
            assert!(err.contains(expected), "{err} should contain {expected}");
        }
        let upper = format!("0x{}", KEY.to_ascii_uppercase());
        let ok = prepare_provision(&with(
            json!({"metadata": meta, "data": [entry(&upper, json!([{"source_epoch": "1", "target_epoch": "2"}]))]}),
        ))
        .unwrap();
        let kept = ok.secrets.unwrap().slashing_protection.unwrap();
        assert!(kept.contains(&format!("0x{KEY}")), "kept with its key in lower case: {kept}");
        let doc = Interchange::from_text(&kept).unwrap();
        assert_eq!(
            given_history_root(&KeySecrets { slashing_protection: Some(kept), ..KeySecrets::default() }),
            Some(doc.genesis_validators_root)
        );
    }
}
