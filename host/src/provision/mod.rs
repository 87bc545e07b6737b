//! Provisioning: the [`Driver`] interface that gives an instance a node, and the runner of
//! asynchronous operations.
//!
//! Owns: turning an accepted provision / update / deprovision (an `in progress` operation row)
//! into driver work and then into a final state, exactly once across crashes and replicas.
//! Must not: answer HTTP, or decide what a request means (the broker does, in the store's
//! transaction); the runner only finishes what the broker started.
//!
//! ## How an operation survives a crash
//! The broker inserts the operation with this replica as its lease owner. The runner renews
//! the leases of the operations it is running (and only those) every third of
//! `operations.lease_seconds`. Every replica looks for operations whose lease lapsed (their
//! runner died, or stopped) and claims them with a conditional update, so exactly one replica
//! resumes each; its own lapsed ones included, unless it is still running them. Drivers are
//! idempotent, so a resumed operation simply runs again; one past its deadline (the plan's
//! `maximum_polling_duration`) fails with that reason, and a failed provision is cleaned up by
//! the driver, so nothing is left half-made. On SQLite, which one process holds exclusively,
//! every `in progress` operation found at start is resumed at once.
//!
//! ## One owner per node
//! A `process` plan's node runs on exactly one replica, its owner, recorded in the store with
//! the URLs other replicas reach it at (`replica.node_host`); their gateways forward there. The
//! replica that provisions an instance claims its node before starting it. An operation on an
//! instance whose node a live replica owns is run by that owner: another replica that accepted
//! it hands it over (its lease), and no replica but the owner claims it. Every replica beats a
//! heartbeat in the store; one silent for `operations.lease_seconds` is dead, and its nodes are
//! taken over, each by exactly one replica (a conditional update), which starts the node anew.
//! A replica drops any node it runs that the store says another replica owns (it was thought
//! dead and its nodes were taken over), and at start it starts only the nodes it owns.
//!
//! ## When the store fails under a running operation
//! The runner keeps the operation: it tries again with back-off (up to
//! [`STORE_RETRY_MAX`] between tries) for as long as the lease is still its own, running the
//! idempotent driver work again, so the operation ends `succeeded` or `failed` (at its deadline
//! at the latest) once the store answers, with no restart. If another replica took the lease
//! meanwhile, this one lets go.

pub mod kubernetes;
mod process;
mod upstream;
mod validator;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the operation runner calls after it ended an operation on an instance, so that the
/// instance's routes follow (the routing layer implements it; provision does not depend on it).
pub trait RouteRefresh: Send + Sync + 'static {
    /// Rebuilds the routes of `instance_id` from the store.
    fn refresh<'a>(&'a self, instance_id: &'a str) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

pub use kubernetes::{KubernetesContext, KubernetesDriver};
pub use process::{NODE_MARKER, ProcessDriver, placeholders};
pub use upstream::UpstreamDriver;
pub use validator::{
    ClientHost, KeySecrets, Prepared, VALIDATOR_PARAMETERS, VALIDATOR_TEMPLATE_NAMES, ValidatorAccess, ValidatorDriver,
    given_history_root, prepare_provision, prepare_update, pubkeys_of, validator_parameter_schema,
};

use crate::config::{Config, DriverDecl, PlanDecl};
use crate::credentials::SecretKey;
use crate::plugins::Call;
use crate::store::{InstanceRow, InstanceState, OperationKind, OperationRow, OperationState, Store, now_ms};
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

/// What an operation's `request` holds (defined by the store, which decodes it as it is read).
pub use crate::store::{SealedRequest, UpdateRequest};

/// Why a driver could not do its work; the text is shown to users in `last_operation`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// Lets a driver tell the platform how far it got (`last_operation`'s `description`).
pub struct Progress {
    store: Store,
    operation_id: String,
    owner: String,
    summary: std::sync::Mutex<Option<String>>,
}

impl Progress {
    /// Records what the operation's final description adds after "provisioned" / "updated".
    pub async fn conclude(&self, summary: &str) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary.to_string());
        self.report(summary).await;
    }

    fn summary(&self) -> Option<String> {
        self.summary.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the operation's description.
    pub async fn report(&self, description: &str) {
        if let Err(err) = self.store.set_progress(&self.operation_id, &self.owner, description).await {
            tracing::warn!(operation = %self.operation_id, "cannot record progress: {err}");
        }
    }
}

