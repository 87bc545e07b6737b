//! The `kubernetes` driver: an instance's node (or validator client) as Kubernetes workload.
//!
//! Owns: rendering an instance's objects from its plan ([`render`]), applying them with
//! server-side apply (field manager `ovsb`), taking readiness from the pod's `Ready` condition,
//! removing everything of an instance, and reconciling the cluster with the store after an
//! ovsb restart. Must not: touch keys or slashing-protection history; for validator plans the
//! [`super::ValidatorDriver`] does that through the [`ClientHost`] this driver implements, and
//! exports every key's history **before** [`ClientHost::remove`] scales the client to zero.
//!
//! ## The objects of one instance
//! All are named `ovsb-<instance>` (see [`object_name`]) in the plan's namespace and carry the
//! labels `app.kubernetes.io/managed-by: ovsb`, `app.kubernetes.io/instance: <name>` and
//! `ovsb.dev/plan: <plan>`, with the instance id in the annotation `ovsb.dev/instance-id`:
//! - a StatefulSet of one replica (never more: a validator's keys must sign in one place), its
//!   volume claim template from the plan's `storage` (claims deleted with the StatefulSet);
//! - a Service in front of its ports, owned by the StatefulSet;
//! - for validator plans, a Secret with the client's keymanager token (derived from the
//!   broker's secret key, so every replica knows it without asking the cluster), mounted where
//!   the client reads it, owned by the StatefulSet. The keys themselves go through the
//!   keymanager API, as with the process driver, and the client keeps them on its volume.
//!
//! Names are deterministic and applying is idempotent, so an operation that runs again after a
//! crash, or a reconcile after a restart, never makes a second workload. Rendering the objects
//! is `render`'s; applying, watching and removing them is this module's.

mod render;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::process::fill;
use super::validator::{ClientHost, ValidatorAccess};
use super::{Driver, DriverError, DriverFuture, InstanceSpec, Progress};
use crate::config::KubernetesDriverDecl;
use crate::credentials::SecretKey;
use crate::store::{InstanceState, Store};
use crate::upstream::{UpstreamPool, UpstreamSettings};
pub use render::{
    ClientToken, INSTANCE_ID_ANNOTATION, INSTANCE_LABEL, MANAGED_BY, Objects, PLAN_LABEL, object_name, render,
};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "ovsb";
/// Longest reconcile at start (the start waits for it).
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(120);

/// The driver of one plan whose instances run on Kubernetes.
pub struct KubernetesDriver {
    decl: KubernetesDriverDecl,
    plan_id: String,
    /// For validator plans: where the client reads its keymanager token.
    token_path: Option<String>,
    /// For validator plans: the beacon REST API, when not the workload's `port`.
    beacon_url: Option<String>,
    template_names: &'static [&'static str],
    secret: SecretKey,
    store: Store,
    client: tokio::sync::OnceCell<kube::Client>,
    pools: Mutex<HashMap<String, Arc<UpstreamPool>>>,
    deadline: Duration,
    max_response_bytes: usize,
}

/// What a driver needs besides its plan: shared by both constructors.
pub struct KubernetesContext {
    /// Derives validator clients' keymanager tokens.
    pub secret: SecretKey,
    /// Re-read before reconciling (another replica may have changed an instance meanwhile).
    pub store: Store,
    /// The per-call deadline of the instances' upstreams.
    pub deadline: Duration,
    /// The largest upstream answer.
    pub max_response_bytes: usize,
}

impl KubernetesDriver {
    /// A driver for `plan_id`.
    pub fn new(decl: KubernetesDriverDecl, plan_id: &str, context: KubernetesContext) -> Self {
        Self::for_clients(decl, plan_id, None, None, context)
    }

