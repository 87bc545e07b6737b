//! The store work of a provision does not grow with the number of instances, and its durable
//! commits do not grow at all.
//!
//! SQLite's work is counted in virtual-machine instructions: a progress handler called at every
//! instruction, installed (through `sqlite3_auto_extension`) on each connection opened to one
//! test's database file. A point lookup or an insert costs the same number of instructions
//! whatever the size of the table; a scan, or a count of a plan's instances, costs one or more
//! per row. Commits are counted by a commit hook installed the same way: in WAL mode with
//! `synchronous = FULL` each commit is one fsync of the WAL, what a provision waits for.
#![allow(unsafe_code)] // SQLite's C interface, to install the counting progress handler.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use libsqlite3_sys as ffi;
use serde_json::json;

use super::*;

/// What a counted database file's connections count.
#[derive(Default)]
struct Counters {
    /// Virtual-machine instructions.
    steps: AtomicU64,
    /// Transactions committed (each one fsync of the WAL).
    commits: AtomicU64,
}

/// Database files whose connections count their work, with their counters (kept for the life
/// of the test process: a connection may outlive its test).
static COUNTED: Mutex<Vec<(PathBuf, Arc<Counters>)>> = Mutex::new(Vec::new());

unsafe extern "C" fn count_step(counters: *mut c_void) -> c_int {
    // SAFETY: `counters` points into an `Arc<Counters>` that `COUNTED` keeps alive forever.
    unsafe { (*(counters as *const Counters)).steps.fetch_add(1, Ordering::Relaxed) };
    0
}

unsafe extern "C" fn count_commit(counters: *mut c_void) -> c_int {
    // SAFETY: as for `count_step`. Returning 0 lets the commit proceed.
    unsafe { (*(counters as *const Counters)).commits.fetch_add(1, Ordering::Relaxed) };
    0
}

unsafe extern "C" fn on_open(db: *mut ffi::sqlite3, _: *mut *mut c_char, _: *const ffi::sqlite3_api_routines) -> c_int {
    // SAFETY: `db` is the connection being opened; its file name is a C string it owns.
    let name = unsafe { ffi::sqlite3_db_filename(db, c"main".as_ptr()) };
    if name.is_null() {
        return ffi::SQLITE_OK;
    }
    let path = PathBuf::from(unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned());
    let counted = COUNTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, counters)) = counted.iter().find(|(counted, _)| *counted == path) {
        let counters = Arc::as_ptr(counters) as *mut c_void;
        // SAFETY: the counters outlive the connection (see `COUNTED`).
        unsafe {
            ffi::sqlite3_progress_handler(db, 1, Some(count_step), counters);
            ffi::sqlite3_commit_hook(db, Some(count_commit), counters);
        }
    }
    ffi::SQLITE_OK
}

/// A store on a new SQLite file whose every instruction and commit is counted in the returned
/// counters.
async fn counted_store() -> (Store, Arc<Counters>, tempfile::TempDir) {
    static HOOK: Once = Once::new();
    // SAFETY: `on_open` has the signature SQLite calls an automatic extension with.
    HOOK.call_once(|| assert_eq!(unsafe { ffi::sqlite3_auto_extension(Some(on_open)) }, ffi::SQLITE_OK));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().canonicalize().unwrap().join("ovsb.db");
    let counter = Arc::new(Counters::default());
    COUNTED.lock().unwrap().push((path.clone(), counter.clone()));
    let store = Store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    (store, counter, dir)
}

fn instance(id: &str, plan_id: &str, state: InstanceState, operation_id: &str) -> InstanceRow {
    let now = now_ms();
    InstanceRow {
        id: id.into(),
        service_id: "service".into(),
        plan_id: plan_id.into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        parameters: Some(json!({"plugins": [{"name": "cache"}]})),
        context: Some(json!({"platform": "cloudfoundry"})),
        maintenance_version: None,
        state,
        operation_id: operation_id.into(),
        created_ms: now,
        updated_ms: now,
    }
}

fn audit(action: &str, binding_id: Option<&str>) -> AuditEntry {
    AuditEntry {
        action: action.into(),
        binding_id: binding_id.map(str::to_string),
        request_identity: None,
        platform: Some("cloudfoundry".into()),
        identity: None,
    }
}

