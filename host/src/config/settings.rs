//! The service's own sections: `[broker]`, `[gateway]`, `[admin]`, `[operations]`, `[runtime]`
//! and `[replica]`, each with its defaults (one `impl Default` per section, which serde uses for
//! every key left out) and its checks.
//!
//! Owns: what each listener, limit and capacity setting means and which values can work.
//! Must not: read the environment, look at the catalog beyond what a setting depends on (the
//! replica's `node_host` and the `process` plans that use it), or depend on any module above
//! `config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError, DriverDecl, PlanDecl};

/// The plugin runtime's capacity: how many plugin copies may be alive at once, how large each
/// may grow, and how long idle ones are kept. Copies are made on demand, so these size the
/// traffic a process serves at once, not the number of instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Plugin copies alive at once, across all instances (the pooling allocator's slots).
    pub max_copies: u32,
    /// Largest memory any plugin copy may have (each slot reserves this much address space,
    /// at least 4 GiB).
    pub max_memory_bytes: u64,
    /// Warm idle copies kept across all instances; past it the least recently used is dropped.
    pub idle_copies: u32,
    /// An idle copy unused for this long is dropped, in milliseconds.
    pub idle_ms: u64,
    /// Longest a call waits for a free slot when every slot is busy, in milliseconds; then it
    /// gets -32005 with `data.reason = "runtime_copies"`.
    pub copy_wait_ms: u64,
    /// Where compiled plugins are kept between runs (default `<data_dir>/plugin-cache`).
    /// Compiling a Python or JavaScript plugin takes seconds: replicas and restarts read it
    /// from here instead. Must be writable by ovsb alone (it is created mode 0700): loading a
    /// compiled plugin trusts its contents.
    pub cache_dir: Option<PathBuf>,
    /// Bounds of each instance's plugin key-value store (`[runtime.kv]`).
    pub kv: super::KvLimits,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            max_copies: 1000,
            max_memory_bytes: 256 << 20,
            idle_copies: 256,
            idle_ms: 30_000,
            copy_wait_ms: 500,
            cache_dir: None,
            kv: super::KvLimits::default(),
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
    /// Checks the section's values (the message names the key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        self.kv.validate().map_err(ConfigError::Invalid)
    }
}

/// The broker listener and its credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// Address of the OSB REST listener.
    pub listen: SocketAddr,
    /// Base of the dashboard URLs handed to platforms; empty means `http://<listen>`.
    pub public_url: String,
    /// HTTP Basic user name.
    pub username: String,
    /// HTTP Basic password; when empty, one is generated and kept in `<data_dir>/broker-password`.
    pub password: String,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Base64 of 32 bytes: the key binding credentials are derived from. Empty: generated and
    /// kept in `<data_dir>/secret.key`. Replicas sharing one database must share this key.
    pub secret_key: String,
    /// ovsb's X25519 identity keys (base64 secret keys, the current one first, older ones
    /// after it). Empty: created and kept in `<data_dir>/identity.keys`.
    pub identity_keys: Vec<String>,
    /// What the instances' dashboards show of the provider (`[broker.dashboard]`).
    pub dashboard: DashboardSettings,
}

/// The provider's name and logo on every instance's dashboard, and how long the dashboard
/// waits for an instance's node or validator client.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// The name in the dashboard's header and title.
    pub provider_name: String,
    /// An `https://` (or `http://`) URL of a logo image shown beside the name; empty: none. The
    /// page's Content-Security-Policy allows images from this URL's origin only.
    pub logo_url: String,
    /// Longest wait for the instance's node (head block, sync state) or validator client (keys'
    /// status and balance) while a dashboard is served, in milliseconds; past it the page says
    /// the node did not answer.
    pub node_timeout_ms: u64,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings { provider_name: "ovsb".into(), logo_url: String::new(), node_timeout_ms: 1500 }
    }
}

/// Longest provider name, in characters.
pub const MAX_PROVIDER_NAME_CHARS: usize = 80;

