//! The durable store: instances, operations, bindings, audit records.
//!
//! Owns: every line of SQL in ovsb, and the migrations (embedded). One code path serves both
//! backends through sqlx's `Any` driver: SQLite (the embedded default, one file, WAL) and
//! PostgreSQL (for several replicas). Must not: decide OSB semantics; callers decide, inside
//! [`Store::instance_transition`] / [`Store::binding_transition`], what a request does given the
//! current rows, and the store applies that decision atomically.
//!
//! Every state change is one transaction, and every such transaction starts by bumping the
//! single `changes` row: on PostgreSQL that row lock serializes the writers of all replicas
//! (so two replicas cannot both create the same instance), on SQLite it takes the write lock
//! up front (so a transaction never fails half-way for a lock upgrade). The generation it
//! bumps, and the instance it names in `route_changes`, tell other replicas which instance's
//! routes to rebuild.

mod nodes;
mod validators;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use nodes::{NodeClaim, NodeOwner, OwnedNode};
pub use validators::{HistoryRow, KeptHistory, union_on_chain};

/// Records, in the transaction that bumped the generation, which instance the change touched.
async fn log_change(tx: &mut sqlx::Transaction<'_, sqlx::Any>, instance_id: &str) -> Result<()> {
    sqlx::query("INSERT INTO route_changes (generation, instance_id) SELECT generation, $1 FROM changes WHERE id = 1")
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Why a PostgreSQL server is not reachable: its `host:port` and the error of one direct
/// connection attempt (the pool itself only says that it timed out).
async fn unreachable(url: &str, pooled: sqlx::Error) -> StoreError {
    use sqlx::Connection as _;
    let address = reqwest::Url::parse(url)
        .ok()
        .map(|u| format!("{}:{}", u.host_str().unwrap_or("localhost"), u.port().unwrap_or(5432)))
        .unwrap_or_else(|| "(an address that is not a URL)".into());
    let cause = match tokio::time::timeout(std::time::Duration::from_secs(5), sqlx::AnyConnection::connect(url)).await {
        Ok(Err(sqlx::Error::Io(io))) => io.to_string(),
        Ok(Err(err)) => err.to_string(),
        Ok(Ok(_)) => pooled.to_string(),
        Err(_) => "no answer within 5 s".into(),
    };
    StoreError::Unreachable { address, cause }
}

/// A store failure. The message is for logs: it may name the database, never a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database server could not be reached when opening the store.
    #[error("cannot reach the database at {address}: {cause}")]
    Unreachable {
        /// `host:port` (never the credentials).
        address: String,
        /// The first connection attempt's own error (e.g. connection refused).
        cause: String,
    },
    /// The migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that cannot be read back (e.g. an unknown state string).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The SQLite file could not be prepared.
    #[error("cannot prepare the SQLite database at {path}: {source}")]
    Prepare {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),* }
        impl $name {
            /// The text stored (and, for operation states, sent to platforms).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            fn parse(text: &str) -> Result<Self> {
                match text {
                    $($text => Ok($name::$variant),)*
                    other => Err(StoreError::Corrupt(format!("unknown {} {other:?}", stringify!($name)))),
                }
            }
        }
    };
}

string_enum!(
    /// Where an instance is in its life.
    InstanceState {
        /// Its provision operation is running.
        Provisioning = "provisioning",
        /// Serving.
        Ready = "ready",
        /// Serving with its old settings while an update runs.
        Updating = "updating",
        /// Its deprovision operation is running; its bindings are already revoked.
        Deprovisioning = "deprovisioning",
        /// Provisioning or deprovisioning failed; only a deprovision helps.
        Failed = "failed",
        /// Deprovisioned; the row is a tombstone so that `last_operation` can still answer.
        Deleted = "deleted",
    }
);

string_enum!(
    /// What an operation does.
    OperationKind {
        /// Create the instance.
        Provision = "provision",
        /// Change its plan or parameters.
        Update = "update",
        /// Remove it.
        Deprovision = "deprovision",
    }
);

string_enum!(
    /// An operation's state, with the OSB spellings.
    OperationState {
        /// Running.
        InProgress = "in progress",
        /// Done.
        Succeeded = "succeeded",
        /// Given up, with a reason in the description.
        Failed = "failed",
    }
);

