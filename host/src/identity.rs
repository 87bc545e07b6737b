//! ovsb's identity: X25519 key pairs in the form Ethereum wallets use for encryption, so that
//! platforms can hand ovsb secrets they cannot read, and ovsb can hand applications credentials
//! the platform cannot read.
//!
//! Owns: the key pairs (created on first start in `<data_dir>/identity.keys`, mode 0600, or given
//! by the operator in `broker.identity_keys` / `OVSB_IDENTITY_KEYS`), the public identifier (the
//! base64 X25519 public key, as `eth_getEncryptionPublicKey` returns it), and the
//! `x25519-xsalsa20-poly1305` format of `@metamask/eth-sig-util` (`version`, `nonce`,
//! `ephemPublicKey`, `ciphertext`, all base64) in both directions, built on `crypto_box`'s
//! `SalsaBox` (NaCl's `crypto_box`).
//!
//! Rotation: the first key is the current one, published in the catalog; older keys follow it
//! and still open what was sealed to them. `ovsb identity rotate` puts a new key first.
//! Must not: log or return an opened plaintext.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_box::aead::Aead as _;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::credentials::{SecretError, read_or_create};

/// The only `version` of sealed objects.
pub const SEALED_VERSION: &str = "x25519-xsalsa20-poly1305";

/// A sealed object, as `@metamask/eth-sig-util`'s `encrypt` makes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sealed {
    /// Always [`SEALED_VERSION`].
    pub version: String,
    /// 24 bytes, base64.
    pub nonce: String,
    /// The sender's one-time X25519 public key, base64.
    pub ephem_public_key: String,
    /// XSalsa20-Poly1305 box of the plaintext, base64.
    pub ciphertext: String,
}

/// ovsb's key pairs, the current one first. Never logged (no `Debug`).
#[derive(Clone)]
pub struct Identity {
    keys: Vec<SecretKey>,
}

impl Identity {
    /// The configured keys (base64 X25519 secret keys, current first), or those kept in
    /// `file`, which is created with one new key when absent.
    pub fn load_or_create(configured: &[String], file: &Path) -> Result<Identity, SecretError> {
        let lines: Vec<String> = if configured.is_empty() {
            read_or_create(file, || B64.encode(random_bytes()))?.lines().map(str::to_string).collect()
        } else {
            configured.to_vec()
        };
        let mut keys = Vec::new();
        for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let bytes = B64.decode(line).map_err(|_| SecretError::MalformedIdentity)?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretError::MalformedIdentity)?;
            keys.push(SecretKey::from_bytes(bytes));
        }
        if keys.is_empty() {
            return Err(SecretError::MalformedIdentity);
        }
        Ok(Identity { keys })
    }

    /// Puts a new key first in `file` (older keys stay, and still open what was sealed to them);
    /// returns the new public identifier. A running ovsb uses it after its next start.
    pub fn rotate(file: &Path) -> Result<String, SecretError> {
        let err = |source| SecretError::File { path: file.display().to_string(), source };
        let current = Identity::load_or_create(&[], file)?;
        let fresh = SecretKey::from_bytes(random_bytes());
        let mut text = B64.encode(fresh.to_bytes());
        for key in &current.keys {
            text.push('\n');
            text.push_str(&B64.encode(key.to_bytes()));
        }
        text.push('\n');
        let tmp = file.with_extension("rotate");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options.open(&tmp).map_err(err)?;
            out.write_all(text.as_bytes()).map_err(err)?;
            out.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, file).map_err(err)?;
        Ok(public_of(&fresh))
    }

    /// The public identifier: the current key's X25519 public key, base64 (44 characters).
    pub fn public_key(&self) -> String {
        public_of(&self.keys[0])
    }

    /// Every public key that still opens sealed objects, current first.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(public_of).collect()
    }

    /// Opens a sealed object; the error says why not (without any secret).
    pub fn open(&self, sealed: &Sealed) -> Result<Vec<u8>, String> {
        if sealed.version != SEALED_VERSION {
            return Err(format!("version must be {SEALED_VERSION:?}"));
        }
        let nonce: [u8; 24] =
            decode(&sealed.nonce, "nonce")?.try_into().map_err(|_| "nonce must be 24 bytes (base64)".to_string())?;
        let ephemeral: [u8; 32] = decode(&sealed.ephem_public_key, "ephemPublicKey")?
            .try_into()
            .map_err(|_| "ephemPublicKey must be 32 bytes (base64)".to_string())?;
        let ciphertext = decode(&sealed.ciphertext, "ciphertext")?;
        let ephemeral = PublicKey::from_bytes(ephemeral);
        let nonce = crypto_box::Nonce::from_slice(&nonce);
        self.keys
            .iter()
            .find_map(|key| SalsaBox::new(&ephemeral, key).decrypt(nonce, ciphertext.as_slice()).ok())
            .ok_or_else(|| format!("cannot be opened: not sealed to ovsb's key {} (or altered)", self.public_key()))
    }

    /// Opens `value` if it is a sealed object (`Ok(Some(text))`); `Ok(None)` if it is not one.
    /// The error names `path` and the reason.
    pub fn open_value(&self, value: &Value, path: &str) -> Result<Option<String>, String> {
        if !looks_sealed(value) {
            return Ok(None);
        }
        let sealed: Sealed = serde_json::from_value(value.clone())
            .map_err(|e| format!("{path}: not a sealed object ({SEALED_VERSION}): {e}"))?;
        let plain = self.open(&sealed).map_err(|reason| format!("{path}: {reason}"))?;
        String::from_utf8(plain).map(Some).map_err(|_| format!("{path}: the sealed text is not UTF-8"))
    }

    /// Replaces every sealed object inside `value` by its opened text.
    pub fn open_all(&self, value: &mut Value, path: &str) -> Result<(), String> {
        self.open_all_noting(value, path, &mut Vec::new())
    }

    /// [`open_all`](Self::open_all), adding each opened text to `opened` (to [`redact`] them
    /// from what a plugin says).
    pub fn open_all_noting(&self, value: &mut Value, path: &str, opened: &mut Vec<String>) -> Result<(), String> {
        if let Some(text) = self.open_value(value, path)? {
            opened.push(text.clone());
            *value = Value::String(text);
            return Ok(());
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.open_all_noting(item, &format!("{path}[{i}]"), opened)?;
                }
            }
            Value::Object(map) => {
                for (name, item) in map.iter_mut() {
                    self.open_all_noting(item, &format!("{path}.{name}"), opened)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `text` with every one of `secrets` (as it is, and as it reads inside a JSON string) replaced
/// by `[sealed]`: what a plugin says about its settings never carries a sealed value it was
/// given, to a response or to a log.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let quoted = serde_json::to_string(secret).unwrap_or_default();
        let escaped = quoted.trim_matches('"');
        for form in [secret.as_str(), escaped] {
            if !form.is_empty() && text.contains(form) {
                text = text.replace(form, "[sealed]");
            }
        }
    }
    text
}

