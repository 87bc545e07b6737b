//! The one configuration tree: the TOML model, `OVSB_*` environment overrides, defaults and
//! validation.
//!
//! Owns: every setting an operator can give, and the check that runs before any port is bound.
//! Must not: read the environment anywhere else (callers pass the variables in, so tests give a
//! map instead of mutating the process), or touch the network or the store.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). The catalog lives
//! here too: services and plans with stable ids, each plan naming the driver that gives its
//! instances a node and the plugin chain they get by default.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where ovsb keeps its files: the SQLite store, the secret key, the compiled-plugin cache.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; empty means SQLite at `<data_dir>/ovsb.db`.
    #[serde(default)]
    pub database_url: String,
    /// The OSB REST listener.
    #[serde(default)]
    pub broker: BrokerSettings,
    /// The JSON-RPC listener.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// The admin listener (health, readiness).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Asynchronous operations.
    #[serde(default)]
    pub operations: OperationSettings,
    /// The plugin runtime's capacity.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// This replica among others on one PostgreSQL database.
    #[serde(default)]
    pub replica: ReplicaSettings,
    /// Plugins operators make available to instances, by name.
    #[serde(default)]
    pub plugins: Vec<PluginDecl>,
    /// The catalog.
    #[serde(default)]
    pub services: Vec<ServiceDecl>,
    /// The file this configuration was read from (`None`: the built-in quick-start one); a
    /// plugin reload reads its `[[plugins]]` again from there.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Instance parameters every validator plan takes.
pub const VALIDATOR_PARAMETERS: &[&str] = &[
    "keystores",
    "passwords",
    "slashing_protection",
    "fee_recipient",
    "graffiti",
    "gas_limit",
    "doppelganger_protection",
    "remove_keys",
    "pubkeys",
];

/// Parameters that are start options of the client (placeholders of its command): changing
/// one restarts the client.
pub const VALIDATOR_TEMPLATE_NAMES: &[&str] = &["graffiti", "doppelganger_protection"];

/// Placeholders a template uses.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        names.push(after[..close].to_string());
        rest = &after[close + 1..];
    }
    names
}

/// The plugin runtime's capacity: how many plugin copies may be alive at once, how large each
/// may grow, and how long idle ones are kept. Copies are made on demand, so these size the
/// traffic a process serves at once, not the number of instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Plugin copies alive at once, across all instances (the pooling allocator's slots).
    #[serde(default = "default_max_copies")]
    pub max_copies: u32,
    /// Largest memory any plugin copy may have (each slot reserves this much address space,
    /// at least 4 GiB).
    #[serde(default = "default_copy_memory")]
    pub max_memory_bytes: u64,
    /// Warm idle copies kept across all instances; past it the least recently used is dropped.
    #[serde(default = "default_idle_copies")]
    pub idle_copies: u32,
    /// An idle copy unused for this long is dropped, in milliseconds.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Longest a call waits for a free slot when every slot is busy, in milliseconds; then it
    /// gets -32005 with `data.reason = "runtime_copies"`.
    #[serde(default = "default_copy_wait_ms")]
    pub copy_wait_ms: u64,
    /// Where compiled plugins are kept between runs (default `<data_dir>/plugin-cache`).
    /// Compiling a Python or JavaScript plugin takes seconds: replicas and restarts read it
    /// from here instead. Must be writable by ovsb alone (it is created mode 0700): loading a
    /// compiled plugin trusts its contents.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            max_copies: default_max_copies(),
            max_memory_bytes: default_copy_memory(),
            idle_copies: default_idle_copies(),
            idle_ms: default_idle_ms(),
            copy_wait_ms: default_copy_wait_ms(),
            cache_dir: None,
        }
    }
}

/// Address space the pooling allocator reserves per copy slot: the memory cap, at least
/// wasmtime's 4 GiB reservation, plus its 32 MiB guard.
pub const fn slot_address_space(max_memory_bytes: u64) -> u64 {
    let reserved = if max_memory_bytes > 4 << 30 { max_memory_bytes } else { 4 << 30 };
    reserved + (32 << 20)
}

/// The address space ovsb lets the plugin slots take: half of x86-64's 128 TiB user space.
pub const MAX_PLUGIN_ADDRESS_SPACE: u64 = 64 << 40;

impl RuntimeSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        if !(1..=100_000).contains(&self.max_copies) {
            return bad(format!("runtime.max_copies is {}; it must be between 1 and 100000", self.max_copies));
        }
        if !(1 << 20..=16 << 30).contains(&self.max_memory_bytes) {
            return bad("runtime.max_memory_bytes must be between 1 MiB and 16 GiB".into());
        }
        let space = u64::from(self.max_copies).saturating_mul(slot_address_space(self.max_memory_bytes));
        if space > MAX_PLUGIN_ADDRESS_SPACE {
            return bad(format!(
                "runtime.max_copies = {} copies of up to {} MiB reserve {} TiB of address space (each slot at least                  4 GiB plus a guard); the machine's user address space is 128 TiB and ovsb uses at most 64 TiB for                  plugins: lower max_copies (at most {} at this max_memory_bytes)",
                self.max_copies,
                self.max_memory_bytes >> 20,
                space >> 40,
                MAX_PLUGIN_ADDRESS_SPACE / slot_address_space(self.max_memory_bytes)
            ));
        }
        if self.idle_copies > self.max_copies {
            return bad(format!(
                "runtime.idle_copies ({}) cannot be above runtime.max_copies ({}): idle copies hold slots",
                self.idle_copies, self.max_copies
            ));
        }
        if !(100..=86_400_000).contains(&self.idle_ms) || self.copy_wait_ms > 60_000 {
            return bad("runtime.idle_ms must be between 100 and 86400000, copy_wait_ms at most 60000".into());
        }
        Ok(())
    }
}

fn default_max_copies() -> u32 {
    1000
}
fn default_copy_memory() -> u64 {
    256 << 20
}
fn default_idle_copies() -> u32 {
    256
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_copy_wait_ms() -> u64 {
    500
}

/// The broker listener and its credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Address of the OSB REST listener.
    #[serde(default = "default_broker_listen")]
    pub listen: SocketAddr,
    /// Base of the dashboard URLs handed to platforms; empty means `http://<listen>`.
    #[serde(default)]
    pub public_url: String,
    /// HTTP Basic user name.
    #[serde(default = "default_username")]
    pub username: String,
    /// HTTP Basic password; when empty, one is generated and kept in `<data_dir>/broker-password`.
    #[serde(default)]
    pub password: String,
    /// Largest request body, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Base64 of 32 bytes: the key binding credentials are derived from. Empty: generated and
    /// kept in `<data_dir>/secret.key`. Replicas sharing one database must share this key.
    #[serde(default)]
    pub secret_key: String,
    /// ovsb's X25519 identity keys (base64 secret keys, the current one first, older ones
    /// after it). Empty: created and kept in `<data_dir>/identity.keys`.
    #[serde(default)]
    pub identity_keys: Vec<String>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: default_broker_listen(),
            public_url: String::new(),
            username: default_username(),
            password: String::new(),
            max_body_bytes: default_max_body(),
            secret_key: String::new(),
            identity_keys: Vec::new(),
        }
    }
}