/// How instances of a plan get a node. Every method must be idempotent: after a crash an
/// operation runs again from the start.
pub trait Driver: Send + Sync {
    /// Makes the instance's node ready to serve.
    fn provision<'a>(
        &'a self,
        instance: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Moves an instance from one spec to another (a plan or parameter change).
    fn update<'a>(
        &'a self,
        from: &'a InstanceSpec,
        to: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Removes everything provisioning made. Succeeds when there is nothing to remove.
    fn deprovision<'a>(
        &'a self,
        instance: &'a InstanceSpec,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), DriverError>>;
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

/// This replica among others on one store.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Its id: stable across restarts (its data directory's), the lease owner of the operations
    /// it runs and the owner of the nodes it runs.
    pub id: String,
    /// Where other replicas reach its nodes.
    pub node_host: String,
    /// How long a heartbeat stays fresh: a replica silent this long is dead.
    pub lease: Duration,
}

/// The driver of every plan, by plan id.
#[derive(Clone, Default)]
pub struct Drivers {
    by_plan: Arc<HashMap<String, Arc<dyn Driver>>>,
    /// The `process` plans' drivers again, for node ownership.
    process: Arc<HashMap<String, Arc<ProcessDriver>>>,
    /// How upstream pools to other replicas' nodes are set up.
    deadline: Duration,
    max_response_bytes: usize,
}

