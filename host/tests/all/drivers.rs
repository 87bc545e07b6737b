//! Drivers with real anvil processes: a node per `devnet` instance (the `process` driver), and a
//! shared pool of nodes with health checks (the `upstream` driver).

use crate::support;

use std::time::Duration;

use ovsb::config::{Config, PlanDecl};
use reqwest::Method;
use serde_json::{Value, json};
use support::broker::*;
use support::{Anvil, anvil_binary, nodes_under, rpc};

const PLAN_DEVNET: &str = "plan-devnet";
const PLAN_PAIR: &str = "plan-pair";

fn devnet_plan() -> PlanDecl {
    let anvil = anvil_binary();
    toml::from_str(&format!(
        r#"
id = "{PLAN_DEVNET}"
name = "devnet"
description = "an anvil per instance"
maximum_polling_duration = 60
max_instances = 40
[driver]
kind = "process"
command = ["{anvil}", "--host", "127.0.0.1", "--port", "{{port}}", "--chain-id", "{{chain_id}}"]
ports = [31000, 31999]
stop_grace_ms = 3000
restart_backoff_ms = [100, 1000]
log_max_bytes = 65536
[driver.parameters.chain_id]
type = "integer"
minimum = 1
default = 31337
"#,
        anvil = anvil.display()
    ))
    .unwrap()
}

fn with_devnet(config: &mut Config) {
    config.services[0].plans.push(devnet_plan());
}

fn pair_plan(a: &str, b: &str) -> PlanDecl {
    toml::from_str(&format!(
        r#"
id = "{PLAN_PAIR}"
name = "pair"
description = "two shared nodes"
driver = {{ kind = "upstream", http = ["{a}", "{b}"], health_interval_ms = 200, max_lag_blocks = 5 }}
"#
    ))
    .unwrap()
}

fn data_dir(broker: &TestBroker) -> std::path::PathBuf {
    broker.dir.as_ref().unwrap().path().join("data")
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

async fn bound_uri(osb: &OsbClient, instance: &str, plan: &str) -> String {
    let resp = osb.bind(instance, "b", plan).await;
    assert_eq!(resp.status, 201, "{resp:?}");
    resp.body["credentials"]["uri"].as_str().unwrap().to_string()
}

async fn eventually_serves(uri: &str) -> Value {
    for _ in 0..200 {
        let answer = rpc(uri, "eth_blockNumber", json!([])).await;
        if answer.get("result").is_some() {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{uri} never served again");
}

/// provision devnet → 202 → succeeded → bind → calls through `credentials.uri` reach the
/// instance's own node (its chain id is the instance's parameter); deprovision → the process is
/// gone, its port free, its directory removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devnet_instance_gets_its_own_node_which_deprovision_removes() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), with_devnet).await;
    let osb = &broker.osb;
    let catalog = osb.call(Method::GET, "/v2/catalog", None).await;
    let devnet = catalog.body["services"][0]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == PLAN_DEVNET)
        .unwrap()
        .clone();
    assert_eq!(
        devnet["schemas"]["service_instance"]["create"]["parameters"]["properties"]["chain_id"]["default"],
        31337
    );
    osb.provision("bad", PLAN_DEVNET, Some(json!({"chain_id": "seven"}))).await.assert_error(400, Some("BadRequest"));

    let resp = osb.provision("d1", PLAN_DEVNET, Some(json!({"chain_id": 777}))).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(osb.wait("d1").await["state"], "succeeded");
    let uri = bound_uri(osb, "d1", PLAN_DEVNET).await;
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x309", "777, the instance's own chain");
    assert_eq!(rpc(&uri, "eth_blockNumber", json!([])).await["result"], "0x0");

    let nodes = nodes_under(&data_dir(&broker));
    assert_eq!(nodes.len(), 1, "one node process: {nodes:?}");
    let node_dir = std::fs::read_dir(data_dir(&broker).join("nodes")).unwrap().next().unwrap().unwrap().path();
    let record: Value = serde_json::from_str(&std::fs::read_to_string(node_dir.join("node.json")).unwrap()).unwrap();
    let port = record["port"].as_u64().unwrap() as u16;
    assert!((31000..=31999).contains(&port));
    assert!(node_dir.join("node.log").exists(), "the node's output is kept");

    assert_eq!(osb.deprovision("d1", PLAN_DEVNET).await.status, 202);
    assert_eq!(osb.wait("d1").await["state"], "succeeded");
    assert!(nodes_under(&data_dir(&broker)).is_empty(), "the process is gone");
    assert!(
        !std::path::Path::new(&format!("/proc/{}", nodes[0])).exists() || nodes_under(&data_dir(&broker)).is_empty()
    );
    assert!(port_is_free(port), "its port is free");
    assert!(!node_dir.exists(), "its directory is removed");
}

/// 20 devnet instances provisioned at once all succeed, each on its own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_devnet_instances_provisioned_concurrently_all_succeed_on_distinct_ports() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), with_devnet).await;
    let osb = &broker.osb;
    let puts = (0..20).map(|i| {
        let osb = osb.clone();
        async move { osb.provision(&format!("n{i}"), PLAN_DEVNET, Some(json!({"chain_id": 1000 + i}))).await }
    });
    for resp in futures::future::join_all(puts).await {
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    for i in 0..20 {
        assert_eq!(osb.wait(&format!("n{i}")).await["state"], "succeeded", "n{i}");
    }
    let mut ports = std::collections::HashSet::new();
    for entry in std::fs::read_dir(data_dir(&broker).join("nodes")).unwrap() {
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path().join("node.json")).unwrap()).unwrap();
        assert!(ports.insert(record["port"].as_u64().unwrap()), "port collision: {record}");
    }
    assert_eq!(ports.len(), 20);
    assert_eq!(nodes_under(&data_dir(&broker)).len(), 20);
    for i in [0, 7, 19] {
        let uri = bound_uri(osb, &format!("n{i}"), PLAN_DEVNET).await;
        assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], format!("{:#x}", 1000 + i));
    }
}

