//! Wires the whole process together: `ovsb serve`, and the in-process server tests drive.
//!
//! Owns: the start-up order (validate the configuration, take the data directory, open the
//! store, load plugins, load routes, then bind the listeners) and every long-running task,
//! tracked under one cancellation token so that shutdown is bounded and nothing is detached.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{BrokerState, Catalog};
use crate::config::{Config, ConfigError};
use crate::credentials::{BasicAuth, SecretKey, read_or_create};
use crate::gateway::{GatewayConfig, Routes};
use crate::identity::Identity;
use crate::plugins::{PluginRuntime, Registry, RuntimeConfig};
use crate::provision::{Drivers, Operations};
use crate::routing::RouteSync;
use crate::store::{Backend, Store, random_id};

/// Why ovsb could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be prepared or is in use.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The secret key or password could not be set up.
    #[error(transparent)]
    Secret(#[from] crate::credentials::SecretError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The replicas sharing this database do not share the secret key.
    #[error(
        "this database was set up with a different secret key; replicas sharing a database must share broker.secret_key (OVSB_SECRET_KEY)"
    )]
    SecretMismatch,
    /// Validator clients of this database run on another host.
    #[error(
        "validator plans run their clients on one host, and this database's run on host {registered} (another data directory): offer validator plans only on that replica; if that host is gone for good, its clients and their slashing databases are gone with it: delete the setting validator_host from the store only after accounting for its keys"
    )]
    ValidatorHost {
        /// The host id the store names.
        registered: String,
    },
    /// A Kubernetes plan with instances points at another namespace or cluster than when they
    /// were made.
    #[error(
        "plan {plan} has instances in {registered}, but the configuration now says {configured}: ovsb would lose \
         sight of them (and a validator's keys could sign in two places). Put the plan's location back, or \
         deprovision its instances before moving it"
    )]
    KubernetesMoved {
        /// The plan.
        plan: String,
        /// Where its instances are.
        registered: String,
        /// Where the configuration says.
        configured: String,
    },
    /// A plugin could not be loaded.
    #[error("plugins: {0}")]
    Plugins(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running ovsb.
pub struct Server {
    /// Where the broker listens.
    pub broker_addr: SocketAddr,
    /// Where the gateway listens.
    pub gateway_addr: SocketAddr,
    /// Where the admin listener (health, readiness) listens.
    pub admin_addr: SocketAddr,
    /// The store (tests inspect it).
    pub store: Store,
    /// The routing snapshot.
    pub routes: Arc<Routes>,
    /// What keeps the snapshot in step with the store.
    pub routing: Arc<RouteSync>,
    /// This replica's id (its operation leases carry it).
    pub replica: String,
    /// The usage meters (tests and benchmarks read them).
    pub usage: Arc<crate::usage::Usage>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    data_dir: PathBuf,
    _lock: Option<std::fs::File>,
}

impl Server {
    /// Starts ovsb with `config` (already merged with the environment). Stops when `shutdown`
    /// is cancelled; then await [`Server::wait`].
    pub async fn start(mut config: Config, shutdown: CancellationToken) -> Result<Server, StartError> {
        // First of all: SIGHUP's default action would end the process while plugins compile.
        let hangups = crate::reload::listen_for_sighup();
        config.validate()?;
        let data_dir = config.data_dir.clone();
        prepare_dir(&data_dir)?;
        let url = config.database_url();
        // SQLite is one process's store: a second ovsb on the same data directory would corrupt
        // the operation leases, so it is refused.
        let lock = if url.starts_with("sqlite:") { Some(lock_dir(&data_dir)?) } else { None };

        let secret = SecretKey::load_or_create(&config.broker.secret_key, &data_dir.join("secret.key"))?;
        if config.broker.password.is_empty() {
            let file = data_dir.join("broker-password");
            let existed = file.exists();
            config.broker.password = read_or_create(&file, random_password)?;
            if !existed {
                // Printed once, on first start; kept in the file (mode 0600) afterwards.
                eprintln!(
                    "ovsb: generated broker credentials {}:{} (kept in {})",
                    config.broker.username,
                    config.broker.password,
                    file.display()
                );
            }
        }
        let auth = BasicAuth::new(&config.broker.username, &config.broker.password);

        // The admin listener comes up first: /healthz answers and /readyz says "not yet" while
        // the store is unreachable (a database that starts after ovsb) and the routes load.
        let admin_listener = bind(config.admin.listen).await?;
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Listen { addr: config.admin.listen, source })?;
        write_run_files(&data_dir, admin_addr);
        warn_if_committable(&data_dir);
        let tracker = TaskTracker::new();
        let admin_state = Arc::new(crate::admin::AdminState::default());
        let starting = shutdown.child_token();
        {
            let app = crate::admin::router(admin_state.clone(), &config.admin.allowed_hosts);
            let stop = starting.clone();
            tracker.spawn(async move {
                let served = axum::serve(admin_listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
                if let Err(err) = served {
                    tracing::error!("admin listener stopped: {err}");
                }
            });
        }
        let started = Self::start_after_admin(
            config,
            shutdown,
            url,
            secret,
            auth,
            lock,
            tracker,
            admin_state,
            admin_addr,
            hangups,
        )
        .await;
        if started.is_err() {
            starting.cancel();
        }
        started
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_after_admin(
        mut config: Config,
        shutdown: CancellationToken,
        url: String,
        secret: SecretKey,
        auth: BasicAuth,
        lock: Option<std::fs::File>,
        tracker: TaskTracker,
        admin_state: Arc<crate::admin::AdminState>,
        admin_addr: SocketAddr,
        hangups: Option<crate::reload::Hangups>,
    ) -> Result<Server, StartError> {
        let data_dir = config.data_dir.clone();
        let store = open_store(&url, &shutdown).await?;
        if store.setting_or_insert("secret_key_check", &secret.check_value()).await? != secret.check_value() {
            return Err(StartError::SecretMismatch);
        }
        // Validator clients run as processes belong to one host: a second host would start
        // clients of its own for the same instances, and free keys its own empty clients do not hold.
        // (Clients on Kubernetes live in the cluster, which every replica sees.)
        let validators = config
            .services
            .iter()
            .flat_map(|s| &s.plans)
            .any(|p| matches!(p.driver, crate::config::DriverDecl::Validator(_)));
        if validators {
            let host = read_or_create(&data_dir.join("host-id"), random_id)?;
            let registered = store.setting_or_insert("validator_host", &host).await?;
            if registered != host {
                return Err(StartError::ValidatorHost { registered });
            }
        }
        // A Kubernetes plan's instances live where the plan said when they were made: a plan
        // moved to another namespace or cluster would make new, empty workloads for them.
        for plan in config.services.iter().flat_map(|s| &s.plans) {
            let Some(location) = plan.driver.kubernetes_location() else { continue };
            let setting = format!("kubernetes_location:{}", plan.id);
            let registered = store.setting_or_insert(&setting, &location).await?;
            if registered != location {
                if store.instances_not_deleted().await?.iter().any(|i| i.plan_id == plan.id) {
                    return Err(StartError::KubernetesMoved {
                        plan: plan.id.clone(),
                        registered,
                        configured: location,
                    });
                }
                store.set_setting(&setting, &location).await?;
            }
        }

        let runtime = plugin_runtime(&config)?;
        let decls = config.plugins.clone();
        let registry = tokio::task::spawn_blocking(move || Registry::load(runtime, &decls))
            .await
            .map_err(|err| StartError::Plugins(err.to_string()))?
            .map_err(|err| StartError::Plugins(err.to_string()))?;

        let plugin_names = registry.names();
        let identity = Identity::load_or_create(&config.broker.identity_keys, &data_dir.join("identity.keys"))?;
        let catalog = Catalog::new(&config, &plugin_names, &registry.schemas(), &identity.public_key())
            .map_err(|e| StartError::Config(ConfigError::Invalid(e)))?;

        let broker_listener = bind(config.broker.listen).await?;
        let gateway_listener = bind(config.gateway.listen).await?;
        let broker_addr =
            broker_listener.local_addr().map_err(|source| StartError::Listen { addr: config.broker.listen, source })?;
        let gateway_addr = gateway_listener
            .local_addr()
            .map_err(|source| StartError::Listen { addr: config.gateway.listen, source })?;
        if config.broker.public_url.is_empty() {
            config.broker.public_url = format!("http://{broker_addr}");
        }
        if config.gateway.public_url.is_empty() {
            config.gateway.public_url = format!("http://{gateway_addr}");
        }
        let config = Arc::new(config);

        // Stable across restarts: the nodes and operations this replica holds stay its own.
        let replica = crate::provision::Replica {
            id: read_or_create(&data_dir.join("replica-id"), random_id)?,
            node_host: config.replica.node_host.clone(),
            lease: Duration::from_secs(config.operations.lease_seconds),
        };
        let routes = Arc::new(Routes::default());
        let usage = crate::usage::Usage::new(&config, &replica.id);
        let drivers = Drivers::new(&config, &store, &secret, &tracker, &shutdown);
        let recovering = std::time::Instant::now();
        drivers.recover(&store, &replica).await?;
        let recovered_ms = recovering.elapsed().as_millis() as u64;
        let routing = Arc::new(RouteSync::new(
            store.clone(),
            config.clone(),
            registry.clone(),
            drivers.clone(),
            routes.clone(),
            secret.clone(),
            identity.clone(),
            replica.id.clone(),
            usage.clone(),
        ));
        let loading = std::time::Instant::now();
        routing.sync().await;
        let routes_ms = loading.elapsed().as_millis() as u64;
        // Before the gateway serves: quotas count what the store holds for their window.
        if let Err(err) = usage.seed(&store).await {
            tracing::warn!("usage: cannot read the quotas' use from the store; they count from now: {err}");
        }
        let seeded_ms = loading.elapsed().as_millis() as u64 - routes_ms;
        tracker.spawn(usage.clone().flush_periodically(store.clone(), shutdown.clone()));
        let operations = Operations::new(
            store.clone(),
            secret.clone(),
            config.clone(),
            drivers,
            routing.clone(),
            replica.clone(),
            tracker.clone(),
            shutdown.clone(),
        );
        let state = Arc::new(BrokerState {
            catalog: arc_swap::ArcSwap::from_pointee(catalog),
            config: config.clone(),
            store: store.clone(),
            registry,
            routing: routing.clone(),
            operations: operations.clone(),
            secret,
            auth,
            identity,
            auth_throttle: Default::default(),
            usage: usage.clone(),
        });

        tracker.spawn(operations.supervise(store.backend() == Backend::Sqlite));
        tracker.spawn(routing.clone().follow(shutdown.clone()));
        let g = &config.gateway;
        let gateway_config = GatewayConfig {
            max_request_bytes: g.max_request_bytes,
            max_batch: g.max_batch,
            max_connections: g.max_connections,
            max_connections_per_source: g.max_connections_per_source,
            max_connections_per_key: g.max_connections_per_key,
            max_connections_per_instance: g.max_connections_per_instance,
            anonymous_timeout: Duration::from_millis(g.anonymous_timeout_ms),
            header_timeout: Duration::from_millis(g.header_timeout_ms),
            body_timeout: Duration::from_millis(g.body_timeout_ms),
            fd_reserve: g.fd_reserve,
            subscriptions: crate::gateway::SubscriptionLimits {
                total: g.max_subscriptions,
                per_instance: g.max_subscriptions_per_instance,
                per_key: g.max_subscriptions_per_key,
                buffer: g.subscription_buffer,
            },
            max_response_bytes: g.max_response_bytes,
            answer_bytes_in_flight: usize::try_from(g.answer_bytes_in_flight).unwrap_or(usize::MAX),
            batch_concurrency: g.batch_concurrency,
            queue: Duration::from_millis(g.queue_ms),
            ..GatewayConfig::default()
        };
        {
            let (routes, shutdown) = (routes.clone(), shutdown.clone());
            tracker.spawn(async move {
                if let Err(err) = crate::gateway::serve(gateway_listener, gateway_config, routes, shutdown).await {
                    tracing::error!("gateway stopped: {err}");
                }
            });
        }
        let reloader = Arc::new(crate::reload::Reloader::new(&config, process_env(), state.clone()));
        tracker.spawn(reloader.clone().on_sighup(hangups, shutdown.clone()));
        admin_state.ready(store.clone(), routing.clone(), reloader);
        {
            let app = crate::broker::router(state);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                // With the peer's address: failed authentication is throttled per source.
                let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let served = axum::serve(broker_listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
                if let Err(err) = served {
                    tracing::error!("broker stopped: {err}");
                }
            });
        }
        tracing::info!(broker = %broker_addr, gateway = %gateway_addr, admin = %admin_addr, store = ?store.backend(), replica = %replica.id,
            recovered_ms, routes_ms, seeded_ms, "ovsb started");
        Ok(Server {
            broker_addr,
            gateway_addr,
            admin_addr,
            store,
            routes,
            routing,
            replica: replica.id,
            usage,
            shutdown,
            tracker,
            data_dir,
            _lock: lock,
        })
    }

    /// Asks every task to stop.
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every task has stopped (at most `grace`), then closes the store.
    pub async fn wait(self, grace: Duration) {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!("some tasks did not stop within {grace:?}");
        }
        // The gateway has stopped: what it metered goes to the store before the store closes.
        match self.usage.flush(&self.store).await {
            Ok(rows) => tracing::info!(rows, "usage flushed"),
            Err(err) => {
                tracing::error!("usage: the last flush failed; what was metered since the previous one is lost: {err}")
            }
        }
        self.store.close().await;
        remove_run_files(&self.data_dir);
    }
}

