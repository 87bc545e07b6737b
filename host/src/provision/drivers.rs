//! Driver construction: one [`Driver`] per plan of the catalog ([`Drivers`]), their background
//! tasks, upstream pools to nodes other replicas run, and recovery after a restart.
//!
//! Owns: which driver serves which plan, and which plans have a node owned by one replica
//! (`process` plans). Must not: run operations (the runner does) or judge replicas alive or
//! dead (the replica membership does).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::driver::spec_of;
use super::{
    Driver, InstanceSpec, KubernetesContext, KubernetesDriver, ProcessDriver, Replica, RpcNodes, UpstreamDriver,
    ValidatorDriver,
};
use crate::config::{Config, DriverDecl};
use crate::credentials::SecretKey;
use crate::store::{InstanceState, Store};
use crate::upstream::UpstreamPool;

/// The driver of every plan, by plan id.
#[derive(Clone, Default)]
pub struct Drivers {
    by_plan: Arc<HashMap<String, Arc<dyn Driver>>>,
    /// The `process` plans' drivers again, for node ownership.
    pub(super) process: Arc<HashMap<String, Arc<ProcessDriver>>>,
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
                    let rpc =
                        RpcNodes { http: &decl.rpc_http, ws: &decl.rpc_ws, max_sockets: decl.max_sockets_per_node };
                    Arc::new(ValidatorDriver::with_host(Box::new(host), rpc, store.clone(), deadline, max_response))
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
