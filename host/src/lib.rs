//! # ovsb — Open Validator Service Broker
//!
//! A broker for the Open Service Broker API that provisions Ethereum RPC-node and validator
//! instances, and a JSON-RPC gateway that runs every call to an instance's endpoint through a
//! chain of WebAssembly plugins.
//!
//! ## Layout
//! - [`cli`]: the `ovsb` command line.
//! - [`scaffold`]: the template of `ovsb plugin new`.
//! - [`config`]: the one configuration tree (TOML, `OVSB_*` overrides, validation): the service's
//!   settings, the plugins and their limits, the catalog, the drivers' settings, origin syntax.
//! - [`credentials`]: the broker's secret key and what derives from it (binding keys, tokens,
//!   sealing), used by the broker, routing and the drivers.
//! - [`server`]: start-up order and every long-running task (`ovsb serve`).
//! - [`broker`]: the OSB REST control plane (axum).
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: every metric, its name and labels.
//! - [`interchange`]: EIP-3076 slashing-protection documents as typed values (a leaf).
//! - [`store`]: the durable state (sqlx: SQLite embedded, PostgreSQL for replicas); all SQL. Rows
//!   are typed values, decoded once as read (a column that does not decode is an error); split into
//!   rows, instances, operations, changes, nodes and validators.
//! - [`provision`]: drivers that give instances a node, and the asynchronous operation runner.
//! - [`validator_params`]: the validator parameters (schema, checks, secrets apart), a leaf the
//!   broker, catalog and validator driver use.
//! - [`routing`]: keeps the gateway's routing snapshot in step with the store.
//! - [`chain_policy`]: which chain of plugins an instance runs (plan default, parameters, the
//!   plan's policy plugins); asked by the broker and by routing.
//! - [`upstream`]: pools of an instance's node URLs (health, failover, rotation, a cap of calls
//!   per node), built by the drivers and called by the gateway.
//! - [`usage`]: usage per binding (calls, compute units, outcome classes, bytes), metered in
//!   memory and flushed to the store; quotas, checked without a store query.
//! - [`budget`]: what one request may hold while it is served (answer bytes per request and in
//!   flight, upstream calls per instance and in all), checked as it is taken.
//! - [`gateway`]: the JSON-RPC data plane (jsonrpsee): auth, routing snapshot, middleware,
//!   upstream forwarding and failover, subscriptions, limits, CORS, per-binding allowlists and
//!   plan method rules (checked on the way in and at the node boundary),
//!   revocation of open WebSockets.
//! - [`reload`]: adding, removing and swapping plugins without a restart (SIGHUP, `POST /reload`).
//! - [`plugins`]: the wasm plugin runtime (wasmtime, component model): compile cache, warm
//!   instance pools, limits, host functions, chain execution, the plugin registry.
//!
//! Control plane: OSB request → checks → one store transaction → the operation runner does the
//! slow work → store → routes. Data plane: key → routing snapshot → plugin chain → node; it
//! never touches the store.
//!
//! ## Who may depend on whom
//! Each module uses only those below it in [`LAYERS`] (a unit test reads every `crate::` path
//! outside tests and comments, and fails on any other edge):
//! `cli` → `server` → `admin` → `reload` → `broker` → `routing` → `gateway` → `provision` →
//! `upstream` → `budget`, `usage` → `plugins` → `chain_policy`, `validator_params` → `config`; below them all `store`, `identity`, `scaffold`,
//! then `credentials`, `telemetry`, and at the bottom the leaves `interchange`, [`memory`] (freed
//! memory back to the system) and [`call`] (the
//! call vocabulary: `Call`, `Outcome`, `RpcError`, `Upstream`, every JSON-RPC code, blame). In
//! particular `config` is data and validation only, `provision` reaches routing only through
//! [`provision::RouteRefresh`], and neither the drivers nor the gateway import each other
//! ([`FORBIDDEN`]): both use [`upstream`].

pub mod admin;
pub mod broker;
pub mod budget;
pub mod call;
pub mod chain_policy;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod gateway;
pub mod identity;
pub mod interchange;
pub mod memory;
pub mod plugins;
pub mod provision;
pub mod reload;
pub mod routing;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod usage;
pub mod validator_params;