/// The gateway listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address of the JSON-RPC listener (HTTP and WebSocket).
    #[serde(default = "default_gateway_listen")]
    pub listen: SocketAddr,
    /// Base of the URLs in binding credentials; empty means `http://<listen>`.
    #[serde(default)]
    pub public_url: String,
    /// Largest request body or WebSocket message, in bytes.
    #[serde(default = "default_gateway_max_request")]
    pub max_request_bytes: u32,
    /// Most calls in one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Most connections open at once (HTTP and WebSocket, for their whole life). At start it is
    /// lowered, with a warning, to what the process's descriptor limit leaves after `fd_reserve`.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most connections from one source address.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: u32,
    /// Most connections that carry one binding key.
    #[serde(default = "default_max_connections_per_key")]
    pub max_connections_per_key: u32,
    /// Most connections that carry the keys of one instance together.
    #[serde(default = "default_max_connections_per_instance")]
    pub max_connections_per_instance: u32,
    /// A connection that has not sent a request with a valid key within this time is closed, in
    /// milliseconds. When the gateway is full, the oldest such connection is closed to make room.
    #[serde(default = "default_anonymous_timeout")]
    pub anonymous_timeout_ms: u64,
    /// Longest time a client may take to send a request's headers, and longest idle time of a
    /// keep-alive connection between requests, in milliseconds.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Longest time a client may take to send a request's body, in milliseconds.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Descriptors kept for the broker, the admin listener, the store and node processes: the
    /// gateway's connections and their upstream sockets never use them.
    #[serde(default = "default_fd_reserve")]
    pub fd_reserve: u32,
    /// Plugin calls of one instance running at once (its share of the plugin runtime).
    #[serde(default = "default_plugin_calls_per_instance")]
    pub plugin_calls_per_instance: u32,
    /// Longest a call waits for a turn within its instance's share, in milliseconds; then it
    /// gets -32005 with `data.reason = "instance_plugin_calls"`.
    #[serde(default = "default_plugin_queue_ms")]
    pub plugin_queue_ms: u64,
    /// Longest time one call may wait for the node, in milliseconds.
    #[serde(default = "default_upstream_deadline")]
    pub upstream_deadline_ms: u64,
    /// Subscriptions (`eth_subscribe` over WebSocket) held at once, across the gateway.
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: u32,
    /// Subscriptions of one instance, whichever keys opened them.
    #[serde(default = "default_max_subscriptions_per_instance")]
    pub max_subscriptions_per_instance: u32,
    /// Subscriptions opened with one binding key, on all its connections.
    #[serde(default = "default_max_subscriptions_per_key")]
    pub max_subscriptions_per_key: u32,
    /// Notifications one subscription may have waiting for a slow client; past it the client's
    /// WebSocket is closed with code 4008 (a burst up to this size always arrives whole).
    #[serde(default = "default_subscription_buffer")]
    pub subscription_buffer: u32,
    /// Largest response, in bytes: a call's answer, or a batch's answers together. Answers are
    /// counted as they arrive from the node; a batch that passes it is cut short with -32011
    /// (`data.reason = "response_bytes"`), a single call gets -32008.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u32,
    /// Answer bytes all requests may hold at once; past it a request waits up to `queue_ms`,
    /// then gets -32005 `answer_bytes_in_flight`.
    #[serde(default = "default_answer_bytes_in_flight")]
    pub answer_bytes_in_flight: u64,
    /// Answer bytes the requests of one instance may hold at once (its share of the above);
    /// past it -32005 `instance_answer_bytes_in_flight`.
    #[serde(default = "default_answer_bytes_per_instance")]
    pub answer_bytes_in_flight_per_instance: u64,
    /// Calls of one instance in flight to its nodes at once (its share of the nodes' sockets);
    /// past it a call waits up to `queue_ms`, then gets -32005 `instance_upstream_calls`.
    #[serde(default = "default_upstream_calls_per_instance")]
    pub upstream_calls_per_instance: u32,
    /// Entries of one batch running at once; the others wait their turn in order.
    #[serde(default = "default_batch_concurrency")]
    pub batch_concurrency: u32,
    /// Longest a call waits for answer bytes in flight, an upstream turn of its instance or a
    /// node socket, in milliseconds.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u64,
}

impl GatewaySettings {
    /// The shares each instance gets of what the gateway shares.
    pub fn instance_shares(&self) -> crate::budget::InstanceShares {
        crate::budget::InstanceShares {
            answer_bytes_in_flight: usize::try_from(self.answer_bytes_in_flight_per_instance).unwrap_or(usize::MAX),
            upstream_calls: self.upstream_calls_per_instance as usize,
        }
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: default_gateway_listen(),
            public_url: String::new(),
            max_request_bytes: default_gateway_max_request(),
            max_batch: default_max_batch(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            max_connections_per_key: default_max_connections_per_key(),
            max_connections_per_instance: default_max_connections_per_instance(),
            anonymous_timeout_ms: default_anonymous_timeout(),
            header_timeout_ms: default_header_timeout(),
            body_timeout_ms: default_body_timeout(),
            fd_reserve: default_fd_reserve(),
            plugin_calls_per_instance: default_plugin_calls_per_instance(),
            plugin_queue_ms: default_plugin_queue_ms(),
            upstream_deadline_ms: default_upstream_deadline(),
            max_subscriptions: default_max_subscriptions(),
            max_subscriptions_per_instance: default_max_subscriptions_per_instance(),
            max_subscriptions_per_key: default_max_subscriptions_per_key(),
            subscription_buffer: default_subscription_buffer(),
            max_response_bytes: default_max_response(),
            answer_bytes_in_flight: default_answer_bytes_in_flight(),
            answer_bytes_in_flight_per_instance: default_answer_bytes_per_instance(),
            upstream_calls_per_instance: default_upstream_calls_per_instance(),
            batch_concurrency: default_batch_concurrency(),
            queue_ms: default_queue_ms(),
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of `/healthz` and `/readyz`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Host names (besides IP addresses and `localhost`) the admin listener answers to, as
    /// clients send them in `Host`; any other gets 421 (no DNS-rebinding page can reach it).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: default_admin_listen(), allowed_hosts: Vec::new() }
    }
}

/// How asynchronous operations are run and kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSettings {
    /// How long a replica's claim on a running operation lasts without renewal, in seconds. A
    /// replica that dies leaves its operations to another one after this long.
    #[serde(default = "default_lease")]
    pub lease_seconds: u64,
    /// The `Retry-After` (seconds) sent with `in progress`.
    #[serde(default = "default_retry_after")]
    pub retry_after_seconds: u64,
    /// How long `last_operation` still reports a finished deprovision as `succeeded` (then 410).
    #[serde(default = "default_tombstone")]
    pub tombstone_hours: u64,
    /// How often a replica looks for changes other replicas made, in milliseconds.
    #[serde(default = "default_sync")]
    pub sync_interval_ms: u64,
}

impl Default for OperationSettings {
    fn default() -> Self {
        OperationSettings {
            lease_seconds: default_lease(),
            retry_after_seconds: default_retry_after(),
            tombstone_hours: default_tombstone(),
            sync_interval_ms: default_sync(),
        }
    }
}

/// This replica's part among several on one store (see the README's replica model).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    /// The address other replicas reach this replica's `process` nodes at (an IP address of
    /// this machine, which the nodes listen on): the nodes it runs are recorded in the store as `http://<node_host>:<port>`,
    /// and another replica's gateway forwards their calls there. A `process` plan's command
    /// must bind its node to `{node_host}` when this is not a loopback address.
    #[serde(default = "default_node_host")]
    pub node_host: String,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings { node_host: default_node_host() }
    }
}

fn default_node_host() -> String {
    "127.0.0.1".into()
}

