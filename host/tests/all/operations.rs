//! Operations are never stuck: a store that goes away under a running operation delays it but
//! does not strand it, a lease is renewed only by the replica that runs its operation, and an
//! operation past its deadline does not hold the instance against a deprovision. Real
//! PostgreSQL (reached through a relay the test cuts, or whose connection the test has the
//! server drop; never by stopping the shared server), real SQLite, real anvil, real Lodestar.
//! A store failure under a driver is retried like one under the runner.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::broker::{Db, PLAN_PENDING, TestBroker, TestDb, postgres_admin_url};
use support::cut_proxy::CutProxy;
use support::lodestar::{KEYSTORE_PASSWORD, PLAN_VALIDATOR, keystore, pubkey, validator_plan};
use support::{Anvil, NodeReaper, free_port};

fn postgres_address() -> std::net::SocketAddr {
    let url = reqwest::Url::parse(&postgres_admin_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1").replace("localhost", "127.0.0.1");
    format!("{host}:{}", url.port().unwrap_or(5432)).parse().expect("PostgreSQL's address is an IP and port")
}

/// The outage: the store is cut while a provision runs, long enough for the runner's
/// store calls to fail (longer than the pool's 10 s acquire time-out), then restored. The
/// operation ends on its own, without a restart, and a deprovision works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_cut_off_from_the_store_ends_once_the_store_is_back() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Postgres, dir.path()).await;
    let proxy = CutProxy::start(postgres_address()).await;
    let through = proxy.url_through(&db.url);
    let broker = TestBroker::start_in(dir, db, &anvil.http_url(), free_port(), |c| c.database_url = through).await;

    let accepted = broker.osb.provision("cut-off", PLAN_PENDING, None).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let operation = accepted.body["operation"].as_str().unwrap().to_string();
    proxy.cut();
    // The plan's node appears: the driver's work succeeds, but its outcome cannot be recorded.
    let _node = Anvil::start_on(broker.pending_port, &[]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    proxy.restore();

    let done = broker.osb.finished("cut-off").await;
    assert_eq!(done["state"], "succeeded", "the operation ended once the store was back: {done}");
    let row = broker.store().operation(&operation).await.unwrap().unwrap();
    assert_eq!(row.state.as_str(), "succeeded");

    let gone = broker.osb.deprovision("cut-off", PLAN_PENDING).await;
    assert_eq!(gone.status, 202, "{gone:?}");
    assert_eq!(broker.osb.finished("cut-off").await["state"], "succeeded");
}

/// A lapsed lease is claimed by any replica that is not running its operation, the replica
/// that held it included (its runner is gone); never by the replica still running it.
#[tokio::test]
async fn a_lapsed_lease_is_claimed_unless_its_operation_is_running_here() {
    let anvil = Anvil::start(&[]);
    // A long lease: the runner does not renew it again while the test looks.
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |c| c.operations.lease_seconds = 120).await;
    let accepted = broker.osb.provision("held", PLAN_PENDING, None).await;
    assert_eq!(accepted.status, 202);
    let id = accepted.body["operation"].as_str().unwrap().to_string();
    let store = broker.store();
    let owner = store.operation(&id).await.unwrap().unwrap().lease_owner;
    // The runner's lease lapses (as when its task is gone and nobody renews it).
    assert!(store.renew_leases_of(&id, &owner, 0).await.unwrap(), "the lease is the runner's");

    let running: HashSet<String> = [id.clone()].into();
    let until = ovsb::store::now_ms() + 3_000;
    let claimed = store.claim_stale(&owner, until, false, &running, &Default::default()).await.unwrap();
    assert!(claimed.is_empty(), "an operation running here is not claimed again: {claimed:?}");
    let claimed = store.claim_stale(&owner, until, false, &HashSet::new(), &Default::default()).await.unwrap();
    assert_eq!(claimed.iter().map(|op| op.id.as_str()).collect::<Vec<_>>(), [id.as_str()], "its own lapsed lease");
    assert!(!store.renew_leases_of(&id, "another-replica", until).await.unwrap(), "only the holder renews");
}

