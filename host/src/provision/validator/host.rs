//! Where a validator plan's clients run: the [`ClientHost`] interface, what it gives the
//! driver ([`ValidatorAccess`]), and the host of clients as processes of this machine.
//!
//! Owns: starting, finding, removing and recovering clients, and reading how to reach one.
//! Must not: touch keys or their history (the validator driver does, through the keymanager).

use std::collections::HashMap;

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::super::{Driver as _, DriverError, DriverFuture, InstanceSpec, ProcessDriver, Progress};

/// How the gateway reaches an instance's client (defined beside the node pools, which the
/// gateway and the drivers both use).
pub use crate::upstream::ValidatorAccess;

/// Where a validator plan's clients run: starts, finds, removes and recovers them. The
/// [`ValidatorDriver`] does everything about keys through the [`ValidatorAccess`] it gives.
pub trait ClientHost: Send + Sync {
    /// Makes the instance's client run (idempotent).
    fn start<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a>;
    /// Whether a client of the instance exists (it may hold keys).
    fn exists<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<bool, DriverError>>;
    /// Whether the instance has a client as far as this replica knows, without asking anyone:
    /// asked for every route.
    fn known(&self, instance_id: &str) -> bool;
    /// How to reach the instance's client, once it can be reached; asked on every keymanager
    /// request, so it must be cheap.
    fn access(&self, instance_id: &str) -> Option<ValidatorAccess>;
    /// Stops and removes the client and everything of it. Succeeds when there is nothing.
    fn remove<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a>;
    /// After an ovsb restart: keeps the clients of `live` instances running, and removes the
    /// others except those named in `keep`.
    fn recover<'a>(&'a self, live: &'a [InstanceSpec], keep: &'a [String]) -> BoxFuture<'a, ()>;
}

/// Validator clients as processes of this host, under the [`ProcessDriver`]; the client writes
/// its keymanager token into its data directory.
pub(super) struct ProcessClients {
    pub(super) process: ProcessDriver,
    pub(super) token_file: String,
    /// What [`ClientHost::access`] read last, per instance, with the token file's mtime.
    pub(super) known: std::sync::Mutex<HashMap<String, (std::time::SystemTime, ValidatorAccess)>>,
}

impl ClientHost for ProcessClients {
    fn start<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
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

    fn remove<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).remove(&spec.id);
        self.process.deprovision(spec, progress)
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], keep: &'a [String]) -> BoxFuture<'a, ()> {
        self.process.recover_nodes(live, keep).boxed()
    }
}
