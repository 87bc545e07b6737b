//! Replica membership: this replica among others on one store ([`Replica`]), which of them
//! are alive (heartbeats, judged by this replica's own clock), and which replica runs each
//! `process` plan's node (claims, hand-overs, take-overs of a dead replica's nodes).
//!
//! Owns: the heartbeat task, the reconciliation of owned nodes, and the decision whether an
//! operation on an owned node runs here. Must not: run a driver's provision, update or
//! deprovision (the runner does), or answer HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::driver::spec_of;
use super::{Operations, ProcessDriver};
use crate::plugins::Call;
use crate::store::OperationRow;

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

/// Which replicas are dead, judged by this replica's own clock: a replica is dead when its
/// heartbeat (the value it wrote) has stood still for a whole lease while this replica read
/// the store without a failure. No two machines' clocks are compared, and a replica that could
/// not read the store (an outage) judges nobody dead until it has watched for a lease again.
#[derive(Default)]
pub(super) struct Liveness {
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

impl Operations {
    pub(super) fn dead_replicas(&self) -> HashMap<String, i64> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner()).dead(self.replica.lease)
    }

    /// Until shutdown, every third of the lease: beats this replica's heartbeat and reads the
    /// others' (each bounded by that third, on a task of its own so that no slow work delays
    /// it). Only with `process` plans, which are the only ones with node owners.
    pub(super) async fn heartbeat(self: Arc<Self>) {
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

    /// Keeps the nodes this replica owns running here and no others: takes over the nodes of
    /// dead replicas whose node does not answer any more (each by a conditional update, so by
    /// one replica), starts owned nodes that are not running here, and stops nodes that run
    /// here although another replica owns them now.
    pub(super) async fn reconcile_nodes(&self) {
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
    pub(super) fn running_instance(&self, instance_id: &str) -> bool {
        self.running_instances.lock().unwrap_or_else(|p| p.into_inner()).contains_key(instance_id)
    }

    pub(super) async fn record_node_address(&self, process: &ProcessDriver, instance_id: &str) {
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
    pub(super) async fn hold_node(&self, operation: &OperationRow) -> Result<bool, crate::store::StoreError> {
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
}
