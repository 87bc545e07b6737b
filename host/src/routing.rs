//! Keeps the gateway's routing snapshot in step with the store.
//!
//! Owns: turning the serving instances and their bindings (store rows) into the gateway's
//! [`RouteTable`], building each instance's plugin chain once and reusing it until its plan or
//! parameters change, and each instance's key-value store for as long as the instance lives.
//! Must not: run on the data path, or do work in proportion to all instances for a change to one.
//!
//! - [`RouteSync::sync`]: the whole table, from every serving instance. At start, and when this
//!   replica has fallen behind the store's change log (recovery).
//! - [`RouteSync::sync_instance`]: one instance's routes, from its row and its bindings. The
//!   broker calls it after each change it commits (so an unbind takes effect before the 200),
//!   the operation runner after each operation it ends. Its cost does not grow with the number
//!   of instances (two indexed queries, O(log n) on the persistent route maps).
//! - [`RouteSync::catch_up`]: what other replicas changed: the instances the store's change log
//!   names since this replica's generation, each applied as by `sync_instance`. Polled.
//!
//! An instance of a `process` plan whose node another replica owns is served here too: its
//! upstream is the owner's node at the address recorded in the store (see
//! [`crate::provision`]'s "One owner per node"); the owner and that address are part of what
//! decides whether a built route can be kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ChainElement, Config};
use crate::credentials::SecretKey;
use crate::gateway::allowlist::{Allowlist, MethodRules};
use crate::gateway::{InstanceRoute, KeyDigest, Route, RouteTable, Routes, ValidatorRoute, key_digest};
use crate::identity::Identity;
use crate::plugins::{KvStore, PluginVersion, Registry};
use crate::provision::Drivers;
use crate::store::{InstanceRow, NodeOwner, Store};

/// Generations of the change log kept for replicas to catch up from; one that falls further
/// behind reloads every route.
const CHANGE_LOG_WINDOW: i64 = 100_000;

struct Built {
    /// Shared by every instance of the plan (see [`RouteSync::plan_name`]).
    plan_id: Arc<str>,
    parameters: Option<serde_json::Value>,
    /// Who ran the node when the route was built (`process` plans).
    node: Option<NodeOwner>,
    /// Built without a node to reach (it is starting, or being taken over): calls get -32002
    /// until it is built again, which every poll tries.
    nodeless: bool,
    /// The plugins of its chain and the version each had when the route was built: a reload
    /// that changes one of them rebuilds the route ([`RouteSync::refresh_plugins`]).
    plugins: ChainVersions,
    /// Versions a rebuild was refused with (a new version that does not take this instance's
    /// configuration): the route keeps running `plugins`, and is not tried again with these.
    refused: Option<ChainVersions>,
    route: Arc<InstanceRoute>,
}

impl Built {
    /// Whether this route was built for `instance` as it is now, with `node`, and has a node to
    /// reach: only its plugins' versions may differ.
    fn serves(&self, instance: &InstanceRow, node: &Option<NodeOwner>) -> bool {
        keeps_route(&self.plan_id, self.parameters.as_ref(), self.node.as_ref(), self.nodeless, instance, node.as_ref())
    }
}

/// Whether a route built for `plan_id` and `parameters` with `built_node` (and `nodeless`: no
/// node to reach then) can be kept for `instance` run by `node` now: the same plan, parameters
/// (as stored) and node owner and address, and a node to reach.
fn keeps_route(
    plan_id: &str,
    parameters: Option<&serde_json::Value>,
    built_node: Option<&NodeOwner>,
    nodeless: bool,
    instance: &InstanceRow,
    node: Option<&NodeOwner>,
) -> bool {
    plan_id == instance.plan_id && parameters == instance.parameters.as_ref() && built_node == node && !nodeless
}

/// The plugins of a chain, by name, each with its version (`None`: no longer available).
/// Shared by the instances whose chains run the same plugins (see [`RouteSync::chain_plugins`]).
type ChainVersions = Arc<[(String, Option<PluginVersion>)]>;

/// Distinct chains remembered for sharing (a provider's tenants mostly run their plan's).
const CHAINS_SHARED: usize = 64;

