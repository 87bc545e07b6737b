//! The `validator` driver: a validator client (with its beacon node) per instance, the
//! customer's keys loaded and unloaded through the client's keymanager API, and the keys'
//! slashing-protection history kept by ovsb.
//!
//! Owns: the validator parameters (their schema, their checks, which of them are secret),
//! claiming each key for one instance in the store, importing keys once the client is ready,
//! setting fee recipient and gas limit per key, and exporting each key's EIP-3076 history into
//! the store **before** the client stops. Where the client runs is a [`ClientHost`]'s business:
//! the [`ProcessDriver`] (ports, data directory, supervision, adoption after an ovsb restart)
//! or the Kubernetes driver (a StatefulSet of one pod).
//!
//! ## The guarantees
//! - A key is claimed in the store (`validator_keys`) before it is imported, in one
//!   transaction for all keys of a request; a key another instance holds is refused. So a key
//!   is never loaded in two clients that ovsb runs, across replicas too.
//! - A claim is released only in the transaction that stores the history exported when the
//!   key was deleted from the client. If the client cannot be reached, the deprovision fails
//!   and keeps the client's directory (its own slashing database) instead.
//! - Keystores and passwords reach the store only sealed (see
//!   [`crate::credentials::SecretKey::seal`]) in the operation's request, never in the
//!   instance's parameters, never in a log, never in an answer.
//! - A history the store holds for a key is imported with it (merged with one given), so a key
//!   moved from one instance to another keeps its protection even if the platform forgot it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Driver, DriverError, InstanceSpec, ProcessDriver, Progress};
use crate::config::ValidatorDriverDecl;
use crate::interchange::{Interchange, Pubkey, Root};
use crate::store::{KeptHistory, Store, StoreError, union_on_chain};
use crate::upstream::{UpstreamPool, UpstreamSettings};

pub use crate::config::{VALIDATOR_PARAMETERS, VALIDATOR_TEMPLATE_NAMES};

/// Most keys in one request.
const MAX_KEYS: usize = 100;

/// Largest keymanager answer read (a key's history grows with its age: generous).
const MAX_ANSWER_BYTES: usize = 64 << 20;

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

/// How the gateway reaches an instance's client.
#[derive(Clone)]
pub struct ValidatorAccess {
    /// The beacon node's REST API, `http://127.0.0.1:<port>`.
    pub beacon: String,
    /// The keymanager API, `http://127.0.0.1:<port>`.
    pub keymanager: String,
    /// The client's own keymanager token (never leaves ovsb).
    pub token: String,
}

/// Where a validator plan's clients run: starts, finds, removes and recovers them. The
/// [`ValidatorDriver`] does everything about keys through the [`ValidatorAccess`] it gives.
pub trait ClientHost: Send + Sync {
    /// Makes the instance's client run (idempotent).
    fn start<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Whether a client of the instance exists (it may hold keys).
    fn exists<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<bool, DriverError>>;
    /// Whether the instance has a client as far as this replica knows, without asking anyone:
    /// asked for every route.
    fn known(&self, instance_id: &str) -> bool;
    /// How to reach the instance's client, once it can be reached; asked on every keymanager
    /// request, so it must be cheap.
    fn access(&self, instance_id: &str) -> Option<ValidatorAccess>;
    /// Stops and removes the client and everything of it. Succeeds when there is nothing.
    fn remove<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>>;
    /// After an ovsb restart: keeps the clients of `live` instances running, and removes the
    /// others except those named in `keep`.
    fn recover<'a>(&'a self, live: &'a [InstanceSpec], keep: &'a [String]) -> BoxFuture<'a, ()>;
}

/// Validator clients as processes of this host, under the [`ProcessDriver`]; the client writes
/// its keymanager token into its data directory.
struct ProcessClients {
    process: ProcessDriver,
    token_file: String,
    /// What [`ClientHost::access`] read last, per instance, with the token file's mtime.
    known: std::sync::Mutex<HashMap<String, (std::time::SystemTime, ValidatorAccess)>>,
}

impl ClientHost for ProcessClients {
    fn start<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>> {
        async move { self.process.ensure_running(spec, Some(progress)).await.map(|_| ()) }.boxed()
    }

    fn exists<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<bool, DriverError>> {
        let exists = self.process.read_record(instance_id).is_some();
        async move { Ok(exists) }.boxed()
    }

