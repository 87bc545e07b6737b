//! The `ovsb serve` binary as separate processes: `kill -9` in the middle of an asynchronous
//! operation, and two replicas sharing one PostgreSQL database.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::broker::*;
use support::process::Ovsb;
use support::{Anvil, free_port, rpc};

fn config_with(data_dir: &Path, database_url: Option<&str>, node: &str, pending_port: u16, polling: u64) -> String {
    let mut config = test_config_toml(node, pending_port)
        .replace("maximum_polling_duration = 120", &format!("maximum_polling_duration = {polling}"));
    let mut head = format!("data_dir = \"{}\"\n", data_dir.display());
    if let Some(url) = database_url {
        head.push_str(&format!("database_url = \"{url}\"\n"));
    }
    config.insert_str(0, &head);
    config
}

async fn wait_for_description(osb: &OsbClient, id: &str, needle: &str) {
    for _ in 0..200 {
        let resp = osb.last_operation(id).await;
        if resp.body["description"].as_str().is_some_and(|d| d.contains(needle)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id}: last_operation never said {needle:?}");
}

/// `kill -9` during an asynchronous provision (SQLite): after a restart the operation resumes
/// and succeeds once the node is there; another, whose node never comes, ends `failed` with
/// the reason, and can be deprovisioned. Nothing stays `in progress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_async_provision_then_restart_ends_every_operation() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let pending_port = free_port();
    let config = config_with(&dir.path().join("data"), None, &anvil.http_url(), pending_port, 12);

    let mut first = Ovsb::start(dir.path(), "first", &config);
    assert_eq!(first.osb.provision("k1", PLAN_PENDING, None).await.status, 202);
    assert_eq!(first.osb.provision("k2", PLAN_PENDING, None).await.status, 202);
    wait_for_description(&first.osb, "k1", "waiting for a node").await;
    first.kill_9();

    let second = Ovsb::start(dir.path(), "second", &config);
    let resumed = second.osb.last_operation("k1").await;
    assert_eq!(resumed.body["state"], "in progress", "{resumed:?}");
    let _node = Anvil::start_on(pending_port, &[]);
    let done = second.osb.wait("k1").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let bound = second.osb.bind("k1", "b", PLAN_PENDING).await;
    assert_eq!(bound.status, 201);
    assert_eq!(
        rpc(bound.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
    drop(second);

    // k2 again, with the node gone for good and a short deadline: it fails, with the reason.
    drop(_node);
    let dir2 = tempfile::tempdir().unwrap();
    let pending_port = free_port();
    let config = config_with(&dir2.path().join("data"), None, &anvil.http_url(), pending_port, 3);
    let mut first = Ovsb::start(dir2.path(), "first", &config);
    assert_eq!(first.osb.provision("k3", PLAN_PENDING, None).await.status, 202);
    wait_for_description(&first.osb, "k3", "waiting for a node").await;
    first.kill_9();
    let second = Ovsb::start(dir2.path(), "second", &config);
    let failed = second.osb.wait("k3").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["description"].as_str().unwrap().contains("maximum_polling_duration"), "{failed}");
    assert_eq!(second.osb.deprovision("k3", PLAN_PENDING).await.status, 202);
    assert_eq!(second.osb.wait("k3").await["state"], "succeeded");
}

/// A second ovsb on the same SQLite data directory is refused (SQLite serves one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_sqlite_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(&dir.path().join("data"), None, "http://127.0.0.1:9", free_port(), 5);
    let _first = Ovsb::start(dir.path(), "first", &config);
    let file = dir.path().join("second.toml");
    std::fs::write(&file, &config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ovsb")).args(["serve", "--config"]).arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another ovsb is using it"), "{stderr}");
}