/// What [`RouteSync::refresh_plugins`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginRefresh {
    /// Instances whose routes now run the plugins' new versions.
    pub rebuilt: usize,
    /// Instances that keep the versions they ran, because a new version refused their
    /// configuration or could not start (the log says why).
    pub kept_previous: Vec<String>,
}

/// The synchronizer. One per process.
pub struct RouteSync {
    store: Store,
    config: Arc<Config>,
    registry: Registry,
    drivers: Drivers,
    routes: Arc<Routes>,
    secret: SecretKey,
    identity: Identity,
    /// This replica's id: nodes it owns are reached through its own drivers.
    replica_id: String,
    /// The usage meters: each route holds its binding's.
    usage: Arc<crate::usage::Usage>,
    built: tokio::sync::Mutex<HashMap<String, Built>>,
    kv: std::sync::Mutex<HashMap<String, Arc<KvStore>>>,
    generation: AtomicI64,
    loaded: std::sync::atomic::AtomicBool,
    full_syncs: AtomicU64,
    instance_syncs: AtomicU64,
    /// Serving instances whose routes could not be built (no node yet, no plugin slot): retried
    /// on every poll until they are built or stop serving.
    unbuilt: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The plans' ids, one copy each, shared by their instances' routes.
    plan_names: HashMap<String, Arc<str>>,
    /// The chains built lately, shared by the instances that run them (newest last).
    chains: std::sync::Mutex<Vec<ChainVersions>>,
    /// Each plan's method rules (see [`RouteSync::plan_rules`]).
    plan_rules: HashMap<String, Option<Arc<MethodRules>>>,
}

