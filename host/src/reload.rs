//! Swapping plugins without a restart: `ovsb serve` reloads its plugin declarations on SIGHUP
//! and on `POST /reload` at the admin listener.
//!
//! Owns: reading the `[[plugins]]` declarations again from the configuration file `ovsb serve`
//! was started with (the declarations it started with when it had none), handing them to
//! [`Registry::reload`], then having [`RouteSync::refresh_plugins`] rebuild the routes that run
//! a changed plugin. Must not: apply any other setting of the file (those need a restart; a
//! file that no longer validates as a whole is refused, so that a reload never half-applies a
//! broken edit).
//!
//! What a reload guarantees:
//! - a changed file (or digest, path or `[plugins.limits]`) takes effect for new calls as soon
//!   as its instances' routes are rebuilt, which happens before the reload answers;
//! - calls in flight finish on the copy, and chain, they started on;
//! - a plugin whose new file cannot be read, compiled or matched to its `sha256` pin keeps its
//!   running version; an instance whose configuration the new version refuses keeps its
//!   previous chain; both are logged and reported;
//! - `/metrics` shows each plugin's loaded digest (`ovsb_plugin_loaded{plugin, sha256}`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::plugins::{Registry, ReloadReport};
use crate::routing::{PluginRefresh, RouteSync};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
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

/// Reloads the plugins of one running ovsb.
pub struct Reloader {
    source: Option<PathBuf>,
    env: std::collections::HashMap<String, String>,
    /// The declarations ovsb started with, read again when there is no file.
    started_with: Vec<crate::config::PluginDecl>,
    registry: Registry,
    routing: Arc<RouteSync>,
}

impl Reloader {
    /// A reloader for the configuration ovsb started with: it reads the declarations again from
    /// the file `config` came from (with the `OVSB_*` variables `env` applied as at start), or,
    /// for a configuration made in code or the built-in one, takes its declarations as they are
    /// (the files they name are still read again).
    pub fn new(
        config: &crate::config::Config,
        env: std::collections::HashMap<String, String>,
        registry: Registry,
        routing: Arc<RouteSync>,
    ) -> Self {
        Reloader { source: config.source.clone(), env, started_with: config.plugins.clone(), registry, routing }
    }

    /// Reads the declarations again and applies them. `Err` when the configuration file cannot
    /// be read or no longer validates: nothing changed then.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let decls = match &self.source {
            Some(path) => {
                let mut config = crate::config::Config::load(path).map_err(|e| e.to_string())?;
                config.apply_env(&self.env).map_err(|e| e.to_string())?;
                config.validate().map_err(|e| e.to_string())?;
                config.plugins
            }
            None => self.started_with.clone(),
        };
        let plugins = self.registry.reload(decls).await;
        let routes = self.routing.refresh_plugins().await;
        let m = crate::telemetry::metrics();
        for (outcome, n) in [
            ("changed", plugins.changed.len()),
            ("unchanged", plugins.unchanged.len()),
            ("failed", plugins.failed.len()),
        ] {
            m.plugin_reloads.get_or_create(&crate::telemetry::OutcomeLabels { outcome }).inc_by(n as u64);
        }
        let reloaded = Reloaded { plugins, routes };
        if reloaded.complete() {
            tracing::info!(
                changed = ?reloaded.plugins.changed,
                instances_rebuilt = reloaded.routes.rebuilt,
                "plugins reloaded"
            );
        } else {
            tracing::error!(
                failed = ?reloaded.plugins.failed,
                instances_kept_previous = ?reloaded.routes.kept_previous,
                changed = ?reloaded.plugins.changed,
                "plugins reloaded in part: what failed keeps its running version"
            );
        }
        Ok(reloaded)
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
                    if let Err(err) = self.reload().await {
                        tracing::error!("plugin reload refused, nothing changed: {err}");
                    }
                }
            }
        }
    }
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
