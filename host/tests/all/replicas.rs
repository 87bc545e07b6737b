//! Replicas that agree on process nodes: every `process` instance's node runs on one replica,
//! its owner, and every replica serves its keys and acts on it. Real `ovsb serve` processes on
//! one real PostgreSQL database, real anvil nodes, counted by their `OVSB_NODE` marker.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::broker::{Db, OsbClient, PLAN_SHARED, SERVICE, TestDb, test_config_toml_with};
use support::process::Ovsb;
use support::{Anvil, NodeReaper, anvil_binary, free_port, nodes_under, rpc};

const PLAN_DEVNET: &str = "plan-devnet";
const PLAN_SLOW: &str = "plan-slow";

/// The test catalog with two `process` plans: `devnet` (an anvil per instance) and `slow` (the
/// same after three seconds, so that a provision can be cut in the middle).
fn replica_config(data_dir: &Path, database_url: &str, node: &str) -> String {
    let anvil = anvil_binary().display().to_string();
    let plans = format!(
        r#"
[[services.plans]]
id = "{PLAN_DEVNET}"
name = "devnet"
description = "an anvil per instance"
maximum_polling_duration = 60
[services.plans.driver]
kind = "process"
command = ["{anvil}", "--host", "{{node_host}}", "--port", "{{port}}", "--chain-id", "{{chain_id}}"]
ports = [32000, 32999]
stop_grace_ms = 3000
restart_backoff_ms = [100, 1000]
log_max_bytes = 65536
[services.plans.driver.parameters.chain_id]
type = "integer"
minimum = 1
default = 31337

[[services.plans]]
id = "{PLAN_SLOW}"
name = "slow"
description = "an anvil per instance, three seconds late"
maximum_polling_duration = 60
[services.plans.driver]
kind = "process"
command = ["/bin/sh", "-c", "sleep 3; exec {anvil} --host {{node_host}} --port {{port}}"]
ports = [33000, 33999]
stop_grace_ms = 3000
restart_backoff_ms = [100, 1000]
log_max_bytes = 65536
"#
    );
    // A lease of 6 s: a replica is judged dead after 6 s without a heartbeat (every 2 s), which
    // a loaded machine does not reach by accident.
    let config = test_config_toml_with(node, free_port(), &plans).replace("lease_seconds = 3", "lease_seconds = 6");
    format!("data_dir = \"{}\"\ndatabase_url = \"{database_url}\"\n{config}", data_dir.display())
}

/// What the replicas of a test share: the shared plan's anvil, a PostgreSQL database, and a
/// directory (a data directory per replica) whose nodes are killed at the end.
struct Replicas {
    anvil: Anvil,
    db: TestDb,
    _reaper: NodeReaper,
    dir: tempfile::TempDir,
}

impl Replicas {
    async fn new() -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(Db::Postgres, dir.path()).await;
        Replicas { anvil: Anvil::start(&[]), db, _reaper: NodeReaper(dir.path().to_path_buf()), dir }
    }

    /// The configuration of replica `name` (data directory `<dir>/<name>`).
    fn config(&self, name: &str) -> String {
        replica_config(&self.dir.path().join(name), &self.db.url, &self.anvil.http_url())
    }
}

async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn bind(osb: &OsbClient, instance: &str, plan: &str) -> String {
    let resp = osb
        .call(
            reqwest::Method::PUT,
            &format!("/v2/service_instances/{instance}/service_bindings/app"),
            Some(json!({"service_id": SERVICE, "plan_id": plan})),
        )
        .await;
    assert!(resp.status == 201 || resp.status == 200, "{resp:?}");
    resp.body["credentials"]["uri"].as_str().unwrap().to_string()
}

fn result(answer: &Value) -> &Value {
    assert!(answer.get("error").is_none(), "{answer}");
    &answer["result"]
}