/// Two processes sharing one PostgreSQL database behave as one broker: concurrent PUTs of one
/// instance id, one to each, give exactly one instance and answers the idempotency table
/// allows; a binding made through one opens the other's gateway, an unbind through the other
/// closes both; an operation of a killed replica is finished by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_database_act_as_one_broker() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Db::Postgres, dir.path()).await;
    let pending_port = free_port();
    let config_a = config_with(&dir.path().join("a"), Some(&db.url), &anvil.http_url(), pending_port, 60);
    let config_b = config_with(&dir.path().join("b"), Some(&db.url), &anvil.http_url(), pending_port, 60);
    let mut a = Ovsb::start(dir.path(), "a", &config_a);
    let b = Ovsb::start(dir.path(), "b", &config_b);

    for round in 0..10 {
        // Identical PUTs at once: both accepted, one instance, one operation.
        let id = format!("same-{round}");
        let (ra, rb) = tokio::join!(a.osb.provision(&id, PLAN_SHARED, None), b.osb.provision(&id, PLAN_SHARED, None));
        let statuses = [ra.status, rb.status];
        assert!(statuses.iter().all(|s| *s == 202 || *s == 200), "{ra:?} {rb:?}");
        if ra.status == 202 && rb.status == 202 {
            assert_eq!(ra.body["operation"], rb.body["operation"], "one operation");
        }
        // Different attributes at once: one wins, the other gets 409.
        let id = format!("diff-{round}");
        let (ra, rb) = tokio::join!(a.osb.provision(&id, PLAN_SHARED, None), b.osb.provision(&id, PLAN_OTHER, None));
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(statuses, [202, 409], "{ra:?} {rb:?}");
    }
    let mut instances = 0;
    for round in 0..10 {
        for prefix in ["same", "diff"] {
            let id = format!("{prefix}-{round}");
            assert_eq!(a.osb.wait(&id).await["state"], "succeeded");
            instances += 1;
        }
    }
    let store = ovsb::store::Store::open(&db.url).await.unwrap();
    let (count, operations, _, _) = store.counts().await.unwrap();
    assert_eq!(count, instances);
    assert_eq!(operations, instances, "exactly one provision operation per instance");

    // A binding made through A opens B's gateway; an unbind through B closes A's.
    let bound = a.osb.bind("same-0", "k", PLAN_SHARED).await;
    assert_eq!(bound.status, 201);
    let token = bound.body["credentials"]["token"].as_str().unwrap().to_string();
    let b_gateway = b.osb.call(Method::GET, "/v2/catalog", None).await; // B is up
    assert_eq!(b_gateway.status, 200);
    let replay = b.osb.bind("same-0", "k", PLAN_SHARED).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["credentials"]["token"], token.as_str(), "replicas derive the same credentials");
    let b_uri = replay.body["credentials"]["uri"].as_str().unwrap().to_string();
    let a_uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_ne!(a_uri, b_uri, "each replica names its own gateway");
    eventually(|| async { rpc(&b_uri, "eth_chainId", json!([])).await["result"] == "0x7a69" }).await;
    assert_eq!(b.osb.unbind("same-0", "k", PLAN_SHARED).await.status, 200);
    eventually(|| async {
        support::post(&a_uri, &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})).await.0 == 401
    })
    .await;

    // A accepts an operation and dies; B finishes it once A's lease lapses.
    assert_eq!(a.osb.provision("orphan", PLAN_PENDING, None).await.status, 202);
    wait_for_description(&a.osb, "orphan", "waiting for a node").await;
    a.kill_9();
    let _node = Anvil::start_on(pending_port, &[]);
    let done = b.osb.wait("orphan").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    store.close().await;
}

async fn eventually<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the condition never held");
}

/// SIGTERM while calls are in flight: every call that was accepted completes with its answer,
/// the process exits cleanly, and a restart serves the instance again with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_a_restart_serves_again() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(&dir.path().join("data"), None, &anvil.http_url(), free_port(), 30);
    let mut first = Ovsb::start(dir.path(), "first", &config);
    first.osb.ready_instance("t1", PLAN_SHARED, None).await;
    let bound = first.osb.bind("t1", "k", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    // A contract that loops a million times: each eth_call keeps the node busy for a while.
    let looper = "0x2000000000000000000000000000000000000002";
    rpc(&anvil.http_url(), "anvil_setCode", json!([looper, "0x620f42405b600190038060045700"])).await;
    let slow = json!([{"to": looper, "gas": "0x1c9c380"}, "latest"]);
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (uri, slow) = (uri.clone(), slow.clone());
            tokio::spawn(async move {
                let answer = rpc(&uri, "eth_call", slow).await;
                (answer, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let sigterm_at = Instant::now();
    let status = tokio::task::block_in_place(|| first.terminate(Duration::from_secs(30)));
    let mut finished_after_sigterm = 0;
    for call in calls {
        let (answer, at) = call.await.unwrap();
        assert_eq!(answer["result"], "0x", "an in-flight call completed: {answer}");
        finished_after_sigterm += usize::from(at > sigterm_at);
    }
    assert!(finished_after_sigterm > 0, "calls were in flight when SIGTERM came");
    assert!(status.success(), "a clean exit: {status:?}");
    let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");

    let second = Ovsb::start(dir.path(), "second", &config);
    let again = second.osb.bind("t1", "k", PLAN_SHARED).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["credentials"]["token"], bound.body["credentials"]["token"]);
    let answer = rpc(again.body["credentials"]["uri"].as_str().unwrap(), "eth_chainId", json!([])).await;
    assert_eq!(answer["result"], "0x7a69", "{answer}");
}