impl ReplicaSettings {
    /// Whether `node_host` is a loopback address (reachable from this machine only).
    pub fn node_host_is_loopback(&self) -> bool {
        self.node_host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The base URL of a node of this replica on `port`, with `scheme` (`http` or `ws`).
    pub fn node_url(&self, scheme: &str, port: u16) -> String {
        if self.node_host.contains(':') {
            format!("{scheme}://[{}]:{port}", self.node_host)
        } else {
            format!("{scheme}://{}:{port}", self.node_host)
        }
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        let host = &self.node_host;
        let Ok(ip) = host.parse::<std::net::IpAddr>() else {
            return bad(format!(
                "replica.node_host {host:?} must be an IP address of this machine, without a port: nodes listen on it \
                 (anvil's --host takes an address) and other replicas connect to it"
            ));
        };
        if ip.is_unspecified() {
            return bad(format!(
                "replica.node_host is {host}, which other replicas cannot connect to: give the address they reach this machine at"
            ));
        }
        let process_plans: Vec<&PlanDecl> = config
            .services
            .iter()
            .flat_map(|s| &s.plans)
            .filter(|p| matches!(p.driver, DriverDecl::Process(_)))
            .collect();
        let shared_store = !config.database_url().starts_with("sqlite:");
        if shared_store && self.node_host_is_loopback() && !process_plans.is_empty() {
            let public = [config.broker.listen, config.gateway.listen].into_iter().find(|a| !a.ip().is_loopback());
            if let Some(public) = public {
                return bad(format!(
                    "replica.node_host is {host}, but this replica listens on {public} and shares a PostgreSQL store: \
                     replicas on other machines could not reach the nodes of process plans ({}) at a loopback address; \
                     set replica.node_host (OVSB_NODE_HOST) to the address they reach this machine at",
                    process_plans.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if !self.node_host_is_loopback() {
            for plan in process_plans {
                let DriverDecl::Process(decl) = &plan.driver else { continue };
                if !decl.command.iter().any(|arg| arg.contains("{node_host}")) {
                    return bad(format!(
                        "plan {}: replica.node_host is {host}, but the plan's command never uses {{node_host}}, so its \
                         nodes would not listen where other replicas reach them (for anvil: \"--host\", \"{{node_host}}\")",
                        plan.id
                    ));
                }
            }
        }
        Ok(())
    }
}

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
    pub limits: crate::plugins::PluginLimits,
}

/// A service offering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    /// Stable id (a GUID is recommended); never change it once platforms know it.
    pub id: String,
    /// Lowercase-hyphen name.
    pub name: String,
    /// What the service is.
    pub description: String,
    /// Tags shown by platforms.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether instances can be bound.
    #[serde(default = "yes")]
    pub bindable: bool,
    /// Whether plans may be changed by update.
    #[serde(default)]
    pub plan_updateable: bool,
    /// Free-form catalog metadata (`displayName`, `documentationUrl`, …).
    #[serde(default)]
    pub metadata: Option<toml::Table>,
    /// The plans, at least one.
    pub plans: Vec<PlanDecl>,
}

/// A plan of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDecl {
    /// Stable id.
    pub id: String,
    /// Lowercase-hyphen name, unique within the service.
    pub name: String,
    /// What the plan gives.
    pub description: String,
    /// Whether the plan costs nothing.
    #[serde(default = "yes")]
    pub free: bool,
    /// Overrides the service's `plan_updateable`.
    #[serde(default)]
    pub plan_updateable: Option<bool>,
    /// Seconds after which an operation that has not finished is failed.
    #[serde(default = "default_polling")]
    pub maximum_polling_duration: u64,
    /// The version of what instances of this plan run; provision/update with another is a 422.
    #[serde(default)]
    pub maintenance_info: Option<MaintenanceInfo>,
    /// Most instances of this plan at once (0: no cap).
    #[serde(default)]
    pub max_instances: u64,
    /// Whether bindings may be rotated (OSB 2.17 `binding_rotatable`, published in the catalog):
    /// a bind naming a live `predecessor_binding_id` gets new credentials beside the predecessor's.
    #[serde(default)]
    pub binding_rotatable: bool,
    /// Seconds a binding's credentials work after the bind (`metadata.expires_at`); absent: they
    /// work until the unbind.
    #[serde(default)]
    pub binding_ttl: Option<u64>,
    /// Plugin calls one instance of this plan may run at once (its share of the plugin runtime);
    /// an instance may ask for less with its `plugin_calls` parameter. Default:
    /// `gateway.plugin_calls_per_instance`.
    #[serde(default)]
    pub plugin_calls_per_instance: Option<u32>,
    /// The chain an instance gets when its parameters name none.
    #[serde(default)]
    pub plugins: Vec<ChainElement>,
    /// The operator's rules for every instance of the plan (see [`PlanPolicy`]).
    #[serde(default)]
    pub policy: PlanPolicy,
    /// Origins whose pages may call the endpoint of this plan's instances, as the bind parameter
    /// `allowed_origins` (exact origins or `*.example.com` patterns); a binding's own list replaces
    /// it. Empty: any origin (CORS `*`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Free-form catalog metadata.
    #[serde(default)]
    pub metadata: Option<toml::Table>,
    /// How an instance of this plan gets a node.
    pub driver: DriverDecl,
}

/// `[services.plans.policy]`: what binds every instance of a plan, whatever its parameters.
///
/// Method rules (globs, as a binding's `allowed_methods` / `denied_methods`) are checked in the
/// host before any plugin and again on every call to the node (plugins' `upstream` imports
/// included): a refused call gets -32052 naming the plan's rule. `plugins_before` and
/// `plugins_after` run in every instance's chain, before and after the tenant's own plugins, with
/// the plan's configuration. An instance's `parameters.plugins` is its whole chain: it must
/// start with `plugins_before` and end with `plugins_after`, by name and in order (an entry may
/// leave out its `config`, or give the plan's); a provision or update that drops, moves or
/// reconfigures one is a 400 naming `parameters.plugins`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanPolicy {
    /// Methods instances of the plan may call (empty: any not denied).
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// Methods no instance of the plan may call; wins over `allowed_methods`.
    #[serde(default)]
    pub denied_methods: Vec<String>,
    /// Plugins every chain of the plan starts with.
    #[serde(default)]
    pub plugins_before: Vec<ChainElement>,
    /// Plugins every chain of the plan ends with.
    #[serde(default)]
    pub plugins_after: Vec<ChainElement>,
}

impl PlanPolicy {
    /// Whether the policy has method rules.
    pub fn has_method_rules(&self) -> bool {
        !self.allowed_methods.is_empty() || !self.denied_methods.is_empty()
    }

    /// Whether the policy puts plugins in every chain.
    pub fn has_plugins(&self) -> bool {
        !self.plugins_before.is_empty() || !self.plugins_after.is_empty()
    }

    /// The whole chain of an instance whose own plugins are `tenant`.
    pub fn compose(&self, tenant: &[ChainElement]) -> Vec<ChainElement> {
        [&self.plugins_before[..], tenant, &self.plugins_after[..]].concat()
    }

    /// The tenant's part of a whole chain given in instance parameters, or why the chain breaks
    /// the policy (the message of a 400 on `parameters.plugins`).
    pub fn tenant_part<'a>(&self, chain: &'a [ChainElement]) -> Result<&'a [ChainElement], String> {
        let (before, after) = (self.plugins_before.len(), self.plugins_after.len());
        fn names(list: &[ChainElement]) -> Vec<&str> {
            list.iter().map(|e| e.name.as_str()).collect()
        }
        let broken = || {
            format!(
                "parameters.plugins: the plan's policy runs {:?} first and {:?} last in every chain \
                 (plugins_before / plugins_after); they may not be removed, moved or configured \
                 otherwise: give the chain as {:?} + your plugins + {:?}",
                names(&self.plugins_before),
                names(&self.plugins_after),
                names(&self.plugins_before),
                names(&self.plugins_after),
            )
        };
        if chain.len() < before + after {
            return Err(broken());
        }
        let (head, rest) = chain.split_at(before);
        let (middle, tail) = rest.split_at(rest.len() - after);
        let same = |given: &ChainElement, fixed: &ChainElement| {
            given.name == fixed.name
                && (given.config == fixed.config || given.config.as_object().is_some_and(|c| c.is_empty()))
                && (given.fail_open == fixed.fail_open || !given.fail_open)
        };
        let kept = head.iter().zip(&self.plugins_before).all(|(g, f)| same(g, f))
            && tail.iter().zip(&self.plugins_after).all(|(g, f)| same(g, f));
        if kept { Ok(middle) } else { Err(broken()) }
    }

    /// What the catalog publishes of the policy (plugin names, not their configurations).
    pub fn published(&self) -> Option<serde_json::Value> {
        if !self.has_method_rules() && !self.has_plugins() {
            return None;
        }
        let names = |list: &[ChainElement]| list.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        Some(serde_json::json!({
            "allowed_methods": self.allowed_methods,
            "denied_methods": self.denied_methods,
            "plugins_before": names(&self.plugins_before),
            "plugins_after": names(&self.plugins_after),
        }))
    }
}

/// `maintenance_info` of a plan.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceInfo {
    /// Semantic version.
    pub version: String,
    /// What changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One plugin of a chain, as plans and instance parameters give it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainElement {
    /// A name from `[[plugins]]`.
    pub name: String,
    /// The plugin's configuration (any JSON object), handed to its `configure`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Skip this plugin on a call it fails, instead of failing the call.
    #[serde(default)]
    pub fail_open: bool,
}