/// Provision through A, bind through B: the key serves the same node through both gateways (a
/// block mined through one is seen through the other), a third replica started later starts no
/// node, and a deprovision through B stops the one node, which ran on A. One node throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_node_runs_on_one_replica_and_every_replica_serves_and_removes_it() {
    let set = Replicas::new().await;
    let (dir, config) = (set.dir.path(), |name: &str| set.config(name));
    let a = Ovsb::start(dir, "a", &config("a"));
    let b = Ovsb::start(dir, "b", &config("b"));

    let accepted = a.osb.provision("x0", PLAN_DEVNET, Some(json!({"chain_id": 4242}))).await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    assert_eq!(a.osb.finished("x0").await["state"], "succeeded");
    assert_eq!(nodes_under(dir).len(), 1, "one node");
    assert_eq!(nodes_under(&dir.join("a")).len(), 1, "on the replica that provisioned it");

    let on_b = bind(&b.osb, "x0", PLAN_DEVNET).await;
    let on_a = bind(&a.osb, "x0", PLAN_DEVNET).await;
    assert_ne!(on_a, on_b, "each replica names its own gateway");
    eventually("B serves the key", async || rpc(&on_b, "eth_chainId", json!([])).await["result"] == "0x1092").await;
    eventually("A serves the key", async || rpc(&on_a, "eth_chainId", json!([])).await["result"] == "0x1092").await;
    result(&rpc(&on_b, "evm_mine", json!([])).await);
    assert_eq!(result(&rpc(&on_a, "eth_blockNumber", json!([])).await), "0x1", "A sees the block mined through B");
    assert_eq!(result(&rpc(&on_b, "eth_blockNumber", json!([])).await), "0x1");

    // A third replica, started later, serves the key and starts no node.
    let c = Ovsb::start(dir, "c", &config("c"));
    let on_c = bind(&c.osb, "x0", PLAN_DEVNET).await;
    eventually("C serves the key", async || rpc(&on_c, "eth_blockNumber", json!([])).await["result"] == "0x1").await;
    assert_eq!(nodes_under(dir).len(), 1, "still one node");

    // An update through C (a new chain id) restarts the node where it runs.
    let updated = c
        .osb
        .call(
            reqwest::Method::PATCH,
            "/v2/service_instances/x0?accepts_incomplete=true",
            Some(json!({"service_id": SERVICE, "plan_id": PLAN_DEVNET, "parameters": {"chain_id": 4343}})),
        )
        .await;
    assert_eq!(updated.status, 202, "{updated:?}");
    assert_eq!(c.osb.finished("x0").await["state"], "succeeded");
    eventually("B serves the updated node", async || rpc(&on_b, "eth_chainId", json!([])).await["result"] == "0x10f7")
        .await;
    assert_eq!(nodes_under(dir).len(), 1, "one node after the update");
    assert_eq!(nodes_under(&dir.join("a")).len(), 1, "still on A");

    let gone = b.osb.deprovision("x0", PLAN_DEVNET).await;
    assert_eq!(gone.status, 202, "{gone:?}");
    assert_eq!(b.osb.finished("x0").await["state"], "succeeded");
    eventually("the node is stopped", async || nodes_under(dir).is_empty()).await;
    // The shared plan is unaffected: it has no owner.
    assert_eq!(a.osb.provision("s0", PLAN_SHARED, None).await.status, 202);
    assert_eq!(b.osb.finished("s0").await["state"], "succeeded");
    assert!(nodes_under(dir).is_empty());
}