/// A service instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Platform-chosen id.
    pub id: String,
    /// Catalog service id.
    pub service_id: String,
    /// Catalog plan id (the old one while an update to another plan runs).
    pub plan_id: String,
    /// From the provision request.
    pub organization_guid: String,
    /// From the provision request.
    pub space_guid: String,
    /// `parameters` as JSON text, if given.
    pub parameters: Option<String>,
    /// `context` as JSON text, if given.
    pub context: Option<String>,
    /// The `maintenance_info.version` it runs.
    pub maintenance_version: Option<String>,
    /// Life-cycle state.
    pub state: InstanceState,
    /// Its latest operation.
    pub operation_id: String,
    /// Created at (ms).
    pub created_ms: i64,
    /// Last changed at (ms).
    pub updated_ms: i64,
}

/// An asynchronous operation on an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    /// Broker-chosen id, sent to platforms as `operation`.
    pub id: String,
    /// The instance.
    pub instance_id: String,
    /// What it does.
    pub kind: OperationKind,
    /// Where it is.
    pub state: OperationState,
    /// Progress or the reason it failed; shown to users.
    pub description: String,
    /// JSON: what it applies.
    pub request: String,
    /// When it is given up (ms).
    pub deadline_ms: i64,
    /// The replica running it.
    pub lease_owner: String,
    /// Until when that replica's claim holds (ms).
    pub lease_until_ms: i64,
    /// Started at (ms).
    pub created_ms: i64,
    /// Last changed at (ms).
    pub updated_ms: i64,
}

/// A binding.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRow {
    /// The instance.
    pub instance_id: String,
    /// Platform-chosen id.
    pub id: String,
    /// From the bind request.
    pub service_id: String,
    /// From the bind request.
    pub plan_id: String,
    /// `parameters` as JSON text, if given.
    pub parameters: Option<String>,
    /// `bind_resource` as JSON text, if given.
    pub bind_resource: Option<String>,
    /// `context` as JSON text, if given.
    pub context: Option<String>,
    /// Salt of the key derivation (hex).
    pub key_salt: String,
    /// SHA-256 of the key (hex).
    pub key_sha256: String,
    /// Created at (ms).
    pub created_ms: i64,
    /// The binding this one rotated (`predecessor_binding_id`), if any.
    pub predecessor_id: Option<String>,
    /// When its credentials stop working (ms), if they expire.
    pub expires_ms: Option<i64>,
}

/// Who asked for a change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditEntry {
    /// `provision`, `update`, `deprovision`, `bind`, `unbind`.
    pub action: String,
    /// The binding, for bind and unbind.
    pub binding_id: Option<String>,
    /// `X-Broker-API-Request-Identity`.
    pub request_identity: Option<String>,
    /// Platform named by `X-Broker-API-Originating-Identity`.
    pub platform: Option<String>,
    /// The decoded identity (JSON text).
    pub identity: Option<String>,
}

/// One write a transition makes.
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert or replace the instance row.
    PutInstance(InstanceRow),
    /// Start an operation.
    InsertOperation(OperationRow),
    /// End a running operation as failed, with this description (an operation that passed its
    /// deadline and is superseded); its runner, if any, then finds it ended and drops its result.
    FailOperation {
        /// The operation.
        id: String,
        /// Why it failed.
        description: String,
    },
    /// Revoke every binding of the instance.
    DeleteBindings,
    /// Create a binding.
    InsertBinding(BindingRow),
    /// Remove the binding.
    DeleteBinding,
    /// Record who did it.
    Audit(AuditEntry),
}

/// A decision: what to write (nothing, for an answer from the current state) and what to answer.
pub struct Decision<T> {
    /// Applied in order, in one transaction.
    pub changes: Vec<Change>,
    /// Returned to the caller once committed.
    pub answer: T,
}

impl<T> Decision<T> {
    /// Answer without changing anything.
    pub fn answer(answer: T) -> Self {
        Decision { changes: Vec::new(), answer }
    }
}

