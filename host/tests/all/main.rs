//! Every integration test of ovsb, in one binary (as wasmtime's `tests/all`): the crate and the
//! shared helpers are compiled and linked once, not once per file. Each file is a module; run one
//! file's tests with `cargo test -p ovsb --test all broker::`, one test by a part of its name.
//!
//! The tests of all files run in one process, two at a time on this machine: a test must not
//! assume it is alone in the process (the metrics registry is the process's), only that its own
//! instance ids, ports and directories are its own.

mod support;

mod broker;
mod broker_process;
mod capacity;
mod cli;
mod dapp;
mod dashboard;
mod drivers;
mod first_party_plugins;
mod gateway;
mod isolation;
mod kubernetes;
mod operations;
mod plugin_runtime;
mod polyglot;
mod quickstart;
mod reload;
mod replicas;
mod routing;
mod scaffold;
mod sealed;
mod usage;
mod validators;