impl RouteSync {
    /// A synchronizer that fills `routes`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        config: Arc<Config>,
        registry: Registry,
        drivers: Drivers,
        routes: Arc<Routes>,
        secret: SecretKey,
        identity: Identity,
        replica_id: String,
        usage: Arc<crate::usage::Usage>,
    ) -> Self {
        let plans = || config.services.iter().flat_map(|s| &s.plans);
        let plan_names = plans().map(|p| (p.id.clone(), Arc::from(p.id.as_str()))).collect();
        let plan_rules = plans()
            .map(|p| {
                let policy = &p.policy;
                let rules = policy
                    .has_method_rules()
                    .then(|| Arc::new(MethodRules::new(policy.allowed_methods.clone(), policy.denied_methods.clone())));
                (p.id.clone(), rules)
            })
            .collect();
        RouteSync {
            store,
            config,
            registry,
            drivers,
            routes,
            secret,
            identity,
            replica_id,
            usage,
            built: Default::default(),
            kv: Default::default(),
            generation: AtomicI64::new(-1),
            loaded: Default::default(),
            full_syncs: AtomicU64::new(0),
            instance_syncs: AtomicU64::new(0),
            unbuilt: Default::default(),
            plan_names,
            chains: Default::default(),
            plan_rules,
        }
    }

    /// The id of plan `plan_id`, as the plan's instances share it.
    fn plan_name(&self, plan_id: &str) -> Arc<str> {
        self.plan_names.get(plan_id).cloned().unwrap_or_else(|| Arc::from(plan_id))
    }

    /// How many times the whole table was rebuilt, and how many single-instance rebuilds
    /// there were (tests and benchmarks read them).
    pub fn sync_counts(&self) -> (u64, u64) {
        (self.full_syncs.load(Ordering::Relaxed), self.instance_syncs.load(Ordering::Relaxed))
    }

    /// Whether the routes have been loaded from the store at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The key-value store of an instance (created on first use).
    pub fn kv(&self, instance_id: &str) -> Arc<KvStore> {
        let mut kv = self.kv.lock().unwrap_or_else(|poison| poison.into_inner());
        let limits = self.config.runtime.kv;
        kv.entry(instance_id.to_string()).or_insert_with(|| Arc::new(KvStore::new(limits))).clone()
    }

    /// What the `on-call` of each plugin of each live instance's chain decided so far, counted
    /// by the host: `(instance, plugin, [answered, refused, forwarded])`.
    pub async fn plugin_decisions(&self) -> Vec<(String, String, [u64; 3])> {
        use std::sync::atomic::Ordering::Relaxed;
        let built = self.built.lock().await;
        let mut out = Vec::new();
        for (instance, entry) in built.iter() {
            for plugin in entry.route.chain.entries() {
                let d = plugin.pool.decisions();
                let counts = [d.answered.load(Relaxed), d.refused.load(Relaxed), d.forwarded.load(Relaxed)];
                out.push((instance.clone(), plugin.pool.plugin_name().to_string(), counts));
            }
        }
        out
    }

    /// The route built for instance `id` (its node, its validator client, its chain), if this
    /// replica serves it: what its dashboard asks the node and the plugins' counts.
    pub async fn instance_route(&self, id: &str) -> Option<Arc<crate::gateway::InstanceRoute>> {
        self.built.lock().await.get(id).map(|entry| entry.route.clone())
    }

    /// The chain an instance runs (see [`crate::chain_policy::chain_of`]).
    fn chain_elements(&self, plan_id: &str, parameters: Option<&serde_json::Value>) -> Vec<ChainElement> {
        crate::chain_policy::chain_of(self.config.plan_by_id(plan_id), parameters)
    }

    /// The method rules of a plan's policy, as the gateway checks them (one copy per plan,
    /// shared by its instances); `None` when it has none.
    fn plan_rules(&self, plan_id: &str) -> Option<Arc<MethodRules>> {
        self.plan_rules.get(plan_id).cloned().flatten()
    }

    /// Rebuilds the snapshot from the store. Errors are logged and the current snapshot kept.
    pub async fn sync(&self) {
        let mut built = self.built.lock().await;
        if let Err(err) = self.sync_locked(&mut built).await {
            tracing::error!("cannot refresh the routes from the store: {err}");
        }
    }

    /// Rebuilds the routes of instance `id` alone, from its row and bindings in the store.
    pub async fn sync_instance(&self, id: &str) {
        let mut built = self.built.lock().await;
        if let Err(err) = self.apply_instance(&mut built, id).await {
            tracing::error!(instance = %id, "cannot refresh the instance's routes from the store: {err}");
        }
    }

    /// Applies every change of the store's change log since this replica's generation, one
    /// instance at a time; reloads everything when the log no longer reaches back that far.
    pub async fn catch_up(&self) {
        let mut built = self.built.lock().await;
        loop {
            let since = self.generation.load(Ordering::Acquire);
            let changes = match self.store.changes_since(since).await {
                Ok(changes) => changes,
                Err(err) => {
                    tracing::warn!("cannot read the store's change log: {err}");
                    return;
                }
            };
            let Some((to, mut ids)) = changes else {
                tracing::info!(
                    since,
                    "the change log no longer reaches back to this replica's routes: reloading them all"
                );
                if let Err(err) = self.sync_locked(&mut built).await {
                    tracing::error!("cannot refresh the routes from the store: {err}");
                }
                return;
            };
            if to == since {
                return;
            }
            ids.sort_unstable();
            ids.dedup();
            for id in &ids {
                if let Err(err) = self.apply_instance(&mut built, id).await {
                    tracing::warn!(instance = %id, "cannot refresh the instance's routes: {err}");
                    return;
                }
            }
            self.generation.store(to, Ordering::Release);
        }
    }

    async fn apply_instance(
        &self,
        built: &mut HashMap<String, Built>,
        id: &str,
    ) -> Result<(), crate::store::StoreError> {
        self.instance_syncs.fetch_add(1, Ordering::Relaxed);
        let Some((instance, bindings)) = self.store.serving_instance(id).await? else {
            self.lock_unbuilt().remove(id);
            built.remove(id);
            self.routes.update(|table| table.remove_instance(id));
            self.kv.lock().unwrap_or_else(|poison| poison.into_inner()).remove(id);
            crate::telemetry::metrics().forget_instance(id);
            return Ok(());
        };
        let node = match self.drivers.is_owned_node(&instance.plan_id) {
            true => self.store.node_owner(id).await?,
            false => None,
        };
        let Some(entry) = self.reuse_or_build(built, &instance, node).await else {
            self.routes.update(|table| table.remove_instance(id));
            return Ok(());
        };
        self.lock_unbuilt().remove(id);
        let keys: Vec<BindingKeys> =
            bindings.iter().filter_map(|binding| self.binding_keys(binding, entry.route.validator.is_some())).collect();
        let route = entry.route.clone();
        let allowlists: HashMap<KeyDigest, Arc<Allowlist>> = bindings
            .iter()
            .filter_map(|b| Some((decode_digest(&b.key_sha256)?, self.allowlist_of(b, &instance.plan_id)?)))
            .collect();
        self.routes.update(|table| {
            table.remove_instance(id);
            for keys in &keys {
                let meter = self.usage.binding(id, &keys.binding_id);
                let added = table.insert(
                    keys.digest,
                    Route {
                        instance: route.clone(),
                        binding_id: keys.binding_id.clone(),
                        expires_ms: keys.expires_ms,
                        meter,
                    },
                );
                if let Some(token) = keys.token {
                    table.insert_keymanager_token(token, added);
                }
                if let Some(allowlist) = allowlists.get(&keys.digest) {
                    table.restrict(keys.digest, allowlist.clone());
                }
            }
        });
        built.insert(id.to_string(), entry);
        Ok(())
    }

    /// The instance's built route, kept from `built` while its plan and parameters are the
    /// same, else built anew; `None` (and the instance remembered for a retry) when it cannot be.
    async fn reuse_or_build(
        &self,
        built: &mut HashMap<String, Built>,
        instance: &InstanceRow,
        node: Option<NodeOwner>,
    ) -> Option<Built> {
        let previous = built.remove(&instance.id).filter(|b| b.serves(instance, &node));
        if let Some(entry) = previous.as_ref()
            && !self.wants_rebuild(entry)
        {
            return previous;
        }
        // Taken before the build: a reload during it leaves the route marked as older than it
        // may be, and rebuilt once more, never the other way round.
        let plugins = self.chain_plugins(instance);
        let Some((route, nodeless)) = self.build(instance, node.as_ref()).await else {
            // Only its plugins' versions changed, and the new ones do not take this instance's
            // configuration: it keeps running the versions it has.
            if let Some(mut entry) = previous {
                tracing::warn!(instance = %instance.id, "the instance keeps its previous plugin versions");
                entry.refused = Some(plugins);
                return Some(entry);
            }
            tracing::error!(instance = %instance.id, "instance is not served");
            self.lock_unbuilt().insert(instance.id.clone());
            return None;
        };
        Some(self.fresh(instance, node, plugins, route, nodeless))
    }

    /// A newly built route of `instance`; remembered for a retry when it has no node yet.
    fn fresh(
        &self,
        instance: &InstanceRow,
        node: Option<NodeOwner>,
        plugins: ChainVersions,
        route: Arc<InstanceRoute>,
        nodeless: bool,
    ) -> Built {
        if nodeless {
            self.lock_unbuilt().insert(instance.id.clone());
        }
        Built {
            plan_id: self.plan_name(&instance.plan_id),
            parameters: instance.parameters.clone(),
            node,
            nodeless,
            plugins,
            refused: None,
            route,
        }
    }

    /// The plugins of the instance's chain, each with the version the registry serves now.
    fn chain_plugins(&self, instance: &InstanceRow) -> ChainVersions {
        let chain: Vec<_> = self
            .chain_elements(&instance.plan_id, instance.parameters.as_ref())
            .into_iter()
            .map(|element| {
                let version = self.registry.version_of(&element.name);
                (element.name, version)
            })
            .collect();
        self.shared_chain(chain)
    }

    /// `chain`, as the instances that run the same plugins share it: one copy of the names and
    /// versions per distinct chain, not per instance.
    fn shared_chain(&self, chain: Vec<(String, Option<PluginVersion>)>) -> ChainVersions {
        let mut chains = self.chains.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(at) = chains.iter().rposition(|known| **known == *chain) {
            return chains[at].clone();
        }
        let shared: ChainVersions = chain.into();
        if chains.len() >= CHAINS_SHARED {
            chains.remove(0);
        }
        chains.push(shared.clone());
        shared
    }

    /// The versions the registry serves now of the plugins `built_with` names.
    fn current_versions(&self, built_with: &ChainVersions) -> ChainVersions {
        self.shared_chain(built_with.iter().map(|(name, _)| (name.clone(), self.registry.version_of(name))).collect())
    }

    /// Whether the route runs other plugin versions than the registry serves, and has not
    /// already been refused by those.
    fn wants_rebuild(&self, entry: &Built) -> bool {
        // Asked for every change an instance's routes get: nothing is allocated while the
        // versions are current, which is almost always.
        if entry.plugins.iter().all(|(name, version)| self.registry.version_of(name) == *version) {
            return false;
        }
        entry.refused.as_ref() != Some(&self.current_versions(&entry.plugins))
    }

    /// Rebuilds the routes whose chains run a plugin version the registry no longer serves
    /// (after [`Registry::reload`]), before returning. Calls in flight finish on the chain they
    /// started with; new calls take the new one as each instance's routes are swapped. An
    /// instance whose new chain cannot be built keeps its previous one, and is not tried again
    /// until the registry changes again. Each chain is built outside the routing lock (its
    /// plugins' `configure` may take milliseconds), so binds and unbinds go on meanwhile; an
    /// instance changed meanwhile was rebuilt by its own change. Its cost grows with the
    /// instances that use a changed plugin, not with all instances.
    pub async fn refresh_plugins(&self) -> PluginRefresh {
        let stale: Vec<String> = {
            let built = self.built.lock().await;
            built.iter().filter(|(_, entry)| self.wants_rebuild(entry)).map(|(id, _)| id.clone()).collect()
        };
        let mut refresh = PluginRefresh::default();
        for id in stale {
            let instance = match self.store.serving_instance(&id).await {
                Ok(Some((instance, _))) => instance,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(instance = %id, "cannot rebuild the instance's routes for new plugin versions: {err}");
                    continue;
                }
            };
            let node = match self.drivers.is_owned_node(&instance.plan_id) {
                true => match self.store.node_owner(&id).await {
                    Ok(node) => node,
                    Err(err) => {
                        tracing::warn!(instance = %id, "cannot rebuild the instance's routes for new plugin versions: {err}");
                        continue;
                    }
                },
                false => None,
            };
            let plugins = self.chain_plugins(&instance);
            let rebuilt = self.build(&instance, node.as_ref()).await;
            let mut built = self.built.lock().await;
            // Gone, or changed meanwhile (its own change rebuilt it with the versions of then).
            let Some(entry) = built.get_mut(&id).filter(|entry| entry.serves(&instance, &node)) else { continue };
            match rebuilt {
                Some((route, nodeless)) => {
                    *entry = self.fresh(&instance, node, plugins, route, nodeless);
                    // Installs the new route under every binding of the instance (the entry is
                    // current now, so it is taken as it is).
                    if let Err(err) = self.apply_instance(&mut built, &id).await {
                        tracing::warn!(instance = %id, "cannot refresh the instance's routes: {err}");
                    }
                    refresh.rebuilt += 1;
                }
                None => {
                    tracing::warn!(instance = %id, "the instance keeps its previous plugin versions");
                    entry.refused = Some(plugins);
                    refresh.kept_previous.push(id);
                }
            }
        }
        refresh
    }

    /// How many instances' routes run each plugin version: `(plugin, sha256 hex) → instances`.
    /// After a reload an instance whose configuration the new version refused still runs the
    /// old one, and shows here.
    pub async fn plugin_versions_in_use(&self) -> std::collections::BTreeMap<(String, String), i64> {
        let built = self.built.lock().await;
        let mut counts: std::collections::BTreeMap<(&str, [u8; 32]), i64> = std::collections::BTreeMap::new();
        for entry in built.values() {
            for (name, version) in entry.plugins.iter() {
                if let Some(version) = version {
                    *counts.entry((name.as_str(), version.digest)).or_insert(0) += 1;
                }
            }
        }
        // One name and one hex digest per version in use, not per instance.
        counts.into_iter().map(|((name, digest), n)| ((name.to_string(), hex::encode(digest)), n)).collect()
    }

    /// The plugin registry the routes are built from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn lock_unbuilt(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.unbuilt.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Tries again the instances whose routes could not be built.
    async fn retry_unbuilt(&self) {
        let ids: Vec<String> = self.lock_unbuilt().iter().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let mut built = self.built.lock().await;
        for id in ids {
            if let Err(err) = self.apply_instance(&mut built, &id).await {
                tracing::warn!(instance = %id, "cannot refresh the instance's routes: {err}");
            }
        }
    }

    /// A binding's restrictions (its parameters' `allowed_origins` and the like, else its plan's
    /// `allowed_origins`: the plan of the instance, `plan_id`), if any.
    fn allowlist_of(&self, binding: &crate::store::BindingRow, plan_id: &str) -> Option<Arc<Allowlist>> {
        let plan_origins = self.config.plan_by_id(plan_id).map_or(&[][..], |p| &p.allowed_origins[..]);
        Allowlist::for_binding(binding.parameters.as_ref(), plan_origins).map(Arc::new)
    }

    /// A binding's key digest, id, (for validators) keymanager token digest, and expiry.
    fn binding_keys(&self, binding: &crate::store::BindingRow, validator: bool) -> Option<BindingKeys> {
        let digest = decode_digest(&binding.key_sha256)?;
        let token = validator
            .then(|| key_digest(&self.secret.keymanager_token(&binding.instance_id, &binding.id, &binding.key_salt)));
        Some(BindingKeys { digest, binding_id: binding.id.as_str().into(), token, expires_ms: binding.expires_ms })
    }

    async fn sync_locked(&self, built: &mut HashMap<String, Built>) -> Result<(), crate::store::StoreError> {
        self.full_syncs.fetch_add(1, Ordering::Relaxed);
        // Every serving instance is tried again here; those that still fail go back in.
        self.lock_unbuilt().clear();
        let started = std::time::Instant::now();
        let generation = self.store.generation().await?;
        let (instances, bindings) = self.store.serving().await?;
        let mut owners = self.store.node_owners().await?;
        let read = started.elapsed();
        let (instance_count, binding_count) = (instances.len(), bindings.len());
        let mut next: HashMap<String, Built> = HashMap::with_capacity(instances.len());
        for instance in instances {
            let node = owners.remove(&instance.id).filter(|_| self.drivers.is_owned_node(&instance.plan_id));
            let Some(entry) = self.reuse_or_build(built, &instance, node).await else { continue };
            next.insert(instance.id, entry);
        }
        let chains = started.elapsed();
        let mut table = RouteTable::default();
        for binding in bindings {
            let Some(entry) = next.get(&binding.instance_id) else { continue };
            let Some(keys) = self.binding_keys(&binding, entry.route.validator.is_some()) else { continue };
            let meter = self.usage.binding(&binding.instance_id, &keys.binding_id);
            let route = table.insert(
                keys.digest,
                Route {
                    instance: entry.route.clone(),
                    binding_id: keys.binding_id,
                    expires_ms: keys.expires_ms,
                    meter,
                },
            );
            if let Some(token) = keys.token {
                table.insert_keymanager_token(token, route);
            }
            if let Some(allowlist) = self.allowlist_of(&binding, &entry.plan_id) {
                table.restrict(keys.digest, allowlist);
            }
        }
        self.routes.replace(table);
        {
            let mut kv = self.kv.lock().unwrap_or_else(|poison| poison.into_inner());
            kv.retain(|id, _| next.contains_key(id));
        }
        crate::telemetry::metrics().retain_instances(|id| next.contains_key(id));
        *built = next;
        self.generation.store(generation, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        // Where a full load's time goes (start-up with many tenants: README, "Provider scale").
        tracing::info!(
            instances = instance_count,
            bindings = binding_count,
            read_ms = read.as_millis() as u64,
            chains_ms = (chains - read).as_millis() as u64,
            table_ms = (started.elapsed() - chains).as_millis() as u64,
            "routes loaded from the store"
        );
        Ok(())
    }

    /// The instance's route, and whether it was built without a node to reach.
    async fn build(&self, instance: &InstanceRow, node: Option<&NodeOwner>) -> Option<(Arc<InstanceRoute>, bool)> {
        let parameters = instance.parameters.as_ref();
        let mut secrets = Vec::new();
        let plan = self.config.plan_by_id(&instance.plan_id);
        let elements = match crate::chain_policy::opened_chain(&self.identity, plan, parameters, &mut secrets) {
            Ok(elements) => elements,
            Err(err) => {
                tracing::error!(instance = %instance.id, "instance is not served: {err}");
                return None;
            }
        };
        let Some(driver) = self.drivers.get(&instance.plan_id) else {
            tracing::error!(instance = %instance.id, plan = %instance.plan_id, "instance of a plan no longer in the catalog is not served");
            return None;
        };
        let kv = self.kv(&instance.id);
        // A `process` instance's keys keep working while its node starts or moves: its calls
        // get -32002 (no node to reach) until the node is there, never "unknown key".
        let upstream = match node {
            Some(owner) if owner.replica_id != self.replica_id => match &owner.http_url {
                Some(http) => match self.drivers.remote_node(http, owner.ws_url.as_deref()) {
                    Ok(pool) => Some(pool),
                    Err(err) => {
                        tracing::error!(instance = %instance.id, "instance is not served: {err}");
                        return None;
                    }
                },
                None => None,
            },
            _ => driver.upstream(&instance.id),
        };
        let nodeless = upstream.is_none() && node.is_some();
        let Some(upstream) = upstream.or_else(|| nodeless.then(|| self.drivers.no_node())) else {
            tracing::error!(instance = %instance.id, "instance is not served: its driver has no node for it");
            return None;
        };
        let validator = self.config.plan_by_id(&instance.plan_id).is_some_and(|p| p.driver.is_validator()).then(|| {
            let (driver, id) = (driver.clone(), instance.id.clone());
            ValidatorRoute {
                access: Arc::new(move || driver.validator(&id)),
                pubkeys: parameters.map(crate::validator_params::pubkeys_of).unwrap_or_default().into_iter().collect(),
            }
        });
        match self
            .registry
            .build_chain(
                &instance.id,
                &elements,
                &kv,
                crate::plugins::Share::for_instance(
                    &self.config.gateway,
                    self.config.plan_by_id(&instance.plan_id),
                    parameters,
                ),
                &secrets,
            )
            .await
        {
            Ok(chain) => Some((
                Arc::new(InstanceRoute {
                    instance_id: instance.id.as_str().into(),
                    plan: self.plan_name(&instance.plan_id),
                    chain,
                    policy: self.plan_rules(&instance.plan_id),
                    upstream,
                    validator,
                    budget: crate::budget::InstanceBudget::new(crate::budget::InstanceShares::for_plan(
                        &self.config.gateway,
                        self.config.plan_by_id(&instance.plan_id),
                    )),
                    usage: self.usage.instance(&instance.id, &instance.plan_id),
                }),
                nodeless,
            )),
            Err(err) => {
                let err = crate::identity::redact(&err.to_string(), &secrets);
                tracing::error!(instance = %instance.id, "the instance's chain cannot be built: {err}");
                None
            }
        }
    }

    /// Reloads whenever another replica changed something, until shutdown.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.operations.sync_interval_ms));
        let mut pruned = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.generation().await {
                Ok(generation) if generation != self.generation.load(Ordering::Acquire) => self.catch_up().await,
                Ok(_) => {}
                Err(err) => tracing::warn!("cannot read the store's change counter: {err}"),
            }
            self.retry_unbuilt().await;
            // Keep a window of the change log that replicas can catch up from.
            if pruned.elapsed() >= Duration::from_secs(60) {
                pruned = std::time::Instant::now();
                if let Err(err) = self.store.prune_changes(CHANGE_LOG_WINDOW).await {
                    tracing::warn!("cannot prune the store's change log: {err}");
                }
            }
        }
    }
}

impl crate::provision::RouteRefresh for RouteSync {
    fn refresh<'a>(&'a self, instance_id: &'a str) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.sync_instance(instance_id))
    }
}

/// What a binding puts in the route table.
struct BindingKeys {
    digest: KeyDigest,
    binding_id: Arc<str>,
    /// A validator binding's keymanager token (digest).
    token: Option<KeyDigest>,
    expires_ms: Option<i64>,
}

fn decode_digest(hex_text: &str) -> Option<KeyDigest> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
