//! # ovsb — Open Validator Service Broker
//!
//! A broker for the Open Service Broker API that provisions Ethereum RPC-node and validator
//! instances, and a JSON-RPC gateway that runs every call to an instance's endpoint through a
//! chain of WebAssembly plugins.
//!
//! ## Layout
//! - [`cli`]: the `ovsb` command line.
//! - [`gateway`]: the JSON-RPC data plane (jsonrpsee): auth, routing snapshot, middleware,
//!   upstream forwarding and failover, subscriptions, limits.
//! - [`plugins`]: the wasm plugin runtime (wasmtime, component model): compile cache, warm
//!   instance pools, limits, host functions, chain execution.
//!
//! The broker, store and drivers arrive with their issues; see the README.

pub mod cli;
pub mod gateway;
pub mod plugins;
