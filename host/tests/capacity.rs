//! The plugin runtime's capacity as a provider meets it: copies are made on demand, and when
//! every slot holds a busy copy, a provision is answered as for a full plan (422, naming the
//! setting) rather than blamed on the customer's parameters, and calls get -32005 naming the
//! limit; `/metrics` shows copies alive, evictions and refusals by reason.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::broker::{Db, PLAN_SHARED, TestBroker};
use support::{Anvil, rpc};

const PLAN_SLOW: &str = "plan-slow";

/// A stand-in for a slow node (no real node answers slowly on demand): health checks
/// (`eth_blockNumber`, `eth_syncing`) are answered at once, every other call after 3 s.
async fn slow_stand_in_node() -> String {
    support::stand_in_node(|request| async move {
        if request.body.contains("eth_syncing") {
            return "false".to_string();
        }
        if !request.body.contains("eth_blockNumber") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "\"0x1\"".to_string()
    })
    .await
}

fn fanout_chain() -> Value {
    json!({"plugins": [{"name": "test", "config": {"mode": "fanout", "count": 1}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_beyond_the_runtime_capacity_gets_422_naming_the_setting_and_metrics_show_it() {
    let anvil = Anvil::start(&[]);
    let slow = slow_stand_in_node().await;
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_SLOW}"
name = "slow"
description = "a node that takes 3 s per call"
driver = {{ kind = "upstream", http = ["{slow}"] }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let db = support::broker::TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), support::free_port(), &plans, |c| {
        c.runtime.max_copies = 1;
        c.runtime.idle_copies = 1;
        c.runtime.copy_wait_ms = 50;
        c.gateway.upstream_deadline_ms = 10_000;
    })
    .await;
    let osb = &broker.osb;

    // Two instances with a plugin: configuring them needs a copy only for a moment.
    osb.ready_instance("hog", PLAN_SLOW, Some(fanout_chain())).await;
    osb.ready_instance("quiet", PLAN_SHARED, Some(fanout_chain())).await;
    let hog = osb.bind("hog", "b", PLAN_SLOW).await.body["credentials"]["uri"].as_str().unwrap().to_string();
    let quiet = osb.bind("quiet", "b", PLAN_SHARED).await.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&quiet, "eth_chainId", json!([])).await["result"][0], "0x7a69");

    // The hog's call holds the one slot for 3 s (its plugin waits on the slow node).
    let held = tokio::spawn(async move { rpc(&hog, "slow_call", json!([])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let answer = rpc(&quiet, "eth_chainId", json!([])).await;
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "runtime_copies", "{answer}");
    assert_eq!(answer["error"]["data"]["limit"], 1, "{answer}");

    let before = broker.fingerprint().await;
    let refused = osb.provision("third", PLAN_SHARED, Some(fanout_chain())).await;
    refused.assert_error(422, Some("InstanceLimitReached"));
    let description = refused.body["description"].as_str().unwrap();
    assert!(description.contains("runtime.max_copies"), "the description names the setting: {description}");
    assert_eq!(broker.fingerprint().await, before, "a refused provision changes nothing");

    let metrics = reqwest::get(format!("http://{}/metrics", broker.server.as_ref().unwrap().admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("ovsb_plugin_copies 1"), "the hog's busy copy is the one alive:\n{metrics}");
    assert!(metrics.contains("ovsb_plugin_copy_evictions_total"), "{metrics}");
    assert!(metrics.contains(r#"ovsb_plugin_refusals_total{reason="runtime_copies"}"#), "{metrics}");

    let done = held.await.unwrap();
    assert_eq!(done["result"][0], "0x1", "the hog's own call finished: {done}");
    // With the slot free again, everything works as before.
    assert_eq!(rpc(&quiet, "eth_chainId", json!([])).await["result"][0], "0x7a69");
    assert_eq!(osb.provision("third", PLAN_SHARED, Some(fanout_chain())).await.status, 202);
}