/// The owner is killed (`-9`) while its node starts: the other replica finishes the provision
/// with a node of its own, and the killed replica, restarted, starts none and stops its own
/// leftover, so that one node remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_mid_provision_leaves_the_instance_to_one_other_replica() {
    let set = Replicas::new().await;
    let (dir, config) = (set.dir.path(), |name: &str| set.config(name));
    let ports_a = (free_port(), free_port());
    let mut a = Ovsb::start_on(dir, "a", &config("a"), ports_a);
    let b = Ovsb::start(dir, "b", &config("b"));

    assert_eq!(a.osb.provision("x1", PLAN_SLOW, None).await.status, 202);
    // While its command still sleeps (sh and sleep carry the node's marker).
    eventually("A starts the node", async || !nodes_under(&dir.join("a")).is_empty()).await;
    a.kill_9();

    let done = b.osb.finished("x1").await;
    assert_eq!(done["state"], "succeeded", "B finished the provision: {done}");
    assert_eq!(nodes_under(&dir.join("b")).len(), 1, "B runs the node");
    let on_b = bind(&b.osb, "x1", PLAN_SLOW).await;
    assert_eq!(result(&rpc(&on_b, "eth_chainId", json!([])).await), "0x7a69");

    // A comes back with its data directory (the same replica id): it starts no node for x1
    // and stops the one it had left running.
    let a = Ovsb::start_on(dir, "a", &config("a"), ports_a);
    eventually("A's leftover node is stopped", async || nodes_under(&dir.join("a")).is_empty()).await;
    assert_eq!(nodes_under(dir).len(), 1, "one node for the instance");
    let on_a = bind(&a.osb, "x1", PLAN_SLOW).await;
    eventually("A serves the key from B's node", async || {
        rpc(&on_a, "eth_chainId", json!([])).await["result"] == "0x7a69"
    })
    .await;
    result(&rpc(&on_a, "evm_mine", json!([])).await);
    assert_eq!(result(&rpc(&on_b, "eth_blockNumber", json!([])).await), "0x1");
}

/// The owner of a ready instance dies and its node with it: until the owner counts as dead the
/// other replica answers calls with the upstream error and its cause (never "unknown key"), then
/// it takes the node over, by itself, and serves the key from a node of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_node_is_taken_over_and_until_then_calls_name_the_cause() {
    let set = Replicas::new().await;
    let (dir, config) = (set.dir.path(), |name: &str| set.config(name));
    let mut a = Ovsb::start(dir, "a", &config("a"));
    let b = Ovsb::start(dir, "b", &config("b"));
    a.osb.ready_instance("x2", PLAN_DEVNET, None).await;
    let on_b = bind(&b.osb, "x2", PLAN_DEVNET).await;
    eventually("B serves the key", async || rpc(&on_b, "eth_chainId", json!([])).await["result"] == "0x7a69").await;

    // ovsb dies, its node lives on: the other replica keeps forwarding to that node (the same
    // chain) rather than starting another.
    a.kill_9();
    result(&rpc(&on_b, "evm_mine", json!([])).await);
    tokio::time::sleep(Duration::from_secs(14)).await; // more than two leases
    assert_eq!(result(&rpc(&on_b, "eth_blockNumber", json!([])).await), "0x1", "still A's node and chain");
    assert!(nodes_under(&dir.join("b")).is_empty(), "no second node while the first answers");

    // Then the node dies too.
    support::kill_nodes_under(&dir.join("a"));
    let answer = rpc(&on_b, "eth_chainId", json!([])).await;
    let error = &answer["error"];
    assert_ne!(error["code"], -32001, "the key is known while its node is away: {answer}");
    assert_eq!(error["code"], -32002, "{answer}");
    let cause = error["data"]["cause"].as_str().unwrap_or_default();
    // Refused (a new connection) or reset (the kept-alive one the node's death cut).
    let named = cause.contains("Connection refused") || cause.contains("Connection reset");
    assert!(named && !cause.contains("127.0.0.1"), "the error names its cause, not the node's address: {answer}");

    eventually("B took the node over", async || nodes_under(&dir.join("b")).len() == 1).await;
    eventually("B serves the key again", async || rpc(&on_b, "eth_chainId", json!([])).await["result"] == "0x7a69")
        .await;
    assert!(nodes_under(&dir.join("a")).is_empty());
}