/// `kill -9` of an instance's node: the supervisor restarts it and the endpoint serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_restarted_and_the_endpoint_serves_again() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), with_devnet).await;
    let osb = &broker.osb;
    osb.ready_instance("k1", PLAN_DEVNET, None).await;
    let uri = bound_uri(osb, "k1", PLAN_DEVNET).await;
    assert!(rpc(&uri, "eth_blockNumber", json!([])).await.get("result").is_some());
    let before = nodes_under(&data_dir(&broker));
    assert_eq!(before.len(), 1);
    std::process::Command::new("kill").args(["-9", &before[0].to_string()]).status().unwrap();
    eventually_serves(&uri).await;
    let after = nodes_under(&data_dir(&broker));
    assert_eq!(after.len(), 1, "exactly one node again: {after:?}");
    assert_ne!(after, before, "a new process");
}

/// A chain-only update keeps the node (same pid); a node parameter change restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_restart_the_node_only_when_its_parameters_change() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), with_devnet).await;
    let osb = &broker.osb;
    osb.ready_instance("u1", PLAN_DEVNET, Some(json!({"chain_id": 5}))).await;
    let uri = bound_uri(osb, "u1", PLAN_DEVNET).await;
    let pid = nodes_under(&data_dir(&broker));
    let patch = "/v2/service_instances/u1?accepts_incomplete=true";
    let chain = json!({"chain_id": 5, "plugins": [{"name": "test", "config": {"mode": "respond", "tag": "x"}}]});
    let resp = osb.call(Method::PATCH, patch, Some(json!({"service_id": SERVICE, "parameters": chain}))).await;
    assert_eq!(resp.status, 202);
    assert_eq!(osb.wait("u1").await["state"], "succeeded");
    assert_eq!(nodes_under(&data_dir(&broker)), pid, "same node process");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"]["trail"], json!(["respond:x"]));
    let resp =
        osb.call(Method::PATCH, patch, Some(json!({"service_id": SERVICE, "parameters": {"chain_id": 6}}))).await;
    assert_eq!(resp.status, 202);
    assert_eq!(osb.wait("u1").await["state"], "succeeded");
    let after = nodes_under(&data_dir(&broker));
    assert_eq!(after.len(), 1);
    assert_ne!(after, pid, "restarted");
    assert_eq!(rpc(&uri, "eth_chainId", json!([])).await["result"], "0x6");
}

/// A shared plan over two anvils: stopping one keeps every call succeeding; a node restarted
/// on its port comes back into rotation; a node lagging behind is taken out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_plan_over_two_nodes_survives_one_stopping_and_takes_it_back() {
    let mut a = Anvil::start(&[]);
    let b = Anvil::start(&[]);
    let (a_url, b_url) = (a.http_url(), b.http_url());
    let broker =
        TestBroker::start(Db::Sqlite, &a_url, |config| config.services[0].plans.push(pair_plan(&a_url, &b_url))).await;
    let osb = &broker.osb;
    osb.ready_instance("s1", PLAN_PAIR, None).await;
    let uri = bound_uri(osb, "s1", PLAN_PAIR).await;
    let a_port = a.port;
    a.kill();
    for i in 0..50 {
        let answer = rpc(&uri, "eth_chainId", json!([])).await;
        assert_eq!(answer["result"], "0x7a69", "call {i} with one node down: {answer}");
    }
    // A restarted node on the same port comes back: mine on it so that the answers tell.
    let a = Anvil::start_on(a_port, &[]);
    rpc(&a.http_url(), "anvil_mine", json!(["0x3"])).await;
    let mut seen_a = false;
    for _ in 0..100 {
        if rpc(&uri, "eth_blockNumber", json!([])).await["result"] == "0x3" {
            seen_a = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_a, "the restarted node is back in rotation");
    // B lags 20 blocks behind A: out of rotation, every answer comes from A.
    rpc(&a.http_url(), "anvil_mine", json!(["0x14"])).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..20 {
        assert_eq!(rpc(&uri, "eth_blockNumber", json!([])).await["result"], "0x17", "only the node at the head serves");
    }
    drop(b);
}

