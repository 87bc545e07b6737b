//! The `validator` driver: a validator client (with its beacon node) per instance, the
//! customer's keys loaded and unloaded through the client's keymanager API, and the keys'
//! slashing-protection history kept by ovsb.
//!
//! Owns: claiming each key for one instance in the store, importing keys once the client is ready,
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
//!
//! The validator parameters (schema, checks, which are secret) are [`crate::validator_params`]'s;
//! where clients run is `host`'s; the keymanager API client is `keymanager`'s.

mod host;
mod keymanager;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Driver, DriverError, DriverFuture, InstanceSpec, ProcessDriver, Progress};
use crate::config::ValidatorDriverDecl;
use crate::interchange::{Interchange, Pubkey, Root};
use crate::store::{KeptHistory, Store, StoreError, union_on_chain};
use crate::upstream::{UpstreamPool, UpstreamSettings};
use crate::validator_params::{KeySecrets, VALIDATOR_TEMPLATE_NAMES, pubkeys_of};
use host::ProcessClients;
pub use host::{ClientHost, ValidatorAccess};
use keymanager::Keymanager;

/// The driver of one validator plan.
pub struct ValidatorDriver {
    host: Box<dyn ClientHost>,
    store: Store,
    client: Keymanager,
    rpc: Arc<UpstreamPool>,
}

