//! Routing at provider scale: a committed change rebuilds only the routes of the instance it
//! touched, and another replica follows through the store's change log, one instance at a time,
//! reloading everything only when it has fallen behind the log. Real PostgreSQL and SQLite.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::broker::{Db, PLAN_SHARED, TestBroker};
use support::{Anvil, post, rpc};

async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

fn uri(bound: &support::broker::Resp) -> String {
    bound.body["credentials"]["uri"].as_str().unwrap().to_string()
}

/// Two replicas on one PostgreSQL database: a bind on A is served by B, an unbind on A is
/// refused by B, and neither rebuilds its whole table for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_another_one_instance_at_a_time() {
    let anvil = Anvil::start(&[]);
    let (a, b) = TestBroker::pair_on_postgres(&anvil.http_url(), |_| {}).await;
    let (a_routing, b_routing) = (&a.server.as_ref().unwrap().routing, &b.server.as_ref().unwrap().routing);
    let b_full_at_start = b_routing.sync_counts().0;

    for i in 0..5 {
        a.osb.ready_instance(&format!("r-{i}"), PLAN_SHARED, None).await;
    }
    let bound = a.osb.bind("r-3", "k", PLAN_SHARED).await;
    assert_eq!(bound.status, 201);
    let on_a = uri(&bound);
    let on_b = on_a.replace(&a.gateway, &b.gateway);
    assert_eq!(rpc(&on_a, "eth_chainId", json!([])).await["result"], "0x7a69", "A serves its own bind at once");
    eventually("B serves A's binding", async || rpc(&on_b, "eth_chainId", json!([])).await["result"] == "0x7a69").await;

    assert_eq!(a.osb.unbind("r-3", "k", PLAN_SHARED).await.status, 200);
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"});
    assert_eq!(post(&on_a, &call).await.0, 401, "A refuses the key before it answers the unbind");
    eventually("B refuses the unbound key", async || post(&on_b, &call).await.0 == 401).await;

    assert_eq!(a_routing.sync_counts().0, 1, "A rebuilt its whole table only at start");
    assert_eq!(b_routing.sync_counts().0, b_full_at_start, "B followed without reloading everything");
    // Five instances, then the unbind after B had served the bind: at least six single-instance
    // rebuilds (changes to one instance that arrive together are applied once).
    assert!(b_routing.sync_counts().1 >= 6, "B applied each change to its instance: {:?}", b_routing.sync_counts());
}

/// The change log names each changed instance in order; once pruned past a reader's generation,
/// the reader is told to reload.
#[tokio::test]
async fn the_change_log_names_changed_instances_and_says_when_it_no_longer_reaches_back() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |_| {}).await;
    let store = broker.store();
    let start = store.generation().await.unwrap();
    broker.osb.ready_instance("log-1", PLAN_SHARED, None).await;
    assert_eq!(broker.osb.bind("log-1", "k", PLAN_SHARED).await.status, 201);
    broker.osb.ready_instance("log-2", PLAN_SHARED, None).await;
    let now = store.generation().await.unwrap();
    let (to, ids) = store.changes_since(start).await.unwrap().expect("the log reaches back");
    assert_eq!(to, now);
    assert_eq!(ids.len() as i64, now - start, "one entry per change");
    let first_two: Vec<&str> = ids.iter().map(String::as_str).filter(|id| id.starts_with("log-")).collect();
    assert!(first_two.starts_with(&["log-1"]) && first_two.ends_with(&["log-2"]), "{ids:?}");
    assert_eq!(store.changes_since(now).await.unwrap(), Some((now, Vec::new())), "up to date");

    store.prune_changes(0).await.unwrap();
    assert_eq!(store.changes_since(start).await.unwrap(), None, "pruned past the reader: reload");
    assert_eq!(store.changes_since(now).await.unwrap(), Some((now, Vec::new())));
}

/// A replica that follows the log while another one writes never takes a change that commits
/// between its reads for a pruned log (which would make it reload every route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_the_log_while_changes_commit_never_asks_for_a_reload() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Postgres, &anvil.http_url(), |_| {}).await;
    broker.osb.ready_instance("busy", PLAN_SHARED, None).await;
    let store = broker.store();
    let writing = std::sync::atomic::AtomicBool::new(true);
    let writer = async {
        for i in 0..120 {
            assert_eq!(broker.osb.bind("busy", &format!("k{i}"), PLAN_SHARED).await.status, 201);
        }
        writing.store(false, std::sync::atomic::Ordering::Release);
    };
    let reader = async {
        let (mut since, mut reads, mut changes) = (store.generation().await.unwrap(), 0u64, 0usize);
        while writing.load(std::sync::atomic::Ordering::Acquire) {
            let (to, ids) = store
                .changes_since(since)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("read {reads}: the log was taken for pruned at generation {since}"));
            assert_eq!(ids.len() as i64, to - since, "one entry per change");
            changes += ids.len();
            (since, reads) = (to, reads + 1);
        }
        (reads, changes)
    };
    let ((), (reads, changes)) = tokio::join!(writer, reader);
    assert!(reads > 50 && changes > 0, "the reader followed the writer: {reads} reads, {changes} changes");
}

/// Rotation across replicas on one PostgreSQL database: a rotation committed on A is served by
/// B (both keys), and after the predecessor is unbound on B, A refuses it and serves the
/// successor. A's rotation replayed on B returns the same credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_replica_is_served_by_another() {
    let anvil = Anvil::start(&[]);
    let rotatable = |c: &mut ovsb::config::Config| {
        for plan in c.services.iter_mut().flat_map(|s| s.plans.iter_mut()) {
            plan.binding_rotatable = true;
        }
    };
    let (a, b) = TestBroker::pair_on_postgres(&anvil.http_url(), rotatable).await;
    a.osb.ready_instance("rot", PLAN_SHARED, None).await;
    let old = a.osb.bind("rot", "v1", PLAN_SHARED).await;
    let rotation =
        json!({"service_id": support::broker::SERVICE, "plan_id": PLAN_SHARED, "predecessor_binding_id": "v1"});
    let path = "/v2/service_instances/rot/service_bindings/v2";
    let new = a.osb.call(reqwest::Method::PUT, path, Some(rotation.clone())).await;
    assert_eq!(new.status, 201, "{new:?}");
    let on_b = |bound: &support::broker::Resp| uri(bound).replace(&a.gateway, &b.gateway);
    let (old_b, new_b) = (on_b(&old), on_b(&new));
    eventually("B serves both keys", async || {
        rpc(&old_b, "eth_chainId", json!([])).await["result"] == "0x7a69"
            && rpc(&new_b, "eth_chainId", json!([])).await["result"] == "0x7a69"
    })
    .await;
    let replay = b.osb.call(reqwest::Method::PUT, path, Some(rotation)).await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["credentials"]["token"], new.body["credentials"]["token"], "the same credentials on B");

    assert_eq!(b.osb.unbind("rot", "v1", PLAN_SHARED).await.status, 200);
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"});
    assert_eq!(post(&old_b, &call).await.0, 401, "B refuses the predecessor before it answers the unbind");
    eventually("A refuses the unbound predecessor", async || post(&uri(&old), &call).await.0 == 401).await;
    assert_eq!(rpc(&uri(&new), "eth_chainId", json!([])).await["result"], "0x7a69", "A serves the successor");
    assert_eq!(rpc(&new_b, "eth_chainId", json!([])).await["result"], "0x7a69", "and so does B");
}
