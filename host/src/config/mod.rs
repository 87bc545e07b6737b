//! The one configuration tree: the TOML model, `OVSB_*` environment overrides, defaults and
//! validation.
//!
//! Owns: every setting an operator can give, and the check that runs before any port is bound.
//! Must not: read the environment anywhere else (callers pass the variables in, so tests give a
//! map instead of mutating the process), touch the network or the store, or depend on any
//! module above it (it is the bottom of the order in `lib.rs`; only leaves such as
//! [`crate::interchange`] are below it).
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Each section is a
//! struct with `#[serde(default)]` and one `impl Default`, where its defaults are stated once.
//!
//! Split by seam:
//! - `mod.rs`: the [`Config`] tree, loading, the built-in configuration, `OVSB_*` overrides and
//!   the [`Config::validate`] entry, which runs each section's checks in a fixed order;
//! - `settings.rs`: `[broker]`, `[gateway]`, `[admin]`, `[operations]`, `[runtime]`, `[replica]`;
//! - `plugins.rs`: `[[plugins]]` and `[plugins.limits]` ([`PluginLimits`]);
//! - `catalog.rs`: services and plans with stable ids, their default chains and policies;
//! - `drivers.rs`: each plan's driver settings and their checks;
//! - [`origins`]: the syntax of an allowed origin (the gateway matches origins with it).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod catalog;
mod drivers;
pub mod origins;
mod plugins;
mod settings;
mod usage;

pub use catalog::{ChainElement, MAX_BINDING_TTL, MaintenanceInfo, PlanDecl, PlanPolicy, ServiceDecl};
pub use drivers::{
    DriverDecl, KubernetesDriverDecl, KubernetesResources, KubernetesStorage, KubernetesValidatorDecl, PROCESS_NAMES,
    ProcessDriverDecl, UpstreamDriverDecl, VALIDATOR_PARAMETERS, VALIDATOR_TEMPLATE_NAMES, ValidatorDriverDecl,
    placeholders,
};
pub use plugins::{Isolation, KvLimits, PluginDecl, PluginLimits};
pub use settings::{
    AdminSettings, BrokerSettings, DashboardSettings, GatewaySettings, MAX_PLUGIN_ADDRESS_SPACE,
    MAX_PROVIDER_NAME_CHARS, OperationSettings, ReplicaSettings, RuntimeSettings, slot_address_space,
};
pub use usage::{
    DEFAULT_UNKNOWN_WEIGHT, DEFAULT_WEIGHTS, PlanUsageDecl, QuotaDecl, QuotaScope, QuotaWindow, UsageSettings,
};

