//! `[[plugins]]`: the plugins operators make available to instances, and the limits every copy
//! of one runs under (`[plugins.limits]`).
//!
//! Owns: the declaration and the limits as data, with their bounds. The wasm runtime
//! ([`crate::plugins`]) reads them from here and enforces them.
//! Must not: load, compile or run a plugin (that is the runtime's), or depend on any module
//! above `config`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::catalog::is_slug;

/// A plugin made available to instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDecl {
    /// The name instances use in `parameters.plugins[].name`.
    pub name: String,
    /// The `.wasm` component (relative paths are relative to the config file).
    pub path: PathBuf,
    /// Expected SHA-256 of the file, hex; a mismatch refuses to load.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A JSON Schema file of the plugin's configuration, published in the catalog (relative
    /// paths are relative to the config file). The plugin's own `configure` stays the judge.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// The limits every copy of this plugin runs under (`[plugins.limits]`; fields left out keep
    /// their defaults). Python and JavaScript plugins carry their language's runtime in every
    /// copy: see the README's plugin section for what to give them.
    #[serde(default)]
    pub limits: PluginLimits,
}

/// Whether copies are reused between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Warm copies are reused (the default; ~µs per call).
    #[default]
    Pooled,
    /// A fresh copy (instantiate + configure) for every call, so no state survives a call;
    /// tens of µs more per call.
    PerCall,
}

/// Limits one plugin runs under. Every field is bounded; see [`PluginLimits::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory cap of one copy, in bytes.
    pub memory_bytes: u64,
    /// Time one export call may run in the plugin, in milliseconds of wall-clock time (time
    /// waiting for `upstream` excluded; time the OS takes the thread away counts).
    pub call_budget_ms: u64,
    /// Longest string (method, params, result, error text) a plugin may return, in bytes.
    pub max_output_bytes: usize,
    /// `upstream` calls one export call may make.
    pub max_upstream_calls: u32,
    /// Copies kept warm while idle.
    pub max_idle: usize,
    /// Copies running at once; further calls wait up to the call budget, then fail as overloaded.
    pub max_concurrency: usize,
    /// Log lines a copy may write per second.
    pub log_lines_per_second: u32,
    /// Reuse copies, or start a fresh one per call.
    pub isolation: Isolation,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 64 << 20,
            call_budget_ms: 50,
            max_output_bytes: 4 << 20,
            max_upstream_calls: 16,
            max_idle: 16,
            max_concurrency: 64,
            log_lines_per_second: 20,
            isolation: Isolation::Pooled,
        }
    }
}

impl PluginLimits {
    /// Checks every limit against its allowed range.
    pub fn validate(&self, max_memory_bytes: u64) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            (1 << 20..=max_memory_bytes).contains(&self.memory_bytes),
            &format!("memory_bytes must be between 1 MiB and {max_memory_bytes}"),
        )?;
        check((1..=60_000).contains(&self.call_budget_ms), "call_budget_ms must be between 1 and 60000")?;
        check((1024..=64 << 20).contains(&self.max_output_bytes), "max_output_bytes must be between 1 KiB and 64 MiB")?;
        check(self.max_upstream_calls <= 1024, "max_upstream_calls must be at most 1024")?;
        check(self.max_idle <= 1024, "max_idle must be at most 1024")?;
        check((1..=4096).contains(&self.max_concurrency), "max_concurrency must be between 1 and 4096")?;
        check(self.log_lines_per_second <= 10_000, "log_lines_per_second must be at most 10000")
    }

    /// `call_budget_ms` as a duration.
    pub fn call_budget(&self) -> Duration {
        Duration::from_millis(self.call_budget_ms)
    }
}

/// Bounds of one instance's key-value store (`[runtime.kv]`), which its plugins share, each
/// plugin in its own share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most entries held at once.
    pub max_entries: usize,
    /// Most bytes (keys + values) held at once.
    pub max_total_bytes: usize,
    /// Most entries one plugin (one namespace) holds at once.
    pub max_entries_per_plugin: usize,
    /// Most bytes one plugin (one namespace) holds at once.
    pub max_bytes_per_plugin: usize,
}