/// `ovsb.pid` (this process's id, for `kill -HUP $(cat .ovsb/ovsb.pid)`) and `admin.addr` (where
/// the admin listener is bound, for `ovsb reload`) in the data directory. Failing to write them
/// is logged, not fatal: they are conveniences.
fn write_run_files(data_dir: &Path, admin: SocketAddr) {
    for (name, text) in [(PID_FILE, std::process::id().to_string()), (ADMIN_ADDR_FILE, admin.to_string())] {
        if let Err(err) = std::fs::write(data_dir.join(name), format!("{text}\n")) {
            tracing::warn!("cannot write {}: {err}", data_dir.join(name).display());
        }
    }
}

/// Removes the run files if they are still this process's.
fn remove_run_files(data_dir: &Path) {
    let pid = data_dir.join(PID_FILE);
    if std::fs::read_to_string(&pid).is_ok_and(|text| text.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(pid);
        let _ = std::fs::remove_file(data_dir.join(ADMIN_ADDR_FILE));
    }
}

/// The PID file in the data directory.
pub const PID_FILE: &str = "ovsb.pid";
/// The file in the data directory that names the admin listener's address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Warns when the data directory (which holds the broker's secret key, its password and the
/// identity keys) lies inside a git work tree that does not ignore it: `git add .` would
/// commit every tenant's keys.
fn warn_if_committable(data_dir: &Path) {
    let Ok(dir) = data_dir.canonicalize() else { return };
    if !dir.ancestors().skip(1).any(|a| a.join(".git").exists()) {
        return;
    }
    let ignored = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["check-ignore", "-q", "."])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    // Exit 1: not ignored. Anything else (ignored, no git, not a work tree) says nothing.
    if ignored.is_ok_and(|status| status.code() == Some(1)) {
        tracing::warn!(data_dir = %dir.display(),
            "the data directory holds secrets (secret.key, broker-password, identity.keys) and lies in a git work tree that does not ignore it: add it to .gitignore");
    }
}

