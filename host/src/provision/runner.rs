//! The operation runner: turns an accepted operation (an `in progress` row) into driver work
//! and then into a final state, exactly once across crashes and replicas (see the crate's
//! [`provision`](super) doc for how an operation survives a crash or a store outage).
//!
//! Owns: leases of the operations this replica runs, retries with back-off when the store
//! fails (the runner's own calls, or a driver's: [`DriverError::Store`]), the outcome table
//! ([`decide`]), and the request formats of operations ([`UpdateRequest`], [`SealedRequest`]).
//! Must not: decide what a request means (the broker does), know a driver's internals, or
//! judge which replica is alive (replica membership does, in `replicas`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::spec_of;
use super::replicas::Liveness;
use super::{DriverError, Drivers, Progress, Replica, Secret};
use crate::config::{Config, PlanDecl};
use crate::credentials::SecretKey;
use crate::store::{InstanceRow, InstanceState, OperationKind, OperationRow, OperationState, Store, now_ms};

/// What the operation runner calls after it ended an operation on an instance, so that the
/// instance's routes follow (the routing layer implements it; provision does not depend on it).
pub trait RouteRefresh: Send + Sync + 'static {
    /// Rebuilds the routes of `instance_id` from the store.
    fn refresh<'a>(&'a self, instance_id: &'a str) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// What an operation's `request` holds (defined by the store, which decodes it as it is read).
pub use crate::store::{SealedRequest, UpdateRequest};

/// Runs operations: those this replica accepted, and those a dead replica left behind.
pub struct Operations {
    pub(super) store: Store,
    pub(super) secret: SecretKey,
    pub(super) config: Arc<Config>,
    pub(super) drivers: Drivers,
    pub(super) routing: Arc<dyn RouteRefresh>,
    pub(super) replica: Replica,
    /// The operations this replica is running now: the only leases it renews.
    pub(super) running: Mutex<HashSet<String>>,
    /// The instances those operations are on, with how many run on each.
    pub(super) running_instances: Mutex<HashMap<String, usize>>,
    /// Which other replicas are alive, as this replica sees it.
    pub(super) liveness: Mutex<Liveness>,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// The longest wait between two tries of an operation whose store calls failed.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long after its deadline a runner still retries an operation whose store calls fail;
/// then it lets the operation go (a deprovision supersedes it).
const PAST_DEADLINE_GRACE_MS: i64 = 60_000;

/// Removes an operation from the running set when its task ends, however it ends.
struct Running<'a> {
    operations: &'a Operations,
    id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.operations.running_set().remove(&self.id);
    }
}

/// Counts an operation running here on an instance while it lives.
struct OnInstance<'a> {
    set: &'a Mutex<HashMap<String, usize>>,
    id: String,
}

impl<'a> OnInstance<'a> {
    fn new(set: &'a Mutex<HashMap<String, usize>>, id: &str) -> Self {
        *set.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default() += 1;
        OnInstance { set, id: id.to_string() }
    }
}

impl Drop for OnInstance<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = set.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                set.remove(&self.id);
            }
        }
    }
}

impl Operations {
    /// A runner whose leases are held under `replica`'s id.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        secret: SecretKey,
        config: Arc<Config>,
        drivers: Drivers,
        routing: Arc<dyn RouteRefresh>,
        replica: Replica,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Operations> {
        Arc::new(Operations {
            store,
            secret,
            config,
            drivers,
            routing,
            replica,
            running: Default::default(),
            running_instances: Default::default(),
            liveness: Default::default(),
            tracker,
            shutdown,
        })
    }

    fn running_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The operations this replica is running now.
    pub fn running(&self) -> Vec<String> {
        self.running_set().iter().cloned().collect()
    }

    /// This replica's lease-owner id.
    pub fn owner(&self) -> &str {
        &self.replica.id
    }

    /// When a lease taken now ends.
    pub fn lease_until(&self) -> i64 {
        now_ms() + (self.config.operations.lease_seconds * 1000) as i64
    }

