//! Driver declarations: `[services.plans.driver]` of each `kind` (`upstream`, `process`,
//! `validator`, `kubernetes`, `kubernetes-validator`), their defaults, and the checks of their
//! settings (URLs, commands and their placeholders, ports, Kubernetes names).
//!
//! Owns: what a plan tells its driver, and which settings can work, checked before anything
//! starts. The drivers themselves live in `provision`.
//! Must not: start, reach or probe anything (no process, no network), or depend on any module
//! above `config` ([`crate::interchange`], a leaf, parses `genesis_validators_root`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;
use super::catalog::yes;
use crate::interchange::Root;

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

    /// Checks the driver's settings; `what` names the plan in messages, `plan_id` is its id.
    pub(super) fn validate(&self, what: &str, plan_id: &str) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid(message));
        match self {
            DriverDecl::Upstream(decl) => {
                if decl.http.is_empty() {
                    return bad(format!("{what}: the upstream driver needs at least one http URL"));
                }
                check_urls(what, &decl.http, &decl.ws)?;
                check_node_sockets(what, decl.max_sockets_per_node)?;
                if decl.health_interval_ms < 100 {
                    return bad(format!("{what}: health_interval_ms must be at least 100"));
                }
            }
            DriverDecl::Process(decl) => check_process(what, decl, &[])?,
            DriverDecl::Validator(_) | DriverDecl::KubernetesValidator(_)
                if self.genesis_validators_root().is_some_and(|root| Root::parse(root).is_none()) =>
            {
                return bad(format!("{what}: genesis_validators_root must be 0x and 64 hex digits"));
            }
            DriverDecl::Validator(decl) => {
                check_process(what, &decl.client, VALIDATOR_TEMPLATE_NAMES)?;
                if !decl.client.extra_ports.iter().any(|p| p == "keymanager_port") {
                    return bad(format!("{what}: the validator client needs extra_ports = [\"keymanager_port\", …]"));
                }
                if decl.token_file.is_empty() || decl.token_file.starts_with('/') || decl.token_file.contains("..") {
                    return bad(format!("{what}: token_file must be a path inside the client's data directory"));
                }
                check_validator(what, &decl.rpc_http, &decl.rpc_ws, &decl.client.parameters)?;
                check_node_sockets(what, decl.max_sockets_per_node)?;
            }
            DriverDecl::Kubernetes(decl) => check_kubernetes(what, plan_id, decl, &[])?,
            DriverDecl::KubernetesValidator(decl) => {
                check_kubernetes(what, plan_id, &decl.client, VALIDATOR_TEMPLATE_NAMES)?;
                if !decl.client.extra_ports.contains_key("keymanager_port") {
                    return bad(format!(
                        "{what}: the validator client needs extra_ports = {{ keymanager_port = …, … }}"
                    ));
                }
                if !decl.token_path.starts_with('/') || decl.token_path.contains("..") {
                    return bad(format!("{what}: token_path must be an absolute path in the container"));
                }
                check_urls(what, decl.beacon_url.as_slice(), &[])?;
                check_validator(what, &decl.rpc_http, &decl.rpc_ws, &decl.client.parameters)?;
                check_node_sockets(what, decl.max_sockets_per_node)?;
            }
        }
        Ok(())
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
    /// Calls in flight (and sockets held) to each instance's node from ovsb; past it a call
    /// waits its turn, then gets -32005 `node_sockets`.
    #[serde(default = "default_node_sockets")]
    pub max_sockets_per_node: u32,
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
    /// Calls in flight (and sockets held) to each of `rpc_http`'s nodes from the plan's
    /// instances together; past it a call waits its turn, then gets -32005 `node_sockets`.
    #[serde(default = "default_node_sockets")]
    pub max_sockets_per_node: u32,
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
    /// Calls in flight (and sockets held) to each of `rpc_http`'s nodes from the plan's
    /// instances together; past it a call waits its turn, then gets -32005 `node_sockets`.
    #[serde(default = "default_node_sockets")]
    pub max_sockets_per_node: u32,
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

/// `http` URLs must be http:// URLs, `ws` URLs ws:// or wss://.
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

/// The placeholders a `process` command may use besides its parameters and extra ports.
pub const PROCESS_NAMES: &[&str] = &["port", "data_dir", "instance_id", "node_host"];