impl DashboardSettings {
    /// The origin (`scheme://host[:port]`) of the logo URL, `None` without a logo.
    pub fn logo_origin(&self) -> Option<String> {
        if self.logo_url.is_empty() {
            return None;
        }
        let url = reqwest::Url::parse(&self.logo_url).ok()?;
        Some(url.origin().ascii_serialization())
    }

    /// Checks the section's values (the message names the key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        let name = self.provider_name.trim();
        if name.is_empty() || name.chars().count() > MAX_PROVIDER_NAME_CHARS || name.chars().any(char::is_control) {
            return bad(format!(
                "broker.dashboard.provider_name must be 1 to {MAX_PROVIDER_NAME_CHARS} characters, without control \
                 characters"
            ));
        }
        if !self.logo_url.is_empty() {
            let parsed = reqwest::Url::parse(&self.logo_url);
            let fine = parsed.as_ref().is_ok_and(|url| {
                matches!(url.scheme(), "https" | "http")
                    && url.host_str().is_some()
                    && url.username().is_empty()
                    && url.password().is_none()
            });
            if !fine || self.logo_url.len() > 2048 {
                return bad(format!(
                    "broker.dashboard.logo_url {:?} must be an https:// or http:// URL with a host and no credentials \
                     (at most 2048 bytes)",
                    self.logo_url
                ));
            }
        }
        if !(100..=30_000).contains(&self.node_timeout_ms) {
            return bad("broker.dashboard.node_timeout_ms must be between 100 and 30000".into());
        }
        Ok(())
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: String::new(),
            username: "ovsb".into(),
            password: String::new(),
            max_body_bytes: 256 << 10,
            secret_key: String::new(),
            identity_keys: Vec::new(),
            dashboard: DashboardSettings::default(),
        }
    }
}

impl BrokerSettings {
    /// Checks the section's values (the message names the key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        if self.username.is_empty() {
            return bad("broker.username must not be empty".into());
        }
        if !(1024..=64 << 20).contains(&self.max_body_bytes) {
            return bad("broker.max_body_bytes must be between 1 KiB and 64 MiB".into());
        }
        self.dashboard.validate()
    }
}

