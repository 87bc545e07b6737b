//! The plugins an operator made available, by name, and the building of an instance's chain
//! from `[{name, config, fail_open}]`.
//!
//! Owns: loading the configured `.wasm` files once at start (checking their SHA-256 when the
//! config gives one) and turning a chain description into warm, configured pools. Must not:
//! know about OSB or the store.

use std::collections::HashMap;
use std::sync::Arc;

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

/// The available plugins.
#[derive(Clone)]
pub struct Registry {
    runtime: PluginRuntime,
    plugins: Arc<HashMap<String, Arc<LoadedPlugin>>>,
    schemas: Arc<std::collections::BTreeMap<String, serde_json::Value>>,
}

impl Registry {
    /// Loads every declared plugin (compiling, or reading the compile cache). A missing file or a
    /// SHA-256 mismatch is an error naming the plugin.
    pub fn load(runtime: PluginRuntime, decls: &[PluginDecl]) -> Result<Registry, LoadError> {
        let mut plugins = HashMap::new();
        let mut schemas = std::collections::BTreeMap::new();
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
            let plugin = runtime.load_file(&decl.name, &decl.path)?;
            if let Some(expected) = &decl.sha256
                && !expected.eq_ignore_ascii_case(&plugin.sha256())
            {
                return Err(LoadError::Digest {
                    name: decl.name.clone(),
                    expected: expected.to_ascii_lowercase(),
                    actual: plugin.sha256(),
                });
            }
            plugins.insert(decl.name.clone(), plugin);
        }
        Ok(Registry { runtime, plugins: Arc::new(plugins), schemas: Arc::new(schemas) })
    }

    /// Names of the available plugins, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.plugins.keys().cloned().collect();
        names.sort();
        names
    }

    /// The configuration schemas of the plugins that have one, by name.
    pub fn schemas(&self) -> &std::collections::BTreeMap<String, serde_json::Value> {
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
    ) -> Result<Chain, ChainError> {
        let mut entries = Vec::with_capacity(elements.len());
        for element in elements {
            let plugin =
                self.plugins.get(&element.name).ok_or_else(|| ChainError::UnknownPlugin(element.name.clone()))?;
            let config = element.config.to_string();
            let pool = self.runtime.pool(plugin, &config, PluginLimits::default(), instance_id, kv.clone()).await?;
            entries.push(ChainEntry { pool, fail_open: element.fail_open });
        }
        Ok(Chain::with_share(entries, share))
    }
}