impl Default for KvLimits {
    /// A quarter of the store per plugin: up to four plugins that fill their share still leave
    /// room for the rest of the chain.
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_entries: 100_000,
            max_total_bytes: 64 << 20,
            max_entries_per_plugin: 25_000,
            max_bytes_per_plugin: 16 << 20,
        }
    }
}

impl KvLimits {
    /// Checks every bound against its allowed range (the message names the key).
    pub fn validate(&self) -> Result<(), String> {
        let ranges: [(&str, usize, usize, usize); 6] = [
            ("max_key_bytes", self.max_key_bytes, 16, 64 << 10),
            ("max_value_bytes", self.max_value_bytes, 16, 64 << 20),
            ("max_entries", self.max_entries, 1, 100_000_000),
            ("max_total_bytes", self.max_total_bytes, self.max_value_bytes, 1 << 40),
            // A plugin's share holds one whole entry, and the store holds a share.
            ("max_entries_per_plugin", self.max_entries_per_plugin, 1, self.max_entries),
            ("max_bytes_per_plugin", self.max_bytes_per_plugin, self.max_value_bytes, self.max_total_bytes),
        ];
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(format!("runtime.kv.{name} is {value}; it must be between {low} and {high}"));
            }
        }
        Ok(())
    }
}

/// Checks the declared plugins (names, digests, limits within the runtime's `max_memory_bytes`)
/// and returns their names.
pub(super) fn check_plugins(plugins: &[PluginDecl], max_memory_bytes: u64) -> Result<HashSet<&str>, ConfigError> {
    let bad = |message: String| Err(ConfigError::Invalid(message));
    let mut plugin_names = HashSet::new();
    for plugin in plugins {
        if !is_slug(&plugin.name) {
            return bad(format!("plugin name {:?} must be lowercase letters, digits and '-'", plugin.name));
        }
        if !plugin_names.insert(plugin.name.as_str()) {
            return bad(format!("plugin {:?} is declared twice", plugin.name));
        }
        if let Some(sha) = &plugin.sha256
            && (sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return bad(format!("plugin {:?}: sha256 must be 64 hex digits", plugin.name));
        }
        if let Err(reason) = plugin.limits.validate(max_memory_bytes) {
            return bad(format!(
                "plugins.limits of {:?}: {reason} (runtime.max_memory_bytes is {} MiB)",
                plugin.name,
                max_memory_bytes >> 20
            ));
        }
    }
    Ok(plugin_names)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn plugin_limits_are_read_per_plugin_and_bounded_by_the_runtime() {
        let toml = |limits: &str| {
            format!(
                "[runtime]\nmax_memory_bytes = 268435456\n\n[[plugins]]\nname = \"py\"\npath = \"py.wasm\"\n{limits}"
            )
        };
        let config =
            Config::from_toml(&toml("[plugins.limits]\nmemory_bytes = 134217728\ncall_budget_ms = 500\n"), "t")
                .unwrap();
        config.validate().unwrap();
        let limits = config.plugins[0].limits;
        assert_eq!((limits.memory_bytes, limits.call_budget_ms), (128 << 20, 500));
        assert_eq!(limits.max_concurrency, PluginLimits::default().max_concurrency, "others default");
        assert_eq!(Config::from_toml(&toml(""), "t").unwrap().plugins[0].limits, Default::default());
        // Beyond the runtime's slots, or out of range: refused, naming the plugin and the field.
        let err = Config::from_toml(&toml("[plugins.limits]\nmemory_bytes = 536870912\n"), "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"py\"") && err.contains("memory_bytes") && err.contains("256 MiB"), "{err}");
        let err = Config::from_toml(&toml("[plugins.limits]\ncall_budget_ms = 0\n"), "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("call_budget_ms"), "{err}");
        let err = Config::from_toml(&toml("[plugins.limits]\nmemory = 1\n"), "t").unwrap_err().to_string();
        assert!(err.contains("memory"), "a misspelt limit is refused: {err}");
    }
}