    /// A driver of validator clients: `token_path` is where the client reads the keymanager
    /// token ovsb gives it, `beacon_url` its beacon API when not the workload's `port`.
    pub fn for_clients(
        decl: KubernetesDriverDecl,
        plan_id: &str,
        token_path: Option<String>,
        beacon_url: Option<String>,
        context: KubernetesContext,
    ) -> Self {
        let template_names: &'static [&'static str] =
            if token_path.is_some() { super::VALIDATOR_TEMPLATE_NAMES } else { &[] };
        KubernetesDriver {
            decl,
            plan_id: plan_id.to_string(),
            token_path,
            beacon_url,
            template_names,
            secret: context.secret,
            store: context.store,
            client: Default::default(),
            pools: Default::default(),
            deadline: context.deadline,
            max_response_bytes: context.max_response_bytes,
        }
    }

    /// The API client, made on first use (the cluster need not answer for ovsb to start).
    async fn client(&self) -> Result<&kube::Client, DriverError> {
        self.client
            .get_or_try_init(|| async {
                let mut config = match &self.decl.api_url {
                    Some(url) => {
                        let uri = url.parse().map_err(|err| format!("api_url {url:?}: {err}"))?;
                        let mut config = kube::Config::new(uri);
                        config.default_namespace = self.decl.namespace.clone();
                        config
                    }
                    None => kube::Config::infer().await.map_err(|err| format!("no Kubernetes configuration: {err}"))?,
                };
                // An API server that accepts and never answers must not hold an operation (or the
                // start's reconcile) until its deadline: kube waits forever by default.
                let timeout = Duration::from_millis(self.decl.api_timeout_ms);
                config.read_timeout = Some(timeout);
                config.write_timeout = Some(timeout);
                kube::Client::try_from(config).map_err(|err| format!("cannot make a Kubernetes client: {err}"))
            })
            .await
            .map_err(|err: String| DriverError::Failed(err))
    }

    async fn api<K>(&self) -> Result<Api<K>, DriverError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(Api::namespaced(self.client().await?.clone(), &self.decl.namespace))
    }

    fn token(&self, instance_id: &str) -> String {
        self.secret.client_token(instance_id)
    }

    fn render(&self, spec: &InstanceSpec) -> Result<Objects, DriverError> {
        let token = self.token(&spec.id);
        let client_token = self.token_path.as_deref().map(|path| ClientToken { path, token: &token });
        render(&self.decl, &self.plan_id, self.template_names, spec, client_token)
    }

    fn endpoint(&self, instance_id: &str, port: u16) -> String {
        let values = HashMap::from([
            ("name".to_string(), object_name(instance_id)),
            ("namespace".to_string(), self.decl.namespace.clone()),
            ("port".to_string(), port.to_string()),
        ]);
        fill(&self.decl.endpoint, &values).unwrap_or_default()
    }

    fn pool(&self, instance_id: &str) -> Arc<UpstreamPool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(instance_id.to_string())
            .or_insert_with(|| {
                let url = self.endpoint(instance_id, self.decl.port);
                let ws = if self.decl.ws { vec![url.replacen("http://", "ws://", 1)] } else { vec![] };
                Arc::new(UpstreamPool::new(UpstreamSettings {
                    http: url.parse().into_iter().collect(),
                    ws,
                    deadline: self.deadline,
                    max_response_bytes: self.max_response_bytes,
                    max_sockets_per_node: self.decl.max_sockets_per_node as usize,
                }))
            })
            .clone()
    }

    /// The instance's StatefulSet, if there is one. A StatefulSet of that name made for another
    /// instance is an error: ovsb never touches it.
    async fn workload(&self, instance_id: &str) -> Result<Option<StatefulSet>, DriverError> {
        let name = object_name(instance_id);
        let set =
            self.api::<StatefulSet>().await?.get_opt(&name).await.map_err(|e| api_error("read the StatefulSet", e))?;
        if let Some(set) = &set {
            owned_by(set, instance_id)?;
        }
        Ok(set)
    }

    /// Applies the instance's objects as rendered (one replica); the caller has checked with
    /// [`Self::workload`] that a StatefulSet of that name is the instance's. The Service and
    /// Secret are owned by the StatefulSet, so the cluster's garbage collector removes them
    /// with it too.
    async fn apply(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let mut objects = self.render(spec)?;
        let name = object_name(&spec.id);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = self
            .api::<StatefulSet>()
            .await?
            .patch(&name, &params, &Patch::Apply(&objects.stateful_set))
            .await
            .map_err(|err| api_error("apply the StatefulSet", err))?;
        let owner = kube::Resource::controller_owner_ref(&applied, &())
            .map(|mut owner| {
                owner.controller = Some(false);
                owner
            })
            .ok_or_else(|| DriverError::Failed("the applied StatefulSet has no uid".into()))?;
        objects.service.metadata.owner_references = Some(vec![owner.clone()]);
        self.api::<Service>()
            .await?
            .patch(&name, &params, &Patch::Apply(&objects.service))
            .await
            .map_err(|err| api_error("apply the Service", err))?;
        if let Some(mut secret) = objects.secret {
            secret.metadata.owner_references = Some(vec![owner]);
            self.api::<Secret>()
                .await?
                .patch(&name, &params, &Patch::Apply(&secret))
                .await
                .map_err(|err| api_error("apply the Secret", err))?;
        }
        Ok(())
    }

    /// Sets the replicas through the scale subresource: nothing else of the workload changes.
    async fn scale(&self, name: &str, replicas: i32) -> Result<(), DriverError> {
        let patch = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
        self.api::<StatefulSet>()
            .await?
            .patch_scale(name, &PatchParams::default(), &patch)
            .await
            .map_err(|err| api_error(&format!("scale the StatefulSet to {replicas}"), err))?;
        Ok(())
    }

    /// Makes the instance's workload exist with one replica, without re-applying one that
    /// exists (which could restart its pod).
    async fn ensure_exists(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        match self.workload(&spec.id).await? {
            None => self.apply(spec).await,
            Some(set) if set.spec.replicas != Some(1) => self.scale(&object_name(&spec.id), 1).await,
            Some(_) => Ok(()),
        }
    }

    /// Waits until the StatefulSet has rolled out its current template and its pod is Ready,
    /// reporting what it waits for.
    async fn wait_ready(&self, instance_id: &str, progress: &Progress) -> Result<(), DriverError> {
        let name = object_name(instance_id);
        let pod_name = format!("{name}-0");
        let (sets, pods) = (self.api::<StatefulSet>().await?, self.api::<Pod>().await?);
        let mut last = String::new();
        loop {
            let state = match sets.get_opt(&name).await {
                Ok(Some(set)) if !rolled_out(&set) => "the StatefulSet is rolling out its template".to_string(),
                Ok(Some(_)) => match pods.get_opt(&pod_name).await {
                    Ok(Some(pod)) if pod_ready(&pod) => return Ok(()),
                    Ok(Some(pod)) => pod_state(&pod),
                    Ok(None) => format!("pod {pod_name} not created yet"),
                    Err(err) => api_error("read the pod", err).to_string(),
                },
                Ok(None) => format!("StatefulSet {name} is gone"),
                Err(err) => api_error("read the StatefulSet", err).to_string(),
            };
            if state != last {
                progress.report(&format!("waiting for the workload: {state}")).await;
                last = state;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Scales the instance to zero, waits for its pod to end, then deletes its objects.
    async fn remove_objects(&self, spec: &InstanceSpec, progress: &Progress) -> Result<(), DriverError> {
        let name = object_name(&spec.id);
        if let Some(set) = self.workload(&spec.id).await? {
            if set.spec.replicas != Some(0) {
                progress.report("scaling the workload to zero").await;
                self.scale(&name, 0).await?;
            }
            let pods = self.api::<Pod>().await?;
            let pod_name = format!("{name}-0");
            while pods.get_opt(&pod_name).await.map_err(|err| api_error("read the pod", err))?.is_some() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        self.delete_all(&spec.id).await?;
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).remove(&spec.id);
        Ok(())
    }

    /// The instance's volume claims.
    async fn claims(&self, name: &str) -> Result<Vec<PersistentVolumeClaim>, DriverError> {
        let selector = ListParams::default().labels(&format!("{INSTANCE_LABEL}={name},{MANAGED_BY}=ovsb"));
        let claims = self.api::<PersistentVolumeClaim>().await?;
        Ok(claims.list(&selector).await.map_err(|err| api_error("list the volume claims", err))?.items)
    }

    /// Deletes every object of the instance (idempotent); objects of that name made for
    /// another instance are left alone.
    async fn delete_all(&self, instance_id: &str) -> Result<(), DriverError> {
        let name = object_name(instance_id);
        delete(&self.api::<StatefulSet>().await?, &name, instance_id).await?;
        delete(&self.api::<Service>().await?, &name, instance_id).await?;
        delete(&self.api::<Secret>().await?, &name, instance_id).await?;
        let claims = self.api::<PersistentVolumeClaim>().await?;
        for claim in self.claims(&name).await? {
            if let Some(claim_name) = &claim.metadata.name {
                delete(&claims, claim_name, instance_id).await?;
            }
        }
        Ok(())
    }

    /// After a restart: creates the workloads of ready instances that lack one (an existing one
    /// is left as it is: re-applying could restart its pod), and removes workloads of this
    /// plan that no instance owns. The store is read again before each step, since other
    /// replicas work meanwhile; a failure is logged and the next instance is taken.
    async fn reconcile(&self, live: &[InstanceSpec], keep: &[String]) {
        for spec in live {
            let ready =
                matches!(self.store.instance(&spec.id).await, Ok(Some(row)) if row.state == InstanceState::Ready);
            if ready && let Err(err) = self.ensure_exists(spec).await {
                tracing::error!(instance = %spec.id, "cannot reconcile the instance's workload: {err}");
            }
        }
        let wanted: HashSet<&str> = live.iter().map(|s| s.id.as_str()).chain(keep.iter().map(String::as_str)).collect();
        let sets = match self.api::<StatefulSet>().await {
            Ok(sets) => sets,
            Err(err) => return tracing::error!(plan = %self.plan_id, "cannot reconcile the plan's workloads: {err}"),
        };
        let selector = ListParams::default().labels(&format!("{MANAGED_BY}=ovsb,{PLAN_LABEL}={}", self.plan_id));
        let listed = match sets.list(&selector).await {
            Ok(listed) => listed.items,
            Err(err) => {
                return tracing::error!(plan = %self.plan_id, "cannot list the plan's workloads: {}", api_error("list", err));
            }
        };
        for set in listed {
            let Some(id) = set.metadata.annotations.as_ref().and_then(|a| a.get(INSTANCE_ID_ANNOTATION)) else {
                continue;
            };
            if wanted.contains(id.as_str()) || !self.orphaned(id).await {
                continue;
            }
            tracing::info!(instance = %id, plan = %self.plan_id, "removing a workload no instance owns");
            if let Err(err) = self.delete_all(id).await {
                tracing::error!(instance = %id, "cannot remove the workload: {err}");
            }
        }
    }

    /// [`Self::reconcile`], cut short (and said so) after [`RECONCILE_TIMEOUT`]: ovsb's start
    /// waits for it.
    async fn bounded_reconcile(&self, live: &[InstanceSpec], keep: &[String]) {
        if tokio::time::timeout(RECONCILE_TIMEOUT, self.reconcile(live, keep)).await.is_err() {
            tracing::error!(plan = %self.plan_id, "reconciling the plan's workloads took over {} s; the rest waits for the next start",
                RECONCILE_TIMEOUT.as_secs());
        }
    }

    /// Whether the store, read now, has no live instance `id` and no keys held by it.
    async fn orphaned(&self, id: &str) -> bool {
        let gone = match self.store.instance(id).await {
            Ok(None) => true,
            Ok(Some(row)) => row.state == InstanceState::Deleted,
            Err(_) => false,
        };
        let holds_keys = match self.store.validator_key_holders().await {
            Ok(holders) => holders.iter().any(|h| h == id),
            Err(_) => true,
        };
        gone && !holds_keys
    }
}

/// Whether `object` was made for `instance_id` (its annotation says so).
fn owned_by<K>(object: &K, instance_id: &str) -> Result<(), DriverError>
where
    K: kube::ResourceExt,
    <K as kube::Resource>::DynamicType: Default,
{
    match object.annotations().get(INSTANCE_ID_ANNOTATION) {
        Some(id) if id == instance_id => Ok(()),
        other => Err(DriverError::Failed(format!(
            "{} {} belongs to instance {:?}, not to {instance_id}: ovsb leaves it alone",
            K::kind(&Default::default()),
            object.name_any(),
            other.map(String::as_str).unwrap_or("(none)")
        ))),
    }
}

/// Whether the StatefulSet's pods run its current template.
fn rolled_out(set: &StatefulSet) -> bool {
    let Some(status) = &set.status else { return false };
    status.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) >= 1
        && (status.update_revision.is_none() || status.current_revision == status.update_revision)
}
/// Deletes one object made for `instance_id`; one already gone is fine.
async fn delete<K>(api: &Api<K>, name: &str, instance_id: &str) -> Result<(), DriverError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    match api.get_opt(name).await.map_err(|err| api_error(&format!("read {name}"), err))? {
        None => return Ok(()),
        Some(object) => owned_by(&object, instance_id)?,
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(err) => Err(api_error(&format!("delete {name}"), err)),
    }
}

