//! The durable store: instances, operations, bindings, audit records.
//!
//! Owns: every line of SQL in ovsb, and the migrations (embedded). One code path serves both
//! backends through sqlx's `Any` driver: SQLite (the embedded default, one file, WAL) and
//! PostgreSQL (for several replicas). Must not: decide OSB semantics; callers decide, inside
//! [`Store::instance_transition`] / [`Store::binding_transition`], what a request does given the
//! current rows, and the store applies that decision atomically.
//!
//! Every state change is one transaction (or a savepoint of a group's transaction: `group`),
//! and every such change starts by bumping the single `changes` row: on PostgreSQL that row lock serializes the writers of all replicas
//! (so two replicas cannot both create the same instance), on SQLite it takes the write lock
//! up front (so a transaction never fails half-way for a lock upgrade). The generation it
//! bumps, and the instance it names in `route_changes`, tell other replicas which instance's
//! routes to rebuild.
//!
//! ## Layout
//! - `rows`: the row types and their enums, each decoded once as it is read (a JSON column that
//!   does not decode is [`StoreError::Corrupt`]); an operation's request as [`OperationRequest`].
//! - `instances`: instance and binding reads, and the decide-then-apply transitions.
//! - `operations`: a running operation's progress, its end, leases, hand-over, stale claims.
//! - `group`: group commit: the state changes that wait for the store together (a provision
//!   accepted, another's operation ended) run in one transaction, each in a savepoint, and
//!   commit once; each is answered only after that commit.
//! - `changes`: the generation, the change log other replicas follow, its pruning, the audit.
//! - `nodes`: replicas and which of them runs each node.
//! - `validators`: validator keys and their slashing-protection history.
//! - `plan_instances` (a table, kept by `instances`): the live instances of each plan, so that a
//!   plan's cap is checked by reading one row (`work_tests` shows that a provision's store work
//!   does not grow with the number of instances).
//! - `usage`: metered usage per replica, binding, method and minute, and its reports.
//!
//! This file: [`Store`] itself, opening it, the backend, settings and [`StoreError`].

mod changes;
mod group;
mod instances;
mod nodes;
mod operations;
mod rows;
mod usage;
mod validators;
#[cfg(test)]
mod work_tests;

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

pub use instances::{Change, Decision, InstanceView};
pub use nodes::{NodeClaim, NodeOwner, OwnedNode};
pub use operations::Claimed;
pub use rows::{
    AuditEntry, BindingRow, InstanceRow, InstanceState, OperationKind, OperationRequest, OperationRow, OperationState,
    SealedRequest, UpdateRequest,
};
pub use usage::{UsageCounts, UsageGrouping, UsageQuery, UsageReportRow, UsageRow, UsageTop};
pub use validators::{HistoryRow, KeptHistory, union_on_chain};

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
    /// A row that cannot be read back (an unknown state string, a JSON column that does not
    /// decode): see [`corrupt`].
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

/// A row of `table` that does not decode, for `reason`: logged at WARN and counted in
/// `ovsb_store_corrupt_rows_total{table}`. Every read that meets it fails with this error;
/// it is never skipped nor read as empty.
fn corrupt(table: &'static str, reason: String) -> StoreError {
    crate::telemetry::metrics().store_corrupt_rows.get_or_create(&crate::telemetry::TableLabels { table }).inc();
    let err = StoreError::Corrupt(reason);
    tracing::warn!("{err}");
    err
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// State changes waiting for a transaction, committed together (see `group`).
    group: std::sync::Arc<group::Group>,
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file, one process.
    Sqlite,
    /// Shared by replicas.
    Postgres,
}

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
        Ok(Store { pool, backend, group: Default::default() })
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
}

