//! # ovsb — Open Validator Service Broker
//!
//! A broker for the Open Service Broker API that provisions Ethereum RPC-node and validator
//! instances, and a JSON-RPC gateway that runs every call to an instance's endpoint through a
//! chain of WebAssembly plugins.
//!
//! ## Layout
//! - [`cli`]: the `ovsb` command line.
//! - [`scaffold`]: the template of `ovsb plugin new`.
//! - [`config`]: the one configuration tree (TOML, `OVSB_*` overrides, validation, catalog).
//! - [`credentials`]: the broker's secret key and what derives from it (binding keys, tokens,
//!   sealing), used by the broker, routing and the drivers.
//! - [`server`]: start-up order and every long-running task (`ovsb serve`).
//! - [`broker`]: the OSB REST control plane (axum).
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: every metric, its name and labels.
//! - [`interchange`]: EIP-3076 slashing-protection documents as typed values (a leaf).
//! - [`store`]: the durable state (sqlx: SQLite embedded, PostgreSQL for replicas); all SQL.
//! - [`provision`]: drivers that give instances a node, and the asynchronous operation runner.
//! - [`validator_params`]: the validator parameters (schema, checks, secrets apart), a leaf the
//!   broker, catalog and validator driver use.
//! - [`routing`]: keeps the gateway's routing snapshot in step with the store.
//! - [`upstream`]: pools of an instance's node URLs (health, failover, rotation, a cap of calls
//!   per node), built by the drivers and called by the gateway.
//! - [`budget`]: what one request may hold while it is served (answer bytes per request and in
//!   flight, upstream calls per instance and in all), checked as it is taken.
//! - [`gateway`]: the JSON-RPC data plane (jsonrpsee): auth, routing snapshot, middleware,
//!   upstream forwarding and failover, subscriptions, limits, CORS, per-binding allowlists and
//!   plan method rules (checked on the way in and at the node boundary),
//!   revocation of open WebSockets.
//! - [`reload`]: swapping plugins without a restart (SIGHUP, `POST /reload`).
//! - [`plugins`]: the wasm plugin runtime (wasmtime, component model): compile cache, warm
//!   instance pools, limits, host functions, chain execution, the plugin registry.
//!
//! Control plane: OSB request → checks → one store transaction → the operation runner does the
//! slow work → store → routes. Data plane: key → routing snapshot → plugin chain → node; it
//! never touches the store.
//!
//! ## Who may depend on whom
//! No cycle among these (each uses only those after it): `server` → `admin` → `reload` → `broker` → `routing` →
//! `gateway` → `provision` → `upstream` → `budget` → `plugins` → `validator_params` → `config`; and `store`, `credentials`,
//! `identity`, `telemetry` below them all, and `interchange` below everything (they depend on none of the above). In particular
//! `config` is data and validation only, `provision` reaches routing only through
//! [`provision::RouteRefresh`], and neither the drivers nor the gateway import each other's
//! internals: both use [`upstream`].

pub mod admin;
pub mod broker;
pub mod budget;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod gateway;
pub mod identity;
pub mod interchange;
pub mod plugins;
pub mod provision;
pub mod reload;
pub mod routing;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod validator_params;
