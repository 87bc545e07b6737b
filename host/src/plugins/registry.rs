//! The plugins an operator made available, by name, and the building of an instance's chain
//! from `[{name, config, fail_open}]`.
//!
//! Owns: loading the configured `.wasm` files (checking their SHA-256 when the config gives
//! one), each plugin's limits, and turning a chain description into configured pools; swapping
//! in a new set of plugins (added, removed, new versions) on a reload ([`Registry::prepare`]
//! compiles it while the running set serves, [`Registry::commit`] swaps it in one store). Must
//! not: know about OSB or the store (who uses a plugin a reload removes is the reload's to check;
//! the routes that use a swapped plugin are rebuilt by [`crate::routing`]).

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

/// What a reload does, plugin by plugin.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Plugins declared anew, compiled and now available to chains.
    pub added: Vec<String>,
    /// Plugins no longer declared, and no longer available.
    pub removed: Vec<String>,
    /// Plugins whose file (digest), path or limits changed and are now served in their new form.
    pub changed: Vec<String>,
    /// Plugins found as they were.
    pub unchanged: Vec<String>,
    /// Plugins whose new declaration could not be applied, with the reason; the running version
    /// stays in place (a new plugin is not added).
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

/// The plugins and their configuration schemas, swapped as one.
#[derive(Clone, Default)]
struct PluginSet {
    plugins: HashMap<String, Available>,
    schemas: BTreeMap<String, serde_json::Value>,
}

/// A reload's plugin set, compiled and checked but not served yet: [`Registry::commit`] serves
/// it. Compiling happens before, while the running set keeps serving.
pub struct Prepared {
    next: PluginSet,
    /// What serving it changes.
    pub report: ReloadReport,
}

impl Prepared {
    /// The names it makes available, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.next.plugins.keys().cloned().collect();
        names.sort();
        names
    }

    /// The configuration schemas of its plugins that have one.
    pub fn schemas(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.next.schemas
    }
}

/// The available plugins. Clones share the same set, which [`Registry::commit`] swaps.
#[derive(Clone)]
pub struct Registry {
    runtime: PluginRuntime,
    set: Arc<ArcSwap<PluginSet>>,
    /// Held (shared) by whoever checks a chain against the set and commits it, and (exclusive)
    /// by a reload while it checks who uses a plugin it removes and swaps the set.
    names: Arc<tokio::sync::RwLock<()>>,
}

impl Registry {
    /// Loads every declared plugin (compiling, or reading the compile cache). A missing file or a
    /// SHA-256 mismatch is an error naming the plugin.
    pub fn load(runtime: PluginRuntime, decls: &[PluginDecl]) -> Result<Registry, LoadError> {
        let mut set = PluginSet::default();
        for decl in decls {
            if let Some(schema) = load_schema(decl)? {
                set.schemas.insert(decl.name.clone(), schema);
            }
            set.plugins.insert(decl.name.clone(), load_decl(&runtime, decl)?);
        }
        Ok(Registry { runtime, set: Arc::new(ArcSwap::from_pointee(set)), names: Arc::default() })
    }

