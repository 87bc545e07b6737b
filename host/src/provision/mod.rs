//! Provisioning: the [`Driver`] interface that gives an instance a node, and the runner of
//! asynchronous operations.
//!
//! Owns: turning an accepted provision / update / deprovision (an `in progress` operation row)
//! into driver work and then into a final state, exactly once across crashes and replicas.
//! Must not: answer HTTP, or decide what a request means (the broker does, in the store's
//! transaction); the runner only finishes what the broker started.
//!
//! ## Layout
//! - `driver`: the [`Driver`] interface, what a driver is told and how it fails.
//! - `drivers`: one driver per plan ([`Drivers`]), built from the catalog.
//! - `runner`: the operation runner ([`Operations`]) and its outcome table.
//! - `replicas`: replica membership: heartbeats, node ownership, hand-overs.
//! - `upstream`, `process`, `kubernetes`, `validator`: the drivers.
//!
//! ## How an operation survives a crash
//! The broker inserts the operation with this replica as its lease owner. The runner renews
//! the leases of the operations it is running (and only those) every third of
//! `operations.lease_seconds`. Every replica looks for operations whose lease lapsed (their
//! runner died, or stopped) and claims them with a conditional update, so exactly one replica
//! resumes each; its own lapsed ones included, unless it is still running them. Drivers are
//! idempotent, so a resumed operation simply runs again; one past its deadline (the plan's
//! `maximum_polling_duration`) fails with that reason, and a failed provision is cleaned up by
//! the driver, so nothing is left half-made. On SQLite, which one process holds exclusively,
//! every `in progress` operation found at start is resumed at once.
//!
//! ## One owner per node
//! A `process` plan's node runs on exactly one replica, its owner, recorded in the store with
//! the URLs other replicas reach it at (`replica.node_host`); their gateways forward there. The
//! replica that provisions an instance claims its node before starting it. An operation on an
//! instance whose node a live replica owns is run by that owner: another replica that accepted
//! it hands it over (its lease), and no replica but the owner claims it. Every replica beats a
//! heartbeat in the store; one silent for `operations.lease_seconds` is dead, and its nodes are
//! taken over, each by exactly one replica (a conditional update), which starts the node anew.
//! A replica drops any node it runs that the store says another replica owns (it was thought
//! dead and its nodes were taken over), and at start it starts only the nodes it owns.
//!
//! ## When the store fails under a running operation
//! Whether the runner's own store call failed or a driver's (a transient
//! [`DriverError::Store`]: a store that does not answer, not a row that does not decode), the
//! runner keeps the operation: it tries again with back-off (up to
//! [`STORE_RETRY_MAX`] between tries) for as long as the lease is still its own, running the
//! idempotent driver work again, so the operation ends `succeeded` or `failed` (at its deadline
//! at the latest) once the store answers, with no restart. If another replica took the lease
//! meanwhile, this one lets go.

mod driver;
mod drivers;
pub mod kubernetes;
mod process;
mod replicas;
mod runner;
mod upstream;
mod validator;

pub use driver::{Driver, DriverError, DriverFuture, InstanceSpec, Progress, Secret};
pub use drivers::Drivers;
pub use kubernetes::{KubernetesContext, KubernetesDriver};
pub use process::{NODE_MARKER, ProcessDriver, placeholders};
pub use replicas::Replica;
pub use runner::{Operations, RouteRefresh, STORE_RETRY_MAX, SealedRequest, UpdateRequest};
pub use upstream::UpstreamDriver;
pub use validator::{ClientHost, RpcNodes, ValidatorAccess, ValidatorDriver};
// The validator parameters live in a leaf; their callers (broker, catalog, routing) keep these paths.
pub use crate::validator_params::{
    KeySecrets, Prepared, VALIDATOR_PARAMETERS, VALIDATOR_TEMPLATE_NAMES, given_history_root, prepare_provision,
    prepare_update, pubkeys_of, validator_parameter_schema,
};
