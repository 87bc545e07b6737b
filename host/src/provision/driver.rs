//! The driver interface: what a [`Driver`] is told ([`InstanceSpec`], [`Secret`]), how it
//! reports ([`Progress`]) and how it fails ([`DriverError`]).
//!
//! Owns: the contract between the operation runner and every driver. Must not: know any
//! driver, run operations or decide their outcome (the runner does).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::ValidatorAccess;
use crate::store::{Store, StoreError};
use crate::upstream::UpstreamPool;

/// What a driver is told about an instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The instance id.
    pub id: String,
    /// The plan id.
    pub plan_id: String,
    /// The instance's parameters (an empty object when none were given).
    pub parameters: serde_json::Value,
    /// What the operation brings that is never stored in clear (a validator's keys).
    pub secrets: Option<Secret>,
}

/// A value that must not be logged: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret(pub serde_json::Value);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a driver could not do its work. The runner tells the two apart: a store failure is
/// retried (the driver's work is idempotent, so it runs again once the store answers), a real
/// failure ends the operation with its reason, shown to users in `last_operation`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The store failed under the driver (an outage, a lost connection, or a row that does not
    /// decode, which [`DriverError::is_transient`] tells apart).
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The work itself failed; the reason is for users.
    #[error("{0}")]
    Failed(String),
}

impl DriverError {
    /// A real failure, for this reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        DriverError::Failed(reason.into())
    }

    /// Whether trying the same work again may succeed: a store that failed to answer. A row
    /// that does not decode ([`StoreError::Corrupt`]) does not heal by retrying: that is a real
    /// failure.
    pub fn is_transient(&self) -> bool {
        matches!(self, DriverError::Store(err) if !matches!(err, StoreError::Corrupt(_)))
    }

    /// The store failure to try again after, if this is one (see [`DriverError::is_transient`]);
    /// otherwise the failure itself.
    pub fn transient(self) -> Result<StoreError, DriverError> {
        match self {
            DriverError::Store(err) if !matches!(err, StoreError::Corrupt(_)) => Ok(err),
            other => Err(other),
        }
    }
}

/// Lets a driver tell the platform how far it got (`last_operation`'s `description`).
pub struct Progress {
    store: Store,
    operation_id: String,
    owner: String,
    summary: std::sync::Mutex<Option<String>>,
}

impl Progress {
    /// What the runner hands the driver of operation `operation_id`, leased by `owner`.
    pub(super) fn new(store: Store, operation_id: &str, owner: &str) -> Self {
        Progress {
            store,
            operation_id: operation_id.to_string(),
            owner: owner.to_string(),
            summary: Default::default(),
        }
    }

    /// Records what the operation's final description adds after "provisioned" / "updated".
    pub async fn conclude(&self, summary: &str) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary.to_string());
        self.report(summary).await;
    }

    pub(super) fn summary(&self) -> Option<String> {
        self.summary.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the operation's description.
    pub async fn report(&self, description: &str) {
        if let Err(err) = self.store.set_progress(&self.operation_id, &self.owner, description).await {
            tracing::warn!(operation = %self.operation_id, "cannot record progress: {err}");
        }
    }
}

/// What a driver's provision, update and deprovision return: the work, done when the future is.
pub type DriverFuture<'a> = BoxFuture<'a, Result<(), DriverError>>;

/// How instances of a plan get a node. Every method must be idempotent: after a crash an
/// operation runs again from the start.
pub trait Driver: Send + Sync {
    /// Makes the instance's node ready to serve.
    fn provision<'a>(&'a self, instance: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a>;
    /// Moves an instance from one spec to another (a plan or parameter change).
    fn update<'a>(&'a self, from: &'a InstanceSpec, to: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a>;
    /// Removes everything provisioning made. Succeeds when there is nothing to remove.
    fn deprovision<'a>(&'a self, instance: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a>;
    /// Where the instance's calls go; `None` while the driver has no node for it.
    fn upstream(&self, instance_id: &str) -> Option<Arc<UpstreamPool>>;
    /// How the gateway reaches the instance's validator client, for validator plans.
    fn validator(&self, instance_id: &str) -> Option<ValidatorAccess> {
        let _ = instance_id;
        None
    }
    /// After a restart, before routes are built: take the nodes of `live` instances (ready or
    /// updating) back under supervision, and remove those of instances not in `live` and not
    /// named in `busy` (instances whose operation the runner will resume).
    fn recover<'a>(&'a self, live: &'a [InstanceSpec], busy: &'a [String]) -> BoxFuture<'a, ()> {
        let _ = (live, busy);
        Box::pin(async {})
    }
}

/// The spec of an instance from its stored fields.
pub(super) fn spec_of(
    id: &str,
    plan_id: &str,
    parameters: Option<&serde_json::Value>,
    secrets: Option<Secret>,
) -> InstanceSpec {
    let parameters = parameters.cloned().unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    InstanceSpec { id: id.to_string(), plan_id: plan_id.to_string(), parameters, secrets }
}
