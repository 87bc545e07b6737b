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
//! - [`server`]: start-up order and every long-running task (`ovsb serve`).
//! - [`broker`]: the OSB REST control plane (axum).
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: every metric, its name and labels.
//! - [`store`]: the durable state (sqlx: SQLite embedded, PostgreSQL for replicas); all SQL.
//! - [`provision`]: drivers that give instances a node, and the asynchronous operation runner.
//! - [`routing`]: keeps the gateway's routing snapshot in step with the store.
//! - [`gateway`]: the JSON-RPC data plane (jsonrpsee): auth, routing snapshot, middleware,
//!   upstream forwarding and failover, subscriptions, limits.
//! - [`plugins`]: the wasm plugin runtime (wasmtime, component model): compile cache, warm
//!   instance pools, limits, host functions, chain execution, the plugin registry.
//!
//! Control plane: OSB request → checks → one store transaction → the operation runner does the
//! slow work → store → routes. Data plane: key → routing snapshot → plugin chain → node; it
//! never touches the store.

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod plugins;
pub mod provision;
pub mod routing;
pub mod scaffold;
pub mod server;
pub mod store;
pub mod telemetry;