fn api_error(what: &str, err: kube::Error) -> DriverError {
    match err {
        kube::Error::Api(status) => {
            DriverError::Failed(format!("Kubernetes refused to {what}: {} ({})", status.message, status.code))
        }
        other => DriverError::Failed(format!("cannot {what}: {other}")),
    }
}

fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// "Pending: ImagePullBackOff (…)": what an operator needs to see in `last_operation`.
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    let waiting: Vec<String> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| match &w.message {
            Some(message) => format!("{} ({message})", w.reason.clone().unwrap_or_default()),
            None => w.reason.clone().unwrap_or_default(),
        })
        .collect();
    if waiting.is_empty() { format!("pod {phase}, not ready") } else { format!("pod {phase}: {}", waiting.join(", ")) }
}

impl Driver for KubernetesDriver {
    fn provision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            progress.report("applying the workload").await;
            self.workload(&spec.id).await?;
            self.apply(spec).await?;
            self.wait_ready(&spec.id, progress).await
        }
        .boxed()
    }

    fn update<'a>(&'a self, _from: &'a InstanceSpec, to: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        // A changed template rolls the pod (the StatefulSet controller does it); wait until the
        // new one is Ready.
        self.provision(to, progress)
    }

    fn deprovision<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        self.remove_objects(spec, progress).boxed()
    }

    fn upstream(&self, instance_id: &str) -> Option<Arc<UpstreamPool>> {
        Some(self.pool(instance_id))
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], busy: &'a [String]) -> BoxFuture<'a, ()> {
        self.bounded_reconcile(live, busy).boxed()
    }
}