/// Placeholders every Kubernetes workload's args may use.
const KUBERNETES_NAMES: &[&str] = &["port", "instance_id", "name", "namespace", "data_dir"];

/// `template_names`: placeholders the driver fills besides the Kubernetes driver's own.
fn check_kubernetes(
    what: &str,
    plan_id: &str,
    decl: &KubernetesDriverDecl,
    template_names: &[&str],
) -> Result<(), ConfigError> {
    let bad = |message: String| Err(ConfigError::Invalid(message));
    check_node_sockets(what, decl.max_sockets_per_node)?;
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
    check_node_sockets(what, decl.max_sockets_per_node)?;
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

/// `health_interval_ms` left out.
fn default_health_interval() -> u64 {
    2000
}

/// `max_lag_blocks` left out.
fn default_max_lag() -> u64 {
    8
}

/// A driver's `max_sockets_per_node`: at least one, at most 65536.
fn check_node_sockets(what: &str, sockets: u32) -> Result<(), ConfigError> {
    if (1..=65_536).contains(&sockets) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!("{what}: max_sockets_per_node must be between 1 and 65536")))
    }
}

/// `max_sockets_per_node` left out (every driver).
fn default_node_sockets() -> u32 {
    64
}

/// `ports` left out.
fn default_ports() -> [u16; 2] {
    [20000, 29999]
}

/// `stop_grace_ms` left out.
fn default_stop_grace() -> u64 {
    5000
}

/// `restart_backoff_ms` left out.
fn default_backoff() -> [u64; 2] {
    [500, 30_000]
}

/// `log_max_bytes` left out.
fn default_log_max() -> u64 {
    1 << 20
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// A kubernetes plan as the quick-start's first service's first plan.
    fn with_kubernetes_plan(driver: &str) -> Result<(), ConfigError> {
        let mut config = Config::quick_start();
        let decl: toml::Table = toml::from_str(driver).unwrap();
        config.services[0].plans[0].driver = toml::Value::Table(decl).try_into().unwrap();
        config.validate()
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
        for (sockets, placement) in [("0", "top"), ("65537", "top"), ("0", "client")] {
            let changed = match placement {
                "top" => validator.replace("[client]", &format!("max_sockets_per_node = {sockets}\n[client]")),
                _ => format!("{validator}\nmax_sockets_per_node = {sockets}"),
            };
            let err = with_kubernetes_plan(&changed).unwrap_err().to_string();
            assert!(err.contains("max_sockets_per_node must be between 1 and 65536"), "{sockets} {placement}: {err}");
        }
    }

    #[test]
    fn driver_keys_left_out_get_the_documented_defaults() {
        let upstream: DriverDecl = toml::from_str("kind = \"upstream\"\nhttp = [\"http://127.0.0.1:8545\"]\n").unwrap();
        let DriverDecl::Upstream(decl) = upstream else { panic!("an upstream driver") };
        assert_eq!((decl.health_interval_ms, decl.max_lag_blocks, decl.max_sockets_per_node), (2000, 8, 64));
        assert!(decl.ws.is_empty());
        let process: DriverDecl = toml::from_str("kind = \"process\"\ncommand = [\"anvil\"]\n").unwrap();
        let DriverDecl::Process(decl) = process else { panic!("a process driver") };
        assert_eq!((decl.ports, decl.stop_grace_ms, decl.restart_backoff_ms), ([20000, 29999], 5000, [500, 30_000]));
        assert_eq!((decl.log_max_bytes, decl.max_sockets_per_node, decl.ws), (1 << 20, 64, true));
        let kubernetes: DriverDecl =
            toml::from_str("kind = \"kubernetes\"\nnamespace = \"n\"\nimage = \"i\"\nport = 8545\n").unwrap();
        let DriverDecl::Kubernetes(decl) = kubernetes else { panic!("a kubernetes driver") };
        assert_eq!(
            (decl.api_timeout_ms, decl.endpoint.as_str(), decl.ws),
            (30_000, "http://{name}.{namespace}.svc:{port}", true)
        );
        assert_eq!(decl.max_sockets_per_node, 64);
        let err = toml::from_str::<DriverDecl>("kind = \"process\"\n").unwrap_err().to_string();
        assert!(err.contains("command"), "a required key stays required: {err}");
    }
}