/// The driver of a plan.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DriverDecl {
    /// Attach instances to existing nodes.
    Upstream(UpstreamDriverDecl),
    /// A node process per instance.
    Process(ProcessDriverDecl),
    /// A validator client process per instance, keys managed through its keymanager API.
    Validator(ValidatorDriverDecl),
    /// A Kubernetes workload (StatefulSet, Service, volume) per instance.
    Kubernetes(KubernetesDriverDecl),
    /// A validator client per instance as a Kubernetes workload, keys managed through its
    /// keymanager API as by the `validator` driver.
    #[serde(rename = "kubernetes-validator")]
    KubernetesValidator(KubernetesValidatorDecl),
}

impl DriverDecl {
    /// The driver's own instance parameters (JSON Schema properties), which join the plan's schema.
    pub fn parameters(&self) -> Option<&toml::Table> {
        match self {
            DriverDecl::Upstream(_) => None,
            DriverDecl::Process(decl) => Some(&decl.parameters),
            DriverDecl::Validator(decl) => Some(&decl.client.parameters),
            DriverDecl::Kubernetes(decl) => Some(&decl.parameters),
            DriverDecl::KubernetesValidator(decl) => Some(&decl.client.parameters),
        }
    }

    /// Where a Kubernetes plan's instances live: its API server (or "in-cluster or KUBECONFIG")
    /// and namespace; `None` for other drivers.
    pub fn kubernetes_location(&self) -> Option<String> {
        let decl = match self {
            DriverDecl::Kubernetes(decl) => decl,
            DriverDecl::KubernetesValidator(decl) => &decl.client,
            _ => return None,
        };
        let cluster = decl.api_url.as_deref().unwrap_or("in-cluster or KUBECONFIG");
        Some(format!("{cluster}, namespace {}", decl.namespace))
    }

    /// The chain a validator plan's operator fixed (`genesis_validators_root`), if any.
    pub fn genesis_validators_root(&self) -> Option<&str> {
        match self {
            DriverDecl::Validator(decl) => decl.genesis_validators_root.as_deref(),
            DriverDecl::KubernetesValidator(decl) => decl.genesis_validators_root.as_deref(),
            _ => None,
        }
    }

    /// Whether the plan's instances are validator clients (keys in, history kept).
    pub fn is_validator(&self) -> bool {
        matches!(self, DriverDecl::Validator(_) | DriverDecl::KubernetesValidator(_))
    }
}

/// Settings of the `kubernetes` driver. Per instance it applies (server-side, field manager
/// `ovsb`) a StatefulSet of one pod, a Service, and for validator plans a Secret; their names
/// are `ovsb-<instance>` and their labels name the instance and the plan, so that everything of
/// one instance is found and removed together.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDriverDecl {
    /// An API server reached without credentials: `kubectl proxy`'s address, or a test's.
    /// Absent (the production setting): the pod's service account when ovsb runs in the
    /// cluster, else `KUBECONFIG` / `~/.kube/config` (with their credentials and CA).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Longest wait for one answer of the API server, in milliseconds.
    #[serde(default = "default_api_timeout")]
    pub api_timeout_ms: u64,
    /// The namespace the instances' objects live in.
    pub namespace: String,
    /// The container image.
    pub image: String,
    /// The container's command (the image's entrypoint when empty).
    #[serde(default)]
    pub command: Vec<String>,
    /// The container's arguments. Placeholders: `{port}`, `{instance_id}`, `{name}` (the objects'
    /// name), `{namespace}`, `{data_dir}` (the volume's mount path), every name of `extra_ports`
    /// and every name under `parameters`.
    #[serde(default)]
    pub args: Vec<String>,
    /// The container port of the JSON-RPC API (for validator plans: the beacon REST API).
    pub port: u16,
    /// More named container ports (each also a placeholder), e.g. `p2p_port = 9000`.
    #[serde(default)]
    pub extra_ports: BTreeMap<String, u16>,
    /// Whether the node serves WebSocket on `port` too.
    #[serde(default = "yes")]
    pub ws: bool,
    /// Environment variables of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resource requests and limits of the container (`cpu`, `memory`, …).
    #[serde(default)]
    pub resources: KubernetesResources,
    /// The instance's persistent volume, if any.
    #[serde(default)]
    pub storage: Option<KubernetesStorage>,
    /// The pod's `securityContext` (a Kubernetes PodSecurityContext, e.g. `{ runAsUser = 1000,
    /// runAsNonRoot = true, fsGroup = 1000 }`); the keymanager token file is readable by the group.
    #[serde(default)]
    pub pod_security_context: Option<serde_json::Value>,
    /// How ovsb reaches an instance's Service. Placeholders: `{name}`, `{namespace}`, `{port}`.
    #[serde(default = "default_kubernetes_endpoint")]
    pub endpoint: String,
    /// Instance parameters the args use, as JSON Schema properties (each with a `default`).
    #[serde(default)]
    pub parameters: toml::Table,
}

/// Resource requests and limits of a container, as Kubernetes quantities.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesResources {
    /// e.g. `{ cpu = "500m", memory = "1Gi" }`.
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// e.g. `{ memory = "2Gi" }`.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// The persistent volume of each instance (a StatefulSet volume claim template).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesStorage {
    /// The requested size, e.g. `"100Gi"`.
    pub size: String,
    /// The storage class; absent: the cluster's default.
    #[serde(default)]
    pub class: Option<String>,
    /// Where the volume is mounted in the container (`{data_dir}` in args).
    pub mount_path: String,
}

/// Settings of the `kubernetes-validator` driver: the validator client as a Kubernetes
/// workload. Its `port` is the beacon REST API; `extra_ports` must name `keymanager_port`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesValidatorDecl {
    /// The client's workload.
    pub client: KubernetesDriverDecl,
    /// Where in the container the client reads its keymanager bearer token; ovsb puts the token
    /// there from the instance's Secret (Lodestar: `<dataDir>/validator-db/api-token.txt`).
    pub token_path: String,
    /// The beacon node's REST API the client uses, when it is not the workload itself (a
    /// validator client beside a shared beacon node); absent: the workload's `port`.
    #[serde(default)]
    pub beacon_url: Option<String>,
    /// The chain's `genesis_validators_root` (`0x` and 64 hex digits), when the operator fixes
    /// it: a given slashing-protection history of another chain is then refused at once (400).
    /// Without it, the history is checked against the client's beacon node when it is ready.
    #[serde(default)]
    pub genesis_validators_root: Option<String>,
    /// HTTP JSON-RPC URLs of the execution node(s) the instance's JSON-RPC endpoint forwards to.
    pub rpc_http: Vec<String>,
    /// WebSocket URLs of the same nodes.
    #[serde(default)]
    pub rpc_ws: Vec<String>,
}

fn default_api_timeout() -> u64 {
    30_000
}

fn default_kubernetes_endpoint() -> String {
    "http://{name}.{namespace}.svc:{port}".to_string()
}

/// Settings of the `validator` driver: a validator client (with its beacon node) per instance,
/// run as by the `process` driver, whose command must use `{port}` for the beacon REST API and
/// `{keymanager_port}` for the keymanager API (both bound to 127.0.0.1).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValidatorDriverDecl {
    /// The client process; `extra_ports` must name `keymanager_port`.
    pub client: ProcessDriverDecl,
    /// Where the client writes its keymanager bearer token, relative to `{data_dir}`.
    pub token_file: String,
    /// The chain's `genesis_validators_root` (`0x` and 64 hex digits), when the operator fixes
    /// it: a given slashing-protection history of another chain is then refused at once (400).
    /// Without it, the history is checked against the client's beacon node when it is ready.
    #[serde(default)]
    pub genesis_validators_root: Option<String>,
    /// HTTP JSON-RPC URLs of the execution node(s) the instance's JSON-RPC endpoint forwards to.
    pub rpc_http: Vec<String>,
    /// WebSocket URLs of the same nodes.
    #[serde(default)]
    pub rpc_ws: Vec<String>,
}