    /// The runtime the plugins run in.
    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// Names of the available plugins, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.set.load().plugins.keys().cloned().collect();
        names.sort();
        names
    }

    /// The available plugins now, by name.
    pub fn available(&self) -> Arc<HashMap<String, Available>> {
        Arc::new(self.set.load().plugins.clone())
    }

    /// The version of the plugin `name` served now.
    pub fn version_of(&self, name: &str) -> Option<PluginVersion> {
        self.set.load().plugins.get(name).map(|a| PluginVersion { digest: a.plugin.digest, limits: a.limits })
    }

    /// The configuration schemas of the plugins that have one, by name.
    pub fn schemas(&self) -> BTreeMap<String, serde_json::Value> {
        self.set.load().schemas.clone()
    }

    /// Keeps the set of plugin names as it is while held: a provision or update holds it from
    /// checking its chain until its store transaction, so that a reload cannot remove a plugin
    /// between the check and the commit.
    pub async fn hold_names(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.names.clone().read_owned().await
    }

    /// Excludes [`Registry::hold_names`]: a reload holds it while it checks who uses the plugins
    /// it removes and commits.
    pub async fn change_names(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.names.clone().write_owned().await
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
        let set = self.set.load_full();
        let sealed: Arc<[String]> = sealed.iter().filter(|s| !s.is_empty()).cloned().collect();
        // One copy of the id for the chain's pools.
        let instance_id: Arc<str> = Arc::from(instance_id);
        let mut entries = Vec::with_capacity(elements.len());
        for element in elements {
            let available =
                set.plugins.get(&element.name).ok_or_else(|| ChainError::UnknownPlugin(element.name.clone()))?;
            let config = element.config.to_string();
            let pool = self
                .runtime
                .pool_sealed(
                    &available.plugin,
                    &config,
                    available.limits,
                    instance_id.clone(),
                    kv.clone(),
                    sealed.clone(),
                )
                .await?;
            entries.push(ChainEntry { pool, fail_open: element.fail_open });
        }
        Ok(Chain::with_share(entries, share))
    }

    /// Reads every declared plugin's file (and schema) again, compiling on a blocking thread,
    /// and works out the set a reload would serve: new names added, names no longer declared
    /// removed, plugins whose digest, path or limits changed in their new form. A plugin whose
    /// new file cannot be read, compiled, or matched to its pinned SHA-256 keeps its running
    /// version (a new one is left out). Nothing is served until [`Registry::commit`]. `Err`
    /// only when the compiling thread failed.
    pub async fn prepare(&self, decls: Vec<PluginDecl>) -> Result<Prepared, String> {
        let current = self.set.load_full();
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
                    let loaded = limits.and_then(|()| {
                        let schema = load_schema(decl).map_err(|e| e.to_string())?;
                        Ok((load_decl(&runtime, decl).map_err(|e| e.to_string())?, schema))
                    });
                    (decl.name.clone(), loaded)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|panicked| format!("compiling the plugins failed: {panicked}"))?;
        let mut report = ReloadReport::default();
        let mut next = (*current).clone();
        let declared: std::collections::BTreeSet<&str> = loaded.iter().map(|(name, _)| name.as_str()).collect();
        for name in current.plugins.keys().filter(|name| !declared.contains(name.as_str())) {
            next.plugins.remove(name);
            next.schemas.remove(name);
            report.removed.push(name.clone());
        }
        for (name, result) in loaded {
            match (current.plugins.get(&name), result) {
                (old, Ok((new, schema))) => {
                    let same = old.is_some_and(|old| {
                        new.plugin.digest == old.plugin.digest && new.path == old.path && new.limits == old.limits
                    });
                    match old {
                        _ if same => report.unchanged.push(name.clone()),
                        None => {
                            tracing::info!(plugin = %name, sha256 = %new.plugin.sha256(), "plugin added");
                            report.added.push(name.clone());
                        }
                        Some(old) => {
                            tracing::info!(
                                plugin = %name,
                                from = %old.plugin.sha256(),
                                to = %new.plugin.sha256(),
                                "plugin reloaded: new calls run the new version once its routes are rebuilt"
                            );
                            report.changed.push(name.clone());
                        }
                    }
                    if !same {
                        next.plugins.insert(name.clone(), new);
                    }
                    match schema {
                        Some(schema) => next.schemas.insert(name, schema),
                        None => next.schemas.remove(&name),
                    };
                }
                (old, Err(error)) => {
                    let stays = if old.is_some() { "its running version stays" } else { "it is not added" };
                    tracing::error!(plugin = %name, error = %error, "plugin not reloaded, {stays}");
                    report.failed.push(ReloadFailure { plugin: name, error });
                }
            }
        }
        for list in [&mut report.added, &mut report.removed, &mut report.changed, &mut report.unchanged] {
            list.sort();
        }
        Ok(Prepared { next, report })
    }

    /// Serves `prepared`: new chains are built with its plugins. Chains already built keep the
    /// version they were built with until [`crate::routing::RouteSync::refresh_plugins`]
    /// rebuilds them. The caller checked that no chain uses a plugin it removes.
    pub fn commit(&self, prepared: Prepared) -> ReloadReport {
        self.set.store(Arc::new(prepared.next));
        prepared.report
    }
}

/// The configuration schema `decl` names, if any.
fn load_schema(decl: &PluginDecl) -> Result<Option<serde_json::Value>, LoadError> {
    let Some(path) = &decl.schema else { return Ok(None) };
    let fail = |reason: String| LoadError::Schema { name: decl.name.clone(), path: path.clone(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    if !schema.is_object() {
        return Err(fail("not a JSON object".into()));
    }
    Ok(Some(schema))
}

/// One plugin [`compile_all`] compiled, or found compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The plugin's name.
    pub name: String,
    /// SHA-256 of its file, hex.
    pub sha256: String,
    /// Compiled now (`false`: read from the compile cache).
    pub fresh: bool,
    /// How long it took.
    pub ms: u64,
}

/// Compiles (or finds in the runtime's compile cache) every plugin `decls` declares, checking
/// each `sha256` pin: what `ovsb plugin compile` runs to fill the cache ahead of a start or a
/// reload.
pub fn compile_all(runtime: &PluginRuntime, decls: &[PluginDecl]) -> Result<Vec<Compiled>, LoadError> {
    decls
        .iter()
        .map(|decl| {
            let (available, fresh, ms) = load_decl_timed(runtime, decl)?;
            Ok(Compiled { name: decl.name.clone(), sha256: available.plugin.sha256(), fresh, ms })
        })
        .collect()
}

fn load_decl(runtime: &PluginRuntime, decl: &PluginDecl) -> Result<Available, LoadError> {
    load_decl_timed(runtime, decl).map(|(available, _, _)| available)
}

/// The plugin `decl` declares, whether it was compiled now, and in how many milliseconds.
fn load_decl_timed(runtime: &PluginRuntime, decl: &PluginDecl) -> Result<(Available, bool, u64), LoadError> {
    let started = std::time::Instant::now();
    let compiled = runtime.stats().compilations.load(std::sync::atomic::Ordering::Relaxed);
    let plugin = runtime.load_file(&decl.name, &decl.path)?;
    let fresh = runtime.stats().compilations.load(std::sync::atomic::Ordering::Relaxed) != compiled;
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        plugin = %decl.name,
        sha256 = %plugin.sha256(),
        ms,
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
    Ok((Available { plugin, path: decl.path.clone(), limits: decl.limits }, fresh, ms))
}