    fn known(&self, instance_id: &str) -> bool {
        self.process.read_record(instance_id).is_some()
    }

    /// Read from the client's directory, again only when the token file changed (a restarted
    /// client may write a new one).
    fn access(&self, instance_id: &str) -> Option<ValidatorAccess> {
        let token_path = self.process.dir(instance_id).join("data").join(&self.token_file);
        let modified = std::fs::metadata(&token_path).and_then(|m| m.modified()).ok()?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, access)) = known.get(instance_id)
            && *at == modified
        {
            return Some(access.clone());
        }
        let record = self.process.read_record(instance_id)?;
        let keymanager = *record.extra_ports.get("keymanager_port")?;
        let token = std::fs::read_to_string(token_path).ok()?.trim().to_string();
        if token.is_empty() {
            return None;
        }
        let access = ValidatorAccess {
            beacon: format!("http://127.0.0.1:{}", record.port),
            keymanager: format!("http://127.0.0.1:{keymanager}"),
            token,
        };
        known.insert(instance_id.to_string(), (modified, access.clone()));
        Some(access)
    }

    fn remove<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> BoxFuture<'a, Result<(), DriverError>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).remove(&spec.id);
        self.process.deprovision(spec, progress)
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], keep: &'a [String]) -> BoxFuture<'a, ()> {
        self.process.recover_nodes(live, keep).boxed()
    }
}

/// The driver of one validator plan.
pub struct ValidatorDriver {
    host: Box<dyn ClientHost>,
    store: Store,
    http: reqwest::Client,
    rpc: Arc<UpstreamPool>,
}