/// Environment variables that override the file, by name.
pub const ENV_VARS: &[&str] = &[
    "OVSB_BROKER_LISTEN",
    "OVSB_GATEWAY_LISTEN",
    "OVSB_ADMIN_LISTEN",
    "OVSB_DATABASE_URL",
    "OVSB_BROKER_USERNAME",
    "OVSB_BROKER_PASSWORD",
    "OVSB_PUBLIC_GATEWAY_URL",
    "OVSB_DATA_DIR",
    "OVSB_SECRET_KEY",
    "OVSB_NODE_HOST",
];

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where ovsb keeps its files: the SQLite store, the secret key, the compiled-plugin cache.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means SQLite at `<data_dir>/ovsb.db`.
    pub database_url: String,
    /// The OSB REST listener.
    pub broker: BrokerSettings,
    /// The JSON-RPC listener.
    pub gateway: GatewaySettings,
    /// The admin listener (health, readiness).
    pub admin: AdminSettings,
    /// Asynchronous operations.
    pub operations: OperationSettings,
    /// The plugin runtime's capacity.
    pub runtime: RuntimeSettings,
    /// This replica among others on one PostgreSQL database.
    pub replica: ReplicaSettings,
    /// Metering: compute-unit weights and the flush to the store.
    pub usage: UsageSettings,
    /// Plugins operators make available to instances, by name.
    pub plugins: Vec<PluginDecl>,
    /// The catalog.
    pub services: Vec<ServiceDecl>,
    /// The file this configuration was read from (`None`: the built-in quick-start one); a
    /// plugin reload reads its `[[plugins]]` again from there.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".ovsb"),
            database_url: String::new(),
            broker: BrokerSettings::default(),
            gateway: GatewaySettings::default(),
            admin: AdminSettings::default(),
            operations: OperationSettings::default(),
            runtime: RuntimeSettings::default(),
            replica: ReplicaSettings::default(),
            usage: UsageSettings::default(),
            plugins: Vec::new(),
            services: Vec::new(),
            source: None,
        }
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown or mistyped key; the message names the line and the key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let mut message = err.to_string();
            if let Some(hint) = suggestion(&message) {
                message.push_str(&hint);
            }
            ConfigError::Parse { path: origin.to_string(), message }
        })
    }

    /// Checks a configuration file as `ovsb serve` would before binding any port: syntax, keys,
    /// values, and that every plugin file is there with the configured SHA-256. Returns a summary.
    pub fn check_file(path: &Path) -> Result<String, ConfigError> {
        let config = Config::load(path)?;
        config.validate()?;
        for plugin in &config.plugins {
            let bytes = std::fs::read(&plugin.path).map_err(|e| {
                ConfigError::Invalid(format!("plugin {:?}: cannot read {}: {e}", plugin.name, plugin.path.display()))
            })?;
            if let Some(expected) = &plugin.sha256 {
                use sha2::Digest as _;
                let actual = hex::encode(sha2::Sha256::digest(&bytes));
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err(ConfigError::Invalid(format!(
                        "plugin {:?}: sha256 of {} is {actual}, the configuration expects {expected}",
                        plugin.name,
                        plugin.path.display()
                    )));
                }
            }
        }
        let plans: usize = config.services.iter().map(|s| s.plans.len()).sum();
        Ok(format!(
            "ok: {}: {} services, {plans} plans, {} plugins",
            path.display(),
            config.services.len(),
            config.plugins.len()
        ))
    }

    /// Reads and parses a file; plugin paths are made relative to its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// The quick-start configuration (`examples/quick-start.toml`, built in): loopback
    /// listeners, SQLite under `./.ovsb`, the `ethereum-rpc` service with its `devnet` and
    /// `shared` plans, and the first-party plugins. Plugin paths are resolved as if the file were
    /// read from the `examples/` directory of the source tree this binary was built from.
    pub fn quick_start() -> Config {
        let mut config = Config::from_toml(QUICK_START, "built-in quick-start configuration")
            .expect("the built-in configuration parses");
        let examples = built_in_dir();
        if examples.is_dir() {
            config.resolve_paths(&examples);
        }
        config
    }

    /// Checks the built-in configuration as [`Config::check_file`] checks a file.
    pub fn check_built_in() -> Result<String, ConfigError> {
        Config::check_file(&built_in_dir().join("quick-start.toml"))
    }

    /// Makes relative plugin and schema paths relative to `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        for plugin in &mut self.plugins {
            if plugin.path.is_relative() {
                plugin.path = dir.join(&plugin.path);
            }
            if let Some(schema) = &mut plugin.schema
                && schema.is_relative()
            {
                *schema = dir.join(&*schema);
            }
        }
    }

    /// The `OVSB_*` variables [`Config::apply_env`] reads (each overrides one setting).
    pub const ENV_OVERRIDES: &'static [&'static str] = &[
        "OVSB_ADMIN_LISTEN",
        "OVSB_BROKER_LISTEN",
        "OVSB_BROKER_PASSWORD",
        "OVSB_BROKER_USERNAME",
        "OVSB_DATABASE_URL",
        "OVSB_DATA_DIR",
        "OVSB_GATEWAY_LISTEN",
        "OVSB_IDENTITY_KEYS",
        "OVSB_NODE_HOST",
        "OVSB_PUBLIC_GATEWAY_URL",
        "OVSB_SECRET_KEY",
    ];

    /// Applies the `OVSB_*` variables found in `env` (pass `std::env::vars()` collected, or a map in tests).
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let get = |name: &str| env.get(name).filter(|value| !value.is_empty());
        let addr = |name: &str, value: &str| {
            value.parse::<SocketAddr>().map_err(|err| ConfigError::Invalid(format!("{name}={value:?}: {err}")))
        };
        if let Some(v) = get("OVSB_BROKER_LISTEN") {
            self.broker.listen = addr("OVSB_BROKER_LISTEN", v)?;
        }
        if let Some(v) = get("OVSB_GATEWAY_LISTEN") {
            self.gateway.listen = addr("OVSB_GATEWAY_LISTEN", v)?;
        }
        if let Some(v) = get("OVSB_ADMIN_LISTEN") {
            self.admin.listen = addr("OVSB_ADMIN_LISTEN", v)?;
        }
        if let Some(v) = get("OVSB_DATABASE_URL") {
            self.database_url = v.clone();
        }
        if let Some(v) = get("OVSB_BROKER_USERNAME") {
            self.broker.username = v.clone();
        }
        if let Some(v) = get("OVSB_BROKER_PASSWORD") {
            self.broker.password = v.clone();
        }
        if let Some(v) = get("OVSB_PUBLIC_GATEWAY_URL") {
            self.gateway.public_url = v.clone();
        }
        if let Some(v) = get("OVSB_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("OVSB_SECRET_KEY") {
            self.broker.secret_key = v.clone();
        }
        if let Some(v) = get("OVSB_NODE_HOST") {
            self.replica.node_host = v.clone();
        }
        if let Some(v) = get("OVSB_IDENTITY_KEYS") {
            self.broker.identity_keys = v.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        }
        Ok(())
    }

    /// The database URL in effect.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("ovsb.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The base of credential URLs, without a trailing slash.
    pub fn public_gateway_url(&self) -> String {
        if self.gateway.public_url.is_empty() {
            format!("http://{}", self.gateway.listen)
        } else {
            self.gateway.public_url.trim_end_matches('/').to_string()
        }
    }

    /// The base of dashboard URLs, without a trailing slash.
    pub fn public_broker_url(&self) -> String {
        if self.broker.public_url.is_empty() {
            format!("http://{}", self.broker.listen)
        } else {
            self.broker.public_url.trim_end_matches('/').to_string()
        }
    }

    /// Checks everything that parsing cannot: unique ids and names, name syntax, plugin
    /// references, URLs, bounds. Each section checks its own keys; the first failure is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.runtime.validate()?;
        self.replica.validate(self)?;
        catalog::check_plan_shares(&self.services)?;
        let url = self.database_url();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid("database_url must start with sqlite:// or postgres://".into()));
        }
        self.broker.validate()?;
        let public = self.public_gateway_url();
        if !(public.starts_with("http://") || public.starts_with("https://")) {
            return Err(ConfigError::Invalid(format!(
                "gateway.public_url {public:?} must start with http:// or https://"
            )));
        }
        self.gateway.validate()?;
        self.operations.validate()?;
        self.usage.validate()?;
        let plugin_names = plugins::check_plugins(&self.plugins, self.runtime.max_memory_bytes)?;
        catalog::check_services(&self.services, &plugin_names)
    }

    /// Finds a plan by its id.
    pub fn plan_by_id(&self, plan_id: &str) -> Option<&PlanDecl> {
        self.services.iter().flat_map(|s| &s.plans).find(|p| p.id == plan_id)
    }

    /// Finds a plan by service and plan id.
    pub fn plan(&self, service_id: &str, plan_id: &str) -> Option<(&ServiceDecl, &PlanDecl)> {
        let service = self.services.iter().find(|s| s.id == service_id)?;
        let plan = service.plans.iter().find(|p| p.id == plan_id)?;
        Some((service, plan))
    }

    /// The plugin declarations by name.
    pub fn plugins_by_name(&self) -> BTreeMap<&str, &PluginDecl> {
        self.plugins.iter().map(|p| (p.name.as_str(), p)).collect()
    }
}