/// The execution nodes a validator plan's JSON-RPC endpoints forward to (the driver's
/// `rpc_http`, `rpc_ws` and `max_sockets_per_node`).
pub struct RpcNodes<'a> {
    /// HTTP JSON-RPC URLs.
    pub http: &'a [String],
    /// WebSocket URLs of the same nodes.
    pub ws: &'a [String],
    /// Calls in flight to each node from the plan's instances together.
    pub max_sockets: u32,
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
        let rpc = RpcNodes { http: &decl.rpc_http, ws: &decl.rpc_ws, max_sockets: decl.max_sockets_per_node };
        Self::with_host(Box::new(host), rpc, store, deadline, max_response_bytes)
    }

    /// A driver whose clients run on `host`; the instances' JSON-RPC endpoints forward to `rpc`.
    pub fn with_host(
        host: Box<dyn ClientHost>,
        rpc: RpcNodes<'_>,
        store: Store,
        deadline: Duration,
        max_response_bytes: usize,
    ) -> Self {
        let rpc = Arc::new(UpstreamPool::new(UpstreamSettings {
            http: rpc.http.iter().filter_map(|u| u.parse().ok()).collect(),
            ws: rpc.ws.to_vec(),
            deadline,
            max_response_bytes,
            max_sockets_per_node: rpc.max_sockets as usize,
        }));
        ValidatorDriver { host, store, client: Keymanager::new(), rpc }
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
                Some(access) => match self.client.get(&access, "/eth/v1/keystores").await {
                    Ok(_) => match self.client.beacon_ready(&access).await {
                        Ok(()) => return Ok(access),
                        Err(state) => state,
                    },
                    Err(err) => err.to_string(),
                },
            };
            if attempt % 10 == 1 {
                progress.report(&format!("waiting for the validator client (attempt {attempt}): {state}")).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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
        let chain = self.client.genesis_root(access).await?;
        let given = match secrets.slashing_protection.as_deref() {
            None => None,
            Some(text) => Some(
                Interchange::from_text(text)
                    .map_err(|err| DriverError::Failed(format!("parameters.slashing_protection {err}")))?,
            ),
        };
        if let Some(given) = &given
            && given.genesis_validators_root != chain
        {
            return Err(DriverError::Failed(format!(
                "parameters.slashing_protection at /metadata/genesis_validators_root: {} is not the chain's ({chain}); no key was imported",
                given.genesis_validators_root
            )));
        }
        let taken = self.store.claim_validator_keys(instance_id, &secrets.pubkeys).await.map_err(DriverError::from)?;
        if let Some((key, holder)) = taken.first() {
            return Err(DriverError::Failed(format!(
                "validator key {key} is loaded in instance {holder}; deprovision it (or remove the key) there first: a key must never be in two clients"
            )));
        }
        // The keys are ours now: no other client can add to their history. What ovsb holds and
        // what was given become one history per key, kept before the client sees the keys.
        let history = match self.history_to_import(instance_id, chain, given.as_ref(), &secrets.pubkeys).await {
            Ok(history) => history,
            Err(err) => {
                self.store.release_validator_keys(instance_id, &secrets.pubkeys).await.map_err(DriverError::from)?;
                return Err(err);
            }
        };
        let mut body = json!({"keystores": secrets.keystores, "passwords": secrets.passwords});
        if !history.keys.is_empty() {
            body["slashing_protection"] = json!(history.to_json().to_string());
        }
        // What the client holds before: a key it loads that no keystore named (a keystore whose
        // `pubkey` field lies about its secret key) is found by comparing with after.
        let before = match self.client.loaded_keys(access).await {
            Ok(before) => before,
            Err(err) => {
                self.store.release_validator_keys(instance_id, &secrets.pubkeys).await.map_err(DriverError::from)?;
                return Err(err);
            }
        };
        progress.report(&format!("importing {} key(s) through the keymanager API", secrets.pubkeys.len())).await;
        // Decrypting keystores is slow by design (scrypt): allow for each key.
        let timeout = Duration::from_secs(30 + 5 * secrets.pubkeys.len() as u64);
        let request =
            self.client.request(reqwest::Method::POST, access, "/eth/v1/keystores").timeout(timeout).json(&body);
        let answer = match self.client.send(request, "POST /eth/v1/keystores").await {
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
        let after = self.client.loaded_keys(access).await?;
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
        Err(DriverError::Failed(reason))
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
            let key =
                Pubkey::parse(text).ok_or_else(|| DriverError::Failed(format!("{text} is not a BLS public key")))?;
            let rows = self.store.history(text).await.map_err(|err| match err {
                StoreError::Corrupt(reason) => DriverError::Failed(format!(
                    "the stored slashing-protection history of {text} cannot be read ({reason}); no key was imported: a key is never imported without its history"
                )),
                other => DriverError::Store(other),
            })?;
            let (mut mine, replaces) = union_on_chain(&rows, chain, key);
            if let Some(given) = given {
                mine.absorb(&given.only(&[key]));
            }
            if mine.keys.values().all(crate::interchange::History::is_empty) {
                continue;
            }
            if let Some((_, outer, inner)) = mine.surround() {
                return Err(DriverError::Failed(format!(
                    "the history of {text} (stored and given together) holds a surround vote ({}→{} surrounds {}→{}): the key has signed slashable attestations, and no client imports that; no key was imported",
                    outer.source_epoch, outer.target_epoch, inner.source_epoch, inner.target_epoch
                )));
            }
            union.absorb(&mine);
            kept.push(KeptHistory { pubkey: text.clone(), replaces, interchange: mine });
        }
        self.store.keep_histories(instance_id, &kept, false).await.map_err(DriverError::from)?;
        Ok(union)
    }

    /// Releases the claims on those of `keys` the client is seen not to hold; when it cannot be
    /// asked, every claim stays (a key that may be loaded is never freed).
    async fn release_absent(
        &self,
        instance_id: &str,
        access: &ValidatorAccess,
        keys: &[String],
    ) -> Result<(), DriverError> {
        let loaded = self.client.loaded_keys(access).await.map_err(|err| {
            DriverError::Failed(format!("{err}; the keys stay claimed by this instance until it is deprovisioned"))
        })?;
        let absent: Vec<String> = keys.iter().filter(|k| !loaded.contains(*k)).cloned().collect();
        self.store.release_validator_keys(instance_id, &absent).await.map_err(DriverError::from)
    }

    /// Deletes keys from the client and stores the history it exports, releasing the claims.
    async fn delete(&self, instance_id: &str, access: &ValidatorAccess, pubkeys: &[String]) -> Result<(), DriverError> {
        let request = self
            .client
            .request(reqwest::Method::DELETE, access, "/eth/v1/keystores")
            .json(&json!({"pubkeys": pubkeys}));
        let answer = self.client.send(request, "DELETE /eth/v1/keystores").await?;
        for (i, key) in pubkeys.iter().enumerate() {
            let status = answer["data"][i]["status"].as_str().unwrap_or("missing");
            if status == "error" || status == "missing" {
                let message = answer["data"][i]["message"].as_str().unwrap_or_default();
                return Err(DriverError::Failed(format!("the client could not delete key {key}: {status} {message}")));
            }
        }
        let exported = match &answer["slashing_protection"] {
            Value::String(text) => Interchange::from_text(text),
            Value::Object(_) => Interchange::parse(&answer["slashing_protection"]),
            _ => return Err(DriverError::Failed("the client exported no slashing-protection history".into())),
        }
        .map_err(|err| {
            DriverError::Failed(format!("the client's slashing-protection export is not EIP-3076 ({err})"))
        })?;
        let mut histories = Vec::new();
        for (i, text) in pubkeys.iter().enumerate() {
            let deleted = answer["data"][i]["status"] == "deleted";
            let key =
                Pubkey::parse(text).ok_or_else(|| DriverError::Failed(format!("{text} is not a BLS public key")))?;
            let Some(history) = exported.keys.get(&key) else {
                if deleted {
                    // Never free a key whose history did not come out: it stays claimed.
                    return Err(DriverError::Failed(format!(
                        "the client deleted key {text} but exported no history for it"
                    )));
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
                Err(other) => return Err(DriverError::Store(other)),
            };
            mine.absorb(&exported.only(&[key]));
            histories.push(KeptHistory { pubkey: text.clone(), replaces, interchange: mine });
        }
        self.store.keep_histories(instance_id, &histories, true).await.map_err(DriverError::from)?;
        // Keys the client had no history for (never loaded, or never signed) are free too.
        self.store.release_validator_keys(instance_id, pubkeys).await.map_err(DriverError::from)?;
        tracing::info!(instance = %instance_id, keys = pubkeys.len(), exported = histories.len(),
            "validator keys deleted; their slashing-protection history is stored");
        Ok(())
    }

    /// Sets fee recipient and gas limit of every key of the instance.
    async fn apply_settings(&self, access: &ValidatorAccess, parameters: &Value) -> Result<(), DriverError> {
        for key in pubkeys_of(parameters) {
            if let Some(fee) = parameters.get("fee_recipient").and_then(Value::as_str) {
                let path = format!("/eth/v1/validator/{key}/feerecipient");
                let request =
                    self.client.request(reqwest::Method::POST, access, &path).json(&json!({"ethaddress": fee}));
                self.client.send(request, "POST feerecipient").await?;
            }
            if let Some(gas) = parameters.get("gas_limit").and_then(Value::as_u64) {
                let path = format!("/eth/v1/validator/{key}/gas_limit");
                let request = self
                    .client
                    .request(reqwest::Method::POST, access, &path)
                    .json(&json!({"gas_limit": gas.to_string()}));
                self.client.send(request, "POST gas_limit").await?;
            }
        }
        Ok(())
    }

    fn secrets(spec: &InstanceSpec) -> Result<Option<KeySecrets>, DriverError> {
        match &spec.secrets {
            None => Ok(None),
            Some(secret) => serde_json::from_value(secret.0.clone())
                .map(Some)
                .map_err(|_| DriverError::Failed("the request's keys cannot be read".into())),
        }
    }
}