impl Drivers {
    /// Creates the driver of each plan in the catalog, and their background tasks (health
    /// checks, node supervision) under `tracker` until `shutdown`.
    pub fn new(
        config: &Config,
        store: &Store,
        secret: &SecretKey,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Drivers {
        let deadline = Duration::from_millis(config.gateway.upstream_deadline_ms);
        let max_response = config.gateway.max_request_bytes.max(config.gateway.max_response_bytes) as usize;
        let context = || KubernetesContext {
            secret: secret.clone(),
            store: store.clone(),
            deadline,
            max_response_bytes: max_response,
        };
        let mut by_plan: HashMap<String, Arc<dyn Driver>> = HashMap::new();
        let mut process = HashMap::new();
        for plan in config.services.iter().flat_map(|s| &s.plans) {
            let driver: Arc<dyn Driver> = match &plan.driver {
                DriverDecl::Upstream(decl) => {
                    let driver = Arc::new(UpstreamDriver::new(decl, deadline, max_response));
                    tracker.spawn(driver.clone().check_health(shutdown.clone()));
                    driver
                }
                DriverDecl::Process(decl) => {
                    let driver = Arc::new(
                        ProcessDriver::new(
                            decl.clone(),
                            &plan.id,
                            config.data_dir.join("nodes"),
                            deadline,
                            max_response,
                            tracker.clone(),
                            shutdown.clone(),
                        )
                        .with_replica(config.replica.clone()),
                    );
                    process.insert(plan.id.clone(), driver.clone());
                    driver
                }
                DriverDecl::Validator(decl) => Arc::new(ValidatorDriver::new(
                    decl.clone(),
                    &plan.id,
                    config.data_dir.join("validators"),
                    store.clone(),
                    deadline,
                    max_response,
                    tracker.clone(),
                    shutdown.clone(),
                )),
                DriverDecl::Kubernetes(decl) => Arc::new(KubernetesDriver::new(decl.clone(), &plan.id, context())),
                DriverDecl::KubernetesValidator(decl) => {
                    let host = KubernetesDriver::for_clients(
                        decl.client.clone(),
                        &plan.id,
                        Some(decl.token_path.clone()),
                        decl.beacon_url.clone(),
                        context(),
                    );
                    Arc::new(ValidatorDriver::with_host(
                        Box::new(host),
                        &decl.rpc_http,
                        &decl.rpc_ws,
                        store.clone(),
                        deadline,
                        max_response,
                    ))
                }
            };
            by_plan.insert(plan.id.clone(), driver);
        }
        Drivers { by_plan: Arc::new(by_plan), process: Arc::new(process), deadline, max_response_bytes: max_response }
    }

    /// An upstream pool with no node: its calls get -32002 (a node that is starting or moving).
    pub fn no_node(&self) -> Arc<UpstreamPool> {
        self.pool(Vec::new(), Vec::new())
    }

    fn pool(&self, http: Vec<http::Uri>, ws: Vec<String>) -> Arc<UpstreamPool> {
        let (deadline, max_response_bytes) = (self.deadline, self.max_response_bytes);
        let max_sockets_per_node = crate::upstream::DEFAULT_SOCKETS_PER_NODE;
        Arc::new(UpstreamPool::new(crate::upstream::UpstreamSettings {
            http,
            ws,
            deadline,
            max_response_bytes,
            max_sockets_per_node,
        }))
    }

    /// An upstream pool to a node another replica runs, at the URLs it recorded.
    pub fn remote_node(&self, http: &str, ws: Option<&str>) -> Result<Arc<UpstreamPool>, String> {
        let http = http.parse().map_err(|err| format!("the node's recorded address {http:?} is not a URL: {err}"))?;
        Ok(self.pool(vec![http], ws.map(str::to_string).into_iter().collect()))
    }

    /// Whether instances of `plan_id` have a node owned by one replica (a `process` plan).
    pub fn is_owned_node(&self, plan_id: &str) -> bool {
        self.process.contains_key(plan_id)
    }

    /// The driver of a plan.
    pub fn get(&self, plan_id: &str) -> Option<&Arc<dyn Driver>> {
        self.by_plan.get(plan_id)
    }

    /// Recovers every driver's nodes from the store's instances (see [`Driver::recover`]).
    /// A `process` plan's nodes are recovered only where `replica` owns them (or takes them
    /// because nobody owned them: data from before node ownership); the local leftovers of
    /// nodes another replica owns go. A dead replica's nodes are taken over later, once it has
    /// been watched to be dead.
    pub async fn recover(&self, store: &Store, replica: &Replica) -> Result<(), crate::store::StoreError> {
        let instances = store.instances_not_deleted().await?;
        store.heartbeat(&replica.id, &replica.node_host).await?;
        let owners = store.node_owners().await?;
        let theirs = |id: &str| owners.get(id).is_some_and(|o| o.replica_id != replica.id);
        let busy: Vec<String> = instances
            .iter()
            .filter(|i| matches!(i.state, InstanceState::Provisioning | InstanceState::Deprovisioning))
            .map(|i| i.id.clone())
            .collect();
        for (plan_id, driver) in self.by_plan.iter() {
            let mut live: Vec<InstanceSpec> = instances
                .iter()
                .filter(|i| &i.plan_id == plan_id && matches!(i.state, InstanceState::Ready | InstanceState::Updating))
                .map(|i| spec_of(&i.id, &i.plan_id, i.parameters.as_ref(), None))
                .collect();
            let Some(process) = self.process.get(plan_id) else {
                driver.recover(&live, &busy).await;
                continue;
            };
            let mut mine = Vec::with_capacity(live.len());
            for spec in live.drain(..) {
                if !theirs(&spec.id) && store.claim_node(&spec.id, &replica.id).await? == crate::store::NodeClaim::Mine
                {
                    mine.push(spec);
                }
            }
            let busy: Vec<String> = busy.iter().filter(|id| !theirs(id)).cloned().collect();
            process.recover_nodes(&mine, &busy).await;
            for spec in &mine {
                let Some((http, ws)) = process.node_urls(&spec.id) else { continue };
                let recorded = owners.get(&spec.id);
                // Only a changed address is written (each write is a change other replicas apply).
                if recorded.is_none_or(|o| o.http_url.as_deref() != Some(http.as_str()) || o.ws_url != ws) {
                    store.set_node_address(&spec.id, &replica.id, &http, ws.as_deref()).await?;
                }
            }
        }
        Ok(())
    }
}

/// Runs operations: those this replica accepted, and those a dead replica left behind.
pub struct Operations {
    store: Store,
    secret: SecretKey,
    config: Arc<Config>,
    drivers: Drivers,
    routing: Arc<dyn RouteRefresh>,
    replica: Replica,
    /// The operations this replica is running now: the only leases it renews.
    running: Mutex<HashSet<String>>,
    /// The instances those operations are on, with how many run on each.
    running_instances: Mutex<HashMap<String, usize>>,
    /// Which other replicas are alive, as this replica sees it.
    liveness: Mutex<Liveness>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// The longest wait between two tries of an operation whose store calls failed.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long after its deadline a runner still retries an operation whose store calls fail;
/// then it lets the operation go (a deprovision supersedes it).
const PAST_DEADLINE_GRACE_MS: i64 = 60_000;

/// Which replicas are dead, judged by this replica's own clock: a replica is dead when its
/// heartbeat (the value it wrote) has stood still for a whole lease while this replica read
/// the store without a failure. No two machines' clocks are compared, and a replica that could
/// not read the store (an outage) judges nobody dead until it has watched for a lease again.
#[derive(Default)]
struct Liveness {
    /// Each other replica's heartbeat value, and when this replica first saw that value.
    seen: HashMap<String, (i64, tokio::time::Instant)>,
}

impl Liveness {
    fn observe(&mut self, heartbeats: HashMap<String, i64>, me: &str) {
        let now = tokio::time::Instant::now();
        self.seen.retain(|id, _| heartbeats.contains_key(id));
        for (id, value) in heartbeats {
            if id == me {
                continue;
            }
            match self.seen.get(&id) {
                Some((seen, _)) if *seen == value => {}
                _ => {
                    self.seen.insert(id, (value, now));
                }
            }
        }
    }