/// For "unknown field `x`, expected one of `a`, `b`": the closest expected key, if close enough.
fn suggestion(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, expected) = rest.split_once('`')?;
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), candidate))
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    (best.0 > 0.8).then(|| format!("help: did you mean `{}`?", best.1))
}

/// The configuration `ovsb serve` runs without `--config`.
pub const QUICK_START: &str = include_str!("../../../examples/quick-start.toml");

/// Where the built-in configuration's relative plugin paths point from: `examples/` of the
/// checkout ovsb was built from.
pub fn built_in_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `text` (a configuration) with each relative `path = "…"` and `schema = "…"` value made
/// absolute against `dir`, comments and layout kept.
pub fn absolute_paths(text: &str, dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let rewritten = ["path = \"", "schema = \""].iter().find_map(|prefix| {
            let value = trimmed.strip_prefix(prefix)?.strip_suffix('"')?;
            if value.contains('"') || Path::new(value).is_absolute() {
                return None;
            }
            let absolute = dir.join(value);
            let absolute = absolute.canonicalize().unwrap_or(absolute);
            let indent = &line[..line.len() - trimmed.len()];
            Some(format!("{indent}{prefix}{}\"", absolute.display()))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::catalog::empty_object;
    use super::*;

    #[test]
    fn the_quick_start_configuration_is_valid() {
        let config = Config::quick_start();
        config.validate().unwrap();
        assert!(config.services.iter().any(|s| s.name == "ethereum-rpc" && s.plans.iter().any(|p| p.name == "devnet")));
        let rpc = config.services.iter().find(|s| s.name == "ethereum-rpc").unwrap();
        assert!(rpc.plans.iter().all(|p| p.binding_rotatable && p.binding_ttl.is_none()), "RPC plans rotate");
        let validator = config.services.iter().find(|s| s.name == "ethereum-validator").expect("the validator service");
        let devnet = validator.plans.iter().find(|p| p.name == "devnet").expect("its devnet plan");
        assert!(matches!(devnet.driver, DriverDecl::Validator(_)));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_line_and_key() {
        let err =
            Config::from_toml("data_dir = \"x\"\n[broker]\nlisten = \"127.0.0.1:1\"\npasword = \"x\"\n", "t.toml")
                .unwrap_err()
                .to_string();
        assert!(err.contains("line 4") && err.contains("pasword"), "{err}");
        assert!(err.contains("did you mean `password`?"), "{err}");
    }

    #[test]
    fn the_dashboard_section_takes_a_provider_and_a_logo_and_refuses_what_cannot_work() {
        let base = "data_dir = \"x\"\n[broker.dashboard]\n";
        let config = Config::from_toml(
            &format!("{base}provider_name = \"Acme RPC\"\nlogo_url = \"https://cdn.acme.test:8443/l.svg\"\n"),
            "t.toml",
        )
        .unwrap();
        config.broker.validate().unwrap();
        assert_eq!(config.broker.dashboard.provider_name, "Acme RPC");
        assert_eq!(config.broker.dashboard.logo_origin().as_deref(), Some("https://cdn.acme.test:8443"));
        assert_eq!(Config::quick_start().broker.dashboard.logo_origin(), None);
        for (line, named) in [
            ("logo_url = \"javascript:alert(1)\"", "logo_url"),
            ("logo_url = \"https://user:pw@cdn.acme.test/l.png\"", "logo_url"),
            ("logo_url = \"data:image/png;base64,AA\"", "logo_url"),
            ("provider_name = \"\"", "provider_name"),
            ("provider_name = \"a\\nb\"", "provider_name"),
            ("node_timeout_ms = 5", "node_timeout_ms"),
        ] {
            let config = Config::from_toml(&format!("{base}{line}\n"), "t.toml").unwrap();
            let err = config.broker.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{line}: {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::quick_start();
        let env: HashMap<String, String> = [
            ("OVSB_BROKER_LISTEN", "127.0.0.1:9001"),
            ("OVSB_DATABASE_URL", "postgres://x@127.0.0.1/db"),
            ("OVSB_PUBLIC_GATEWAY_URL", "https://rpc.example.com/"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        config.apply_env(&env).unwrap();
        assert_eq!(config.broker.listen.port(), 9001);
        assert_eq!(config.database_url(), "postgres://x@127.0.0.1/db");
        assert_eq!(config.public_gateway_url(), "https://rpc.example.com");
        let bad: HashMap<String, String> = [("OVSB_GATEWAY_LISTEN".to_string(), "nope".to_string())].into();
        assert!(config.apply_env(&bad).unwrap_err().to_string().contains("OVSB_GATEWAY_LISTEN"));
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut config = Config::quick_start();
        config.services[0].plans[0].plugins.push(ChainElement {
            name: "nope".into(),
            config: empty_object(),
            fail_open: false,
        });
        assert!(config.validate().unwrap_err().to_string().contains("unknown plugin \"nope\""));
        let mut config = Config::quick_start();
        config.services[0].name = "Ethereum RPC".into();
        assert!(config.validate().unwrap_err().to_string().contains("lowercase"));
        let mut config = Config::quick_start();
        if let DriverDecl::Validator(decl) = &mut config.services[1].plans[0].driver {
            decl.client.extra_ports.clear();
        }
        assert!(config.validate().unwrap_err().to_string().contains("keymanager_port"));
        let mut config = Config::quick_start();
        if let DriverDecl::Validator(decl) = &mut config.services[1].plans[0].driver {
            decl.rpc_http.clear();
        }
        assert!(config.validate().unwrap_err().to_string().contains("rpc_http"));
        for (root, ok) in [(format!("0x{}", "Ab".repeat(32)), true), ("ab".repeat(32), false), ("0x12".into(), false)] {
            let mut config = Config::quick_start();
            if let DriverDecl::Validator(decl) = &mut config.services[1].plans[0].driver {
                decl.genesis_validators_root = Some(root.clone());
            }
            let checked = config.validate();
            assert_eq!(checked.is_ok(), ok, "{root}: {checked:?}");
            if !ok {
                assert!(checked.unwrap_err().to_string().contains("genesis_validators_root must be 0x"));
            }
        }
        let mut config = Config::quick_start();
        config.services[0].plans[0].allowed_origins = vec!["https://ok.example".into(), "not an origin".into()];
        assert!(config.validate().unwrap_err().to_string().contains("allowed_origins entry \"not an origin\""));
    }

    /// The defaults the README documents, stated here once more as literals: a section left out
    /// of the file, or a key left out of a section, gets exactly these.
    fn assert_documented_defaults(config: &Config, what: &str) {
        let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(config.data_dir, PathBuf::from(".ovsb"), "{what}: data_dir");
        assert_eq!(config.database_url(), "sqlite://.ovsb/ovsb.db", "{what}: the store");
        let b = &config.broker;
        assert_eq!((b.listen, b.username.as_str(), b.max_body_bytes), (local(8080), "ovsb", 256 << 10), "{what}");
        assert!(b.public_url.is_empty() && b.password.is_empty() && b.secret_key.is_empty(), "{what}: broker");
        assert!(b.identity_keys.is_empty(), "{what}: identity keys");
        let g = &config.gateway;
        assert_eq!(g.listen, local(8645), "{what}: gateway.listen");
        assert!(g.public_url.is_empty(), "{what}: gateway.public_url");
        assert_eq!(config.public_gateway_url(), "http://127.0.0.1:8645", "{what}");
        assert_eq!((g.max_request_bytes, g.max_batch), (1 << 20, 1000), "{what}: request and batch");
        assert_eq!(
            (
                g.max_connections,
                g.max_connections_per_source,
                g.max_connections_per_key,
                g.max_connections_per_instance
            ),
            (8192, 512, 512, 2048),
            "{what}: connections"
        );
        assert_eq!(
            (g.anonymous_timeout_ms, g.header_timeout_ms, g.body_timeout_ms, g.fd_reserve),
            (5_000, 30_000, 10_000, 256),
            "{what}: timeouts"
        );
        assert_eq!((g.plugin_calls_per_instance, g.plugin_queue_ms), (4, 1_000), "{what}: plugin calls");
        assert_eq!(g.upstream_deadline_ms, 30_000, "{what}: deadline");
        assert_eq!(
            (g.max_subscriptions, g.max_subscriptions_per_instance, g.max_subscriptions_per_key, g.subscription_buffer),
            (8192, 2048, 512, 4096),
            "{what}: subscriptions"
        );
        assert_eq!(
            (g.max_response_bytes, g.answer_bytes_in_flight, g.answer_bytes_in_flight_per_instance),
            (32 << 20, 128 << 20, 64 << 20),
            "{what}: answers"
        );
        assert_eq!(
            (g.upstream_calls_per_instance, g.batch_concurrency, g.queue_ms),
            (32, 16, 1_000),
            "{what}: calls at the nodes"
        );
        assert_eq!(
            (g.slow_call_ms, g.slow_calls_per_instance, g.slow_call_duty_percent),
            (0, 1, 50),
            "{what}: slow calls"
        );
        assert_eq!(config.admin.listen, local(9090), "{what}: admin.listen");
        assert!(config.admin.allowed_hosts.is_empty(), "{what}: admin.allowed_hosts");
        let o = &config.operations;
        assert_eq!(
            (o.lease_seconds, o.retry_after_seconds, o.tombstone_hours, o.sync_interval_ms),
            (15, 2, 72, 1000),
            "{what}: operations"
        );
        let r = &config.runtime;
        assert_eq!(
            (r.max_copies, r.max_memory_bytes, r.idle_copies, r.idle_ms, r.copy_wait_ms),
            (1000, 256 << 20, 256, 30_000, 500),
            "{what}: runtime"
        );
        assert_eq!(r.cache_dir, None, "{what}: runtime.cache_dir");
        assert_eq!(r.kv, KvLimits::default(), "{what}: runtime.kv");
        assert_eq!(config.replica.node_host, "127.0.0.1", "{what}: replica.node_host");
        let u = &config.usage;
        assert_eq!(
            (u.flush_interval_ms, u.flush_batch_rows, u.unknown_method_weight),
            (10_000, 500, 20),
            "{what}: usage"
        );
        assert!(u.weights.is_empty(), "{what}: usage.weights");
    }

    #[test]
    fn the_built_in_and_an_empty_configuration_both_get_the_documented_defaults() {
        let empty = Config::from_toml("", "empty.toml").unwrap();
        assert_documented_defaults(&empty, "an empty file");
        assert!(empty.plugins.is_empty() && empty.services.is_empty() && empty.source.is_none());
        let sections = "[broker]\n[gateway]\n[admin]\n[operations]\n[runtime]\n[replica]\n";
        assert_documented_defaults(&Config::from_toml(sections, "sections.toml").unwrap(), "empty sections");
        assert_documented_defaults(&Config::default(), "Config::default()");
        let built_in = Config::from_toml(QUICK_START, "quick-start.toml").unwrap();
        assert_documented_defaults(&built_in, "the built-in quick-start.toml");
        // Every plugin of the built-in file keeps the README's per-plugin limits.
        for plugin in &built_in.plugins {
            let l = plugin.limits;
            assert_eq!(
                (l.memory_bytes, l.call_budget_ms, l.max_output_bytes, l.max_upstream_calls),
                (64 << 20, 50, 4 << 20, 16),
                "{}",
                plugin.name
            );
            assert_eq!((l.max_concurrency, l.max_idle, l.log_lines_per_second), (64, 16, 20), "{}", plugin.name);
            assert_eq!(l.isolation, Isolation::Pooled, "{}", plugin.name);
        }
        // A key that is not a setting is still refused inside a defaulted section.
        let err = Config::from_toml("[operations]\nlease = 3\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `lease`") && err.contains("lease_seconds"), "{err}");
    }

    #[test]
    fn the_key_value_bounds_are_set_in_runtime_kv_and_a_share_must_fit_the_store() {
        let config = Config::from_toml("[runtime.kv]\nmax_entries_per_plugin = 500\n", "t.toml").unwrap();
        config.validate().unwrap();
        assert_eq!(config.runtime.kv, KvLimits { max_entries_per_plugin: 500, ..KvLimits::default() });
        for (toml, named) in [
            ("[runtime.kv]\nmax_entries_per_plugin = 0\n", "runtime.kv.max_entries_per_plugin is 0"),
            ("[runtime.kv]\nmax_entries_per_plugin = 100001\n", "runtime.kv.max_entries_per_plugin is 100001"),
            ("[runtime.kv]\nmax_bytes_per_plugin = 1000\n", "runtime.kv.max_bytes_per_plugin is 1000"),
        ] {
            let config = Config::from_toml(toml, "t.toml").unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{toml}: {err}");
        }
        let err = Config::from_toml("[runtime.kv]\nmax_entrys = 3\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_entrys"), "{err}");
    }
}
