//! What `configure` answered, per plugin version, for the configurations it was given.
//!
//! Owns: the answers of successful `configure` runs (the hooks the plugin declared and the
//! methods it selected), by configuration text and limits, for one loaded plugin. A new pool
//! (a provision's check, an instance's route) whose configuration was already taken by this
//! version of the plugin reuses the answer instead of instantiating a copy to ask again: a
//! provider's tenants mostly share a few configurations (the plan's defaults), and a copy made
//! only to be dropped cost a provision more than everything else it does. Every copy made for
//! calls still runs `configure` (a copy is only ever used configured). So `configure` is
//! taken to be a function of its configuration, as the contract says: it has no upstream, and
//! what it might read from the instance's KV does not change its answer here.
//!
//! Bounded: configurations up to [`MAX_CONFIG_BYTES`], at most [`MAX_ENTRIES`] per plugin
//! version (then the whole cache starts again).
//!
//! The configuration text is kept once here and shared by the pools that run it (a pool keeps
//! its configuration for every copy it makes): a plan's tenants hold one copy of it, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::methods::MethodSelection;
use crate::config::PluginLimits;

/// Largest configuration remembered, in bytes.
pub const MAX_CONFIG_BYTES: usize = 4096;
/// Configurations remembered per plugin version.
pub const MAX_ENTRIES: usize = 1024;

/// What one successful `configure` answered.
#[derive(Debug, Clone)]
pub struct Configured {
    /// The hooks it declared (the pool's bits).
    pub hooks: u8,
    /// The calls it selected (`None`: every call), shared by every pool with this answer.
    pub selection: Option<Arc<MethodSelection>>,
}

/// The answers, by configuration text (with the limits they were given under).
#[derive(Default)]
pub struct ConfiguredCache {
    answers: Mutex<HashMap<Arc<str>, (PluginLimits, Configured)>>,
}

impl ConfiguredCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, (PluginLimits, Configured)>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer `configure` gave for `config` under `limits`, if remembered, with the
    /// configuration's shared text.
    pub fn get(&self, config: &str, limits: &PluginLimits) -> Option<(Arc<str>, Configured)> {
        let answers = self.lock();
        let (text, (_, answer)) = answers.get_key_value(config).filter(|(_, (under, _))| under == limits)?;
        Some((text.clone(), answer.clone()))
    }

    /// Remembers a successful answer for `config` (its shared text).
    pub fn insert(&self, config: Arc<str>, limits: PluginLimits, answer: Configured) {
        if config.len() > MAX_CONFIG_BYTES {
            return;
        }
        let mut answers = self.lock();
        if answers.len() >= MAX_ENTRIES && !answers.contains_key(&*config) {
            answers.clear();
        }
        answers.insert(config, (limits, answer));
    }

    /// Configurations remembered now.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_kept_by_configuration_and_limits_within_bounds() {
        let cache = ConfiguredCache::default();
        let limits = PluginLimits::default();
        let answer = Configured { hooks: 3, selection: None };
        cache.insert("{}".into(), limits, answer.clone());
        assert_eq!(cache.get("{}", &limits).map(|(_, a)| a.hooks), Some(3));
        assert!(cache.get("{\"a\":1}", &limits).is_none(), "another configuration");
        let other = PluginLimits { memory_bytes: limits.memory_bytes / 2, ..limits };
        assert!(cache.get("{}", &other).is_none(), "the same configuration under other limits");
        cache.insert("x".repeat(MAX_CONFIG_BYTES + 1).into(), limits, answer.clone());
        assert_eq!(cache.remembered(), 1, "a configuration too large to remember");
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert(i.to_string().into(), limits, answer.clone());
        }
        assert!(cache.remembered() <= MAX_ENTRIES);
    }
}
