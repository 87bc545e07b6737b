//! The first-party plugins' state against a real anvil: the cache follows the node's finality
//! and drops what a reorg replaced, and a cache at its key-value share evicts its oldest answers
//! while the rate limiter of the same chain keeps serving every binding.

use serde_json::{Value, json};

use super::{endpoint, start, with_plugins};
use crate::support::broker::*;
use crate::support::{Anvil, post, rpc};

/// `ovsb_cache_hits{instance}` as `/metrics` shows it now.
async fn cache_hits(broker: &TestBroker, instance: &str) -> u64 {
    let admin = broker.server.as_ref().unwrap().admin_addr;
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let series = format!(r#"ovsb_cache_hits{{instance="{instance}"}} "#);
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

async fn block_hash(uri: &str, number: &str) -> Value {
    let answer = rpc(uri, "eth_getBlockByNumber", json!([number, false])).await;
    assert!(answer["result"]["hash"].is_string(), "{answer}");
    answer["result"]["hash"].clone()
}

/// anvil's `finalized` block is 64 below its head, and `evm_revert` goes back past it. The cache
/// stored block 0x40 as final; after the revert and 200 new blocks, 0x40 has another hash, and
/// the cache serves the node's new block, never the one the revert removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_serves_a_block_that_evm_revert_replaced() {
    let (anvil, broker) = start().await;
    let node = anvil.http_url();
    let uri = endpoint(&broker, "reorg", json!([{"name": "cache", "config": {"ttl_seconds": 600}}])).await;
    let snapshot = rpc(&node, "evm_snapshot", json!([])).await["result"].clone();
    rpc(&node, "anvil_mine", json!(["0xc8"])).await;
    assert_eq!(rpc(&node, "eth_getBlockByNumber", json!(["finalized", false])).await["result"]["number"], "0x88");
    let old = block_hash(&uri, "0x40").await;
    assert_eq!(block_hash(&uri, "0x40").await, old);
    assert_eq!(cache_hits(&broker, "reorg").await, 1, "block 0x40 is final: cached");

    // Back to block 0, then 200 other blocks (2 s apart: other timestamps, other hashes).
    assert_eq!(rpc(&node, "evm_revert", json!([snapshot])).await["result"], true);
    rpc(&node, "anvil_mine", json!(["0xc8", "0x2"])).await;
    let new = block_hash(&node, "0x40").await;
    assert_ne!(new, old, "the revert replaced block 0x40");
    // The cache checks the chain at most once a second (README): past that, never the old block.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(block_hash(&uri, "0x40").await, new, "the cache must not serve the reverted block");
    assert_eq!(block_hash(&uri, "0x40").await, new);
    assert_eq!(cache_hits(&broker, "reorg").await, 2, "the new block 0x40 is cached in turn");
}

/// Distinct reads through one binding, in batches of 1000, on the first-party chain: the
/// cache's share (lowered here to 2000 entries, about 1000 answers) fills many times over and
/// evicts its oldest answers; no call of either binding is refused by the rate limiter (its
/// limit is out of reach), and the newest answers are still cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_reads_that_overflow_the_cache_leave_every_binding_served() {
    distinct_reads(20_000, Some(2000)).await;
}

/// The same with 100,000 reads and the default share (25,000 entries): `tests/load/cache-fill.sh`
/// runs it (about a minute in a debug build, too long for every CI run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100,000 reads: run by tests/load/cache-fill.sh"]
async fn a_hundred_thousand_distinct_reads_leave_every_binding_served() {
    distinct_reads(100_000, None).await;
}

async fn distinct_reads(reads: usize, share: Option<usize>) {
    const BATCH: usize = 1000;
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
        with_plugins(config);
        // The test is about room, not time: a debug build on a busy machine may take a plugin
        // past the default 50 ms budget.
        for plugin in &mut config.plugins {
            plugin.limits.call_budget_ms = 2000;
        }
        if let Some(share) = share {
            config.runtime.kv.max_entries_per_plugin = share;
        }
    })
    .await;
    rpc(&anvil.http_url(), "anvil_mine", json!(["0x80"])).await;
    let chain = json!([
        {"name": "method-filter", "config": {"deny": ["debug_*"]}},
        {"name": "rate-limit", "config": {"requests_per_second": 1_000_000, "burst": 1_000_000}},
        {"name": "cache"},
    ]);
    let reader = endpoint(&broker, "fill", chain).await;
    let other = broker.osb.bind("fill", "other", PLAN_SHARED).await;
    assert_eq!(other.status, 201, "{other:?}");
    let other = other.body["credentials"]["uri"].as_str().unwrap().to_string();

    let address = |n: usize| format!("0x{n:040x}");
    let started = std::time::Instant::now();
    for first in (0..reads).step_by(BATCH) {
        let batch: Vec<Value> = (first..first + BATCH)
            .map(|n| json!({"jsonrpc": "2.0", "id": n, "method": "eth_getBalance", "params": [address(n), "0x1"]}))
            .collect();
        let (status, answers) = post(&reader, &Value::Array(batch)).await;
        assert_eq!(status, 200, "{answers}");
        let answers = answers.as_array().expect("a batch answer");
        assert_eq!(answers.len(), BATCH);
        if let Some(refused) = answers.iter().find(|answer| answer.get("result").is_none()) {
            panic!("reads {first}..: a call was not served: {refused}");
        }
        let probe = rpc(&other, "eth_getBalance", json!([address(reads + first), "0x1"])).await;
        assert_eq!(probe["result"], "0x0", "the other binding is served: {probe}");
    }
    eprintln!("{reads} distinct reads in batches of {BATCH}: {:.1} s", started.elapsed().as_secs_f64());

    // The cache kept caching: the newest read is a hit, the oldest was evicted (a miss).
    let hits = cache_hits(&broker, "fill").await;
    assert_eq!(rpc(&reader, "eth_getBalance", json!([address(reads - 1), "0x1"])).await["result"], "0x0");
    assert_eq!(cache_hits(&broker, "fill").await, hits + 1, "the newest answer is cached");
    assert_eq!(rpc(&reader, "eth_getBalance", json!([address(0), "0x1"])).await["result"], "0x0");
    assert_eq!(cache_hits(&broker, "fill").await, hits + 1, "the oldest answer was evicted");
    let chain_id = rpc(&other, "eth_chainId", json!([])).await;
    assert_eq!(chain_id["result"], "0x7a69", "{chain_id}");
}
