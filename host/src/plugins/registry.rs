//! The plugins an operator made available, by name, and the building of an instance's chain
//! from `[{name, config, fail_open}]`.
//!
//! Owns: loading the configured `.wasm` files (checking their SHA-256 when the config gives
//! one), each plugin's limits, and turning a chain description into configured pools; swapping
//! in new versions of the files on [`Registry::reload`]. Must not: know about OSB or the store
//! (the routes that use a swapped plugin are rebuilt by [`crate::routing`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Chain, ChainEntry, ConfigureError, KvStore, LoadError, LoadedPlugin, PluginLimits, PluginRuntime, Share};
use crate::config::{ChainElement, PluginDecl};

/// Why a chain could not be built. Every variant is the operator's or user's to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain names a plugin that is not configured.
    #[error("unknown plugin `{0}`")]
    UnknownPlugin(String),
    /// A plugin refused its configuration, or could not start.
    #[error(transparent)]
    Configure(#[from] ConfigureError),
}

/// One available plugin: its compiled component, where it came from, and its limits.
#[derive(Clone)]
pub struct Available {
    /// The compiled component.
    pub plugin: Arc<LoadedPlugin>,
    /// The file it was read from.
    pub path: PathBuf,
    /// The limits its copies run under.
    pub limits: PluginLimits,
}

/// The version of a plugin a chain is built with: its component and its limits. A reload that
/// changes either rebuilds the chains that run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginVersion {
    /// SHA-256 of the component.
    pub digest: [u8; 32],
    /// The limits its copies run under.
    pub limits: PluginLimits,
}

/// What a [`Registry::reload`] did, plugin by plugin.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Plugins whose file (digest), path or limits changed and are now served in their new form.
    pub changed: Vec<String>,
    /// Plugins found as they were.
    pub unchanged: Vec<String>,
    /// Plugins whose new declaration could not be applied, with the reason; the running version
    /// stays in place.
    pub failed: Vec<ReloadFailure>,
}

/// A plugin a reload left as it was, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadFailure {
    /// The plugin's name.
    pub plugin: String,
    /// Why its new version was not taken.
    pub error: String,
}

/// The available plugins. Clones share the same set, which [`Registry::reload`] swaps.
#[derive(Clone)]
pub struct Registry {
    runtime: PluginRuntime,
    plugins: Arc<ArcSwap<HashMap<String, Available>>>,
    schemas: Arc<BTreeMap<String, serde_json::Value>>,
    /// Serializes reloads (a SIGHUP and a `POST /reload` at once).
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// Loads every declared plugin (compiling, or reading the compile cache). A missing file or a
    /// SHA-256 mismatch is an error naming the plugin.
    pub fn load(runtime: PluginRuntime, decls: &[PluginDecl]) -> Result<Registry, LoadError> {
        let mut plugins = HashMap::new();
        let mut schemas = BTreeMap::new();
        for decl in decls {
            if let Some(path) = &decl.schema {
                let fail = |reason: String| LoadError::Schema { name: decl.name.clone(), path: path.clone(), reason };
                let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
                if !schema.is_object() {
                    return Err(fail("not a JSON object".into()));
                }
                schemas.insert(decl.name.clone(), schema);
            }
            plugins.insert(decl.name.clone(), load_decl(&runtime, decl)?);
        }
        Ok(Registry {
            runtime,
            plugins: Arc::new(ArcSwap::from_pointee(plugins)),
            schemas: Arc::new(schemas),
            reloading: Arc::default(),
        })
    }

    /// The runtime the plugins run in.
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// Names of the available plugins, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.plugins.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// The available plugins now, by name.
    pub fn available(&self) -> Arc<HashMap<String, Available>> {
        self.plugins.load_full()
    }

    /// The version of the plugin `name` served now.
    pub fn version_of(&self, name: &str) -> Option<PluginVersion> {
        self.plugins.load().get(name).map(|a| PluginVersion { digest: a.plugin.digest, limits: a.limits })
    }

    /// The configuration schemas of the plugins that have one, by name.
    pub fn schemas(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.schemas
    }

    /// Builds the chain `elements` for `instance_id`, running each plugin's `configure`, with
    /// `share` of the runtime for the instance.
    pub async fn build_chain(
        &self,
        instance_id: &str,
        elements: &[ChainElement],
        kv: &Arc<KvStore>,
        share: Share,
        sealed: &[String],
    ) -> Result<Chain, ChainError> {
        let sealed: Arc<[String]> = sealed.iter().filter(|s| !s.is_empty()).cloned().collect();
        let plugins = self.plugins.load_full();
        let mut entries = Vec::with_capacity(elements.len());
        for element in elements {
            let available =
                plugins.get(&element.name).ok_or_else(|| ChainError::UnknownPlugin(element.name.clone()))?;
            let config = element.config.to_string();
            let pool = self
                .runtime
                .pool_sealed(&available.plugin, &config, available.limits, instance_id, kv.clone(), sealed.clone())
                .await?;
            entries.push(ChainEntry { pool, fail_open: element.fail_open });
        }
        Ok(Chain::with_share(entries, share))
    }