    /// Runs `operation` (already stored with this replica as owner) in the background.
    pub fn start(self: &Arc<Self>, operation: OperationRow) {
        if !self.running_set().insert(operation.id.clone()) {
            return; // already running here
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            let id = operation.id.clone();
            let _running = Running { operations: &this, id: id.clone() };
            tokio::select! {
                _ = this.shutdown.cancelled() => {
                    // Hand the operation over at once instead of after the lease lapses.
                    if let Err(err) = this.store.renew_leases_of(&id, &this.replica.id, 0).await {
                        tracing::warn!(operation = %id, "cannot release the lease: {err}");
                    }
                }
                () = this.run(operation) => {}
            }
        });
    }

    /// Until shutdown: every third of the lease, renews the leases of the operations this
    /// replica runs and reconciles the nodes it owns; every `sync_interval_ms` (at most that
    /// third), claims lapsed operations (those handed over to it included). `take_all` claims
    /// every running operation at once (the store is this process's alone).
    pub async fn supervise(self: Arc<Self>, take_all: bool) {
        if !self.drivers.process.is_empty() {
            self.tracker.spawn(self.clone().heartbeat());
        }
        let lease = self.replica.lease;
        let look = Duration::from_millis(self.config.operations.sync_interval_ms).min(lease / 3);
        let mut tick = tokio::time::interval(look);
        let mut renewed = None::<tokio::time::Instant>;
        let mut first = true;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if renewed.is_none_or(|at| at.elapsed() >= lease / 3) {
                renewed = Some(tokio::time::Instant::now());
                // Only the operations running here: a lease whose runner is gone must lapse, so
                // that a replica (this one included) resumes the operation.
                for id in self.running() {
                    if let Err(err) = self.store.renew_leases_of(&id, &self.replica.id, self.lease_until()).await {
                        tracing::warn!(operation = %id, "cannot renew the operation's lease: {err}");
                    }
                }
                self.reconcile_nodes().await;
            }
            let running: HashSet<String> = self.running_set().clone();
            let dead = self.dead_replicas();
            let claimed =
                self.store.claim_stale(&self.replica.id, self.lease_until(), take_all && first, &running, &dead).await;
            match claimed {
                Ok(claimed) => {
                    for operation in claimed {
                        tracing::info!(operation = %operation.id, instance = %operation.instance_id,
                            kind = operation.kind.as_str(), "resuming an operation left unfinished");
                        self.start(operation);
                    }
                    first = false;
                }
                Err(err) => tracing::warn!("cannot look for unfinished operations: {err}"),
            }
        }
    }

    async fn run(&self, operation: OperationRow) {
        let mut wait = Duration::from_millis(100);
        // The lease as this runner knows it: taken (or renewed) just now.
        let mut lease_until = tokio::time::Instant::now() + self.replica.lease;
        loop {
            let Err(err) = self.execute(&operation).await else { break };
            if now_ms() > operation.deadline_ms + PAST_DEADLINE_GRACE_MS {
                tracing::error!(operation = %operation.id,
                    "operation past its deadline still meets store errors; letting it go (a deprovision supersedes it): {err}");
                break;
            }
            if tokio::time::Instant::now() >= lease_until {
                // Another replica may have claimed it meanwhile; any replica (this one
                // included) resumes it once the store answers.
                tracing::warn!(operation = %operation.id, "the operation's lease lapsed during store errors; leaving it to be claimed: {err}");
                break;
            }
            tracing::warn!(operation = %operation.id, "operation interrupted by a store error, trying again in {} ms: {err}",
                wait.as_millis());
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(STORE_RETRY_MAX);
            // Go on only while the lease is still this replica's: renewing it says so.
            match self.store.renew_leases_of(&operation.id, &self.replica.id, self.lease_until()).await {
                Ok(true) => lease_until = tokio::time::Instant::now() + self.replica.lease,
                Ok(false) => {
                    tracing::info!(operation = %operation.id, "the operation has ended or another replica took it over");
                    break;
                }
                Err(_) => {}
            }
        }
        self.routing.refresh(&operation.instance_id).await;
    }

    async fn execute(&self, operation: &OperationRow) -> Result<(), crate::store::StoreError> {
        let Some(instance) = self.store.instance(&operation.instance_id).await? else {
            tracing::error!(operation = %operation.id, "operation of a missing instance: ending it as failed");
            let decision = decide(operation.kind, Outcome::InstanceMissing);
            self.store.fail_operation(&operation.id, &self.replica.id, &decision.description).await?;
            return Ok(());
        };
        // A node runs where its owner is: the owner runs the operation.
        let target = operation.request.update().map(|u| u.plan_id.as_str());
        let owned_node = self.drivers.process.get(target.unwrap_or(&instance.plan_id)).cloned();
        if owned_node.is_some() && !self.hold_node(operation).await? {
            return Ok(());
        }
        let _on_instance = OnInstance::new(&self.running_instances, &instance.id);
        let progress = Progress::new(self.store.clone(), &operation.id, &self.replica.id);
        let update: Option<UpdateRequest> = operation.request.update().cloned();
        let sealed = operation.request.sealed();
        let secrets = sealed
            .and_then(|sealed| self.secret.open(sealed))
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .map(Secret);
        // Once the operation ends, the secrets are not kept, not even sealed.
        let finished_request = operation.request.without_secrets();
        let unopened = sealed.is_some() && secrets.is_none();
        let spec = spec_of(
            &instance.id,
            &instance.plan_id,
            instance.parameters.as_ref(),
            if operation.kind == OperationKind::Provision { secrets.clone() } else { None },
        );
        let target_plan = update.as_ref().map_or(instance.plan_id.as_str(), |u| u.plan_id.as_str());
        let driver = self.drivers.get(target_plan).cloned();
        let remaining = Duration::from_millis(operation.deadline_ms.saturating_sub(now_ms()).max(0) as u64);
        let work = async {
            let Some(driver) = &driver else {
                return Err(DriverError::failed(format!("plan {target_plan} is no longer in the catalog")));
            };
            if unopened {
                return Err(DriverError::failed(
                    "the request's sealed secrets cannot be opened (was the broker's secret key changed?)",
                ));
            }
            match (operation.kind, &update) {
                (OperationKind::Provision, _) => driver.provision(&spec, &progress).await,
                (OperationKind::Update, Some(update)) => {
                    let to = spec_of(&instance.id, &update.plan_id, update.parameters.as_ref(), secrets.clone());
                    driver.update(&spec, &to, &progress).await
                }
                (OperationKind::Update, None) => Err(DriverError::failed("the update request is unreadable")),
                (OperationKind::Deprovision, _) => driver.deprovision(&spec, &progress).await,
            }
        };
        let outcome = match tokio::time::timeout(remaining, work).await {
            Ok(Ok(())) => Outcome::Done { summary: progress.summary() },
            // The store failed under the driver: the operation is tried again, as when the
            // runner's own store calls fail (the driver's work is idempotent).
            Ok(Err(err)) => match err.transient() {
                Ok(store) => return Err(store),
                Err(err) => Outcome::Failed(err.to_string()),
            },
            Err(_) => Outcome::PastDeadline {
                maximum_polling_duration: self.plan(&instance.plan_id).map_or(0, |p| p.maximum_polling_duration),
            },
        };
        if let (Some(process), Outcome::Done { .. }, false) =
            (&owned_node, &outcome, operation.kind == OperationKind::Deprovision)
        {
            self.record_node_address(process, &instance.id).await;
        }
        let now = now_ms();
        let decision = decide(operation.kind, outcome);
        if decision.clean_up
            && let Some(driver) = &driver
        {
            // Leave nothing half-made: undo what the driver may have done.
            match tokio::time::timeout(Duration::from_secs(60), driver.deprovision(&spec, &progress)).await {
                Ok(Ok(())) => {}
                Ok(Err(cleanup)) => {
                    tracing::warn!(instance = %instance.id, "cleanup after a failed provision failed: {cleanup}")
                }
                Err(_) => tracing::warn!(instance = %instance.id, "cleanup after a failed provision timed out"),
            }
        }
        let mut row = InstanceRow { updated_ms: now, ..instance.clone() };
        if let Some(state) = decision.instance {
            row.state = state;
        }
        if decision.apply_update
            && let Some(update) = update
        {
            row.plan_id = update.plan_id;
            row.parameters = update.parameters;
            row.maintenance_version = update.maintenance_version;
        }
        if decision.forget {
            row.parameters = None;
            row.context = None;
        }
        let (state, description) = (decision.operation, decision.description);
        let finished = self
            .store
            .finish_operation(&operation.id, &self.replica.id, state, &description, &finished_request, row)
            .await?;
        if finished && state == OperationState::Failed {
            tracing::warn!(operation = %operation.id, instance = %instance.id, kind = operation.kind.as_str(),
                state = state.as_str(), "{description}");
        } else if finished {
            tracing::info!(operation = %operation.id, instance = %instance.id, kind = operation.kind.as_str(),
                state = state.as_str(), "{description}");
        } else {
            tracing::warn!(operation = %operation.id, "another replica took the operation over; dropping this result");
        }
        Ok(())
    }

    fn plan(&self, plan_id: &str) -> Option<&PlanDecl> {
        self.config.services.iter().flat_map(|s| &s.plans).find(|p| p.id == plan_id)
    }
}