impl ClientHost for KubernetesDriver {
    /// Creates the client's workload if it has none, or scales it back to one; never re-applies
    /// an existing one, so a client is not restarted under its keys.
    fn start<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        async move {
            self.ensure_exists(spec).await?;
            self.wait_ready(&spec.id, progress).await
        }
        .boxed()
    }

    /// A StatefulSet, or a volume claim left without one (it holds the slashing database).
    fn exists<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<bool, DriverError>> {
        async move {
            if self.workload(instance_id).await?.is_some() {
                return Ok(true);
            }
            Ok(!self.claims(&object_name(instance_id)).await?.is_empty())
        }
        .boxed()
    }

    fn known(&self, _instance_id: &str) -> bool {
        // Every replica reaches every instance the store holds: the cluster is shared.
        true
    }

    fn access(&self, instance_id: &str) -> Option<ValidatorAccess> {
        let keymanager_port = *self.decl.extra_ports.get("keymanager_port")?;
        Some(ValidatorAccess {
            beacon: self.beacon_url.clone().unwrap_or_else(|| self.endpoint(instance_id, self.decl.port)),
            keymanager: self.endpoint(instance_id, keymanager_port),
            token: self.token(instance_id),
        })
    }

    fn remove<'a>(&'a self, spec: &'a InstanceSpec, progress: &'a Progress) -> DriverFuture<'a> {
        self.remove_objects(spec, progress).boxed()
    }

    fn recover<'a>(&'a self, live: &'a [InstanceSpec], keep: &'a [String]) -> BoxFuture<'a, ()> {
        self.bounded_reconcile(live, keep).boxed()
    }
}