/// What the store does for one provision, in the order ovsb does it: the broker's transition
/// (with the plan's count, as for a plan with a cap), the platform's `last_operation` polls,
/// the runner's end of the operation and the routes it rebuilds, another replica's catch-up,
/// and a bind. Returns the plan's count the transition read.
async fn provision(store: &Store, id: &str, plan_id: &str) -> u64 {
    let now = now_ms();
    let operation_id = format!("provision-{}", random_id());
    let operation = OperationRow {
        id: operation_id.clone(),
        instance_id: id.into(),
        kind: OperationKind::Provision,
        state: OperationState::InProgress,
        description: "provision accepted".into(),
        request: OperationRequest::Provision(SealedRequest::default()),
        deadline_ms: now + 60_000,
        lease_owner: "replica".into(),
        lease_until_ms: now + 60_000,
        created_ms: now,
        updated_ms: now,
    };
    let since = store.generation().await.unwrap();
    let changes = vec![
        Change::PutInstance(instance(id, plan_id, InstanceState::Provisioning, &operation_id)),
        Change::InsertOperation(operation),
        Change::Audit(audit("provision", None)),
    ];
    let counted = store
        .instance_transition(id, Some(plan_id), |view| {
            assert!(view.instance.is_none(), "{id} is new");
            Decision { changes, answer: view.plan_count }
        })
        .await
        .unwrap();
    store.instance(id).await.unwrap().unwrap();
    store.operation(&operation_id).await.unwrap().unwrap();
    let ready = instance(id, plan_id, InstanceState::Ready, &operation_id);
    let request = OperationRequest::Provision(SealedRequest::default());
    let finished = store
        .finish_operation(&operation_id, "replica", OperationState::Succeeded, "provisioned", &request, ready)
        .await
        .unwrap();
    assert!(finished);
    assert!(store.serving_instance(id).await.unwrap().is_some());
    assert!(store.changes_since(since).await.unwrap().is_some());
    let binding = BindingRow {
        instance_id: id.into(),
        id: "b0".into(),
        service_id: "service".into(),
        plan_id: plan_id.into(),
        parameters: None,
        bind_resource: Some(json!({"app_guid": "app"})),
        context: None,
        key_salt: random_id(),
        key_sha256: format!("{}{}", random_id(), random_id()),
        created_ms: now,
        predecessor_id: None,
        expires_ms: None,
    };
    let changes = vec![Change::InsertBinding(binding), Change::Audit(audit("bind", Some("b0")))];
    store.binding_transition(id, "b0", |_, _| Decision { changes, answer: () }).await.unwrap();
    assert_eq!(store.serving_instance(id).await.unwrap().unwrap().1.len(), 1);
    counted
}

/// The instructions SQLite ran for one provision, and the commits it made.
async fn work_of_one(store: &Store, counters: &Counters, id: &str, plan_id: &str) -> (u64, u64) {
    let before = (counters.steps.load(Ordering::Relaxed), counters.commits.load(Ordering::Relaxed));
    provision(store, id, plan_id).await;
    (counters.steps.load(Ordering::Relaxed) - before.0, counters.commits.load(Ordering::Relaxed) - before.1)
}

#[tokio::test]
async fn a_provision_does_the_same_store_work_at_10_and_at_1000_instances() {
    let (store, counter, _dir) = counted_store().await;
    for i in 0..10 {
        provision(&store, &format!("t-{i}"), "plan").await;
    }
    let (small, small_commits) = work_of_one(&store, &counter, "probe-small", "plan").await;
    assert!(small > 0, "the progress handler counts this store's instructions");
    for i in 10..1000 {
        provision(&store, &format!("t-{i}"), "plan").await;
    }
    let (large, large_commits) = work_of_one(&store, &counter, "probe-large", "plan").await;
    println!(
        "store work of a provision: {small} SQLite instructions at 10 instances, {large} at 1000; \
         commits {small_commits} and {large_commits}"
    );
    // Equal for point lookups and inserts; a count or a scan of the plan's instances would add
    // a thousand instructions or more here.
    assert!(large <= small + small / 10, "store work of a provision: {small} at 10 instances, {large} at 1000");
    // One durable commit for each step a platform waits for, alone: the broker's transition
    // (the instance, its operation, the plan's count, the audit row, the change log: all one),
    // the runner's end of the operation (with the instance's new state), the bind.
    assert_eq!((small_commits, large_commits), (3, 3), "commits of a provision alone and its bind");
}

