//! Broker secrets: the key binding credentials are derived from, and the Basic-auth check.
//!
//! A binding key is `HMAC-SHA256(secret key, instance id, binding id, salt)`, base64url: the
//! store keeps only the salt and the key's SHA-256, so a copy of the database opens no endpoint,
//! yet the broker can hand the same credentials out again (an identical bind replayed, or a
//! fetch of the binding), as OSB platforms expect.

use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The 32-byte secret key. Never logged (no `Debug`).
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

/// Why the secret key or password could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The configured key is not base64 of 32 bytes.
    #[error("the secret key (broker.secret_key / OVSB_SECRET_KEY) must be base64 of 32 bytes")]
    Malformed,
    /// An identity key is not base64 of 32 bytes.
    #[error(
        "ovsb's identity keys (broker.identity_keys / OVSB_IDENTITY_KEYS / <data_dir>/identity.keys) must be base64 X25519 secret keys of 32 bytes, one per line"
    )]
    MalformedIdentity,
    /// The key file could not be read or written.
    #[error("cannot use {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl SecretKey {
    /// The configured key (base64), or the one kept in `file`, created (mode 0600) when absent.
    pub fn load_or_create(configured: &str, file: &Path) -> Result<SecretKey, SecretError> {
        let text = if configured.is_empty() {
            read_or_create(file, || {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).expect("the operating system's random source failed");
                base64::engine::general_purpose::STANDARD.encode(bytes)
            })?
        } else {
            configured.to_string()
        };
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| SecretError::Malformed)?;
        Ok(SecretKey(bytes.try_into().map_err(|_| SecretError::Malformed)?))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A value that tells whether two replicas have the same key, without revealing it.
    pub fn check_value(&self) -> String {
        hex::encode(self.mac(&[b"ovsb secret-key check v1"]))
    }

    /// The token of an instance's dashboard URL.
    pub fn dashboard_token(&self, instance_id: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(&[b"ovsb dashboard v1", instance_id.as_bytes()]))
    }

    /// Whether `token` opens the dashboard of `instance_id` (constant time).
    pub fn check_dashboard_token(&self, instance_id: &str, token: &str) -> bool {
        let expected = self.dashboard_token(instance_id);
        expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
    }

    /// The key of a binding (43 URL-safe characters, 256 bits).
    pub fn binding_key(&self, instance_id: &str, binding_id: &str, salt: &str) -> String {
        let mac = self.mac(&[b"ovsb binding key v1", instance_id.as_bytes(), binding_id.as_bytes(), salt.as_bytes()]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    }
}

impl SecretKey {
    /// The keymanager token of a binding of a validator instance (43 URL-safe characters):
    /// derived like its key, but under another label, so one never reveals the other.
    pub fn keymanager_token(&self, instance_id: &str, binding_id: &str, salt: &str) -> String {
        let mac =
            self.mac(&[b"ovsb keymanager token v1", instance_id.as_bytes(), binding_id.as_bytes(), salt.as_bytes()]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    }

    /// The keymanager token of a validator client ovsb runs on Kubernetes (64 hex digits): every
    /// replica derives it, and it reveals nothing of binding tokens.
    pub fn client_token(&self, instance_id: &str) -> String {
        hex::encode(self.mac(&[b"ovsb client keymanager token v1", instance_id.as_bytes()]))
    }

    fn sealing_key(&self) -> crypto_secretbox::XSalsa20Poly1305 {
        use crypto_secretbox::KeyInit as _;
        crypto_secretbox::XSalsa20Poly1305::new(&self.mac(&[b"ovsb sealed at rest v1"]).into())
    }

    /// Encrypts `plaintext` for keeping in the store (XSalsa20-Poly1305 under a key derived from
    /// the secret key), base64. The nonce is derived from the plaintext, so sealing the same
    /// text twice gives the same value (an identical request replayed stays identical); that
    /// reveals only that two sealed values are equal.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        use crypto_secretbox::aead::Aead as _;
        let nonce_bytes = self.mac(&[b"ovsb sealed nonce v1", plaintext]);
        let nonce = crypto_secretbox::Nonce::from_slice(&nonce_bytes[..24]);
        let mut out = nonce.to_vec();
        out.extend(self.sealing_key().encrypt(nonce, plaintext).expect("XSalsa20-Poly1305 seals any length"));
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Decrypts what [`SecretKey::seal`] made; `None` if it was made under another key or altered.
    pub fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        use crypto_secretbox::aead::Aead as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).ok()?;
        if bytes.len() < 24 {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        self.sealing_key().decrypt(crypto_secretbox::Nonce::from_slice(nonce), ciphertext).ok()
    }
}