/// The gateway listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Address of the JSON-RPC listener (HTTP and WebSocket).
    pub listen: SocketAddr,
    /// Base of the URLs in binding credentials; empty means `http://<listen>`.
    pub public_url: String,
    /// Largest request body or WebSocket message, in bytes.
    pub max_request_bytes: u32,
    /// Most calls in one batch.
    pub max_batch: u32,
    /// Most connections open at once (HTTP and WebSocket, for their whole life). At start it is
    /// lowered, with a warning, to what the process's descriptor limit leaves after `fd_reserve`.
    pub max_connections: u32,
    /// Most connections from one source address.
    pub max_connections_per_source: u32,
    /// Most connections that carry one binding key.
    pub max_connections_per_key: u32,
    /// Most connections that carry the keys of one instance together.
    pub max_connections_per_instance: u32,
    /// A connection that has not sent a request with a valid key within this time is closed, in
    /// milliseconds. When the gateway is full, the oldest such connection is closed to make room.
    pub anonymous_timeout_ms: u64,
    /// Longest time a client may take to send a request's headers, and longest idle time of a
    /// keep-alive connection between requests, in milliseconds.
    pub header_timeout_ms: u64,
    /// Longest time a client may take to send a request's body, in milliseconds.
    pub body_timeout_ms: u64,
    /// Descriptors kept for the broker, the admin listener, the store and node processes: the
    /// gateway's connections and their upstream sockets never use them.
    pub fd_reserve: u32,
    /// Plugin calls of one instance running at once (its share of the plugin runtime).
    pub plugin_calls_per_instance: u32,
    /// Longest a call waits for a turn within its instance's share, in milliseconds; then it
    /// gets -32005 with `data.reason = "instance_plugin_calls"`.
    pub plugin_queue_ms: u64,
    /// Longest time one call may wait for the node, in milliseconds.
    pub upstream_deadline_ms: u64,
    /// Subscriptions (`eth_subscribe` over WebSocket) held at once, across the gateway.
    pub max_subscriptions: u32,
    /// Subscriptions of one instance, whichever keys opened them.
    pub max_subscriptions_per_instance: u32,
    /// Subscriptions opened with one binding key, on all its connections.
    pub max_subscriptions_per_key: u32,
    /// Notifications one subscription may have waiting for a slow client; past it the client's
    /// WebSocket is closed with code 4008 (a burst up to this size always arrives whole).
    pub subscription_buffer: u32,
    /// Largest response, in bytes: a call's answer, or a batch's answers together. Answers are
    /// counted as they arrive from the node; a batch that passes it is cut short with -32011
    /// (`data.reason = "response_bytes"`), a single call gets -32008.
    pub max_response_bytes: u32,
    /// Answer bytes all requests may hold at once; past it a request waits up to `queue_ms`,
    /// then gets -32005 `answer_bytes_in_flight`.
    pub answer_bytes_in_flight: u64,
    /// Answer bytes the requests of one instance may hold at once (its share of the above);
    /// past it -32005 `instance_answer_bytes_in_flight`.
    pub answer_bytes_in_flight_per_instance: u64,
    /// Calls of one instance in flight to its nodes at once (its share of the nodes' sockets);
    /// past it a call waits up to `queue_ms`, then gets -32005 `instance_upstream_calls`.
    pub upstream_calls_per_instance: u32,
    /// Entries of one batch running at once; the others wait their turn in order.
    pub batch_concurrency: u32,
    /// A call whose turn at its node takes this many milliseconds more than the node's quickest
    /// recent turn is slow: its instance is then paced (see `slow_calls_per_instance` and
    /// `slow_call_duty_percent`), so that one tenant's heavy calls cannot take the node from the
    /// others. 0 (the default): off.
    pub slow_call_ms: u64,
    /// Calls a paced instance runs at its nodes at once.
    pub slow_calls_per_instance: u32,
    /// Share of the time, in percent, a paced instance may keep its node busy: after a slow call
    /// of `d`, its next call starts `d × (100 − p) / p` later.
    pub slow_call_duty_percent: u32,
    /// Longest a call waits for answer bytes in flight, an upstream turn of its instance or a
    /// node socket, in milliseconds.
    pub queue_ms: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8645)),
            public_url: String::new(),
            max_request_bytes: 1 << 20,
            max_batch: 1000,
            max_connections: 8192,
            max_connections_per_source: 512,
            max_connections_per_key: 512,
            max_connections_per_instance: 2048,
            anonymous_timeout_ms: 5_000,
            header_timeout_ms: 30_000,
            body_timeout_ms: 10_000,
            fd_reserve: 256,
            plugin_calls_per_instance: 4,
            plugin_queue_ms: 1_000,
            upstream_deadline_ms: 30_000,
            max_subscriptions: 8192,
            max_subscriptions_per_instance: 2048,
            max_subscriptions_per_key: 512,
            subscription_buffer: 4096,
            max_response_bytes: 32 << 20,
            answer_bytes_in_flight: 128 << 20,
            answer_bytes_in_flight_per_instance: 64 << 20,
            upstream_calls_per_instance: 32,
            batch_concurrency: 16,
            slow_call_ms: 0,
            slow_calls_per_instance: 1,
            slow_call_duty_percent: 50,
            queue_ms: 1_000,
        }
    }
}