/// Settings of the `upstream` driver.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamDriverDecl {
    /// HTTP JSON-RPC URLs of the nodes.
    pub http: Vec<String>,
    /// WebSocket URLs of the same nodes.
    #[serde(default)]
    pub ws: Vec<String>,
    /// How often each node is checked (`eth_blockNumber`, `eth_syncing`), in milliseconds.
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
    /// A node more than this many blocks behind the best one is taken out of rotation.
    #[serde(default = "default_max_lag")]
    pub max_lag_blocks: u64,
    /// Calls in flight to each node (and idle keep-alive sockets kept to it), for all the plan's
    /// instances together; past it calls queue for `gateway.queue_ms`, then get -32005
    /// `node_sockets`.
    #[serde(default = "default_node_sockets")]
    pub max_sockets_per_node: u32,
}

/// Settings of the `process` driver.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessDriverDecl {
    /// Program and arguments. Placeholders: `{port}`, `{data_dir}`, `{instance_id}`, and every
    /// name under `parameters`.
    pub command: Vec<String>,
    /// The range node ports are allocated from (inclusive).
    #[serde(default = "default_ports")]
    pub ports: [u16; 2],
    /// More ports each node gets (each a placeholder of the command, e.g. `p2p_port`),
    /// allocated from the same range.
    #[serde(default)]
    pub extra_ports: Vec<String>,
    /// Whether the node serves WebSocket on the same port (anvil does).
    #[serde(default = "yes")]
    pub ws: bool,
    /// Time between SIGTERM and SIGKILL, in milliseconds.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_ms: u64,
    /// First and longest wait before a restart, in milliseconds (doubling in between).
    #[serde(default = "default_backoff")]
    pub restart_backoff_ms: [u64; 2],
    /// Exit codes that mean "stopped on purpose": not restarted.
    #[serde(default)]
    pub deliberate_exit_codes: Vec<i32>,
    /// Largest node log kept (plus one older file of the same size), in bytes.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// Calls in flight to each instance's node (and idle keep-alive sockets kept to it); past it
    /// calls queue for `gateway.queue_ms`, then get -32005 `node_sockets`.
    #[serde(default = "default_node_sockets")]
    pub max_sockets_per_node: u32,
    /// The node's environment. Nothing else of ovsb's environment reaches it (never its
    /// secrets), but `PATH` when this does not set it, so that programs are found as from ovsb.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Instance parameters the command uses, as JSON Schema properties (each with a `default`);
    /// they join the plan's parameter schema.
    #[serde(default)]
    pub parameters: toml::Table,
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
    /// references, URLs, bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.runtime.validate()?;
        self.replica.validate(self)?;
        for plan in self.services.iter().flat_map(|s| &s.plans) {
            if let Some(calls) = plan.plugin_calls_per_instance
                && !(1..=4096).contains(&calls)
            {
                return Err(ConfigError::Invalid(format!(
                    "plan {}: plugin_calls_per_instance is {calls}; it must be between 1 and 4096",
                    plan.id
                )));
            }
        }
        let bad = |message: String| Err(ConfigError::Invalid(message));
        let url = self.database_url();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return bad("database_url must start with sqlite:// or postgres://".into());
        }
        if self.broker.username.is_empty() {
            return bad("broker.username must not be empty".into());
        }
        if !(1024..=64 << 20).contains(&self.broker.max_body_bytes) {
            return bad("broker.max_body_bytes must be between 1 KiB and 64 MiB".into());
        }
        let public = self.public_gateway_url();
        if !(public.starts_with("http://") || public.starts_with("https://")) {
            return bad(format!("gateway.public_url {public:?} must start with http:// or https://"));
        }
        if self.gateway.max_batch == 0 || self.gateway.max_connections == 0 || self.gateway.max_request_bytes < 1024 {
            return bad("gateway limits must be positive (max_request_bytes at least 1024)".into());
        }
        if self.gateway.upstream_deadline_ms == 0 || self.gateway.upstream_deadline_ms > 600_000 {
            return bad("gateway.upstream_deadline_ms must be between 1 and 600000".into());
        }
        let g = &self.gateway;
        let ranges: [(&str, u64, u64, u64); 19] = [
            ("max_connections_per_source", g.max_connections_per_source.into(), 1, g.max_connections.into()),
            ("max_connections_per_key", g.max_connections_per_key.into(), 1, g.max_connections.into()),
            // Lowered to max_connections at start: a smaller gateway needs no change here.
            ("max_connections_per_instance", g.max_connections_per_instance.into(), 1, 1 << 30),
            ("anonymous_timeout_ms", g.anonymous_timeout_ms, 100, 300_000),
            ("header_timeout_ms", g.header_timeout_ms, 100, 3_600_000),
            ("body_timeout_ms", g.body_timeout_ms, 100, 3_600_000),
            ("fd_reserve", g.fd_reserve.into(), 32, 1 << 20),
            ("plugin_calls_per_instance", g.plugin_calls_per_instance.into(), 1, 4096),
            ("plugin_queue_ms", g.plugin_queue_ms, 0, 60_000),
            ("max_subscriptions", g.max_subscriptions.into(), 1, 1 << 20),
            ("max_subscriptions_per_instance", g.max_subscriptions_per_instance.into(), 1, g.max_subscriptions.into()),
            (
                "max_subscriptions_per_key",
                g.max_subscriptions_per_key.into(),
                1,
                g.max_subscriptions_per_instance.into(),
            ),
            ("subscription_buffer", g.subscription_buffer.into(), 16, 1 << 20),
            ("max_response_bytes", g.max_response_bytes.into(), 1024, 1 << 31),
            // An instance's share must hold one whole answer, and the whole must hold a share.
            (
                "answer_bytes_in_flight_per_instance",
                g.answer_bytes_in_flight_per_instance,
                g.max_response_bytes.into(),
                g.answer_bytes_in_flight,
            ),
            ("answer_bytes_in_flight", g.answer_bytes_in_flight, g.max_response_bytes.into(), 1 << 40),
            ("upstream_calls_per_instance", g.upstream_calls_per_instance.into(), 1, 65_536),
            ("batch_concurrency", g.batch_concurrency.into(), 1, 4096),
            ("queue_ms", g.queue_ms, 0, 60_000),
        ];
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return bad(format!("gateway.{name} is {value}; it must be between {low} and {high}"));
            }
        }
        if self.operations.lease_seconds < 2 || self.operations.sync_interval_ms == 0 {
            return bad("operations.lease_seconds must be at least 2, sync_interval_ms positive".into());
        }
        let mut plugin_names = HashSet::new();
        for plugin in &self.plugins {
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
            if let Err(reason) = plugin.limits.validate(self.runtime.max_memory_bytes) {
                return bad(format!(
                    "plugins.limits of {:?}: {reason} (runtime.max_memory_bytes is {} MiB)",
                    plugin.name,
                    self.runtime.max_memory_bytes >> 20
                ));
            }
        }
        let mut ids = HashSet::new();
        let mut service_names = HashSet::new();
        for service in &self.services {
            let what = format!("service {:?}", service.name);
            if !is_slug(&service.name) {
                return bad(format!("{what}: names must be lowercase letters, digits and '-'"));
            }
            if !service_names.insert(service.name.as_str()) {
                return bad(format!("{what} is declared twice"));
            }
            if !is_id(&service.id) || !ids.insert(service.id.as_str()) {
                return bad(format!("{what}: id {:?} must be unique, non-empty, and URL-safe", service.id));
            }
            if service.description.is_empty() || service.plans.is_empty() {
                return bad(format!("{what}: needs a description and at least one plan"));
            }
            let mut plan_names = HashSet::new();
            for plan in &service.plans {
                let what = format!("{what}, plan {:?}", plan.name);
                if !is_slug(&plan.name) || !plan_names.insert(plan.name.as_str()) {
                    return bad(format!("{what}: names must be unique lowercase letters, digits and '-'"));
                }
                if !is_id(&plan.id) || !ids.insert(plan.id.as_str()) {
                    return bad(format!("{what}: id {:?} must be unique, non-empty, and URL-safe", plan.id));
                }
                if plan.description.is_empty() {
                    return bad(format!("{what}: needs a description"));
                }
                if let Some(origin) =
                    plan.allowed_origins.iter().find(|o| !crate::gateway::allowlist::valid_origin_pattern(o))
                {
                    return bad(format!(
                        "{what}: allowed_origins entry {origin:?} must be an origin (https://app.example.com) or a pattern (*.example.com)"
                    ));
                }
                if plan.maximum_polling_duration == 0 {
                    return bad(format!("{what}: maximum_polling_duration must be positive"));
                }
                if let Some(ttl) = plan.binding_ttl
                    && !(1..=MAX_BINDING_TTL).contains(&ttl)
                {
                    return bad(format!(
                        "{what}: binding_ttl is {ttl}; it must be between 1 and {MAX_BINDING_TTL} seconds"
                    ));
                }
                if let Some(info) = &plan.maintenance_info
                    && !is_semver(&info.version)
                {
                    return bad(format!(
                        "{what}: maintenance_info.version {:?} is not a semantic version",
                        info.version
                    ));
                }
                let policy = &plan.policy;
                if let Some(pattern) =
                    policy.allowed_methods.iter().chain(&policy.denied_methods).find(|p| p.trim().is_empty())
                {
                    return bad(format!("{what}: policy method pattern {pattern:?} must not be empty"));
                }
                for element in plan.plugins.iter().chain(&policy.plugins_before).chain(&policy.plugins_after) {
                    if !plugin_names.contains(element.name.as_str()) {
                        return bad(format!("{what}: default chain names unknown plugin {:?}", element.name));
                    }
                    if !element.config.is_object() {
                        return bad(format!("{what}: the config of plugin {:?} must be a table", element.name));
                    }
                }
                match &plan.driver {
                    DriverDecl::Upstream(decl) => {
                        if decl.http.is_empty() {
                            return bad(format!("{what}: the upstream driver needs at least one http URL"));
                        }
                        check_urls(&what, &decl.http, &decl.ws)?;
                        if !(1..=65_536).contains(&decl.max_sockets_per_node) {
                            return bad(format!("{what}: max_sockets_per_node must be between 1 and 65536"));
                        }
                        if decl.health_interval_ms < 100 {
                            return bad(format!("{what}: health_interval_ms must be at least 100"));
                        }
                    }
                    DriverDecl::Process(decl) => check_process(&what, decl, &[])?,
                    DriverDecl::Validator(_) | DriverDecl::KubernetesValidator(_)
                        if plan
                            .driver
                            .genesis_validators_root()
                            .is_some_and(|root| crate::interchange::Root::parse(root).is_none()) =>
                    {
                        return bad(format!("{what}: genesis_validators_root must be 0x and 64 hex digits"));
                    }
                    DriverDecl::Validator(decl) => {
                        check_process(&what, &decl.client, VALIDATOR_TEMPLATE_NAMES)?;
                        if !decl.client.extra_ports.iter().any(|p| p == "keymanager_port") {
                            return bad(format!(
                                "{what}: the validator client needs extra_ports = [\"keymanager_port\", …]"
                            ));
                        }
                        if decl.token_file.is_empty()
                            || decl.token_file.starts_with('/')
                            || decl.token_file.contains("..")
                        {
                            return bad(format!(
                                "{what}: token_file must be a path inside the client's data directory"
                            ));
                        }
                        check_validator(&what, &decl.rpc_http, &decl.rpc_ws, &decl.client.parameters)?;
                    }
                    DriverDecl::Kubernetes(decl) => check_kubernetes(&what, &plan.id, decl, &[])?,
                    DriverDecl::KubernetesValidator(decl) => {
                        check_kubernetes(&what, &plan.id, &decl.client, VALIDATOR_TEMPLATE_NAMES)?;
                        if !decl.client.extra_ports.contains_key("keymanager_port") {
                            return bad(format!(
                                "{what}: the validator client needs extra_ports = {{ keymanager_port = …, … }}"
                            ));
                        }
                        if !decl.token_path.starts_with('/') || decl.token_path.contains("..") {
                            return bad(format!("{what}: token_path must be an absolute path in the container"));
                        }
                        check_urls(&what, decl.beacon_url.as_slice(), &[])?;
                        check_validator(&what, &decl.rpc_http, &decl.rpc_ws, &decl.client.parameters)?;
                    }
                }
            }
        }
        Ok(())
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
fn check_urls(what: &str, http: &[String], ws: &[String]) -> Result<(), ConfigError> {
    for u in http {
        if !u.starts_with("http://") || u.parse::<http::Uri>().is_err() {
            return Err(ConfigError::Invalid(format!("{what}: {u:?} is not an http:// URL")));
        }
    }
    for u in ws {
        if !(u.starts_with("ws://") || u.starts_with("wss://")) {
            return Err(ConfigError::Invalid(format!("{what}: {u:?} is not a ws:// URL")));
        }
    }
    Ok(())
}