/// Seals `plaintext` to a wallet's encryption public key (base64), as eth-sig-util's `encrypt`.
pub fn seal_to(public_key: &str, plaintext: &[u8]) -> Result<Sealed, String> {
    let recipient = parse_public_key(public_key)?;
    let ephemeral = SecretKey::from_bytes(random_bytes());
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    let ciphertext = SalsaBox::new(&recipient, &ephemeral)
        .encrypt(crypto_box::Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| "cannot seal".to_string())?;
    Ok(Sealed {
        version: SEALED_VERSION.to_string(),
        nonce: B64.encode(nonce),
        ephem_public_key: public_of(&ephemeral),
        ciphertext: B64.encode(ciphertext),
    })
}

/// A wallet encryption public key: base64 of 32 bytes.
pub fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    let bytes = B64.decode(text.trim()).map_err(|_| "not base64".to_string())?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| "not an X25519 public key (32 bytes)".to_string())?;
    Ok(PublicKey::from_bytes(bytes))
}

/// Whether a value is meant as a sealed object (it names the format or has a ciphertext).
pub fn looks_sealed(value: &Value) -> bool {
    value.as_object().is_some_and(|map| map.contains_key("ciphertext") || map.contains_key("ephemPublicKey"))
        || value.get("version").and_then(Value::as_str) == Some(SEALED_VERSION)
}

/// JSON Schema (draft-04) of a sealed object, for the catalog.
pub fn sealed_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "description": "A secret sealed to the service's metadata.encryptionPublicKey (@metamask/eth-sig-util encrypt, x25519-xsalsa20-poly1305)",
        "required": ["version", "nonce", "ephemPublicKey", "ciphertext"],
        "additionalProperties": false,
        "properties": {
            "version": {"enum": [SEALED_VERSION]},
            "nonce": {"type": "string"},
            "ephemPublicKey": {"type": "string"},
            "ciphertext": {"type": "string"},
        },
    })
}

fn public_of(key: &SecretKey) -> String {
    B64.encode(key.public_key().as_bytes())
}

fn decode(text: &str, what: &str) -> Result<Vec<u8>, String> {
    B64.decode(text).map_err(|_| format!("{what} is not base64"))
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_removes_secrets_as_they_are_and_as_json_quotes_them() {
        let secrets = vec!["hunter2".to_string(), "a\"b".to_string(), String::new()];
        let said = r#"bad api_key "hunter2" (expected 32 hex digits); also "a\"b" and a"b"#;
        assert_eq!(
            redact(said, &secrets),
            r#"bad api_key "[sealed]" (expected 32 hex digits); also "[sealed]" and [sealed]"#
        );
        assert_eq!(redact("nothing secret", &secrets), "nothing secret");
    }

    #[test]
    fn sealed_objects_open_with_current_and_older_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("identity.keys");
        let first = Identity::load_or_create(&[], &file).unwrap();
        assert_eq!(first.public_key().len(), 44);
        assert_eq!(Identity::load_or_create(&[], &file).unwrap().public_key(), first.public_key(), "kept");
        let sealed = seal_to(&first.public_key(), b"s3cret").unwrap();
        assert_eq!(first.open(&sealed).unwrap(), b"s3cret");

        let rotated = Identity::rotate(&file).unwrap();
        let now = Identity::load_or_create(&[], &file).unwrap();
        assert_eq!(now.public_key(), rotated);
        assert_eq!(now.public_keys()[1], first.public_key(), "the old key follows the new one");
        assert_eq!(now.open(&sealed).unwrap(), b"s3cret", "sealed to the old key still opens");

        let stranger = Identity::load_or_create(&[], &dir.path().join("other.keys")).unwrap();
        assert!(stranger.open(&sealed).unwrap_err().contains("not sealed to ovsb's key"));
        let mut altered = sealed.clone();
        altered.ciphertext = B64.encode(b"not the ciphertext at all");
        assert!(now.open(&altered).is_err());
        let mut value = serde_json::json!({"a": [serde_json::to_value(&sealed).unwrap()], "b": "plain"});
        now.open_all(&mut value, "parameters").unwrap();
        assert_eq!(value, serde_json::json!({"a": ["s3cret"], "b": "plain"}));
        let err = now.open_all(&mut serde_json::json!({"x": {"ciphertext": "AA=="}}), "parameters").unwrap_err();
        assert!(err.starts_with("parameters.x: not a sealed object"), "{err}");
        assert!(seal_to("short", b"x").is_err());
    }
}
