//! Swapping plugins without a restart: `ovsb serve` reloads its plugin declarations on SIGHUP
//! and on `POST /reload` at the admin listener (`ovsb reload` calls it).
//!
//! Owns: reading the `[[plugins]]` declarations again from the configuration file `ovsb serve`
//! was started with (the declarations it started with when it had none), having the registry
//! compile them ([`Registry::prepare`]) while the running set keeps serving, checking that no
//! plan or instance uses a plugin the file no longer declares, then swapping the registry and
//! the catalog (which publishes the names and schemas) at once, and having
//! [`RouteSync::refresh_plugins`] rebuild the routes that run a changed plugin. Must not: apply
//! any other setting of the file (those need a restart; a file that no longer validates as a
//! whole is refused, so that a reload never half-applies a broken edit).
//!
//! What a reload guarantees:
//! - a new plugin is compiled before anything switches, and is available to provisions and
//!   updates (and in the catalog) once the reload answers; no call or request waits for it;
//! - a plugin no longer declared is removed, unless a plan or an instance (not deleted) uses it:
//!   then the reload is refused as a whole, naming them, and nothing changes;
//! - a changed file (or digest, path or `[plugins.limits]`) takes effect for new calls as soon
//!   as its instances' routes are rebuilt, which happens before the reload answers;
//! - calls in flight finish on the copy, and chain, they started on;
//! - a plugin whose new file cannot be read, compiled or matched to its `sha256` pin keeps its
//!   running version (a new one is not added); an instance whose configuration the new version
//!   refuses keeps its previous chain; both are reported (`outcome: "partial"`);
//! - the answer and the log line say the same, in the same fields (`outcome`, `message`, the
//!   plugins added, removed, changed and failed);
//! - `/metrics` shows each plugin's loaded digest (`ovsb_plugin_loaded{plugin, sha256}`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::broker::{BrokerState, Catalog};
use crate::plugins::{ReloadFailure, ReloadReport};
use crate::routing::PluginRefresh;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// `complete` (everything declared was taken) or `partial` (see `plugins.failed` and
    /// `routes.kept_previous`).
    pub outcome: &'static str,
    /// The same sentence as the log line's.
    pub message: String,
    /// Plugin by plugin.
    pub plugins: ReloadReport,
    /// The routes rebuilt for the changed plugins.
    pub routes: PluginRefresh,
}

impl Reloaded {
    /// Whether everything declared was taken: no plugin failed, no instance kept an old chain.
    pub fn complete(&self) -> bool {
        self.plugins.failed.is_empty() && self.routes.kept_previous.is_empty()
    }
}

/// Who uses a plugin that a reload would remove.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InUse {
    /// The plugin.
    pub plugin: String,
    /// `plan` or `instance`.
    pub by: &'static str,
    /// The plan's or the instance's id.
    pub id: String,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The configuration file cannot be read or no longer validates.
    #[error("{0}")]
    Config(String),
    /// Plugins the file no longer declares are still used.
    #[error("{}", in_use_message(.0))]
    InUse(Vec<InUse>),
    /// The catalog with the new plugins' schemas does not compile, or the store did not answer.
    #[error("{0}")]
    Failed(String),
}

fn in_use_message(users: &[InUse]) -> String {
    let named: Vec<String> = users.iter().map(|u| format!("`{}` by {} {:?}", u.plugin, u.by, u.id)).collect();
    format!(
        "plugins no longer declared are still in use ({}): deprovision those instances or change their plans \
         first; nothing was reloaded",
        named.join(", ")
    )
}

impl Refused {
    /// The HTTP status `POST /reload` answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Config(_) => 409,
            Refused::InUse(_) => 422,
            Refused::Failed(_) => 500,
        }
    }

    /// The body `POST /reload` answers with (and the log's fields).
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "outcome": "refused", "error": self.to_string() });
        if let Refused::InUse(users) = self {
            body["in_use"] = serde_json::json!(users);
        }
        body
    }
}