/// Opens the store; a PostgreSQL server that does not answer (yet) is retried with backoff until
/// it does or `shutdown` comes. SQLite errors are final.
async fn open_store(url: &str, shutdown: &CancellationToken) -> Result<Store, StartError> {
    let mut pause = Duration::from_millis(250);
    loop {
        match Store::open(url).await {
            Ok(store) => return Ok(store),
            Err(err @ (crate::store::StoreError::Database(_) | crate::store::StoreError::Unreachable { .. }))
                if !url.starts_with("sqlite:") =>
            {
                tracing::warn!("the store is not reachable yet ({err}); retrying in {pause:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(err.into()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The plugin runtime `ovsb serve` runs `config`'s plugins in, with its compile cache on disk
/// (`runtime.cache_dir`, or `plugin-cache` in the data directory).
fn plugin_runtime(config: &Config) -> Result<PluginRuntime, StartError> {
    PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(config.runtime.cache_dir.clone().unwrap_or_else(|| config.data_dir.join("plugin-cache"))),
        ..RuntimeConfig::from_settings(&config.runtime)
    })
    .map_err(|err| StartError::Plugins(err.to_string()))
}

/// `ovsb plugin compile`: compiles every plugin `config` declares into the compile cache that
/// `ovsb serve` with `config` reads (checking each `sha256` pin), so that a start or a reload
/// that adds them loads them in milliseconds. One line per plugin.
pub fn compile_plugins(config: &Config) -> Result<String, StartError> {
    let runtime = plugin_runtime(config)?;
    let compiled =
        crate::plugins::compile_all(&runtime, &config.plugins).map_err(|e| StartError::Plugins(e.to_string()))?;
    let lines: Vec<String> = compiled
        .iter()
        .map(|c| {
            let how = if c.fresh { "compiled" } else { "already in the compile cache" };
            format!("{}: {how} ({} ms, sha256 {})", c.name, c.ms, c.sha256)
        })
        .collect();
    Ok(lines.join("\n"))
}

/// The `OVSB_*` variables of this process (the one place the environment is read).
pub fn process_env() -> HashMap<String, String> {
    std::env::vars().filter(|(name, _)| name.starts_with("OVSB_")).collect()
}

fn random_password() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 18];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Listen { addr, source })
}

fn prepare_dir(dir: &Path) -> Result<(), StartError> {
    let fail = |reason: String| StartError::DataDir { path: dir.display().to_string(), reason };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let path = dir.join("ovsb.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::DataDir { path: dir.display().to_string(), reason: e.to_string() })?;
    file.try_lock().map_err(|_| StartError::DataDir {
        path: dir.display().to_string(),
        reason: "another ovsb is using it (SQLite serves one process; use PostgreSQL for several replicas)".into(),
    })?;
    Ok(file)
}