/// `0x1234…abcd`: enough of a key to tell it in a description.
fn short(key: &str) -> String {
    if key.len() > 14 { format!("{}…{}", &key[..8], &key[key.len() - 4..]) } else { key.to_string() }
}

impl Driver for ValidatorDriver {
    fn provision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            let secrets = Self::secrets(spec)?.ok_or_else(|| {
                DriverError::Failed("the keys to import cannot be opened (was the broker's secret key changed?)".into())
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

    fn update<'a>(&'a self, from: &'a InstanceSpec, to: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
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

    fn deprovision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            // The keys this instance holds: those it may have loaded (not those of its
            // parameters that another instance holds, when claiming them failed).
            let keys = self.store.validator_keys_of(&spec.id).await.map_err(DriverError::from)?;
            if !keys.is_empty() && self.host.exists(&spec.id).await? {
                // The history must be out of the client and in the store before it stops.
                self.host.start(spec, progress).await?;
                let access = self.wait_ready(&spec.id, progress).await?;
                progress
                    .report(&format!("deleting {} key(s); storing their slashing-protection history", keys.len()))
                    .await;
                self.delete(&spec.id, &access, &keys).await?;
            } else {
                self.store.release_validator_keys(&spec.id, &keys).await.map_err(DriverError::from)?;
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