    /// Reads every declared plugin's file again and serves the new version of each one that
    /// changed (its digest, path or limits). A plugin whose new file cannot be read, compiled,
    /// or matched to its pinned SHA-256 keeps its running version; so does every plugin when the
    /// set of names changed (adding or removing a plugin needs a restart: the catalog publishes
    /// the names). Chains already built keep the version they were built with until
    /// [`crate::routing::RouteSync::refresh_plugins`] rebuilds them. Compiling runs on a
    /// blocking thread.
    pub async fn reload(&self, decls: Vec<PluginDecl>) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.plugins.load_full();
        let mut report = ReloadReport::default();
        let declared: std::collections::BTreeSet<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        let running: std::collections::BTreeSet<&str> = current.keys().map(String::as_str).collect();
        if declared != running {
            let added: Vec<&str> = declared.difference(&running).copied().collect();
            let removed: Vec<&str> = running.difference(&declared).copied().collect();
            let error = format!(
                "the set of plugins changed (added {added:?}, removed {removed:?}); adding or removing a \
                 plugin needs a restart, the catalog publishes their names: nothing was reloaded"
            );
            report.failed.push(ReloadFailure { plugin: "*".into(), error });
            return report;
        }
        let runtime = self.runtime.clone();
        let max_memory_bytes = self.runtime.max_memory_bytes();
        let loaded = tokio::task::spawn_blocking(move || {
            decls
                .iter()
                .map(|decl| {
                    // Checked against the running runtime: a reload does not resize its slots.
                    let limits = decl.limits.validate(max_memory_bytes).map_err(|reason| {
                        format!(
                            "plugins.limits: {reason} (the running runtime.max_memory_bytes; changing it needs a restart)"
                        )
                    });
                    let loaded = limits.and_then(|()| load_decl(&runtime, decl).map_err(|e| e.to_string()));
                    (decl.name.clone(), loaded)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(panicked) => {
                tracing::error!("plugin reload failed: {panicked}");
                report
                    .failed
                    .push(ReloadFailure { plugin: "*".into(), error: format!("the reload failed: {panicked}") });
                return report;
            }
        };
        let mut next = (*current).clone();
        for (name, result) in loaded {
            let Some(old) = current.get(&name) else { continue };
            match result {
                Ok(new) => {
                    if new.plugin.digest == old.plugin.digest && new.path == old.path && new.limits == old.limits {
                        report.unchanged.push(name);
                    } else {
                        tracing::info!(
                            plugin = %name,
                            from = %old.plugin.sha256(),
                            to = %new.plugin.sha256(),
                            "plugin reloaded: new calls run the new version once its routes are rebuilt"
                        );
                        next.insert(name.clone(), new);
                        report.changed.push(name);
                    }
                }
                Err(error) => {
                    tracing::error!(plugin = %name, "plugin not reloaded, its running version stays: {error}");
                    report.failed.push(ReloadFailure { plugin: name, error });
                }
            }
        }
        report.changed.sort();
        report.unchanged.sort();
        if !report.changed.is_empty() {
            self.plugins.store(Arc::new(next));
        }
        report
    }
}

fn load_decl(runtime: &PluginRuntime, decl: &PluginDecl) -> Result<Available, LoadError> {
    let started = std::time::Instant::now();
    let compiled = runtime.stats().compilations.load(std::sync::atomic::Ordering::Relaxed);
    let plugin = runtime.load_file(&decl.name, &decl.path)?;
    let fresh = runtime.stats().compilations.load(std::sync::atomic::Ordering::Relaxed) != compiled;
    tracing::info!(
        plugin = %decl.name,
        sha256 = %plugin.sha256(),
        ms = started.elapsed().as_millis() as u64,
        "plugin {}",
        if fresh { "compiled" } else { "loaded from the compile cache" }
    );
    if let Some(expected) = &decl.sha256
        && !expected.eq_ignore_ascii_case(&plugin.sha256())
    {
        return Err(LoadError::Digest {
            name: decl.name.clone(),
            expected: expected.to_ascii_lowercase(),
            actual: plugin.sha256(),
        });
    }
    Ok(Available { plugin, path: decl.path.clone(), limits: decl.limits })
}