/// The layers of the crate, top first: a module may use only modules of later layers.
pub const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &["server"],
    &["admin"],
    &["reload"],
    &["broker"],
    &["routing"],
    &["gateway"],
    &["provision"],
    &["upstream"],
    &["budget", "usage"],
    &["plugins"],
    &["chain_policy", "validator_params"],
    &["config"],
    &["store", "identity", "scaffold"],
    &["credentials", "telemetry"],
    &["interchange", "call", "memory"],
];

/// Edges the layers would allow but the design forbids: the data plane and the drivers meet
/// only in [`upstream`].
pub const FORBIDDEN: &[(&str, &str)] = &[("gateway", "provision")];

#[cfg(test)]
mod layering {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The layer of a top-level module, `None` if [`super::LAYERS`] does not place it.
    fn layer(module: &str) -> Option<usize> {
        super::LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// The top-level modules a file's code (not its comments, not its `mod tests`) names as
    /// `crate::<module>`.
    fn uses(source: &str) -> BTreeSet<String> {
        let code = match source.find("#[cfg(test)]\nmod tests") {
            Some(at) => &source[..at],
            None => source,
        };
        let mut found = BTreeSet::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or_default();
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                // `crate::{a::X, b}` names several modules (on one line).
                let group = match rest.strip_prefix('{') {
                    Some(inner) => inner.split('}').next().unwrap_or_default(),
                    None => rest,
                };
                for path in group.split(',') {
                    let name: String =
                        path.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                    if !rest.starts_with('{') {
                        break;
                    }
                }
            }
        }
        found
    }

    /// Every edge from `module` (the file's top-level module) that the layering forbids.
    fn wrong_edges(module: &str, source: &str) -> Vec<String> {
        let from = layer(module);
        uses(source)
            .into_iter()
            .filter(|to| to != module)
            .filter(|to| {
                let upward = match (from, layer(to)) {
                    (Some(from), Some(to)) => to <= from,
                    _ => true,
                };
                upward || super::FORBIDDEN.contains(&(module, to.as_str()))
            })
            .map(|to| format!("{module} -> {to}"))
            .collect()
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("host/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_module_uses_only_the_layers_below_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut paths = Vec::new();
        files(&src, &mut paths);
        let mut wrong = Vec::new();
        for path in paths {
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a component").as_os_str().to_string_lossy();
            let module = first.trim_end_matches(".rs");
            // `lib.rs` itself, and the bodies of `mod tests` kept in files of their own.
            if module == "lib" || module.ends_with("_tests") {
                continue;
            }
            assert!(layer(module).is_some(), "module `{module}` has no place in LAYERS (lib.rs): give it one");
            let source = std::fs::read_to_string(&path).expect("a source file");
            for edge in wrong_edges(module, &source) {
                wrong.push(format!("{edge} (in {})", relative.display()));
            }
        }
        assert!(wrong.is_empty(), "imports against the layering of lib.rs:\n{}", wrong.join("\n"));
    }

    #[test]
    fn an_upward_or_forbidden_import_is_caught_and_comments_and_tests_are_not() {
        assert_eq!(wrong_edges("config", "use crate::plugins::PluginLimits;"), ["config -> plugins"]);
        assert_eq!(wrong_edges("gateway", "fn f() -> crate::provision::X {}"), ["gateway -> provision"]);
        assert_eq!(wrong_edges("upstream", "let x = crate::nowhere::f();"), ["upstream -> nowhere"]);
        assert!(wrong_edges("broker", "use crate::store::Store;\nuse crate::call::Call;").is_empty());
        assert_eq!(wrong_edges("budget", "use crate::{call::Call, gateway::X};"), ["budget -> gateway"]);
        assert!(wrong_edges("config", "/// see [`crate::gateway`]\nlet a = 1; // crate::server").is_empty());
        assert!(wrong_edges("config", "#[cfg(test)]\nmod tests {\n use crate::plugins::X;\n}").is_empty());
    }
}