/// Provisions that wait for the store together share its commits (group commit): sixteen at
/// once commit in two transactions, the first alone and the fifteen that queued behind it
/// together, and each is answered only once its own is durable.
#[tokio::test]
async fn provisions_that_wait_together_commit_together() {
    let (store, counter, _dir) = counted_store().await;
    let before = counter.commits.load(Ordering::Relaxed);
    let accepted = futures::future::join_all((0..16).map(|i| {
        let store = store.clone();
        async move {
            let id = format!("t-{i}");
            let operation_id = format!("op-{i}");
            let changes = vec![
                Change::PutInstance(instance(&id, "plan", InstanceState::Provisioning, &operation_id)),
                Change::Audit(audit("provision", None)),
            ];
            store.instance_transition(&id, Some("plan"), |view| Decision { changes, answer: view.plan_count }).await
        }
    }))
    .await;
    let commits = counter.commits.load(Ordering::Relaxed) - before;
    let mut counts: Vec<u64> = accepted.into_iter().map(Result::unwrap).collect();
    counts.sort();
    // Each decided on the rows the changes before it in the same transaction left.
    assert_eq!(counts, (0..16).collect::<Vec<u64>>(), "each saw the plan's count of those before it");
    assert_eq!(store.counts().await.unwrap().0, 16);
    assert!(commits <= 2, "16 provisions that waited together took {commits} commits");
}

#[tokio::test]
async fn a_plans_count_follows_its_instances_in_and_out() {
    let (store, _counter, _dir) = counted_store().await;
    let count = |plan: &'static str| {
        let store = store.clone();
        async move { store.instance_transition("nobody", Some(plan), |view| Decision::answer(view.plan_count)).await }
    };
    assert_eq!(provision(&store, "a", "small").await, 0);
    assert_eq!(provision(&store, "b", "small").await, 1);
    assert_eq!(provision(&store, "c", "large").await, 0);
    assert_eq!(count("small").await.unwrap(), 2);
    // An update to another plan moves the instance; a tombstone leaves its plan.
    let put = |row: InstanceRow| {
        let store = store.clone();
        async move {
            let id = row.id.clone();
            let changes = vec![Change::PutInstance(row)];
            store.instance_transition(&id, None, |_| Decision { changes, answer: () }).await.unwrap();
        }
    };
    put(instance("b", "large", InstanceState::Ready, "op")).await;
    assert_eq!((count("small").await.unwrap(), count("large").await.unwrap()), (1, 2));
    put(instance("a", "small", InstanceState::Deleted, "op")).await;
    assert_eq!(count("small").await.unwrap(), 0);
    // Written again while deleted: still gone; provisioned again under the same id: back.
    put(instance("a", "small", InstanceState::Deleted, "op")).await;
    assert_eq!(count("small").await.unwrap(), 0);
    put(instance("a", "small", InstanceState::Provisioning, "op")).await;
    assert_eq!(count("small").await.unwrap(), 1);
    assert_eq!(count("unknown").await.unwrap(), 0);
}

/// The migration counts the instances already in the store.
#[tokio::test]
async fn the_plan_counts_start_from_the_instances_in_the_store() {
    let (store, _counter, _dir) = counted_store().await;
    provision(&store, "a", "plan").await;
    provision(&store, "b", "plan").await;
    sqlx::query("DELETE FROM plan_instances").execute(&store.pool).await.unwrap();
    sqlx::query(include_str!("migrations/0007_plan_instances.sql").split(";\n").nth(1).unwrap())
        .execute(&store.pool)
        .await
        .unwrap();
    let n = store.instance_transition("nobody", Some("plan"), |view| Decision::answer(view.plan_count)).await;
    assert_eq!(n.unwrap(), 2);
}