/// Reloads the plugins of one running ovsb.
pub struct Reloader {
    source: Option<PathBuf>,
    env: std::collections::HashMap<String, String>,
    /// The declarations ovsb started with, read again when there is no file.
    started_with: Vec<crate::config::PluginDecl>,
    broker: Arc<BrokerState>,
    /// One reload at a time (a SIGHUP and a `POST /reload` at once).
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for the configuration ovsb started with: it reads the declarations again from
    /// the file `config` came from (with the `OVSB_*` variables `env` applied as at start), or,
    /// for a configuration made in code or the built-in one, takes its declarations as they are
    /// (the files they name are still read again).
    pub fn new(
        config: &crate::config::Config,
        env: std::collections::HashMap<String, String>,
        broker: Arc<BrokerState>,
    ) -> Self {
        Reloader {
            source: config.source.clone(),
            env,
            started_with: config.plugins.clone(),
            broker,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the declarations again and applies them; logs what it did or why it refused, with
    /// the fields it answers with.
    pub async fn reload(&self) -> Result<Reloaded, Refused> {
        let reloaded = self.apply().await;
        match &reloaded {
            Ok(done) => {
                let failed = failures(&done.plugins.failed);
                let (p, r) = (&done.plugins, &done.routes);
                if done.complete() {
                    tracing::info!(
                        outcome = done.outcome, added = %p.added.join(","), removed = %p.removed.join(","),
                        changed = %p.changed.join(","), instances_rebuilt = r.rebuilt, "{}", done.message
                    );
                } else {
                    tracing::error!(
                        outcome = done.outcome, added = %p.added.join(","), removed = %p.removed.join(","),
                        changed = %p.changed.join(","), failed = %failed, instances_rebuilt = r.rebuilt,
                        instances_kept_previous = %r.kept_previous.join(","), "{}", done.message
                    );
                }
            }
            Err(refused) => {
                tracing::error!(outcome = "refused", error = %refused, "plugin reload refused, nothing changed")
            }
        }
        reloaded
    }

    async fn apply(&self) -> Result<Reloaded, Refused> {
        let _one = self.one_at_a_time.lock().await;
        let decls = match &self.source {
            Some(path) => {
                let load = || -> Result<_, crate::config::ConfigError> {
                    let mut config = crate::config::Config::load(path)?;
                    config.apply_env(&self.env)?;
                    config.validate()?;
                    Ok(config.plugins)
                };
                load().map_err(|e| Refused::Config(e.to_string()))?
            }
            None => self.started_with.clone(),
        };
        let state = &self.broker;
        // Compiled while the running set serves.
        let prepared = state.registry.prepare(decls).await.map_err(Refused::Failed)?;
        {
            // No provision or update is between its chain check and its commit meanwhile.
            let names_held = state.registry.change_names().await;
            if !prepared.report.removed.is_empty() {
                let users = self.users_of(&prepared.report.removed).await?;
                if !users.is_empty() {
                    return Err(Refused::InUse(users));
                }
            }
            let catalog =
                Catalog::new(&state.config, &prepared.names(), prepared.schemas(), &state.identity.public_key())
                    .map_err(|e| Refused::Failed(format!("the catalog with these plugins: {e}")))?;
            state.catalog.store(Arc::new(catalog));
            let report = state.registry.commit(prepared);
            drop(names_held);
            let routes = state.routing.refresh_plugins().await;
            let m = crate::telemetry::metrics();
            for (outcome, n) in [
                ("added", report.added.len()),
                ("removed", report.removed.len()),
                ("changed", report.changed.len()),
                ("unchanged", report.unchanged.len()),
                ("failed", report.failed.len()),
            ] {
                m.plugin_reloads.get_or_create(&crate::telemetry::OutcomeLabels { outcome }).inc_by(n as u64);
            }
            let mut reloaded = Reloaded { outcome: "complete", message: String::new(), plugins: report, routes };
            if reloaded.complete() {
                reloaded.message = "plugins reloaded".into();
            } else {
                reloaded.outcome = "partial";
                reloaded.message = "plugins reloaded in part: what failed keeps its running version (a new plugin \
                                    that failed is not added), an instance a new version refused keeps its chain"
                    .into();
            }
            Ok(reloaded)
        }
    }

    /// The plans (of the running configuration) and the instances (not deleted) whose chains
    /// name one of `removed`.
    async fn users_of(&self, removed: &[String]) -> Result<Vec<InUse>, Refused> {
        let state = &self.broker;
        let mut users = Vec::new();
        for plan in state.config.services.iter().flat_map(|s| &s.plans) {
            for element in plan.policy.compose(&plan.plugins) {
                if removed.contains(&element.name) {
                    users.push(InUse { plugin: element.name, by: "plan", id: plan.id.clone() });
                }
            }
        }
        let instances = state
            .store
            .instances_not_deleted()
            .await
            .map_err(|e| Refused::Failed(format!("cannot read the instances: {e}")))?;
        for instance in instances {
            let plan = state.config.plan_by_id(&instance.plan_id);
            for element in crate::chain_policy::chain_of(plan, instance.parameters.as_ref()) {
                if removed.contains(&element.name) {
                    users.push(InUse { plugin: element.name, by: "instance", id: instance.id.clone() });
                }
            }
        }
        users.sort_by(|a, b| (&a.plugin, a.by, &a.id).cmp(&(&b.plugin, b.by, &b.id)));
        users.dedup();
        Ok(users)
    }

    /// Reloads on every SIGHUP `hup` delivers until `shutdown` (see [`listen_for_sighup`]).
    pub async fn on_sighup(self: Arc<Self>, hup: Option<Hangups>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(mut hup) = hup else {
            shutdown.cancelled().await;
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the plugins");
                    // The outcome is logged by `reload`.
                    let _ = self.reload().await;
                }
            }
        }
    }
}

/// Plugin failures as `plugin: error` items joined by `; ` (a log field).
fn failures(failed: &[ReloadFailure]) -> String {
    failed.iter().map(|f| format!("{}: {}", f.plugin, f.error)).collect::<Vec<_>>().join("; ")
}

/// The SIGHUPs delivered to this process.
#[cfg(unix)]
pub type Hangups = tokio::signal::unix::Signal;
/// The SIGHUPs delivered to this process (none outside Unix).
#[cfg(not(unix))]
pub struct Hangups;

#[cfg(not(unix))]
impl Hangups {
    async fn recv(&mut self) -> Option<()> {
        None
    }
}

/// Takes over SIGHUP, whose default action ends the process, at the very start of `ovsb serve`:
/// a SIGHUP while plugins compile is kept and reloads once ovsb is up. `None` (logged) when
/// the signal cannot be taken; `POST /reload` still works.
pub fn listen_for_sighup() -> Option<Hangups> {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(err) => {
                tracing::error!("cannot listen for SIGHUP; reload with POST /reload instead: {err}");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}