impl ValidatorDriver {
    /// A driver whose clients are processes living under `root`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        decl: ValidatorDriverDecl,
        plan_id: &str,
        root: PathBuf,
        store: Store,
        deadline: Duration,
        max_response_bytes: usize,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let process =
            ProcessDriver::new(decl.client.clone(), plan_id, root, deadline, max_response_bytes, tracker, shutdown)
                .with_template_names(VALIDATOR_TEMPLATE_NAMES);
        let host = ProcessClients { process, token_file: decl.token_file.clone(), known: Default::default() };
        Self::with_host(Box::new(host), &decl.rpc_http, &decl.rpc_ws, store, deadline, max_response_bytes)
    }

    /// A driver whose clients run on `host`; the instances' JSON-RPC endpoints forward to `rpc_http`.
    pub fn with_host(
        host: Box<dyn ClientHost>,
        rpc_http: &[String],
        rpc_ws: &[String],
        store: Store,
        deadline: Duration,
        max_response_bytes: usize,
    ) -> Self {
        let rpc = Arc::new(UpstreamPool::new(UpstreamSettings {
            http: rpc_http.iter().filter_map(|u| u.parse().ok()).collect(),
            ws: rpc_ws.to_vec(),
            deadline,
            max_response_bytes,
            max_sockets_per_node: crate::upstream::DEFAULT_SOCKETS_PER_NODE,
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        ValidatorDriver { host, store, http, rpc }
    }

    /// How to reach the instance's client (the gateway asks on every keymanager request).
    pub fn access(&self, instance_id: &str) -> Option<ValidatorAccess> {
        self.host.access(instance_id)
    }

    /// Waits until the beacon API answers and the keymanager takes the client's token.
    async fn wait_ready(&self, instance_id: &str, progress: &Progress) -> Result<ValidatorAccess, DriverError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let state = match self.access(instance_id) {
                None => "the client has not written its keymanager token yet".to_string(),
                Some(access) => match self.get(&access, "/eth/v1/keystores").await {
                    Ok(_) => match self.http.get(format!("{}/eth/v1/node/version", access.beacon)).send().await {
                        Ok(response) if response.status().is_success() => return Ok(access),
                        Ok(response) => format!("the beacon API answers {}", response.status()),
                        Err(err) => format!("the beacon API does not answer: {err}"),
                    },
                    Err(err) => err.0,
                },
            };
            if attempt % 10 == 1 {
                progress.report(&format!("waiting for the validator client (attempt {attempt}): {state}")).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A request to the client's keymanager API, with the client's token.
    fn keymanager(&self, method: reqwest::Method, access: &ValidatorAccess, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", access.keymanager)).bearer_auth(&access.token)
    }

    async fn get(&self, access: &ValidatorAccess, path: &str) -> Result<Value, DriverError> {
        self.send(self.keymanager(reqwest::Method::GET, access, path), path).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, DriverError> {
        let response =
            request.send().await.map_err(|e| DriverError(format!("the keymanager API does not answer {what}: {e}")))?;
        let status = response.status();
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| DriverError(format!("the keymanager API's answer to {what} broke off: {e}")))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(DriverError(format!(
                    "the keymanager API's answer to {what} is over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(DriverError(format!("the keymanager API answered {what} with {status}: {message}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| DriverError(format!("the keymanager API answered {what} with bad JSON: {e}")))
    }

    /// Claims the keys, then imports them with their history. On any key's failure, the keys
    /// this call imported are deleted again (history kept) and the claims released.
    async fn import(
        &self,
        instance_id: &str,
        access: &ValidatorAccess,
        secrets: &KeySecrets,
        progress: &Progress,
    ) -> Result<String, DriverError> {
        // The chain the client signs for: a given history of another chain protects nothing
        // here (and the client would refuse it), so it is refused before anything changes.
        let chain = self.genesis_root(access).await?;
        let given = match secrets.slashing_protection.as_deref() {
            None => None,
            Some(text) => Some(
                Interchange::from_text(text)
                    .map_err(|err| DriverError(format!("parameters.slashing_protection {err}")))?,
            ),
        };
        if let Some(given) = &given
            && given.genesis_validators_root != chain
        {
            return Err(DriverError(format!(
                "parameters.slashing_protection at /metadata/genesis_validators_root: {} is not the chain's ({chain}); no key was imported",
                given.genesis_validators_root
            )));
        }
        let taken = self.store.claim_validator_keys(instance_id, &secrets.pubkeys).await.map_err(store_error)?;
        if let Some((key, holder)) = taken.first() {
            return Err(DriverError(format!(
                "validator key {key} is loaded in instance {holder}; deprovision it (or remove the key) there first: a key must never be in two clients"
            )));
        }
        // The keys are ours now: no other client can add to their history. What ovsb holds and
        // what was given become one history per key, kept before the client sees the keys.
        let history = match self.history_to_import(instance_id, chain, given.as_ref(), &secrets.pubkeys).await {
            Ok(history) => history,
            Err(err) => {
                self.store.release_validator_keys(instance_id, &secrets.pubkeys).await.map_err(store_error)?;
                return Err(err);
            }
        };
        let mut body = json!({"keystores": secrets.keystores, "passwords": secrets.passwords});
        if !history.keys.is_empty() {
            body["slashing_protection"] = json!(history.to_json().to_string());
        }
        // What the client holds before: a key it loads that no keystore named (a keystore whose
        // `pubkey` field lies about its secret key) is found by comparing with after.
        let before = match self.loaded_keys(access).await {
            Ok(before) => before,
            Err(err) => {
                self.store.release_validator_keys(instance_id, &secrets.pubkeys).await.map_err(store_error)?;
                return Err(err);
            }
        };
        progress.report(&format!("importing {} key(s) through the keymanager API", secrets.pubkeys.len())).await;
        // Decrypting keystores is slow by design (scrypt): allow for each key.
        let timeout = Duration::from_secs(30 + 5 * secrets.pubkeys.len() as u64);
        let request = self.keymanager(reqwest::Method::POST, access, "/eth/v1/keystores").timeout(timeout).json(&body);
        let answer = match self.send(request, "POST /eth/v1/keystores").await {
            Ok(answer) => answer,
            Err(err) => {
                // The outcome is unknown: release only what the client is seen not to hold.
                self.release_absent(instance_id, access, &secrets.pubkeys).await?;
                return Err(err);
            }
        };
        let statuses: Vec<(String, String, String)> = secrets
            .pubkeys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let entry = &answer["data"][i];
                let status = entry["status"].as_str().unwrap_or("missing").to_string();
                (key.clone(), status, entry["message"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        let report = statuses
            .iter()
            .map(|(key, status, message)| {
                if message.is_empty() {
                    format!("{}: {status}", short(key))
                } else {
                    format!("{}: {status} ({message})", short(key))
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let after = self.loaded_keys(access).await?;
        let new: Vec<String> = after.difference(&before).cloned().collect();
        let unexpected: Vec<&String> = new.iter().filter(|k| !secrets.pubkeys.contains(*k)).collect();
        let loaded = |status: &str| status == "imported" || status == "duplicate";
        let all_in = statuses.iter().all(|(key, status, _)| loaded(status) && after.contains(key));
        if all_in && unexpected.is_empty() {
            return Ok(report);
        }
        let reason = if unexpected.is_empty() {
            format!("not every key was imported, none is kept: {report}")
        } else {
            let shown: Vec<String> = unexpected.iter().map(|k| short(k)).collect();
            format!(
                "a keystore's pubkey does not match its secret key (the client loaded {} instead), none is kept",
                shown.join(", ")
            )
        };
        // Leave no key half-imported: what this call loaded goes out again, history kept.
        if !new.is_empty() {
            self.delete(instance_id, access, &new).await?;
        }
        self.release_absent(instance_id, access, &secrets.pubkeys).await?;
        Err(DriverError(reason))
    }

    /// The chain's `genesis_validators_root`, from the client's beacon API.
    async fn genesis_root(&self, access: &ValidatorAccess) -> Result<Root, DriverError> {
        let what = "GET /eth/v1/beacon/genesis";
        let answer = self.send(self.http.get(format!("{}/eth/v1/beacon/genesis", access.beacon)), what).await?;
        answer["data"]["genesis_validators_root"]
            .as_str()
            .and_then(Root::parse)
            .ok_or_else(|| DriverError(format!("the beacon API answered {what} without a genesis_validators_root")))
    }

    /// The history to import with `pubkeys` on `chain`: for each key, the union of every row
    /// the store holds on that chain and of what the request gives, stored (replacing those
    /// rows) before it is returned. A row that does not decode fails this loudly.
    async fn history_to_import(
        &self,
        instance_id: &str,
        chain: Root,
        given: Option<&Interchange>,
        pubkeys: &[String],
    ) -> Result<Interchange, DriverError> {
        let mut union = Interchange::empty(chain);
        let mut kept = Vec::new();
        for text in pubkeys {
            let key = Pubkey::parse(text).ok_or_else(|| DriverError(format!("{text} is not a BLS public key")))?;
            let rows = self.store.history(text).await.map_err(|err| match err {
                StoreError::Corrupt(reason) => DriverError(format!(
                    "the stored slashing-protection history of {text} cannot be read ({reason}); no key was imported: a key is never imported without its history"
                )),
                other => store_error(other),
            })?;
            let (mut mine, replaces) = union_on_chain(&rows, chain, key);
            if let Some(given) = given {
                mine.absorb(&given.only(&[key]));
            }
            if mine.keys.values().all(crate::interchange::History::is_empty) {
                continue;
            }
            if let Some((_, outer, inner)) = mine.surround() {
                return Err(DriverError(format!(
                    "the history of {text} (stored and given together) holds a surround vote ({}→{} surrounds {}→{}): the key has signed slashable attestations, and no client imports that; no key was imported",
                    outer.source_epoch, outer.target_epoch, inner.source_epoch, inner.target_epoch
                )));
            }
            union.absorb(&mine);
            kept.push(KeptHistory { pubkey: text.clone(), replaces, interchange: mine });
        }
        self.store.keep_histories(instance_id, &kept, false).await.map_err(store_error)?;
        Ok(union)
    }

    /// The keys the client holds (`0x` + lowercase hex).
    async fn loaded_keys(&self, access: &ValidatorAccess) -> Result<BTreeSet<String>, DriverError> {
        let list = self.get(access, "/eth/v1/keystores").await?;
        Ok(list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["validating_pubkey"].as_str())
            .map(str::to_ascii_lowercase)
            .collect())
    }

    /// Releases the claims on those of `keys` the client is seen not to hold; when it cannot be
    /// asked, every claim stays (a key that may be loaded is never freed).
    async fn release_absent(
        &self,
        instance_id: &str,
        access: &ValidatorAccess,
        keys: &[String],
    ) -> Result<(), DriverError> {
        let loaded = self.loaded_keys(access).await.map_err(|err| {
            DriverError(format!("{err}; the keys stay claimed by this instance until it is deprovisioned"))
        })?;
        let absent: Vec<String> = keys.iter().filter(|k| !loaded.contains(*k)).cloned().collect();
        self.store.release_validator_keys(instance_id, &absent).await.map_err(store_error)
    }

    /// Deletes keys from the client and stores the history it exports, releasing the claims.
    async fn delete(&self, instance_id: &str, access: &ValidatorAccess, pubkeys: &[String]) -> Result<(), DriverError> {
        let request =
            self.keymanager(reqwest::Method::DELETE, access, "/eth/v1/keystores").json(&json!({"pubkeys": pubkeys}));
        let answer = self.send(request, "DELETE /eth/v1/keystores").await?;
        for (i, key) in pubkeys.iter().enumerate() {
            let status = answer["data"][i]["status"].as_str().unwrap_or("missing");
            if status == "error" || status == "missing" {
                let message = answer["data"][i]["message"].as_str().unwrap_or_default();
                return Err(DriverError(format!("the client could not delete key {key}: {status} {message}")));
            }
        }
        let exported = match &answer["slashing_protection"] {
            Value::String(text) => Interchange::from_text(text),
            Value::Object(_) => Interchange::parse(&answer["slashing_protection"]),
            _ => return Err(DriverError("the client exported no slashing-protection history".into())),
        }
        .map_err(|err| DriverError(format!("the client's slashing-protection export is not EIP-3076 ({err})")))?;
        let mut histories = Vec::new();
        for (i, text) in pubkeys.iter().enumerate() {
            let deleted = answer["data"][i]["status"] == "deleted";
            let key = Pubkey::parse(text).ok_or_else(|| DriverError(format!("{text} is not a BLS public key")))?;
            let Some(history) = exported.keys.get(&key) else {
                if deleted {
                    // Never free a key whose history did not come out: it stays claimed.
                    return Err(DriverError(format!("the client deleted key {text} but exported no history for it")));
                }
                continue;
            };
            // A key the client never had (status `not_active`) comes back with an empty entry:
            // nothing to keep.
            if !deleted && history.is_empty() {
                continue;
            }
            // The export joins what ovsb holds on that chain, as one row. A stored row that does
            // not decode is left as it is (and reported); the export is kept beside it.
            let chain = exported.genesis_validators_root;
            let (mut mine, replaces) = match self.store.history(text).await {
                Ok(rows) => union_on_chain(&rows, chain, key),
                Err(StoreError::Corrupt(reason)) => {
                    tracing::warn!(key = %text, "keeping the export beside a stored history that does not decode: {reason}");
                    (Interchange::empty(chain), Vec::new())
                }
                Err(other) => return Err(store_error(other)),
            };
            mine.absorb(&exported.only(&[key]));
            histories.push(KeptHistory { pubkey: text.clone(), replaces, interchange: mine });
        }
        self.store.keep_histories(instance_id, &histories, true).await.map_err(store_error)?;
        // Keys the client had no history for (never loaded, or never signed) are free too.
        self.store.release_validator_keys(instance_id, pubkeys).await.map_err(store_error)?;
        tracing::info!(instance = %instance_id, keys = pubkeys.len(), exported = histories.len(),
            "validator keys deleted; their slashing-protection history is stored");
        Ok(())
    }

    /// Sets fee recipient and gas limit of every key of the instance.
    async fn apply_settings(&self, access: &ValidatorAccess, parameters: &Value) -> Result<(), DriverError> {
        for key in pubkeys_of(parameters) {
            if let Some(fee) = parameters.get("fee_recipient").and_then(Value::as_str) {
                let path = format!("/eth/v1/validator/{key}/feerecipient");
                let request = self.keymanager(reqwest::Method::POST, access, &path).json(&json!({"ethaddress": fee}));
                self.send(request, "POST feerecipient").await?;
            }
            if let Some(gas) = parameters.get("gas_limit").and_then(Value::as_u64) {
                let path = format!("/eth/v1/validator/{key}/gas_limit");
                let request =
                    self.keymanager(reqwest::Method::POST, access, &path).json(&json!({"gas_limit": gas.to_string()}));
                self.send(request, "POST gas_limit").await?;
            }
        }
        Ok(())
    }

    fn secrets(spec: &InstanceSpec) -> Result<Option<KeySecrets>, DriverError> {
        match &spec.secrets {
            None => Ok(None),
            Some(secret) => serde_json::from_value(secret.0.clone())
                .map(Some)
                .map_err(|_| DriverError("the request's keys cannot be read".into())),
        }
    }
}

fn store_error(err: crate::store::StoreError) -> DriverError {
    DriverError(format!("the store failed: {err}"))
}

/// `0x1234…abcd`: enough of a key to tell it in a description.
fn short(key: &str) -> String {
    if key.len() > 14 { format!("{}…{}", &key[..8], &key[key.len() - 4..]) } else { key.to_string() }
}

impl Driver for ValidatorDriver {
    fn provision<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        async move {
            let secrets = Self::secrets(spec)?.ok_or_else(|| {
                DriverError("the keys to import cannot be opened (was the broker's secret key changed?)".into())
            })?;
            self.host.start(spec, progress).await?;
            let access = self.wait_ready(&spec.id, progress).await?;
            let report = self.import(&spec.id, &access, &secrets, progress).await?;
            self.apply_settings(&access, &spec.parameters).await?;
            progress.conclude(&format!("keys {report}")).await;
            Ok(())
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        from: &'a InstanceSpec,
        to: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        async move {
            // No restart here, ever: a restarted `lodestar dev` drops its keys and history. The
            // client keeps the command line it was started with (start options are refused in
            // updates; a changed plan command applies to new instances).
            self.host.start(to, progress).await?;
            let access = self.wait_ready(&to.id, progress).await?;
            let before: BTreeSet<String> = pubkeys_of(&from.parameters).into_iter().collect();
            let after: BTreeSet<String> = pubkeys_of(&to.parameters).into_iter().collect();
            let mut report = Vec::new();
            // Add first: if an import fails, nothing was removed and the instance is as it was.
            let mut added: Vec<String> = Vec::new();
            if let Some(secrets) = Self::secrets(to)?.filter(|s| !s.pubkeys.is_empty()) {
                report.push(format!("added {}", self.import(&to.id, &access, &secrets, progress).await?));
                added = secrets.pubkeys.clone();
            }
            let rest = async {
                let removing: Vec<String> = before.difference(&after).cloned().collect();
                if !removing.is_empty() {
                    progress.report(&format!("removing {} key(s); storing their history", removing.len())).await;
                    self.delete(&to.id, &access, &removing).await?;
                    report
                        .push(format!("removed {}", removing.iter().map(|k| short(k)).collect::<Vec<_>>().join(", ")));
                }
                self.apply_settings(&access, &to.parameters).await
            };
            if let Err(err) = rest.await {
                // The instance keeps its previous parameters: the keys added above go out again.
                if !added.is_empty() {
                    self.delete(&to.id, &access, &added).await?;
                }
                return Err(err);
            }
            if !report.is_empty() {
                progress.conclude(&report.join("; ")).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn deprovision<'a>(
        &'a self,
        spec: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        async move {
            // The keys this instance holds: those it may have loaded (not those of its
            // parameters that another instance holds, when claiming them failed).
            let keys = self.store.validator_keys_of(&spec.id).await.map_err(store_error)?;
            if !keys.is_empty() && self.host.exists(&spec.id).await? {
                // The history must be out of the client and in the store before it stops.
                self.host.start(spec, progress).await?;
                let access = self.wait_ready(&spec.id, progress).await?;
                progress
                    .report(&format!("deleting {} key(s); storing their slashing-protection history", keys.len()))
                    .await;
                self.delete(&spec.id, &access, &keys).await?;
            } else {
                self.store.release_validator_keys(&spec.id, &keys).await.map_err(store_error)?;
            }
            self.host.remove(spec, progress).await
        }
        .boxed()
    }

    fn upstream(&self, instance_id: &str) -> Option<Arc<UpstreamPool>> {
        self.host.known(instance_id).then(|| self.rpc.clone())
    }

    fn validator(&self, instance_id: &str) -> Option<ValidatorAccess> {
        self.access(instance_id)
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], busy: &'a [String]) -> BoxFuture<'a, ()> {
        async move {
            // A client whose instance still holds keys (a failed deprovision, a cleanup that did
            // not finish) keeps its directory, its slashing database with it, until the keys'
            // history is stored: it is left as it is, like the clients of running operations.
            let mut keep: Vec<String> = busy.to_vec();
            match self.store.validator_key_holders().await {
                Ok(holders) => keep.extend(holders),
                Err(err) => {
                    tracing::error!("cannot read which instances hold validator keys ({err}); keeping every client");
                    return;
                }
            }
            self.host.recover(live, &keep).await
        }
        .boxed()
    }
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