    /// Forgets what was seen (the store could not be read): nobody is judged dead until it has
    /// been watched for a whole lease again.
    fn lose_sight(&mut self) {
        self.seen.clear();
    }

    /// The dead replicas, with the heartbeat value that stood still.
    fn dead(&self, lease: Duration) -> HashMap<String, i64> {
        self.seen
            .iter()
            .filter(|(_, (_, since))| since.elapsed() >= lease)
            .map(|(id, (v, _))| (id.clone(), *v))
            .collect()
    }
}

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

    fn dead_replicas(&self) -> HashMap<String, i64> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner()).dead(self.replica.lease)
    }

    /// Until shutdown, every third of the lease: beats this replica's heartbeat and reads the
    /// others' (each bounded by that third, on a task of its own so that no slow work delays
    /// it). Only with `process` plans, which are the only ones with node owners.
    async fn heartbeat(self: Arc<Self>) {
        let period = self.replica.lease / 3;
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let beat = async {
                self.store.heartbeat(&self.replica.id, &self.replica.node_host).await?;
                self.store.heartbeats().await
            };
            match tokio::time::timeout(period, beat).await {
                Ok(Ok(heartbeats)) => {
                    self.liveness.lock().unwrap_or_else(|p| p.into_inner()).observe(heartbeats, &self.replica.id)
                }
                Ok(Err(err)) => {
                    tracing::warn!("cannot record this replica's heartbeat: {err}");
                    self.liveness.lock().unwrap_or_else(|p| p.into_inner()).lose_sight();
                }
                Err(_) => {
                    tracing::warn!("the store did not take this replica's heartbeat in time");
                    self.liveness.lock().unwrap_or_else(|p| p.into_inner()).lose_sight();
                }
            }
        }
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

    /// Keeps the nodes this replica owns running here and no others: takes over the nodes of
    /// dead replicas whose node does not answer any more (each by a conditional update, so by
    /// one replica), starts owned nodes that are not running here, and stops nodes that run
    /// here although another replica owns them now.
    async fn reconcile_nodes(&self) {
        if self.drivers.process.is_empty() {
            return;
        }
        for (dead, seen) in self.dead_replicas() {
            let candidates = match self.store.nodes_to_take_over(&dead).await {
                Ok(candidates) => candidates,
                Err(err) => return tracing::warn!("cannot look for nodes of dead replicas: {err}"),
            };
            for (id, plan_id, http_url) in candidates {
                if !self.drivers.process.contains_key(&plan_id) {
                    continue;
                }
                // ovsb may be gone while its node still runs: forwarding to it is better than
                // a new chain.
                if let Some(url) = http_url
                    && let Ok(pool) = self.drivers.remote_node(&url, None)
                    && pool.probe(0, &Call { method: "eth_chainId".into(), params: None }).await.is_ok()
                {
                    continue;
                }
                match self.store.take_over_node(&id, &self.replica.id, &dead, seen).await {
                    Ok(true) => tracing::warn!(instance = %id, replica = %dead,
                        "the replica that ran this instance's node is gone and so is its node: starting it here"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!(instance = %id, "cannot take over the node of a dead replica: {err}"),
                }
            }
        }
        // What runs here, then what the store says is this replica's (in this order: a node an
        // operation starts meanwhile is in the store before it runs).
        let local: Vec<(Arc<ProcessDriver>, String)> = self
            .drivers
            .process
            .values()
            .flat_map(|process| process.local_instances().into_iter().map(move |id| (process.clone(), id)))
            .collect();
        let owned = match self.store.owned_nodes(&self.replica.id).await {
            Ok(owned) => owned,
            Err(err) => return tracing::warn!("cannot read which nodes this replica owns: {err}"),
        };
        let owned_ids: HashSet<&str> = owned.iter().map(|n| n.instance_id.as_str()).collect();
        for node in &owned {
            let Some(process) = self.drivers.process.get(&node.plan_id) else { continue };
            if !node.serving || self.running_instance(&node.instance_id) || process.runs(&node.instance_id) {
                continue;
            }
            let spec = spec_of(&node.instance_id, &node.plan_id, node.parameters.as_ref(), None);
            match process.ensure_running(&spec, None).await {
                Ok(_) => {
                    self.record_node_address(process, &node.instance_id).await;
                    self.routing.refresh(&node.instance_id).await;
                }
                Err(err) => {
                    tracing::warn!(instance = %node.instance_id, "cannot start the node this replica owns: {err}")
                }
            }
        }
        for (process, id) in local {
            if owned_ids.contains(id.as_str()) || self.running_instance(&id) {
                continue;
            }
            // Read again: an operation here may have claimed it since.
            match self.store.node_owner(&id).await {
                Ok(Some(owner)) if owner.replica_id == self.replica.id => continue,
                Ok(_) => {}
                Err(_) => continue,
            }
            tracing::warn!(instance = %id, "another replica runs this instance's node now: stopping the one here");
            if let Err(err) = process.remove_node(&id).await {
                tracing::warn!(instance = %id, "{err}");
            }
            self.routing.refresh(&id).await;
        }
    }

    /// Whether an operation on `instance_id` runs here now (its node may be between claim and
    /// record).
    fn running_instance(&self, instance_id: &str) -> bool {
        self.running_instances.lock().unwrap_or_else(|p| p.into_inner()).contains_key(instance_id)
    }

    async fn record_node_address(&self, process: &ProcessDriver, instance_id: &str) {
        let Some((http, ws)) = process.node_urls(instance_id) else { return };
        match self.store.set_node_address(instance_id, &self.replica.id, &http, ws.as_deref()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(instance = %instance_id, "the node's address was not recorded: no longer its owner")
            }
            Err(err) => tracing::warn!(instance = %instance_id, "cannot record the node's address: {err}"),
        }
    }

    /// For an operation on a `process` instance: whether this replica runs it (it holds the
    /// node, took it now, or took it over from a dead owner); otherwise it was handed to the
    /// owner, or the instance is gone.
    async fn hold_node(&self, operation: &OperationRow) -> Result<bool, crate::store::StoreError> {
        let holder = match self.store.claim_node(&operation.instance_id, &self.replica.id).await? {
            crate::store::NodeClaim::Mine => return Ok(true),
            crate::store::NodeClaim::Gone => return Ok(false),
            crate::store::NodeClaim::Held(holder) => holder,
        };
        if let Some(seen) = self.dead_replicas().get(&holder)
            && self.store.take_over_node(&operation.instance_id, &self.replica.id, &holder, *seen).await?
        {
            tracing::warn!(operation = %operation.id, instance = %operation.instance_id, replica = %holder,
                "the replica that ran this instance's node is gone: this one runs the operation and the node");
            return Ok(true);
        }
        if self.store.hand_over(&operation.id, &self.replica.id, &holder).await? {
            tracing::info!(operation = %operation.id, instance = %operation.instance_id, owner = %holder,
                "handed the operation over to the replica that runs the instance's node");
        }
        Ok(false)
    }

    async fn execute(&self, operation: &OperationRow) -> Result<(), crate::store::StoreError> {
        let Some(instance) = self.store.instance(&operation.instance_id).await? else {
            tracing::error!(operation = %operation.id, "operation of a missing instance: ending it as failed");
            self.store.fail_operation(&operation.id, &self.replica.id, "the instance's record is missing").await?;
            return Ok(());
        };
        // A node runs where its owner is: the owner runs the operation.
        let target = operation.request.update().map(|u| u.plan_id.as_str());
        let owned_node = self.drivers.process.get(target.unwrap_or(&instance.plan_id)).cloned();
        if owned_node.is_some() && !self.hold_node(operation).await? {
            return Ok(());
        }
        let _on_instance = OnInstance::new(&self.running_instances, &instance.id);
        let progress = Progress {
            store: self.store.clone(),
            operation_id: operation.id.clone(),
            owner: self.replica.id.clone(),
            summary: Default::default(),
        };
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
                return Err(DriverError(format!("plan {target_plan} is no longer in the catalog")));
            };
            if unopened {
                return Err(DriverError(
                    "the request's sealed secrets cannot be opened (was the broker's secret key changed?)".into(),
                ));
            }
            match (operation.kind, &update) {
                (OperationKind::Provision, _) => driver.provision(&spec, &progress).await,
                (OperationKind::Update, Some(update)) => {
                    let to = spec_of(&instance.id, &update.plan_id, update.parameters.as_ref(), secrets.clone());
                    driver.update(&spec, &to, &progress).await
                }
                (OperationKind::Update, None) => Err(DriverError("the update request is unreadable".into())),
                (OperationKind::Deprovision, _) => driver.deprovision(&spec, &progress).await,
            }
        };
        let outcome = match tokio::time::timeout(remaining, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(DriverError(format!(
                "did not finish within the plan's maximum_polling_duration ({} s)",
                self.plan(&instance.plan_id).map_or(0, |p| p.maximum_polling_duration)
            ))),
        };
        let now = now_ms();
        let mut row = InstanceRow { updated_ms: now, ..instance.clone() };
        if let (Some(process), Ok(()), false) = (&owned_node, &outcome, operation.kind == OperationKind::Deprovision) {
            self.record_node_address(process, &instance.id).await;
        }
        let (state, description) = match (operation.kind, outcome) {
            (OperationKind::Provision, Ok(())) => {
                row.state = InstanceState::Ready;
                (OperationState::Succeeded, concluded("provisioned", &progress))
            }
            (OperationKind::Provision, Err(err)) => {
                // Leave nothing half-made: undo what the driver may have done.
                if let Some(driver) = &driver {
                    match tokio::time::timeout(Duration::from_secs(60), driver.deprovision(&spec, &progress)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(cleanup)) => {
                            tracing::warn!(instance = %instance.id, "cleanup after a failed provision failed: {cleanup}")
                        }
                        Err(_) => tracing::warn!(instance = %instance.id, "cleanup after a failed provision timed out"),
                    }
                }
                row.state = InstanceState::Failed;
                (OperationState::Failed, format!("provisioning failed: {err}"))
            }
            (OperationKind::Update, Ok(())) => {
                if let Some(update) = update {
                    row.plan_id = update.plan_id;
                    row.parameters = update.parameters;
                    row.maintenance_version = update.maintenance_version;
                }
                row.state = InstanceState::Ready;
                (OperationState::Succeeded, concluded("updated", &progress))
            }
            (OperationKind::Update, Err(err)) => {
                row.state = InstanceState::Ready;
                (OperationState::Failed, format!("update failed, the instance keeps its previous settings: {err}"))
            }
            (OperationKind::Deprovision, Ok(())) => {
                row.state = InstanceState::Deleted;
                row.parameters = None;
                row.context = None;
                (OperationState::Succeeded, "deprovisioned".to_string())
            }
            (OperationKind::Deprovision, Err(err)) => {
                row.state = InstanceState::Failed;
                (OperationState::Failed, format!("deprovisioning failed: {err}"))
            }
        };
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

fn concluded(done: &str, progress: &Progress) -> String {
    match progress.summary() {
        Some(summary) => format!("{done}: {summary}"),
        None => done.to_string(),
    }
}

fn spec_of(id: &str, plan_id: &str, parameters: Option<&serde_json::Value>, secrets: Option<Secret>) -> InstanceSpec {
    let parameters = parameters.cloned().unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    InstanceSpec { id: id.to_string(), plan_id: plan_id.to_string(), parameters, secrets }
}