/// What every validator plan needs: the node its endpoint forwards to, and its own parameter names.
fn check_validator(
    what: &str,
    rpc_http: &[String],
    rpc_ws: &[String],
    parameters: &toml::Table,
) -> Result<(), ConfigError> {
    if rpc_http.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{what}: the validator driver needs rpc_http, the node its JSON-RPC endpoint forwards to"
        )));
    }
    check_urls(what, rpc_http, rpc_ws)?;
    for name in VALIDATOR_PARAMETERS {
        if parameters.contains_key(*name) {
            return Err(ConfigError::Invalid(format!(
                "{what}: {name:?} is a parameter of every validator plan; do not declare it"
            )));
        }
    }
    Ok(())
}

/// Placeholders every Kubernetes workload's args may use.
/// The placeholders a `process` command may use besides its parameters and extra ports.
pub const PROCESS_NAMES: &[&str] = &["port", "data_dir", "instance_id", "node_host"];

const KUBERNETES_NAMES: &[&str] = &["port", "instance_id", "name", "namespace", "data_dir"];

/// `template_names`: placeholders the driver fills besides the Kubernetes driver's own.
fn check_kubernetes(
    what: &str,
    plan_id: &str,
    decl: &KubernetesDriverDecl,
    template_names: &[&str],
) -> Result<(), ConfigError> {
    let bad = |message: String| Err(ConfigError::Invalid(message));
    if !is_dns_label(&decl.namespace) {
        return bad(format!("{what}: namespace {:?} is not a Kubernetes namespace name", decl.namespace));
    }
    let edges_alphanumeric = plan_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && plan_id.ends_with(|c: char| c.is_ascii_alphanumeric());
    if plan_id.len() > 63
        || !edges_alphanumeric
        || !plan_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return bad(format!(
            "{what}: the plan id must be a Kubernetes label value (up to 63 letters, digits, '-', '_', '.', \
             starting and ending with a letter or digit)"
        ));
    }
    if decl.image.trim().is_empty() {
        return bad(format!("{what}: the kubernetes driver needs an image"));
    }
    if !(100..=600_000).contains(&decl.api_timeout_ms) {
        return bad(format!("{what}: api_timeout_ms must be between 100 and 600000"));
    }
    let mut ports: Vec<u16> = decl.extra_ports.values().copied().chain([decl.port]).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.contains(&0) || ports.len() != decl.extra_ports.len() + 1 {
        return bad(format!("{what}: container ports must be non-zero and distinct"));
    }
    if let Some(context) = &decl.pod_security_context
        && let Err(err) = serde_json::from_value::<k8s_openapi::api::core::v1::PodSecurityContext>(context.clone())
    {
        return bad(format!("{what}: pod_security_context is not a PodSecurityContext: {err}"));
    }
    if let Some(url) = &decl.api_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return bad(format!("{what}: api_url {url:?} is not an http(s):// URL"));
    }
    if let Some(storage) = &decl.storage
        && (storage.size.trim().is_empty() || !storage.mount_path.starts_with('/'))
    {
        return bad(format!("{what}: storage needs a size and an absolute mount_path"));
    }
    for name in decl.extra_ports.keys() {
        let reserved = KUBERNETES_NAMES.contains(&name.as_str()) || template_names.contains(&name.as_str());
        // The container port's name is the placeholder with '-' for '_': an IANA service name.
        let lowercase = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let well_formed =
            name.starts_with(|c: char| c.is_ascii_lowercase()) && !name.ends_with('_') && !name.contains("__");
        if name.len() > 15
            || !lowercase
            || !well_formed
            || name == "rpc"
            || reserved
            || decl.parameters.contains_key(name)
        {
            return bad(format!(
                "{what}: extra port {name:?} must be 1 to 15 lowercase letters, digits or single '_', start with a \
                 letter, and not be a reserved name"
            ));
        }
    }
    check_driver_parameters(what, &decl.parameters)?;
    for arg in decl.args.iter().chain(&decl.command) {
        for name in placeholders(arg) {
            let known = KUBERNETES_NAMES.contains(&name.as_str())
                || template_names.contains(&name.as_str())
                || decl.extra_ports.contains_key(&name)
                || decl.parameters.contains_key(&name);
            if !known {
                return bad(format!("{what}: the args use unknown placeholder {{{name}}}"));
            }
        }
    }
    if !decl.endpoint.starts_with("http://")
        || placeholders(&decl.endpoint).iter().any(|n| !["name", "namespace", "port"].contains(&n.as_str()))
    {
        return bad(format!(
            "{what}: endpoint must be an http:// URL template using only {{name}}, {{namespace}}, {{port}}"
        ));
    }
    Ok(())
}