/// 16 random bytes as hex: ids of operations, audit rows and replicas.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::json;

    use super::*;

    async fn sqlite_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("ovsb.db").display())).await.unwrap();
        (store, dir)
    }

    /// A new database on the PostgreSQL server of `OVSB_TEST_POSTGRES_URL` (none when unset),
    /// with the server's URL and the database's name to drop it by.
    async fn postgres_store() -> Option<(Store, String, String)> {
        use sqlx::Connection as _;
        let admin = std::env::var("OVSB_TEST_POSTGRES_URL").ok()?;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
        let name = format!("ovsb_unit_{}", random_id());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let store = Store::open(&format!("{base}/{name}")).await.unwrap();
        Some((store, admin, name))
    }

    async fn drop_postgres(store: Store, admin: &str, name: &str) {
        use sqlx::Connection as _;
        store.close().await;
        let mut conn = sqlx::AnyConnection::connect(admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
    }

    fn corrupt_rows(table: &'static str) -> u64 {
        crate::telemetry::metrics().store_corrupt_rows.get_or_create(&crate::telemetry::TableLabels { table }).get()
    }

    /// Writes `sql` (`$1` = `id`, one row) past the store, as a damaged database would hold it.
    async fn write_raw(store: &Store, sql: &str, id: &str) {
        let changed = sqlx::query(sql).bind(id).execute(&store.pool).await.unwrap();
        assert_eq!(changed.rows_affected(), 1, "{sql}");
    }

    fn is_corrupt<T: std::fmt::Debug>(read: Result<T>, what: &str) {
        assert!(matches!(read, Err(StoreError::Corrupt(ref reason)) if reason.contains(what)), "{what}: {read:?}");
    }

    async fn corrupt_json_columns_fail_their_reads(store: &Store) {
        let now = now_ms();
        let instance = |id: &str, operation_id: &str| InstanceRow {
            id: id.into(),
            service_id: "service".into(),
            plan_id: "plan".into(),
            organization_guid: "org".into(),
            space_guid: "space".into(),
            parameters: Some(json!({"plugins": [{"name": "pass"}]})),
            context: Some(json!({"platform": "cloudfoundry"})),
            maintenance_version: None,
            state: InstanceState::Provisioning,
            operation_id: operation_id.into(),
            created_ms: now,
            updated_ms: now,
        };
        let operation = |id: &str, instance_id: &str| OperationRow {
            id: id.into(),
            instance_id: instance_id.into(),
            kind: OperationKind::Provision,
            state: OperationState::InProgress,
            description: "provision accepted".into(),
            request: OperationRequest::Provision(SealedRequest { sealed: Some("c2VhbGVk".into()) }),
            deadline_ms: now + 60_000,
            lease_owner: "a-replica-that-is-gone".into(),
            lease_until_ms: 0,
            created_ms: now,
            updated_ms: now,
        };
        let binding = BindingRow {
            instance_id: "good".into(),
            id: "b".into(),
            service_id: "service".into(),
            plan_id: "plan".into(),
            parameters: Some(json!({"allowed_origins": ["https://a.example"]})),
            bind_resource: Some(json!({"app_guid": "app"})),
            context: None,
            key_salt: "00".into(),
            key_sha256: "11".into(),
            created_ms: now,
            predecessor_id: None,
            expires_ms: None,
        };
        for (id, operation_id) in [("good", "op-good"), ("bad", "op-bad")] {
            let changes = vec![
                Change::PutInstance(instance(id, operation_id)),
                Change::InsertOperation(operation(operation_id, id)),
            ];
            store.instance_transition(id, None, |_| Decision { changes, answer: () }).await.unwrap();
        }
        let changes = vec![Change::InsertBinding(binding.clone())];
        store.binding_transition("good", "b", |_, _| Decision { changes, answer: () }).await.unwrap();

        // Each reads back as it was written, its JSON decoded.
        assert_eq!(store.instance("bad").await.unwrap(), Some(instance("bad", "op-bad")));
        assert_eq!(store.operation("op-bad").await.unwrap(), Some(operation("op-bad", "bad")));
        assert_eq!(store.binding("good", "b").await.unwrap(), Some(binding));

        let before = [corrupt_rows("instances"), corrupt_rows("operations"), corrupt_rows("bindings")];
        write_raw(store, "UPDATE instances SET context = 'not json' WHERE id = $1", "bad").await;
        write_raw(store, "UPDATE operations SET request = '{\"sealed\": 5}' WHERE id = $1", "op-bad").await;
        write_raw(store, "UPDATE bindings SET bind_resource = '{' WHERE id = $1", "b").await;

        is_corrupt(store.instance("bad").await, "instances row bad: context is not JSON");
        is_corrupt(store.instances_not_deleted().await, "instances row bad");
        let decided = std::cell::Cell::new(false);
        let transition = store
            .instance_transition("bad", None, |_| {
                decided.set(true);
                Decision::answer(())
            })
            .await;
        is_corrupt(transition, "instances row bad");
        assert!(!decided.get(), "nothing is decided on a row that does not decode");
        is_corrupt(store.operation("op-bad").await, "operations row op-bad: request is not a provision request");
        is_corrupt(store.binding("good", "b").await, "bindings row good/b: bind_resource is not JSON");
        let after = [corrupt_rows("instances"), corrupt_rows("operations"), corrupt_rows("bindings")];
        assert!(after.iter().zip(before).all(|(after, before)| *after > before), "{before:?} -> {after:?}");

        // A stale operation that does not decode is counted again and left where it is; the
        // others are claimed all the same.
        let claimed = store.claim_stale("me", now + 60_000, false, &HashSet::new(), &HashMap::new()).await.unwrap();
        assert_eq!(claimed.iter().map(|op| op.id.as_str()).collect::<Vec<_>>(), ["op-good"]);
        assert!(corrupt_rows("operations") > after[1]);
        assert!(store.instance("good").await.unwrap().is_some(), "the good rows read on");
    }

    /// Changes that wait together run in one transaction, in order: each decides on what the
    /// ones before it wrote, and one that fails (a corrupt row) fails alone.
    async fn grouped_changes_see_each_other_and_fail_alone(store: &Store) {
        let now = now_ms();
        let row = |id: &str| InstanceRow {
            id: id.into(),
            service_id: "service".into(),
            plan_id: "plan".into(),
            organization_guid: "org".into(),
            space_guid: "space".into(),
            parameters: None,
            context: None,
            maintenance_version: None,
            state: InstanceState::Provisioning,
            operation_id: "op".into(),
            created_ms: now,
            updated_ms: now,
        };
        let put = |id: &str| Change::PutInstance(row(id));
        store.instance_transition("bad", None, |_| Decision { changes: vec![put("bad")], answer: () }).await.unwrap();
        write_raw(store, "UPDATE instances SET context = 'not json' WHERE id = $1", "bad").await;
        // Each answers whether the instance was there when it decided.
        let ids = ["a", "b", "dup", "dup", "bad", "c", "d"];
        let answers = futures::future::join_all(ids.iter().map(|&id| {
            store.instance_transition(id, None, move |view| {
                let existed = view.instance.is_some();
                Decision { changes: if existed { Vec::new() } else { vec![put(id)] }, answer: existed }
            })
        }))
        .await;
        let answers: Vec<_> = answers.into_iter().map(|a| a.map_err(|e| e.to_string())).collect();
        assert_eq!(answers[..4], [Ok(false), Ok(false), Ok(false), Ok(true)], "{answers:?}");
        assert!(matches!(&answers[4], Err(e) if e.contains("corrupt")), "{answers:?}");
        assert_eq!(answers[5..], [Ok(false), Ok(false)], "{answers:?}");
        for id in ["a", "b", "dup", "c", "d"] {
            assert!(store.instance(id).await.unwrap().is_some(), "{id} committed beside a change that failed");
        }
        // A finished operation beside a transition: both commit.
        let request = OperationRequest::Provision(SealedRequest::default());
        let (finished, transitioned) = tokio::join!(
            store.finish_operation("no-such-op", "me", OperationState::Succeeded, "done", &request, row("e")),
            store.instance_transition("f", None, |_| Decision { changes: vec![put("f")], answer: () }),
        );
        assert!(!finished.unwrap(), "an operation nobody holds is not ended");
        transitioned.unwrap();
        assert!(store.instance("e").await.unwrap().is_none(), "nothing of an operation not held is written");
        assert!(store.instance("f").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn grouped_changes_see_each_other_and_fail_alone_on_sqlite() {
        let (store, _dir) = sqlite_store().await;
        grouped_changes_see_each_other_and_fail_alone(&store).await;
    }

    #[tokio::test]
    async fn grouped_changes_see_each_other_and_fail_alone_on_postgres() {
        let Some((store, admin, name)) = postgres_store().await else {
            return eprintln!("OVSB_TEST_POSTGRES_URL is not set: skipped");
        };
        grouped_changes_see_each_other_and_fail_alone(&store).await;
        drop_postgres(store, &admin, &name).await;
    }

    #[tokio::test]
    async fn a_json_column_that_does_not_decode_fails_its_read_on_sqlite() {
        let (store, _dir) = sqlite_store().await;
        corrupt_json_columns_fail_their_reads(&store).await;
    }

    #[tokio::test]
    async fn a_json_column_that_does_not_decode_fails_its_read_on_postgres() {
        let Some((store, admin, name)) = postgres_store().await else {
            return eprintln!("OVSB_TEST_POSTGRES_URL is not set: skipped");
        };
        corrupt_json_columns_fail_their_reads(&store).await;
        drop_postgres(store, &admin, &name).await;
    }

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