/// What an operation's work came to, in the cases the runner tells apart. (A store failure is
/// not an outcome: the runner tries the operation again.)
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// The instance's record is gone: there is nothing to run the driver on.
    InstanceMissing,
    /// The work is done; `summary` is what the driver concluded ([`Progress::conclude`]).
    Done { summary: Option<String> },
    /// The work did not finish within the plan's `maximum_polling_duration` (seconds).
    PastDeadline { maximum_polling_duration: u64 },
    /// The work failed for this reason (the driver's, or the runner's: a plan no longer in the
    /// catalog, secrets that cannot be opened, an unreadable update).
    Failed(String),
}

/// What the runner writes when an operation ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decision {
    /// The instance's new state; `None` when there is no instance record to write.
    pub(super) instance: Option<InstanceState>,
    /// The operation's final state.
    pub(super) operation: OperationState,
    /// The operation's final description (`last_operation`).
    pub(super) description: String,
    /// The instance takes the update's plan, parameters and maintenance version.
    pub(super) apply_update: bool,
    /// The instance's parameters and context are forgotten (it is gone).
    pub(super) forget: bool,
    /// What a failed provision may have made is deprovisioned, so nothing is left half-made.
    pub(super) clean_up: bool,
}

/// The outcome table: (operation kind, outcome) → what the instance and the operation become.
/// Pure; the runner does the I/O around it.
pub(super) fn decide(kind: OperationKind, outcome: Outcome) -> Decision {
    let decision = |instance, operation, description| Decision {
        instance,
        operation,
        description,
        apply_update: false,
        forget: false,
        clean_up: false,
    };
    let reason = match outcome {
        Outcome::InstanceMissing => {
            return decision(None, OperationState::Failed, "the instance's record is missing".to_string());
        }
        Outcome::Done { summary } => {
            let concluded = |done: &str| match &summary {
                Some(summary) => format!("{done}: {summary}"),
                None => done.to_string(),
            };
            let ready = Some(InstanceState::Ready);
            return match kind {
                OperationKind::Provision => decision(ready, OperationState::Succeeded, concluded("provisioned")),
                OperationKind::Update => {
                    Decision { apply_update: true, ..decision(ready, OperationState::Succeeded, concluded("updated")) }
                }
                OperationKind::Deprovision => Decision {
                    forget: true,
                    ..decision(Some(InstanceState::Deleted), OperationState::Succeeded, "deprovisioned".to_string())
                },
            };
        }
        Outcome::PastDeadline { maximum_polling_duration } => {
            format!("did not finish within the plan's maximum_polling_duration ({maximum_polling_duration} s)")
        }
        Outcome::Failed(reason) => reason,
    };
    match kind {
        OperationKind::Provision => Decision {
            clean_up: true,
            ..decision(Some(InstanceState::Failed), OperationState::Failed, format!("provisioning failed: {reason}"))
        },
        OperationKind::Update => decision(
            Some(InstanceState::Ready),
            OperationState::Failed,
            format!("update failed, the instance keeps its previous settings: {reason}"),
        ),
        OperationKind::Deprovision => {
            decision(Some(InstanceState::Failed), OperationState::Failed, format!("deprovisioning failed: {reason}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [OperationKind; 3] = [OperationKind::Provision, OperationKind::Update, OperationKind::Deprovision];

    /// Every (kind, outcome) the runner tells apart, and what the instance and the operation
    /// become: the whole table.
    #[test]
    fn the_outcome_table_covers_every_kind_and_outcome() {
        use InstanceState as I;
        use OperationKind as K;
        use OperationState as O;
        let done = || Outcome::Done { summary: None };
        let summarised = || Outcome::Done { summary: Some("keys 0xa3a3…4a9b: imported".into()) };
        let late = || Outcome::PastDeadline { maximum_polling_duration: 180 };
        let failed = || Outcome::Failed("the node did not start".into());
        let missing = || Outcome::InstanceMissing;
        let deadline = "did not finish within the plan's maximum_polling_duration (180 s)";
        let keeps = "update failed, the instance keeps its previous settings";
        // The decision with no instance change beyond its state.
        let to = |instance: Option<I>, operation: O, description: &str| Decision {
            instance,
            operation,
            description: description.to_string(),
            apply_update: false,
            forget: false,
            clean_up: false,
        };
        let no_record = to(None, O::Failed, "the instance's record is missing");
        let table: Vec<(K, Outcome, Decision)> = vec![
            (K::Provision, done(), to(Some(I::Ready), O::Succeeded, "provisioned")),
            (K::Provision, summarised(), to(Some(I::Ready), O::Succeeded, "provisioned: keys 0xa3a3…4a9b: imported")),
            (
                K::Provision,
                failed(),
                Decision {
                    clean_up: true,
                    ..to(Some(I::Failed), O::Failed, "provisioning failed: the node did not start")
                },
            ),
            (
                K::Provision,
                late(),
                Decision {
                    clean_up: true,
                    ..to(Some(I::Failed), O::Failed, &format!("provisioning failed: {deadline}"))
                },
            ),
            (K::Provision, missing(), no_record.clone()),
            (K::Update, done(), Decision { apply_update: true, ..to(Some(I::Ready), O::Succeeded, "updated") }),
            (
                K::Update,
                summarised(),
                Decision {
                    apply_update: true,
                    ..to(Some(I::Ready), O::Succeeded, "updated: keys 0xa3a3…4a9b: imported")
                },
            ),
            (K::Update, failed(), to(Some(I::Ready), O::Failed, &format!("{keeps}: the node did not start"))),
            (K::Update, late(), to(Some(I::Ready), O::Failed, &format!("{keeps}: {deadline}"))),
            (K::Update, missing(), no_record.clone()),
            (K::Deprovision, done(), Decision { forget: true, ..to(Some(I::Deleted), O::Succeeded, "deprovisioned") }),
            // A deprovision's description is fixed: a driver's summary does not show.
            (
                K::Deprovision,
                summarised(),
                Decision { forget: true, ..to(Some(I::Deleted), O::Succeeded, "deprovisioned") },
            ),
            (K::Deprovision, failed(), to(Some(I::Failed), O::Failed, "deprovisioning failed: the node did not start")),
            (K::Deprovision, late(), to(Some(I::Failed), O::Failed, &format!("deprovisioning failed: {deadline}"))),
            (K::Deprovision, missing(), no_record),
        ];
        for kind in KINDS {
            let rows = table.iter().filter(|row| row.0 == kind).count();
            assert_eq!(rows, 5, "{kind:?}: done, done with a summary, failed, past deadline, instance missing");
        }
        for (kind, outcome, expected) in table {
            let case = format!("{kind:?} × {outcome:?}");
            assert_eq!(decide(kind, outcome), expected, "{case}");
        }
    }

    /// Only a store that failed to answer is tried again; a row that does not decode, like any
    /// other failure, is the operation's reason.
    #[test]
    fn a_driver_store_outage_is_retried_and_a_corrupt_row_or_a_real_failure_is_not() {
        let outage = DriverError::from(crate::store::StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(outage.is_transient());
        assert!(matches!(outage.transient(), Ok(crate::store::StoreError::Database(_))));
        let corrupt = DriverError::from(crate::store::StoreError::Corrupt("not an EIP-3076 interchange".into()));
        assert!(!corrupt.is_transient());
        let reason = corrupt.transient().unwrap_err().to_string();
        assert_eq!(reason, "the store failed: corrupt row: not an EIP-3076 interchange");
        let real = DriverError::failed("the keymanager API does not answer");
        assert!(!real.is_transient());
        assert_eq!(real.transient().unwrap_err().to_string(), "the keymanager API does not answer");
    }
}