/// A driver's own instance parameters: JSON Schema tables, each with a default.
fn check_driver_parameters(what: &str, parameters: &toml::Table) -> Result<(), ConfigError> {
    for (name, schema) in parameters {
        if name == "plugins" || !schema.as_table().is_some_and(|t| t.contains_key("default")) {
            return Err(ConfigError::Invalid(format!(
                "{what}: driver parameter {name:?} must be a JSON Schema table with a default (and not be called plugins)"
            )));
        }
    }
    Ok(())
}

/// An RFC 1123 label: what Kubernetes accepts as a namespace name.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `template_names`: placeholders the driver fills besides the process driver's own.
fn check_process(what: &str, decl: &ProcessDriverDecl, template_names: &[&str]) -> Result<(), ConfigError> {
    let bad = |message: String| Err(ConfigError::Invalid(message));
    if decl.command.is_empty() || decl.command[0].is_empty() {
        return bad(format!("{what}: the process driver needs a command"));
    }
    if let Some(name) = decl.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return bad(format!("{what}: env name {name:?} is not a variable name"));
    }
    if let Some(name) = decl.env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return bad(format!("{what}: env {name} holds a NUL byte"));
    }
    let [low, high] = decl.ports;
    if low < 1024 || low > high {
        return bad(format!("{what}: ports must be a range [low, high] above 1023"));
    }
    if decl.restart_backoff_ms[0] == 0 || decl.restart_backoff_ms[0] > decl.restart_backoff_ms[1] {
        return bad(format!("{what}: restart_backoff_ms must be [first, longest], first > 0"));
    }
    if !(1..=65_536).contains(&decl.max_sockets_per_node) {
        return bad(format!("{what}: max_sockets_per_node must be between 1 and 65536"));
    }
    if decl.log_max_bytes < 4096 {
        return bad(format!("{what}: log_max_bytes must be at least 4096"));
    }
    for (i, name) in decl.extra_ports.iter().enumerate() {
        let reserved = PROCESS_NAMES.contains(&name.as_str()) || template_names.contains(&name.as_str());
        if name.is_empty() || reserved || decl.extra_ports[..i].contains(name) || decl.parameters.contains_key(name) {
            return bad(format!("{what}: extra port {name:?} is empty, reserved or named twice"));
        }
    }
    check_driver_parameters(what, &decl.parameters)?;
    for arg in &decl.command {
        for name in placeholders(arg) {
            let known = PROCESS_NAMES.contains(&name.as_str())
                || template_names.contains(&name.as_str())
                || decl.extra_ports.contains(&name)
                || decl.parameters.contains_key(&name);
            if !known {
                return bad(format!("{what}: the command uses unknown placeholder {{{name}}}"));
            }
        }
    }
    Ok(())
}

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

/// Lowercase letters, digits and '-', not empty (what OSB checkers accept as names).
fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// RFC 3986 unreserved characters only.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".ovsb")
}
fn default_broker_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8645))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_username() -> String {
    "ovsb".into()
}
fn default_max_body() -> usize {
    256 << 10
}
fn default_gateway_max_request() -> u32 {
    1 << 20
}
fn default_max_batch() -> u32 {
    1000
}
fn default_max_connections() -> u32 {
    8192
}
fn default_max_connections_per_source() -> u32 {
    512
}
fn default_max_connections_per_key() -> u32 {
    512
}
fn default_max_connections_per_instance() -> u32 {
    2048
}
fn default_anonymous_timeout() -> u64 {
    5_000
}
fn default_header_timeout() -> u64 {
    30_000
}
fn default_body_timeout() -> u64 {
    10_000
}
fn default_fd_reserve() -> u32 {
    256
}
fn default_plugin_calls_per_instance() -> u32 {
    4
}
fn default_plugin_queue_ms() -> u64 {
    1_000
}
fn default_max_subscriptions() -> u32 {
    8192
}
fn default_max_subscriptions_per_instance() -> u32 {
    2048
}
fn default_max_subscriptions_per_key() -> u32 {
    512
}
fn default_subscription_buffer() -> u32 {
    4096
}
fn default_upstream_deadline() -> u64 {
    30_000
}
fn default_max_response() -> u32 {
    32 << 20
}
fn default_answer_bytes_in_flight() -> u64 {
    128 << 20
}
fn default_answer_bytes_per_instance() -> u64 {
    64 << 20
}
fn default_upstream_calls_per_instance() -> u32 {
    32
}
fn default_batch_concurrency() -> u32 {
    16
}
fn default_queue_ms() -> u64 {
    1_000
}
fn default_node_sockets() -> u32 {
    64
}
fn default_lease() -> u64 {
    15
}
fn default_retry_after() -> u64 {
    2
}
fn default_tombstone() -> u64 {
    72
}
fn default_sync() -> u64 {
    1000
}
fn default_polling() -> u64 {
    600
}
fn default_health_interval() -> u64 {
    2000
}
fn default_max_lag() -> u64 {
    8
}
fn default_ports() -> [u16; 2] {
    [20000, 29999]
}
fn default_stop_grace() -> u64 {
    5000
}
fn default_backoff() -> [u64; 2] {
    [500, 30_000]
}
fn default_log_max() -> u64 {
    1 << 20
}
fn yes() -> bool {
    true
}
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
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

/// The longest `binding_ttl` (ten years, in seconds).
pub const MAX_BINDING_TTL: u64 = 10 * 365 * 24 * 3600;

#[cfg(test)]
mod tests {
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

    fn element(name: &str, config: serde_json::Value, fail_open: bool) -> ChainElement {
        ChainElement { name: name.into(), config, fail_open }
    }

    #[test]
    fn a_plans_policy_plugins_stay_first_and_last_in_every_chain() {
        let fixed = serde_json::json!({"rate": 1});
        let policy = PlanPolicy {
            plugins_before: vec![element("a", fixed.clone(), false)],
            plugins_after: vec![element("z", empty_object(), true)],
            ..Default::default()
        };
        let mine = element("mine", serde_json::json!({"x": 1}), false);
        let whole = vec![element("a", empty_object(), false), mine.clone(), element("z", empty_object(), true)];
        assert_eq!(policy.tenant_part(&whole), Ok(&whole[1..2]), "a policy entry may leave out its config");
        assert_eq!(
            policy.compose(std::slice::from_ref(&mine)),
            vec![element("a", fixed.clone(), false), mine.clone(), element("z", empty_object(), true)]
        );
        let as_given = vec![element("a", fixed.clone(), false), element("z", empty_object(), false)];
        assert_eq!(policy.tenant_part(&as_given), Ok(&[][..]), "fail_open may be left off");
        for broken in [
            vec![],
            vec![mine.clone()],
            vec![element("z", empty_object(), true), mine.clone(), element("a", empty_object(), false)],
            vec![element("a", serde_json::json!({"rate": 1000}), false), element("z", empty_object(), true)],
            vec![element("a", empty_object(), true), element("z", empty_object(), true)],
            vec![mine.clone(), element("a", empty_object(), false), element("z", empty_object(), true)],
        ] {
            let err = policy.tenant_part(&broken).unwrap_err();
            assert!(err.starts_with("parameters.plugins:") && err.contains("policy"), "{err}");
        }
        assert_eq!(PlanPolicy::default().tenant_part(&whole), Ok(&whole[..]));
        assert!(PlanPolicy::default().published().is_none());
        assert_eq!(policy.published().unwrap()["plugins_after"], serde_json::json!(["z"]));
    }

