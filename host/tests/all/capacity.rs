//! The plugin runtime's capacity as a provider meets it: copies are made on demand, and when
//! every slot holds a busy copy, a provision is answered as for a full plan (422, naming the
//! setting) rather than blamed on the customer's parameters, and calls get -32005 naming the
//! limit; `/metrics` shows copies alive, evictions and refusals by reason.

use crate::support;

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

/// A broker whose plan `slow` (with `plan_lines` added) has the slow stand-in node, and two
/// bound instances with the fanout plugin: `hog` on the slow plan, `quiet` on the shared anvil.
/// Returns the broker (and the anvil and the stand-in that it needs), and both endpoints.
async fn hog_and_quiet(
    plan_lines: &str,
    tweak: impl FnOnce(&mut ovsb::config::Config),
) -> (Anvil, TestBroker, String, String) {
    let anvil = Anvil::start(&[]);
    let slow = slow_stand_in_node().await;
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_SLOW}"
name = "slow"
description = "a node that takes 3 s per call"
{plan_lines}
driver = {{ kind = "upstream", http = ["{slow}"] }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let db = support::broker::TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), support::free_port(), &plans, tweak).await;
    let osb = &broker.osb;
    osb.ready_instance("hog", PLAN_SLOW, Some(fanout_chain())).await;
    osb.ready_instance("quiet", PLAN_SHARED, Some(fanout_chain())).await;
    let hog = osb.bind("hog", "b", PLAN_SLOW).await.body["credentials"]["uri"].as_str().unwrap().to_string();
    let quiet = osb.bind("quiet", "b", PLAN_SHARED).await.body["credentials"]["uri"].as_str().unwrap().to_string();
    (anvil, broker, hog, quiet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_beyond_the_runtime_capacity_gets_422_naming_the_setting_and_metrics_show_it() {
    // Two instances with a plugin: configuring them needs a copy only for a moment.
    let (_anvil, broker, hog, quiet) = hog_and_quiet("", |c| {
        c.runtime.max_copies = 1;
        c.runtime.idle_copies = 1;
        c.runtime.copy_wait_ms = 50;
        c.gateway.upstream_deadline_ms = 10_000;
    })
    .await;
    let osb = &broker.osb;
    assert_eq!(rpc(&quiet, "eth_chainId", json!([])).await["result"][0], "0x7a69");

    // The hog's call holds the one slot for 3 s (its plugin waits on the slow node).
    let held = tokio::spawn(async move { rpc(&hog, "slow_call", json!([])).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let answer = rpc(&quiet, "eth_chainId", json!([])).await;
    assert_eq!(answer["error"]["code"], -32005, "{answer}");
    assert_eq!(answer["error"]["data"]["reason"], "runtime_copies", "{answer}");
    assert_eq!(answer["error"]["data"]["limit"], 1, "{answer}");

    // A configuration the plugin already took needs no copy to provision: an instance holds
    // none until it is called.
    osb.ready_instance("same-config", PLAN_SHARED, Some(fanout_chain())).await;
    // A new configuration must be configured, which needs a slot.
    let new_config = json!({"plugins": [{"name": "test", "config": {"mode": "fanout", "count": 2}}]});
    let before = broker.fingerprint().await;
    let refused = osb.provision("third", PLAN_SHARED, Some(new_config.clone())).await;
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
    // The metrics are the process's, shared with the other tests of this file running at once.
    let copies: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ovsb_plugin_copies "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ovsb_plugin_copies is exported");
    assert!(copies >= 1.0, "the hog's busy copy is alive:\n{metrics}");
    assert!(metrics.contains("ovsb_plugin_copy_evictions_total"), "{metrics}");
    assert!(metrics.contains(r#"ovsb_plugin_refusals_total{reason="runtime_copies"}"#), "{metrics}");

    let done = held.await.unwrap();
    assert_eq!(done["result"][0], "0x1", "the hog's own call finished: {done}");
    // With the slot free again, everything works as before.
    assert_eq!(rpc(&quiet, "eth_chainId", json!([])).await["result"][0], "0x7a69");
    assert_eq!(osb.provision("third", PLAN_SHARED, Some(new_config)).await.status, 202);
}

const PLAN_CAPPED_SHARE: &str = "plan-capped-share";

/// A plan bounds its instances' share of plugin calls; an instance may ask for less (its
/// `plugin_calls` parameter, published with the plan's bound as maximum), never for more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_bounds_its_instances_share_and_an_instance_may_ask_for_less() {
    let anvil = Anvil::start(&[]);
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_CAPPED_SHARE}"
name = "capped-share"
description = "two plugin calls per instance at once"
plugin_calls_per_instance = 2
driver = {{ kind = "upstream", http = ["{node}"] }}
"#,
        node = anvil.http_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let db = support::broker::TestDb::new(Db::Sqlite, dir.path()).await;
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), support::free_port(), &plans, |_| {}).await;
    let osb = &broker.osb;
    let catalog = osb.call(reqwest::Method::GET, "/v2/catalog", None).await.body;
    let plan =
        catalog["services"][0]["plans"].as_array().unwrap().iter().find(|p| p["id"] == PLAN_CAPPED_SHARE).unwrap();
    let published = &plan["schemas"]["service_instance"]["create"]["parameters"]["properties"]["plugin_calls"];
    assert_eq!(published["maximum"], 2, "{published}");

    let over = osb.provision("greedy", PLAN_CAPPED_SHARE, Some(json!({"plugin_calls": 3}))).await;
    over.assert_error(400, None);
    assert!(over.body["description"].as_str().unwrap().contains("plugin_calls"), "{over:?}");

    let share_of = |id: &'static str, parameters: Option<Value>| {
        let broker = &broker;
        async move {
            broker.osb.ready_instance(id, PLAN_CAPPED_SHARE, parameters).await;
            let bound = broker.osb.bind(id, "b", PLAN_CAPPED_SHARE).await;
            let key = bound.body["credentials"]["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
            broker.server.as_ref().unwrap().routes.lookup(&key).unwrap().instance.chain.share().calls
        }
    };
    assert_eq!(share_of("default", None).await, 2, "the plan's bound");
    assert_eq!(share_of("modest", Some(json!({"plugin_calls": 1}))).await, 1, "less, when asked");
}

/// One tenant drives its share of concurrent slow calls (its plugin waits on a slow node); its
/// further calls get -32005 naming the limit after the queue time, and another tenant's calls
/// all succeed meanwhile. Nothing else fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hog_at_its_share_of_slow_calls_gets_32005_while_a_quiet_tenant_is_served() {
    let (_anvil, _broker, hog, quiet) = hog_and_quiet("plugin_calls_per_instance = 2", |c| {
        c.gateway.plugin_queue_ms = 200;
        c.gateway.upstream_deadline_ms = 10_000;
    })
    .await;

    // Five slow calls at once on a share of 2: two wait on the node, three are refused.
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let hog = hog.clone();
            tokio::spawn(async move { rpc(&hog, "slow_call", json!([])).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        assert_eq!(rpc(&quiet, "eth_chainId", json!([])).await["result"][0], "0x7a69", "the quiet tenant is served");
    }
    let mut refused = 0;
    for call in calls {
        let answer = call.await.unwrap();
        if answer["error"]["code"] == -32005 {
            assert_eq!(answer["error"]["data"]["reason"], "instance_plugin_calls", "{answer}");
            assert_eq!(answer["error"]["data"]["limit"], 2, "{answer}");
            refused += 1;
        } else {
            assert_eq!(answer["result"][0], "0x1", "a call within the share is answered: {answer}");
        }
    }
    assert_eq!(refused, 3, "the share is 2");
}