impl GatewaySettings {
    /// Checks the section's values (the message names the key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        if self.max_batch == 0 || self.max_connections == 0 || self.max_request_bytes < 1024 {
            return bad("gateway limits must be positive (max_request_bytes at least 1024)".into());
        }
        if self.upstream_deadline_ms == 0 || self.upstream_deadline_ms > 600_000 {
            return bad("gateway.upstream_deadline_ms must be between 1 and 600000".into());
        }
        let ranges: [(&str, u64, u64, u64); 22] = [
            ("max_connections_per_source", self.max_connections_per_source.into(), 1, self.max_connections.into()),
            ("max_connections_per_key", self.max_connections_per_key.into(), 1, self.max_connections.into()),
            // Lowered to max_connections at start: a smaller gateway needs no change here.
            ("max_connections_per_instance", self.max_connections_per_instance.into(), 1, 1 << 30),
            ("anonymous_timeout_ms", self.anonymous_timeout_ms, 100, 300_000),
            ("header_timeout_ms", self.header_timeout_ms, 100, 3_600_000),
            ("body_timeout_ms", self.body_timeout_ms, 100, 3_600_000),
            ("fd_reserve", self.fd_reserve.into(), 32, 1 << 20),
            ("plugin_calls_per_instance", self.plugin_calls_per_instance.into(), 1, 4096),
            ("plugin_queue_ms", self.plugin_queue_ms, 0, 60_000),
            ("max_subscriptions", self.max_subscriptions.into(), 1, 1 << 20),
            (
                "max_subscriptions_per_instance",
                self.max_subscriptions_per_instance.into(),
                1,
                self.max_subscriptions.into(),
            ),
            (
                "max_subscriptions_per_key",
                self.max_subscriptions_per_key.into(),
                1,
                self.max_subscriptions_per_instance.into(),
            ),
            ("subscription_buffer", self.subscription_buffer.into(), 16, 1 << 20),
            ("max_response_bytes", self.max_response_bytes.into(), 1024, 1 << 31),
            // An instance's share must hold one whole answer, and the whole must hold a share.
            (
                "answer_bytes_in_flight_per_instance",
                self.answer_bytes_in_flight_per_instance,
                self.max_response_bytes.into(),
                self.answer_bytes_in_flight,
            ),
            ("answer_bytes_in_flight", self.answer_bytes_in_flight, self.max_response_bytes.into(), 1 << 40),
            ("upstream_calls_per_instance", self.upstream_calls_per_instance.into(), 1, 65_536),
            ("batch_concurrency", self.batch_concurrency.into(), 1, 4096),
            ("slow_call_ms", self.slow_call_ms, 0, 600_000),
            (
                "slow_calls_per_instance",
                self.slow_calls_per_instance.into(),
                1,
                self.upstream_calls_per_instance.into(),
            ),
            ("slow_call_duty_percent", self.slow_call_duty_percent.into(), 1, 100),
            ("queue_ms", self.queue_ms, 0, 60_000),
        ];
        for (name, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return bad(format!("gateway.{name} is {value}; it must be between {low} and {high}"));
            }
        }
        Ok(())
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Host names (besides IP addresses and `localhost`) the admin listener answers to, as
    /// clients send them in `Host`; any other gets 421 (no DNS-rebinding page can reach it).
    pub allowed_hosts: Vec<String>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), allowed_hosts: Vec::new() }
    }
}

/// How asynchronous operations are run and kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperationSettings {
    /// How long a replica's claim on a running operation lasts without renewal, in seconds. A
    /// replica that dies leaves its operations to another one after this long.
    pub lease_seconds: u64,
    /// The `Retry-After` (seconds) sent with `in progress`.
    pub retry_after_seconds: u64,
    /// How long `last_operation` still reports a finished deprovision as `succeeded` (then 410).
    pub tombstone_hours: u64,
    /// How often a replica looks for changes other replicas made, in milliseconds.
    pub sync_interval_ms: u64,
}

impl Default for OperationSettings {
    fn default() -> Self {
        OperationSettings { lease_seconds: 15, retry_after_seconds: 2, tombstone_hours: 72, sync_interval_ms: 1000 }
    }
}

impl OperationSettings {
    /// Checks the section's values (the message names the key).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        if self.lease_seconds < 2 || self.sync_interval_ms == 0 {
            return bad("operations.lease_seconds must be at least 2, sync_interval_ms positive".into());
        }
        Ok(())
    }
}

/// This replica's part among several on one store (see the README's replica model).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaSettings {
    /// The address other replicas reach this replica's `process` nodes at (an IP address of
    /// this machine, which the nodes listen on): the nodes it runs are recorded in the store as `http://<node_host>:<port>`,
    /// and another replica's gateway forwards their calls there. A `process` plan's command
    /// must bind its node to `{node_host}` when this is not a loopback address.
    pub node_host: String,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings { node_host: "127.0.0.1".into() }
    }
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

    /// Checks that other replicas can reach the nodes of `config`'s `process` plans.
    pub(super) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