    #[test]
    fn the_quick_start_shared_plan_allows_standard_methods_only() {
        let config = Config::quick_start();
        let shared = config.services[0].plans.iter().find(|p| p.name == "shared").unwrap();
        let allowed = &shared.policy.allowed_methods;
        let allows = |method: &str| allowed.iter().any(|p| ovsb_plugin_sdk::glob_matches(p, method));
        for method in
            ["eth_call", "eth_getLogs", "eth_sendRawTransaction", "eth_subscribe", "net_version", "web3_clientVersion"]
        {
            assert!(allows(method), "{method}");
        }
        for method in [
            "debug_traceCall",
            "trace_block",
            "admin_peers",
            "personal_sign",
            "txpool_content",
            "miner_start",
            "anvil_setBalance",
            "hardhat_setBalance",
            "evm_mine",
            "eth_sendTransaction",
            "eth_sign",
            "eth_signTypedData_v4",
        ] {
            assert!(!allows(method), "{method}");
        }
    }

    /// A kubernetes plan as the quick-start's first service's first plan.
    fn with_kubernetes_plan(driver: &str) -> Result<(), ConfigError> {
        let mut config = Config::quick_start();
        let decl: toml::Table = toml::from_str(driver).unwrap();
        config.services[0].plans[0].driver = toml::Value::Table(decl).try_into().unwrap();
        config.validate()
    }

    #[test]
    fn runtime_and_gateway_capacity_that_cannot_work_is_refused_with_the_reason() {
        let check = |tweak: &dyn Fn(&mut Config)| {
            let mut config = Config::quick_start();
            tweak(&mut config);
            config.validate().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(check(&|_| {}), "", "the defaults work");
        let err = check(&|c| c.runtime.max_copies = 100_000);
        assert!(err.contains("address space") && err.contains("at most 16256"), "{err}");
        let err = check(&|c| c.runtime.idle_copies = c.runtime.max_copies + 1);
        assert!(err.contains("idle_copies"), "{err}");
        let err = check(&|c| c.gateway.plugin_calls_per_instance = 0);
        assert!(err.contains("gateway.plugin_calls_per_instance is 0"), "{err}");
        let err = check(&|c| c.gateway.max_connections_per_source = c.gateway.max_connections + 1);
        assert!(err.contains("max_connections_per_source"), "{err}");
        let err = check(&|c| c.gateway.max_subscriptions_per_key = c.gateway.max_subscriptions_per_instance + 1);
        assert!(err.contains("gateway.max_subscriptions_per_key is 2049"), "a key's share fits its instance's: {err}");
        let err = check(&|c| c.gateway.subscription_buffer = 0);
        assert!(err.contains("gateway.subscription_buffer is 0"), "{err}");
        let config =
            Config::from_toml("[gateway]\nmax_subscriptions_per_key = 8\nsubscription_buffer = 64\n", "t.toml")
                .unwrap();
        assert_eq!((config.gateway.max_subscriptions_per_key, config.gateway.subscription_buffer), (8, 64));
        let config =
            Config::from_toml("[runtime]\nmax_copies = 20000\nmax_memory_bytes = 1048576\n", "t.toml").unwrap();
        assert!(config.validate().unwrap_err().to_string().contains("at most 16256"));
    }

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
        assert_eq!(limits.max_concurrency, crate::plugins::PluginLimits::default().max_concurrency, "others default");
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

    #[test]
    fn a_replica_set_up_whose_nodes_other_replicas_cannot_reach_is_refused() {
        let check = |tweak: &dyn Fn(&mut Config)| {
            let mut config = Config::quick_start();
            tweak(&mut config);
            config.validate().err().map(|e| e.to_string()).unwrap_or_default()
        };
        let shared = |c: &mut Config| c.database_url = "postgres://ovsb@db.internal/ovsb".into();
        assert_eq!(check(&|c| shared(c)), "", "replicas on one machine reach loopback nodes");
        let err = check(&|c| {
            shared(c);
            c.gateway.listen = "0.0.0.0:8645".parse().unwrap();
        });
        assert!(err.contains("replica.node_host is 127.0.0.1") && err.contains("OVSB_NODE_HOST"), "{err}");
        assert_eq!(
            check(&|c| {
                shared(c);
                c.gateway.listen = "0.0.0.0:8645".parse().unwrap();
                c.replica.node_host = "10.1.2.3".into();
            }),
            "",
            "the quick-start's devnet command binds its node to {{node_host}}"
        );
        let err = check(&|c| {
            c.replica.node_host = "10.1.2.3".into();
            for plan in c.services.iter_mut().flat_map(|s| &mut s.plans) {
                if let DriverDecl::Process(decl) = &mut plan.driver {
                    for arg in &mut decl.command {
                        *arg = arg.replace("{node_host}", "127.0.0.1");
                    }
                }
            }
        });
        assert!(err.contains("never uses {node_host}"), "{err}");
        assert!(check(&|c| c.replica.node_host = "0.0.0.0".into()).contains("cannot connect to"));
        assert!(check(&|c| c.replica.node_host = "10.1.2.3:8545".into()).contains("without a port"));
        assert!(check(&|c| c.replica.node_host = "node-1.internal".into()).contains("must be an IP address"));
        let mut config = Config::quick_start();
        let env = HashMap::from([("OVSB_NODE_HOST".to_string(), "10.1.2.3".to_string())]);
        config.apply_env(&env).unwrap();
        assert_eq!(config.replica.node_url("http", 20001), "http://10.1.2.3:20001");
        config.replica.node_host = "fd00::7".into();
        assert_eq!(config.replica.node_url("ws", 20001), "ws://[fd00::7]:20001");
    }

    #[test]
    fn kubernetes_plans_are_checked_before_anything_starts() {
        let good = r#"kind = "kubernetes"
            namespace = "ovsb-instances"
            image = "ghcr.io/foundry-rs/foundry:v1.3.0"
            args = ["--port", "{port}", "--chain-id", "{chain_id}"]
            port = 8545
            parameters = { chain_id = { type = "integer", default = 1 } }"#;
        with_kubernetes_plan(good).unwrap();
        for (change, expected) in [
            (good.replace("ovsb-instances", "Ovsb_Instances"), "namespace"),
            (good.replace(r#"{chain_id}"]"#, r#"{chain}"]"#), "unknown placeholder {chain}"),
            (good.replace("8545", "0"), "container ports"),
            (good.replace("ghcr.io/foundry-rs/foundry:v1.3.0", " "), "image"),
            (format!("{good}\nendpoint = \"http://{{name}}:{{rpc}}\""), "endpoint"),
            (format!("{good}\nstorage = {{ size = \"1Gi\", mount_path = \"data\" }}"), "mount_path"),
            (format!("{good}\napi_url = \"10.0.0.1:6443\""), "api_url"),
        ] {
            let err = with_kubernetes_plan(&change).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let validator = r#"kind = "kubernetes-validator"
            token_path = "/data/validator-db/api-token.txt"
            rpc_http = ["http://127.0.0.1:8545"]
            [client]
            namespace = "v"
            image = "chainsafe/lodestar:v1.5.1"
            port = 5064
            extra_ports = { keymanager_port = 5062 }
            args = ["--graffiti={graffiti}"]"#;
        with_kubernetes_plan(validator).unwrap();
        let err = with_kubernetes_plan(&validator.replace("keymanager_port", "km_port")).unwrap_err();
        assert!(err.to_string().contains("keymanager_port"), "{err}");
        let err = with_kubernetes_plan(&validator.replace("\"/data/", "\"data/")).unwrap_err();
        assert!(err.to_string().contains("token_path"), "{err}");
    }
}