/// What a transition is decided on.
pub struct InstanceView<'a> {
    /// The instance row, tombstones included.
    pub instance: Option<&'a InstanceRow>,
    /// The instance's latest operation.
    pub operation: Option<&'a OperationRow>,
    /// Instances of the requested plan that are not deleted (when asked for).
    pub plan_count: u64,
}

/// A running operation a replica has claimed.
pub type Claimed = OperationRow;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one process.
    Sqlite,
    /// Shared by replicas.
    Postgres,
}

const INSTANCE_COLUMNS: &str = "id, service_id, plan_id, organization_guid, space_guid, parameters, context, \
     maintenance_version, state, operation_id, created_ms, updated_ms";
const OPERATION_COLUMNS: &str = "id, instance_id, kind, state, description, request, deadline_ms, lease_owner, \
     lease_until_ms, created_ms, updated_ms";
const BINDING_COLUMNS: &str = "instance_id, id, service_id, plan_id, parameters, bind_resource, context, key_salt, \
     key_sha256, created_ms, predecessor_id, expires_ms";

impl Store {
    /// Connects, creating the SQLite file (and its directory) if needed, and applies the
    /// migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let (url, max) = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(dir) = std::path::Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| StoreError::Prepare { path: path.to_string(), source })?;
                }
                let url = if url.contains('?') { url.to_string() } else { format!("{url}?mode=rwc") };
                // One connection: the broker's writes are few, and SQLite has one writer anyway.
                (url, 1)
            }
            Backend::Postgres => (url.to_string(), 8),
        };
        let pool = match AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
        {
            Ok(pool) => pool,
            Err(err @ (sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_)))
                if backend == Backend::Postgres =>
            {
                return Err(unreachable(&url, err).await);
            }
            Err(err) => return Err(err.into()),
        };
        if backend == Backend::Sqlite {
            // WAL is a property of the file: set once, every later connection uses it. Full
            // synchronous mode: a committed change survives a power cut.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
            sqlx::query("PRAGMA synchronous = FULL").execute(&pool).await?;
        }
        sqlx::migrate!("src/store/migrations").run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records `value` under `name` unless a value is already there; returns the value in effect.
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(row.try_get("value")?)
    }

    /// Sets a setting, replacing its value.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The change counter (see the module docs).
    pub async fn generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT generation FROM changes WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(row.try_get("generation")?)
    }

    /// An instance, tombstones included.
    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| instance_from(&row)).transpose()
    }

    /// An operation.
    pub async fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| operation_from(&row)).transpose()
    }

    /// A binding.
    pub async fn binding(&self, instance_id: &str, id: &str) -> Result<Option<BindingRow>> {
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1 AND id = $2");
        let row = sqlx::query(&sql).bind(instance_id).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| binding_from(&row)).transpose()
    }

    /// Every instance that serves calls (ready or updating), and every binding.
    pub async fn serving(&self) -> Result<(Vec<InstanceRow>, Vec<BindingRow>)> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state IN ('ready', 'updating')");
        let instances =
            sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(instance_from).collect::<Result<_>>()?;
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings");
        let bindings =
            sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(binding_from).collect::<Result<_>>()?;
        Ok((instances, bindings))
    }

    /// Instance `id` if it is serving (ready or updating), with its bindings.
    pub async fn serving_instance(&self, id: &str) -> Result<Option<(InstanceRow, Vec<BindingRow>)>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND state IN ('ready', 'updating')");
        let Some(instance) = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await? else { return Ok(None) };
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1");
        let bindings =
            sqlx::query(&sql).bind(id).fetch_all(&self.pool).await?.iter().map(binding_from).collect::<Result<_>>()?;
        Ok(Some((instance_from(&instance)?, bindings)))
    }

    /// The instances changed after generation `since`, and the generation they bring the
    /// reader to; `None` when the change log no longer reaches back to `since` (pruned).
    ///
    /// The current generation is read first: every change up to it has committed together
    /// with its log row (one transaction each, serialized by the `changes` row), so the log is
    /// then read only up to it. Reading the log first would race a writer that commits between
    /// the two statements, and take a gap that is not there for a pruned log.
    pub async fn changes_since(&self, since: i64) -> Result<Option<(i64, Vec<String>)>> {
        let current = self.generation().await?;
        if current == since {
            return Ok(Some((since, Vec::new())));
        }
        if current < since {
            // The store went back in time (restored from a backup): reload.
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT generation, instance_id FROM route_changes WHERE generation > $1 AND generation <= $2 \
             ORDER BY generation LIMIT 10000",
        )
        .bind(since)
        .bind(current)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut last = since;
        for row in &rows {
            let generation: i64 = row.try_get("generation")?;
            if generation != last + 1 {
                // Pruned past `since`, or a change that was not logged (a replica of an older
                // version): reload.
                return Ok(None);
            }
            last = generation;
            ids.push(row.try_get("instance_id")?);
        }
        // Nothing logged after `since` although the generation moved: pruned.
        Ok((last > since).then_some((last, ids)))
    }

    /// Drops the change log's rows more than `keep` generations old.
    pub async fn prune_changes(&self, keep: i64) -> Result<()> {
        sqlx::query("DELETE FROM route_changes WHERE generation < (SELECT generation FROM changes WHERE id = 1) - $1")
            .bind(keep)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every instance that is not a tombstone.
    pub async fn instances_not_deleted(&self) -> Result<Vec<InstanceRow>> {
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE state <> 'deleted'");
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(instance_from).collect()
    }

    /// Number of instances in each state (tombstones included as `deleted`).
    pub async fn instances_by_state(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM instances GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("state")?, row.try_get("n")?))).collect()
    }

    /// Counts of rows, for tests and metrics: (instances not deleted, operations, bindings, audit).
    pub async fn counts(&self) -> Result<(i64, i64, i64, i64)> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM instances WHERE state <> 'deleted') AS i, \
             (SELECT COUNT(*) FROM operations) AS o, (SELECT COUNT(*) FROM bindings) AS b, \
             (SELECT COUNT(*) FROM audit) AS a",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("i")?, row.try_get("o")?, row.try_get("b")?, row.try_get("a")?))
    }

    /// Decides, on the current rows of instance `id`, what a request does, and applies the
    /// decision's changes in one transaction. `plan_id` asks for the count of live instances of
    /// that plan (for per-plan caps).
    pub async fn instance_transition<T>(
        &self,
        id: &str,
        plan_id: Option<&str>,
        decide: impl FnOnce(InstanceView<'_>) -> Decision<T>,
    ) -> Result<T> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE changes SET generation = generation + 1 WHERE id = 1").execute(&mut *tx).await?;
        log_change(&mut tx, id).await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
        let instance =
            sqlx::query(&sql).bind(id).fetch_optional(&mut *tx).await?.map(|r| instance_from(&r)).transpose()?;
        let operation = match &instance {
            Some(instance) => {
                let sql = format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1");
                sqlx::query(&sql)
                    .bind(&instance.operation_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| operation_from(&r))
                    .transpose()?
            }
            None => None,
        };
        let plan_count = match plan_id {
            Some(plan_id) => {
                let row = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE plan_id = $1 AND state <> 'deleted'")
                    .bind(plan_id)
                    .fetch_one(&mut *tx)
                    .await?;
                row.try_get::<i64, _>("n")? as u64
            }
            None => 0,
        };
        let decision = decide(InstanceView { instance: instance.as_ref(), operation: operation.as_ref(), plan_count });
        if decision.changes.is_empty() {
            tx.rollback().await?;
            return Ok(decision.answer);
        }
        for change in decision.changes {
            apply(&mut tx, id, None, change).await?;
        }
        tx.commit().await?;
        Ok(decision.answer)
    }

    /// Decides, on the current instance and binding rows, what a bind or unbind does, and
    /// applies it in one transaction.
    pub async fn binding_transition<T>(
        &self,
        instance_id: &str,
        binding_id: &str,
        decide: impl FnOnce(Option<&InstanceRow>, Option<&BindingRow>) -> Decision<T>,
    ) -> Result<T> {
        self.rotation_transition(instance_id, binding_id, None, |instance, binding, _| decide(instance, binding)).await
    }

    /// [`Store::binding_transition`] that also reads binding `predecessor_id` of the same
    /// instance (a rotation's predecessor), in the same transaction.
    pub async fn rotation_transition<T>(
        &self,
        instance_id: &str,
        binding_id: &str,
        predecessor_id: Option<&str>,
        decide: impl FnOnce(Option<&InstanceRow>, Option<&BindingRow>, Option<&BindingRow>) -> Decision<T>,
    ) -> Result<T> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE changes SET generation = generation + 1 WHERE id = 1").execute(&mut *tx).await?;
        log_change(&mut tx, instance_id).await?;
        let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1");
        let instance = sqlx::query(&sql)
            .bind(instance_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| instance_from(&r))
            .transpose()?;
        let sql = format!("SELECT {BINDING_COLUMNS} FROM bindings WHERE instance_id = $1 AND id = $2");
        let binding = sqlx::query(&sql)
            .bind(instance_id)
            .bind(binding_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| binding_from(&r))
            .transpose()?;
        let predecessor = match predecessor_id {
            Some(predecessor_id) => sqlx::query(&sql)
                .bind(instance_id)
                .bind(predecessor_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| binding_from(&r))
                .transpose()?,
            None => None,
        };
        let decision = decide(instance.as_ref(), binding.as_ref(), predecessor.as_ref());
        if decision.changes.is_empty() {
            tx.rollback().await?;
            return Ok(decision.answer);
        }
        for change in decision.changes {
            apply(&mut tx, instance_id, Some(binding_id), change).await?;
        }
        tx.commit().await?;
        Ok(decision.answer)
    }

    /// Updates a running operation's progress text, if `owner` still holds it.
    pub async fn set_progress(&self, operation_id: &str, owner: &str, description: &str) -> Result<()> {
        sqlx::query(
            "UPDATE operations SET description = $1, updated_ms = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'in progress'",
        )
        .bind(description)
        .bind(now_ms())
        .bind(operation_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends an operation that `owner` holds, and writes the instance's resulting row, in one
    /// transaction. Returns false (and changes nothing) when `owner` no longer holds it.
    /// `request` replaces the operation's request (the runner drops the sealed secrets it no
    /// longer needs).
    pub async fn finish_operation(
        &self,
        operation_id: &str,
        owner: &str,
        state: OperationState,
        description: &str,
        request: &str,
        instance: InstanceRow,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE changes SET generation = generation + 1 WHERE id = 1").execute(&mut *tx).await?;
        log_change(&mut tx, &instance.id).await?;
        let done = sqlx::query(
            "UPDATE operations SET state = $1, description = $2, request = $3, updated_ms = $4 \
             WHERE id = $5 AND lease_owner = $6 AND state = 'in progress'",
        )
        .bind(state.as_str())
        .bind(description)
        .bind(request)
        .bind(now_ms())
        .bind(operation_id)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let id = instance.id.clone();
        if instance.state == InstanceState::Deleted {
            // Its node is gone: nobody runs it any more.
            sqlx::query("DELETE FROM node_owners WHERE instance_id = $1").bind(&id).execute(&mut *tx).await?;
        }
        apply(&mut tx, &id, None, Change::PutInstance(instance)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a running operation that `owner` holds as failed, touching nothing else (an
    /// operation whose instance row is missing).
    pub async fn fail_operation(&self, operation_id: &str, owner: &str, description: &str) -> Result<bool> {
        let failed = sqlx::query(
            "UPDATE operations SET state = 'failed', description = $1, updated_ms = $2 \
             WHERE id = $3 AND lease_owner = $4 AND state = 'in progress'",
        )
        .bind(description)
        .bind(now_ms())
        .bind(operation_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(failed.rows_affected() == 1)
    }

    /// Hands a running operation that `from` holds to replica `to` (the owner of the
    /// instance's node), with a lapsed lease so that `to` claims it at its next look.
    pub async fn hand_over(&self, operation_id: &str, from: &str, to: &str) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE operations SET lease_owner = $1, lease_until_ms = 0 \
             WHERE id = $2 AND lease_owner = $3 AND state = 'in progress'",
        )
        .bind(to)
        .bind(operation_id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// Sets the lease of one operation `owner` holds (0 hands it over at once). False when
    /// `owner` no longer holds it, or it has ended.
    pub async fn renew_leases_of(&self, operation_id: &str, owner: &str, until_ms: i64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE operations SET lease_until_ms = $1 WHERE id = $2 AND lease_owner = $3 AND state = 'in progress'",
        )
        .bind(until_ms)
        .bind(operation_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Claims for `owner` every running operation whose claim has lapsed (or, with
    /// `take_all`, every running operation: for a store only this process can open), except
    /// those in `running` (the operations `owner` is running now) and those of instances whose
    /// node another replica runs that is not in `dead`: theirs to run.
    pub async fn claim_stale(
        &self,
        owner: &str,
        until_ms: i64,
        take_all: bool,
        running: &std::collections::HashSet<String>,
        dead: &std::collections::HashMap<String, i64>,
    ) -> Result<Vec<Claimed>> {
        let now = now_ms();
        let horizon = if take_all { i64::MAX } else { now };
        let sql = format!(
            "SELECT {OPERATION_COLUMNS}, (SELECT n.replica_id FROM node_owners n \
             WHERE n.instance_id = operations.instance_id) AS node_owner \
             FROM operations WHERE state = 'in progress' AND lease_until_ms < $1"
        );
        let rows = sqlx::query(&sql).bind(horizon).fetch_all(&self.pool).await?;
        let mut stale = Vec::new();
        for row in &rows {
            let node_owner: Option<String> = row.try_get("node_owner")?;
            let theirs = node_owner.is_some_and(|o| o != owner && !dead.contains_key(&o));
            let op = operation_from(row)?;
            if !theirs && !running.contains(&op.id) {
                stale.push(op);
            }
        }
        let mut claimed = Vec::new();
        for mut op in stale {
            let taken = sqlx::query(
                "UPDATE operations SET lease_owner = $1, lease_until_ms = $2 \
                 WHERE id = $3 AND state = 'in progress' AND lease_owner = $4 AND lease_until_ms = $5",
            )
            .bind(owner)
            .bind(until_ms)
            .bind(&op.id)
            .bind(&op.lease_owner)
            .bind(op.lease_until_ms)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                op.lease_owner = owner.to_string();
                op.lease_until_ms = until_ms;
                claimed.push(op);
            }
        }
        Ok(claimed)
    }

    /// Audit records of an instance, oldest first.
    pub async fn audit(&self, instance_id: &str) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT action, binding_id, request_identity, platform, identity FROM audit \
             WHERE instance_id = $1 ORDER BY at_ms, id",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    action: row.try_get("action")?,
                    binding_id: row.try_get("binding_id")?,
                    request_identity: row.try_get("request_identity")?,
                    platform: row.try_get("platform")?,
                    identity: row.try_get("identity")?,
                })
            })
            .collect()
    }
}

async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance_id: &str,
    binding_id: Option<&str>,
    change: Change,
) -> Result<()> {
    match change {
        Change::PutInstance(row) => {
            sqlx::query(
                "INSERT INTO instances (id, service_id, plan_id, organization_guid, space_guid, parameters, context, \
                 maintenance_version, state, operation_id, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, plan_id = excluded.plan_id, \
                 organization_guid = excluded.organization_guid, space_guid = excluded.space_guid, \
                 parameters = excluded.parameters, context = excluded.context, \
                 maintenance_version = excluded.maintenance_version, state = excluded.state, \
                 operation_id = excluded.operation_id, created_ms = excluded.created_ms, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(row.id)
            .bind(row.service_id)
            .bind(row.plan_id)
            .bind(row.organization_guid)
            .bind(row.space_guid)
            .bind(row.parameters)
            .bind(row.context)
            .bind(row.maintenance_version)
            .bind(row.state.as_str())
            .bind(row.operation_id)
            .bind(row.created_ms)
            .bind(row.updated_ms)
            .execute(&mut **tx)
            .await?;
        }
        Change::InsertOperation(op) => {
            sqlx::query(
                "INSERT INTO operations (id, instance_id, kind, state, description, request, deadline_ms, \
                 lease_owner, lease_until_ms, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(op.id)
            .bind(op.instance_id)
            .bind(op.kind.as_str())
            .bind(op.state.as_str())
            .bind(op.description)
            .bind(op.request)
            .bind(op.deadline_ms)
            .bind(op.lease_owner)
            .bind(op.lease_until_ms)
            .bind(op.created_ms)
            .bind(op.updated_ms)
            .execute(&mut **tx)
            .await?;
        }
        Change::FailOperation { id, description } => {
            sqlx::query(
                "UPDATE operations SET state = 'failed', description = $1, updated_ms = $2 \
                 WHERE id = $3 AND state = 'in progress'",
            )
            .bind(description)
            .bind(now_ms())
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteBindings => {
            sqlx::query("DELETE FROM bindings WHERE instance_id = $1").bind(instance_id).execute(&mut **tx).await?;
        }
        Change::InsertBinding(b) => {
            sqlx::query(
                "INSERT INTO bindings (instance_id, id, service_id, plan_id, parameters, bind_resource, context, \
                 key_salt, key_sha256, created_ms, predecessor_id, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(b.instance_id)
            .bind(b.id)
            .bind(b.service_id)
            .bind(b.plan_id)
            .bind(b.parameters)
            .bind(b.bind_resource)
            .bind(b.context)
            .bind(b.key_salt)
            .bind(b.key_sha256)
            .bind(b.created_ms)
            .bind(b.predecessor_id)
            .bind(b.expires_ms)
            .execute(&mut **tx)
            .await?;
        }
        Change::DeleteBinding => {
            sqlx::query("DELETE FROM bindings WHERE instance_id = $1 AND id = $2")
                .bind(instance_id)
                .bind(binding_id.unwrap_or_default())
                .execute(&mut **tx)
                .await?;
        }
        Change::Audit(entry) => {
            sqlx::query(
                "INSERT INTO audit (id, at_ms, action, instance_id, binding_id, request_identity, platform, identity) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(random_id())
            .bind(now_ms())
            .bind(entry.action)
            .bind(instance_id)
            .bind(entry.binding_id.or(binding_id.map(str::to_string)))
            .bind(entry.request_identity)
            .bind(entry.platform)
            .bind(entry.identity)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// 16 random bytes as hex: ids of operations, audit rows and replicas.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

fn instance_from(row: &AnyRow) -> Result<InstanceRow> {
    Ok(InstanceRow {
        id: row.try_get("id")?,
        service_id: row.try_get("service_id")?,
        plan_id: row.try_get("plan_id")?,
        organization_guid: row.try_get("organization_guid")?,
        space_guid: row.try_get("space_guid")?,
        parameters: row.try_get("parameters")?,
        context: row.try_get("context")?,
        maintenance_version: row.try_get("maintenance_version")?,
        state: InstanceState::parse(&row.try_get::<String, _>("state")?)?,
        operation_id: row.try_get("operation_id")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn operation_from(row: &AnyRow) -> Result<OperationRow> {
    Ok(OperationRow {
        id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        kind: OperationKind::parse(&row.try_get::<String, _>("kind")?)?,
        state: OperationState::parse(&row.try_get::<String, _>("state")?)?,
        description: row.try_get("description")?,
        request: row.try_get("request")?,
        deadline_ms: row.try_get("deadline_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn binding_from(row: &AnyRow) -> Result<BindingRow> {
    Ok(BindingRow {
        instance_id: row.try_get("instance_id")?,
        id: row.try_get("id")?,
        service_id: row.try_get("service_id")?,
        plan_id: row.try_get("plan_id")?,
        parameters: row.try_get("parameters")?,
        bind_resource: row.try_get("bind_resource")?,
        context: row.try_get("context")?,
        key_salt: row.try_get("key_salt")?,
        key_sha256: row.try_get("key_sha256")?,
        created_ms: row.try_get("created_ms")?,
        predecessor_id: row.try_get("predecessor_id")?,
        expires_ms: row.try_get("expires_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_postgres_is_named_by_address_and_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // The listener is gone: nothing listens on the port.
        let url = format!("postgres://ovsb:hunter2@127.0.0.1:{port}/ovsb");
        let err = Store::open(&url).await.err().expect("nothing listens there");
        let message = err.to_string();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("hunter2"), "no credentials in the message: {message}");
    }
}