/// An operation past its deadline (here: moved there, as if its runner had been cut off) does
/// not make a deprovision answer 422: the operation ends as failed and the deprovision runs.
#[tokio::test]
async fn a_deprovision_supersedes_an_operation_past_its_deadline() {
    use sqlx::Connection as _;
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |_| {}).await;
    let accepted = broker.osb.provision("late", PLAN_PENDING, None).await;
    assert_eq!(accepted.status, 202);
    let stuck = accepted.body["operation"].as_str().unwrap().to_string();
    let refused = broker.osb.deprovision("late", PLAN_PENDING).await;
    refused.assert_error(422, Some("ConcurrencyError"));

    let url = &broker.db.as_ref().unwrap().url;
    let mut db = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("UPDATE operations SET deadline_ms = 1 WHERE id = ?").bind(&stuck).execute(&mut db).await.unwrap();
    db.close().await.unwrap();

    let accepted = broker.osb.deprovision("late", PLAN_PENDING).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    assert_ne!(accepted.body["operation"], stuck.as_str());
    assert_eq!(broker.osb.finished("late").await["state"], "succeeded");
    let old = broker.store().operation(&stuck).await.unwrap().unwrap();
    assert_eq!(old.state.as_str(), "failed");
    assert!(old.description.contains("deadline"), "{}", old.description);
}

/// The directory of the one validator client under `clients`, once the driver wrote its record.
fn client_dir(clients: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(clients).ok()?.flatten().map(|e| e.path()).find(|dir| dir.join("node.json").exists())
}

/// The store fails under the validator driver, not under the runner: the driver's claim of the
/// key waits on a lock the test holds, and PostgreSQL then drops that connection (as a restart
/// or a fail-over does). The runner tries the operation again, as it does when its own store
/// calls fail, and the provision succeeds once the store answers, with the key in the client.
/// (Before, the driver turned the store's failure into text, and the provision failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_during_a_validator_provision_is_retried_and_the_provision_succeeds() {
    use sqlx::Connection as _;
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let clients = dir.path().join("data").join("validators");
    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let db = TestDb::new(Db::Postgres, dir.path()).await;
    let url = db.url.clone();
    let plan = validator_plan(&anvil.http_url());
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plan, |_| {}).await;

    let fee = "0x00000000000000000000000000000000000000bb";
    let params = json!({"keystores": [key3], "passwords": [KEYSTORE_PASSWORD], "fee_recipient": fee});
    let accepted = broker.osb.provision("v-cut", PLAN_VALIDATOR, Some(params)).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    // The driver claims the key (its first store call) once the client is ready: the claim
    // waits on this lock.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE validator_keys IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
    let waiting = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO validator_keys%'";
    let started = tokio::time::Instant::now();
    let claim: i32 = loop {
        if let Some(pid) = sqlx::query_scalar(waiting).fetch_optional(&mut watcher).await.unwrap() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the driver did not claim the key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let dropped: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(claim).fetch_one(&mut watcher).await.unwrap();
    assert!(dropped, "the claim's connection is dropped");
    lock.rollback().await.unwrap();

    let done = broker.osb.finished("v-cut").await;
    assert_eq!(done["state"], "succeeded", "the provision went on once the store answered: {done}");
    assert!(done["description"].as_str().unwrap().contains("imported"), "{done}");
    let client = client_dir(&clients).expect("the client's directory");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(client.join("node.json")).unwrap()).unwrap();
    let keymanager = format!("http://127.0.0.1:{}/eth/v1/keystores", record["extra_ports"]["keymanager_port"]);
    let token = std::fs::read_to_string(client.join("data").join("validator-db").join("api-token.txt")).unwrap();
    let list: Value =
        reqwest::Client::new().get(keymanager).bearer_auth(token.trim()).send().await.unwrap().json().await.unwrap();
    // The raw keymanager lists the dev chain's own validators too; the gateway shows only the instance's.
    let loaded: Vec<&str> =
        list["data"].as_array().unwrap().iter().filter_map(|k| k["validating_pubkey"].as_str()).collect();
    assert!(loaded.contains(&pubkey(&key3).as_str()), "the key is in the client: {list}");
    assert_eq!(broker.store().validator_key_holder(&pubkey(&key3)).await.unwrap().as_deref(), Some("v-cut"));

    assert_eq!(broker.osb.deprovision("v-cut", PLAN_VALIDATOR).await.status, 202);
    assert_eq!(broker.osb.finished("v-cut").await["state"], "succeeded");
    broker.stop().await;
}