/// `kill -9` of ovsb, a node killed while it was down, then a restart: every instance serves
/// again, the surviving nodes were adopted (same pids), the missing one restarted, and there is
/// exactly one node per instance: no duplicate, no orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_ovsb_every_instance_serves_again_without_duplicates_or_orphans() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = support::NodeReaper(dir.path().to_path_buf());
    let plan = toml::to_string(&devnet_plan_table()).unwrap().replace("[driver]", "[services.plans.driver]");
    let config = test_config_toml_with(&anvil.http_url(), support::free_port(), &format!("[[services.plans]]\n{plan}"));
    let config = format!("data_dir = \"{}\"\n{config}", dir.path().join("data").display());
    let ports = (support::free_port(), support::free_port());
    let mut first = support::process::Ovsb::start_on(dir.path(), "first", &config, ports);
    let mut uris = Vec::new();
    for i in 0..3 {
        first.osb.ready_instance(&format!("r{i}"), PLAN_DEVNET, None).await;
        uris.push(bound_uri(&first.osb, &format!("r{i}"), PLAN_DEVNET).await);
    }
    first.osb.ready_instance("gone", PLAN_DEVNET, None).await;
    let before = nodes_under(&dir.path().join("data"));
    assert_eq!(before.len(), 4);
    first.kill_9();
    // While ovsb is down: one node dies.
    std::process::Command::new("kill").args(["-9", &before[0].to_string()]).status().unwrap();
    let second = support::process::Ovsb::start_on(dir.path(), "second", &config, ports);
    for uri in &uris {
        eventually_serves(uri).await;
    }
    let after = nodes_under(&dir.path().join("data"));
    assert_eq!(after.len(), 4, "one node per instance: {before:?} → {after:?}");
    assert_eq!(after.iter().filter(|pid| before.contains(pid)).count(), 3, "the surviving nodes were adopted");
    // Deprovision everything: no node is left behind.
    for id in ["r0", "r1", "r2", "gone"] {
        assert_eq!(second.osb.deprovision(id, PLAN_DEVNET).await.status, 202);
        assert_eq!(second.osb.wait(id).await["state"], "succeeded");
    }
    assert!(nodes_under(&dir.path().join("data")).is_empty());
}

/// A SIGTERM leaves each node running for the next start to adopt, and the log says so, node
/// by node (instance, pid, port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_logs_each_node_it_leaves_running_for_the_next_start() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = support::NodeReaper(dir.path().to_path_buf());
    let plan = toml::to_string(&devnet_plan_table()).unwrap().replace("[driver]", "[services.plans.driver]");
    let config = test_config_toml_with(&anvil.http_url(), support::free_port(), &format!("[[services.plans]]\n{plan}"));
    let config = format!("data_dir = \"{}\"\n{config}", dir.path().join("data").display());
    let mut ovsb = support::process::Ovsb::start(dir.path(), "left", &config);
    ovsb.osb.ready_instance("kept", PLAN_DEVNET, None).await;
    let nodes = nodes_under(&dir.path().join("data"));
    assert_eq!(nodes.len(), 1);
    assert!(ovsb.terminate(Duration::from_secs(60)).success());
    assert_eq!(nodes_under(&dir.path().join("data")), nodes, "the node is still running");
    let log = std::fs::read_to_string(dir.path().join("left.log")).unwrap();
    let line = log.lines().find(|l| l.contains("left running for the next start to adopt"));
    let line = line.unwrap_or_else(|| panic!("no line about the node left running:\n{log}"));
    assert!(line.contains("instance=kept") && line.contains(&format!("pid={}", nodes[0])), "{line}");
}

fn devnet_plan_table() -> toml::Table {
    let anvil = anvil_binary();
    toml::from_str(&format!(
        r#"
id = "{PLAN_DEVNET}"
name = "devnet"
description = "an anvil per instance"
maximum_polling_duration = 60
[driver]
kind = "process"
command = ["{anvil}", "--host", "127.0.0.1", "--port", "{{port}}"]
ports = [30000, 30999]
restart_backoff_ms = [100, 1000]
"#,
        anvil = anvil.display()
    ))
    .unwrap()
}