/// SHA-256 of a key, hex (what the store keeps).
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The broker's Basic-auth credentials, kept as a digest and compared in constant time.
pub struct BasicAuth {
    expected: [u8; 32],
}

impl BasicAuth {
    /// Credentials `username:password`.
    pub fn new(username: &str, password: &str) -> Self {
        BasicAuth { expected: Sha256::digest(format!("{username}:{password}").as_bytes()).into() }
    }

    /// Whether an `Authorization` header value carries these credentials.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic "))) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(&decoded).into();
        given.ct_eq(&self.expected).into()
    }
}

/// Reads a secret file, or creates it (mode 0600, directory 0700) with `make()`.
pub fn read_or_create(file: &Path, make: impl FnOnce() -> String) -> Result<String, SecretError> {
    let err = |source| SecretError::File { path: file.display().to_string(), source };
    match std::fs::read_to_string(file) {
        Ok(text) => return Ok(text.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        Err(_) => {}
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let value = make();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let tmp = file.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        use std::io::Write as _;
        let mut out = options.open(&tmp).map_err(err)?;
        out.write_all(value.as_bytes()).map_err(err)?;
        out.sync_all().map_err(err)?;
    }
    // Another process may have won the race: keep the first file, never overwrite a key.
    match std::fs::hard_link(&tmp, file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(std::fs::read_to_string(file).map_err(err)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_keys_depend_on_every_input_and_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create("", &dir.path().join("secret.key")).unwrap();
        let again = SecretKey::load_or_create("", &dir.path().join("secret.key")).unwrap();
        let other = SecretKey::load_or_create("", &dir.path().join("other.key")).unwrap();
        let k = key.binding_key("i", "b", "s");
        assert_eq!(k.len(), 43);
        assert_eq!(k, again.binding_key("i", "b", "s"), "the key file is kept");
        assert_ne!(k, other.binding_key("i", "b", "s"));
        assert_ne!(k, key.binding_key("i", "b", "t"));
        assert_ne!(key.binding_key("ib", "", "s"), key.binding_key("i", "b", "s"), "fields are length-prefixed");
        assert_eq!(key.check_value(), again.check_value());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("secret.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            SecretKey::load_or_create("c2hvcnQ=", Path::new("/nonexistent")),
            Err(SecretError::Malformed)
        ));
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create("", &dir.path().join("a.key")).unwrap();
        let other = SecretKey::load_or_create("", &dir.path().join("b.key")).unwrap();
        let sealed = key.seal(b"keystore password");
        assert!(!sealed.contains("password"));
        assert_eq!(key.open(&sealed).unwrap(), b"keystore password");
        assert_eq!(sealed, key.seal(b"keystore password"), "deterministic: replays compare equal");
        assert_ne!(sealed, key.seal(b"keystore passwore"));
        assert_eq!(other.open(&sealed), None);
        let mut altered = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&base64::engine::general_purpose::STANDARD.encode(altered)), None);
        assert_eq!(key.open("not base64"), None);
        assert_ne!(key.keymanager_token("i", "b", "s"), key.binding_key("i", "b", "s"));
    }

    #[test]
    fn basic_auth_accepts_only_the_exact_credentials() {
        let auth = BasicAuth::new("user", "pass");
        let header = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(auth.accepts(Some(&header("user:pass"))));
        assert!(!auth.accepts(Some(&header("user:pas"))));
        assert!(!auth.accepts(Some(&header("user:pass "))));
        assert!(!auth.accepts(Some("Bearer x")));
        assert!(!auth.accepts(Some("Basic !!!")));
        assert!(!auth.accepts(None));
    }
}
