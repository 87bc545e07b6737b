//! # cache: answers that cannot change, served without asking the node
//!
//! Keeps the answers to calls whose result can no longer change in the host's key-value store,
//! shared by every copy of the plugin serving the instance, and answers repeated calls from it.
//!
//! ## Configuration
//!
//! ```json
//! {"ttl_seconds": 300, "max_entry_bytes": 262144, "finality_depth": 64}
//! ```
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `ttl_seconds` | integer | `300` | how long an answer is kept: 1 to 604800 (a week) |
//! | `max_entry_bytes` | integer | `262144` | larger answers (JSON text of `result`) are not kept: 1 to 16777216; the host's key-value store also caps values (`max_value_bytes`, 1 MiB by default) |
//! | `finality_depth` | integer | `64` | on a node without the `finalized` block tag, a block this many blocks below `latest` counts as final: 1 to 1000000 |
//!
//! All fields are optional and no configuration (`null`) means the defaults. Unknown fields are
//! rejected.
//!
//! ## Errors
//!
//! None of its own: a hit answers with the stored result, everything else goes to the node and
//! its answer (or error) comes back unchanged. When the key-value store (or the cache's share of
//! it) is full, the oldest answers are evicted to make room (see `room`); an answer the store
//! still refuses (a value over its limit, say) is simply not kept.
//!
//! ## What is cached
//!
//! Only successful, non-`null` results, and only of these calls:
//!
//! | method | cached when |
//! |---|---|
//! | `eth_chainId`, `net_version` | always |
//! | `eth_getBlockByHash` | always (a block hash fixes the block's contents) |
//! | `eth_getTransactionByHash`, `eth_getTransactionReceipt` | the answer's `blockNumber` is at or below the finalized block (a pending transaction, or one in a block that a reorg may still drop, is not kept) |
//! | `eth_getBlockByNumber`, `eth_getBlockTransactionCountByNumber` (block: params\[0\]), `eth_getBalance`, `eth_getCode`, `eth_getTransactionCount`, `eth_call` (block: params\[1\]), `eth_getStorageAt` (block: params\[2\]) | the block parameter is fixed and final: `earliest` or `0x0`; a hex number (or `{"blockNumber": n}`) at or below the finalized block; or a block hash (or `{"blockHash": h}` without `"requireCanonical": true`), since a hash fixes the state it names |
//!
//! Never cached: the tags `latest`, `pending`, `safe` and `finalized` (they move), a missing block
//! parameter (the node reads it as `latest`), `null` results, errors, and every other method.
//!
//! ## Finality and reorgs
//!
//! The finalized block is the node's: the answer to `eth_getBlockByNumber(["finalized", false])`.
//! On a node without the `finalized` tag (an error or a `null` answer) it is the block
//! `finality_depth` below `latest` (and nothing but block 0 while the chain is shorter). It is
//! asked through `upstream` by the first call that needs it, and kept for 1 second in the
//! key-value store (key `cache:finalized`), so the node sees at most one check (one to three
//! calls) per second per instance. A check that cannot reach the node (unreachable, deadline,
//! upstream cap) is not remembered, and counts nothing but block 0 as final.
//!
//! Every check also makes sure the chain did not reorganize below the last final block it saw
//! (its hash at that height, or the new final block's parent hash, must match; see `chain`).
//! If it did, which on a node with real finality means finality was broken, and on a devnet
//! means `evm_revert`, `anvil_reorg`, `anvil_reset` or a node restarted with a fresh chain,
//! every answer read at a block number or about a transaction is dropped at once (it is keyed
//! by a chain epoch that the reorg advances, so none of them is served again), and the event is
//! logged at level `warn`. The reorg is noticed by the first call at most 1 second after the
//! node reports it. Answers that a reorg cannot change (by block hash, `eth_chainId`,
//! `net_version`) stay; a node restarted with another chain id still changes even
//! `eth_chainId`, which this cache serves until `ttl_seconds` pass.
//!
//! ## Keys, hits and misses
//!
//! The key of an answer is `cache:entry:<method>:<SHA-256 of the params>` (followed by
//! `@<epoch>` for answers read at a block number or about a transaction), where the params are
//! in canonical JSON (object keys sorted, no whitespace): the same call with its object members
//! in another order is the same entry. Anything else that differs (`"0xA"` against `"0xa"`,
//! extra parameters) is a different entry.
//!
//! Every call of a cacheable method whose params qualify is a hit or a miss (whether or not its
//! answer can then be stored), logged at level `debug`; other calls are neither. The host counts
//! them itself, as the plugin's decisions (`ovsb_plugin_decisions`, `ovsb_cache_hits`): the
//! plugin writes no counters.
//!
//! ## Room
//!
//! The answers live in the cache's share of the key-value store. When it is full, the oldest
//! answers are evicted, 16 at a time, to make room for the new one (see `room`): a full cache
//! keeps caching, and never takes the room of another plugin of the chain.
//!
//! Hooks: `on-call` (answers hits, forwards misses) and `on-result` (stores answers). The plugin
//! selects the methods of the table above (`CACHEABLE_METHODS`): ovsb passes every other call by
//! without entering the plugin, so a cache in the chain costs other calls nothing.

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Methods, Outcome, Plugin, kv, log, ok_raw};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub mod chain;
pub mod room;

pub use chain::{ChainState, DEFAULT_FINALITY_DEPTH, FINALIZED_KEY, MAX_FINALITY_DEPTH, chain_state, in_epoch};

/// Default `ttl_seconds`.
pub const DEFAULT_TTL_SECONDS: u64 = 300;
/// Highest `ttl_seconds`: a week.
pub const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// Default `max_entry_bytes`.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 256 << 10;
/// Highest `max_entry_bytes`.
pub const MAX_MAX_ENTRY_BYTES: u64 = 16 << 20;

const FIELDS: [&str; 3] = ["ttl_seconds", "max_entry_bytes", "finality_depth"];

/// When the answer to a call may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The answer never changes: keep it if not `null`.
    Always,
    /// The answer describes a transaction: keep it if its `blockNumber` is finalized.
    Mined,
    /// The answer is read at this block number: keep it if the block is finalized.
    AtBlock(u64),
}

/// A call the cache may answer: when to keep its answer, and under which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cacheable {
    /// When the answer may be kept.
    pub rule: Rule,
    /// The key-value key of its answer.
    pub key: String,
}

/// Every method [`classify`] may cache: the plugin sees no other call (see `Plugin::methods`).
pub const CACHEABLE_METHODS: [&str; 12] = [
    "eth_chainId",
    "net_version",
    "eth_getBlockByHash",
    "eth_getTransactionByHash",
    "eth_getTransactionReceipt",
    "eth_getBlockByNumber",
    "eth_getBlockTransactionCountByNumber",
    "eth_getBalance",
    "eth_getCode",
    "eth_getTransactionCount",
    "eth_call",
    "eth_getStorageAt",
];

/// Where a method's block parameter is, for the methods that read state at a block.
fn block_param_index(method: &str) -> Option<usize> {
    match method {
        "eth_getBlockByNumber" | "eth_getBlockTransactionCountByNumber" => Some(0),
        "eth_getBalance" | "eth_getCode" | "eth_getTransactionCount" | "eth_call" => Some(1),
        "eth_getStorageAt" => Some(2),
        _ => None,
    }
}

/// Whether the call may be answered from the cache, and how; `None` for calls never cached.
pub fn classify(call: &Call) -> Option<Cacheable> {
    let params: Value = match call.params.as_deref() {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).ok()?,
    };
    let rule = match call.method.as_str() {
        "eth_chainId" | "net_version" => Rule::Always,
        "eth_getBlockByHash" => Rule::Always,
        "eth_getTransactionByHash" | "eth_getTransactionReceipt" => Rule::Mined,
        method => match block_param(params.get(block_param_index(method)?)?)? {
            Block::Number(number) => Rule::AtBlock(number),
            Block::Hash => Rule::Always,
        },
    };
    Some(Cacheable { rule, key: entry_key(&call.method, &params) })
}

/// A block parameter that names a fixed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Number(u64),
    Hash,
}

/// The fixed block a block parameter names; `None` for tags that move and anything unknown.
fn block_param(param: &Value) -> Option<Block> {
    match param {
        Value::String(text) if text == "earliest" => Some(Block::Number(0)),
        Value::String(text) if is_hash(text) => Some(Block::Hash),
        Value::String(text) => parse_quantity(text).map(Block::Number),
        // EIP-1898.
        Value::Object(object) => match (object.get("blockNumber"), object.get("blockHash")) {
            (Some(Value::String(number)), None) => parse_quantity(number).map(Block::Number),
            (None, Some(Value::String(hash))) if is_hash(hash) => {
                // With `requireCanonical` the answer also says the block is canonical, which a
                // reorg may change.
                let canonical = object.get("requireCanonical").and_then(Value::as_bool).unwrap_or(false);
                (!canonical).then_some(Block::Hash)
            }
            _ => None,
        },
        _ => None,
    }
}

/// `0x` followed by 64 hex digits.
fn is_hash(text: &str) -> bool {
    text.len() == 66 && text.starts_with("0x") && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A hex quantity (`0x1b4`) that fits a u64.
pub(crate) fn parse_quantity(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// `cache:entry:<method>:<hex SHA-256 of the canonical JSON of params>`.
pub fn entry_key(method: &str, params: &Value) -> String {
    let mut text = String::new();
    canonical_json(params, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    let mut key = String::with_capacity("cache:entry:".len() + method.len() + 1 + 64);
    key.push_str("cache:entry:");
    key.push_str(method);
    key.push(':');
    // By hand: 32 `write!`s of `{:02x}` were a tenth of a cache hit's time in the plugin.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

/// Writes `value` as JSON with object keys sorted and no whitespace.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&object[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The plugin: see the module docs.
pub struct Cache {
    ttl_ms: u64,
    max_entry_bytes: usize,
    finality_depth: u64,
}

impl Cache {
    /// The key of `cacheable`'s answer now: in the chain's epoch unless no reorg can change it.
    fn key(&self, cacheable: &Cacheable) -> (String, Option<ChainState>) {
        match cacheable.rule {
            Rule::Always => (cacheable.key.clone(), None),
            Rule::Mined | Rule::AtBlock(_) => {
                let state = chain_state(self.finality_depth);
                (in_epoch(&cacheable.key, state.epoch), Some(state))
            }
        }
    }

    /// Whether the answer `json` to a call classified as `rule` may be kept, the chain being
    /// `state` (`None` for [`Rule::Always`]).
    fn keepable(&self, rule: Rule, json: &str, state: Option<ChainState>) -> Result<(), String> {
        if json.len() > self.max_entry_bytes {
            return Err(format!("{} bytes, over max_entry_bytes ({})", json.len(), self.max_entry_bytes));
        }
        if json.trim() == "null" {
            return Err("the result is null".to_string());
        }
        let block = match rule {
            Rule::Always => return Ok(()),
            Rule::AtBlock(number) => number,
            Rule::Mined => {
                let result: Value = serde_json::from_str(json).map_err(|_| "the result is not JSON".to_string())?;
                match result.get("blockNumber").and_then(Value::as_str).and_then(parse_quantity) {
                    Some(number) => number,
                    None => return Err("the transaction is not in a block yet".to_string()),
                }
            }
        };
        if state.is_some_and(|state| state.is_final(block)) {
            Ok(())
        } else {
            Err(format!("block {block} is not finalized"))
        }
    }
}

impl Plugin for Cache {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = settings(&config)?;
        let ttl_seconds = integer(&settings, "ttl_seconds", DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS)?;
        let max_entry_bytes = integer(&settings, "max_entry_bytes", DEFAULT_MAX_ENTRY_BYTES, MAX_MAX_ENTRY_BYTES)?;
        let finality_depth = integer(&settings, "finality_depth", DEFAULT_FINALITY_DEPTH, MAX_FINALITY_DEPTH)?;
        Ok(Cache { ttl_ms: ttl_seconds * 1000, max_entry_bytes: max_entry_bytes as usize, finality_depth })
    }

    fn methods(&self) -> Methods {
        Methods::matching(CACHEABLE_METHODS)
    }

    fn on_call(&mut self, _ctx: &Context, call: Call) -> Decision {
        let Some(cacheable) = classify(&call) else {
            return Decision::Forward(call);
        };
        let (key, _) = self.key(&cacheable);
        match kv::get(&key).map(String::from_utf8) {
            Some(Ok(json)) => {
                log::debug(&format!("cache hit: {}", call.method));
                Decision::Respond(ok_raw(json))
            }
            _ => {
                log::debug(&format!("cache miss: {}", call.method));
                Decision::Forward(call)
            }
        }
    }

    fn on_result(&mut self, _ctx: &Context, call: &Call, outcome: Outcome) -> Outcome {
        let (Ok(json), Some(cacheable)) = (&outcome, classify(call)) else {
            return outcome;
        };
        // The chain as it is now. (A reorg noticed between the call and its answer could let one
        // answer of the old chain into the new epoch: the node would have to answer from the
        // old chain after reporting the new one.)
        let (key, state) = self.key(&cacheable);
        match self.keepable(cacheable.rule, json, state) {
            Ok(()) => {
                if let Err(err) = room::keep(&key, json.as_bytes(), self.ttl_ms) {
                    log::debug(&format!("cannot keep the answer to {}: {err}", call.method));
                }
            }
            Err(reason) => log::debug(&format!("not keeping the answer to {}: {reason}", call.method)),
        }
        outcome
    }
}

/// The configuration as an object (`null` reads as `{}`), refusing unknown fields.
fn settings(config: &Config) -> Result<Map<String, Value>, String> {
    config.object(r#"{"ttl_seconds": 300, "max_entry_bytes": 262144, "finality_depth": 64}"#, &FIELDS)
}

/// The whole number at `field`, between 1 and `max`, or `default` when absent.
fn integer(settings: &Map<String, Value>, field: &str, default: u64, max: u64) -> Result<u64, String> {
    let Some(value) = settings.get(field) else {
        return Ok(default);
    };
    match value.as_u64() {
        Some(0) => Err(format!("invalid configuration: {field} must be at least 1")),
        Some(n) if n > max => Err(format!("invalid configuration: {field} must be at most {max}")),
        Some(n) => Ok(n),
        None => Err(format!("invalid configuration: {field} must be a whole number of at least 1, got {value}")),
    }
}

ovsb_plugin_sdk::export_plugin!(Cache);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{Harness, MockHost, check_schema_fields};
    use ovsb_plugin_sdk::{Hooks, Level, RpcError, codes};
    use serde_json::json;
    use std::cell::Cell;
    use std::rc::Rc;

    const ADDRESS: &str = "0x00000000000000000000000000000000000000aa";
    const HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

    /// A node whose finalized block is `finalized` (an error when `None`), and which answers
    /// every other call with `"<method> <params>"`, or `answer` when set.
    struct Node {
        finalized: Rc<Cell<Option<u64>>>,
    }

    fn node(finalized: Option<u64>, answer: Option<&'static str>) -> Node {
        let cell = Rc::new(Cell::new(finalized));
        let shared = cell.clone();
        MockHost::current().set_upstream(move |call| {
            if call.method == "eth_getBlockByNumber" && call.params.as_deref() == Some(r#"["finalized",false]"#) {
                return match shared.get() {
                    Some(number) => Ok(json!({
                        "number": format!("0x{number:x}"),
                        "hash": format!("0x{number:064x}"),
                        "parentHash": format!("0x{:064x}", number.saturating_sub(1)),
                    })
                    .to_string()),
                    None => Err(RpcError::new(codes::INVALID_PARAMS, "invalid block number: finalized")),
                };
            }
            match answer {
                Some(answer) => Ok(answer.to_string()),
                None => Ok(json!(format!("{} {}", call.method, call.params.as_deref().unwrap_or(""))).to_string()),
            }
        });
        Node { finalized: cell }
    }

    fn harness() -> Harness<Cache> {
        Harness::new("null").unwrap()
    }

    /// The calls that reached the node, other than the finality checks' lookups.
    fn node_calls() -> Vec<String> {
        MockHost::current()
            .upstream_calls()
            .into_iter()
            .filter(|call| !matches!(call.params.as_deref(), Some(r#"["finalized",false]"# | r#"["latest",false]"#)))
            .map(|call| format!("{} {}", call.method, call.params.unwrap_or_default()))
            .collect()
    }

    fn finalized_lookups() -> usize {
        MockHost::current()
            .upstream_calls()
            .iter()
            .filter(|c| c.params.as_deref() == Some(r#"["finalized",false]"#))
            .count()
    }

    /// How many hits (`"hit"`) or misses (`"miss"`) were logged; the plugin writes no counters.
    fn counted(what: &str) -> usize {
        assert_eq!(kv::get("cache:hits"), None);
        assert_eq!(kv::get("cache:misses"), None);
        let prefix = format!("cache {what}: ");
        MockHost::current()
            .logs()
            .iter()
            .filter(|(level, line)| *level == Level::Debug && line.starts_with(&prefix))
            .count()
    }

    /// Runs the call twice and says whether the second was answered from the cache.
    fn cached_on_second_call(harness: &mut Harness<Cache>, method: &str, params: Option<&str>) -> bool {
        let before = node_calls().len();
        let first = harness.call(method, params);
        let second = harness.call(method, params);
        assert_eq!(first, second, "a cached answer must equal the node's");
        node_calls().len() - before == 1
    }

    #[test]
    fn the_plugin_selects_exactly_the_methods_it_may_cache() {
        let selection = Harness::<Cache>::new("null").unwrap().plugin().methods();
        let fixed = [
            ("eth_chainId", "[]".to_string()),
            ("net_version", "[]".to_string()),
            ("eth_getBlockByHash", format!(r#"["{HASH}", false]"#)),
            ("eth_getTransactionByHash", format!(r#"["{HASH}"]"#)),
            ("eth_getTransactionReceipt", format!(r#"["{HASH}"]"#)),
            ("eth_getBlockByNumber", r#"["0x0", false]"#.to_string()),
            ("eth_getBlockTransactionCountByNumber", r#"["earliest"]"#.to_string()),
            ("eth_getBalance", format!(r#"["{ADDRESS}", "0x0"]"#)),
            ("eth_getCode", format!(r#"["{ADDRESS}", "0x0"]"#)),
            ("eth_getTransactionCount", format!(r#"["{ADDRESS}", "0x0"]"#)),
            ("eth_call", format!(r#"[{{"to": "{ADDRESS}"}}, "0x0"]"#)),
            ("eth_getStorageAt", format!(r#"["{ADDRESS}", "0x0", "0x0"]"#)),
        ];
        assert_eq!(fixed.len(), CACHEABLE_METHODS.len());
        for (method, params) in &fixed {
            assert!(classify(&Call::new(*method, Some(params.clone()))).is_some(), "{method} can be cached");
            assert!(selection.sees(method), "{method} is selected");
        }
        for method in ["eth_blockNumber", "eth_getLogs", "eth_sendRawTransaction", "eth_estimateGas", "eth_chainid"] {
            assert!(!selection.sees(method), "{method} is not selected");
            assert!(classify(&Call::new(method, Some(format!(r#"["{ADDRESS}", "0x0"]"#)))).is_none());
        }
    }

    #[test]
    fn chain_id_is_answered_from_the_cache_and_counted() {
        node(Some(100), Some("\"0x1\""));
        let mut harness = harness();
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(counted("miss"), 1);
        assert_eq!(counted("hit"), 0);
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(node_calls(), ["eth_chainId "]);
        assert_eq!(counted("hit"), 2);
        assert_eq!(counted("miss"), 1);
        let logs = MockHost::current().logs();
        assert!(logs.contains(&(Level::Debug, "cache miss: eth_chainId".to_string())), "{logs:?}");
        assert!(logs.contains(&(Level::Debug, "cache hit: eth_chainId".to_string())), "{logs:?}");
        assert!(cached_on_second_call(&mut harness, "net_version", Some("[]")));
        assert_eq!(harness.plugin().hooks(), Hooks::ON_CALL | Hooks::ON_RESULT);
    }

    #[test]
    fn moving_tags_and_a_missing_block_parameter_are_never_cached_nor_counted() {
        node(Some(100), None);
        let mut harness = harness();
        for tag in ["latest", "pending", "safe", "finalized"] {
            let params = format!(r#"["{ADDRESS}","{tag}"]"#);
            assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&params)), "{tag}");
            let params = format!(r#"["{tag}",true]"#);
            assert!(!cached_on_second_call(&mut harness, "eth_getBlockByNumber", Some(&params)), "{tag}");
        }
        assert!(!cached_on_second_call(&mut harness, "eth_call", Some(r#"[{"to":"0x00"}]"#)));
        assert!(!cached_on_second_call(&mut harness, "eth_blockNumber", Some("[]")));
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"["0xaa",{"blockNumber":"latest"}]"#)));
        assert_eq!(counted("hit"), 0);
        assert_eq!(counted("miss"), 0);
        assert_eq!(finalized_lookups(), 0, "uncacheable calls need no finalized block");
    }

    #[test]
    fn latest_is_never_served_from_an_entry_stored_for_a_number() {
        node(Some(100), None);
        let mut harness = harness();
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&format!(r#"["{ADDRESS}","0x5"]"#))));
        let latest = format!(r#"["{ADDRESS}","latest"]"#);
        assert_eq!(
            harness.call("eth_getBalance", Some(&latest)),
            Ok(json!(format!("eth_getBalance {latest}")).to_string())
        );
        assert_eq!(node_calls().last().unwrap(), &format!("eth_getBalance {latest}"));
    }

    #[test]
    fn numbered_blocks_are_cached_only_at_or_below_the_finalized_block() {
        let node = node(Some(100), None);
        let mut harness = harness();
        let at = |block: &str| format!(r#"["{ADDRESS}","{block}"]"#);
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&at("0x64"))), "100 is finalized");
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&at("0x65"))), "101 is not");
        assert!(cached_on_second_call(&mut harness, "eth_getCode", Some(&at("0x1"))));
        assert!(cached_on_second_call(&mut harness, "eth_getTransactionCount", Some(&at("0x2"))));
        assert!(cached_on_second_call(
            &mut harness,
            "eth_getStorageAt",
            Some(&format!(r#"["{ADDRESS}","0x0","0x3"]"#))
        ));
        assert!(!cached_on_second_call(
            &mut harness,
            "eth_getStorageAt",
            Some(&format!(r#"["{ADDRESS}","0x0","0x300"]"#))
        ));
        assert!(cached_on_second_call(&mut harness, "eth_call", Some(r#"[{"to":"0xaa","data":"0x01"},"0x10"]"#)));
        assert!(cached_on_second_call(&mut harness, "eth_getBlockByNumber", Some(r#"["0x10",true]"#)));
        assert!(cached_on_second_call(&mut harness, "eth_getBlockTransactionCountByNumber", Some(r#"["0x10"]"#)));
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"["0xaa",{"blockNumber":"0x10"}]"#)));

        // Once the chain finalizes block 101, its answers are kept too.
        node.finalized.set(Some(101));
        MockHost::current().advance_ms(chain::CHECK_MS);
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&at("0x65"))));
    }

    #[test]
    fn the_finalized_block_is_asked_at_most_once_a_second() {
        node(Some(100), None);
        let host = MockHost::current();
        let mut harness = harness();
        for block in 1..=5 {
            harness.call("eth_getBalance", Some(&format!(r#"["{ADDRESS}","0x{block:x}"]"#))).unwrap();
        }
        assert_eq!(finalized_lookups(), 1);
        host.advance_ms(chain::CHECK_MS - 1);
        harness.call("eth_getBalance", Some(&format!(r#"["{ADDRESS}","0x6"]"#))).unwrap();
        assert_eq!(finalized_lookups(), 1);
        host.advance_ms(1);
        harness.call("eth_getBalance", Some(&format!(r#"["{ADDRESS}","0x7"]"#))).unwrap();
        assert_eq!(finalized_lookups(), 2);
    }

    #[test]
    fn without_finalized_support_only_block_zero_and_hashes_are_cached() {
        node(None, None);
        let host = MockHost::current();
        let mut harness = harness();
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&format!(r#"["{ADDRESS}","0x1"]"#))));
        assert_eq!(finalized_lookups(), 1, "the node's refusal is remembered for a second");
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&format!(r#"["{ADDRESS}","earliest"]"#))));
        assert!(cached_on_second_call(&mut harness, "eth_getBlockByNumber", Some(r#"["0x0",false]"#)));
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&format!(r#"["{ADDRESS}","{HASH}"]"#))));
        assert!(cached_on_second_call(&mut harness, "eth_getBlockByHash", Some(&format!(r#"["{HASH}",false]"#))));
        assert_eq!(finalized_lookups(), 1);
        host.advance_ms(chain::CHECK_MS);
        assert!(!cached_on_second_call(&mut harness, "eth_getCode", Some(&format!(r#"["{ADDRESS}","0x1"]"#))));
        assert_eq!(finalized_lookups(), 2);
    }

    #[test]
    fn an_unreachable_node_is_not_remembered_as_lacking_finality() {
        let mut harness = harness();
        let reachable = Rc::new(Cell::new(false));
        let flag = reachable.clone();
        MockHost::current().set_upstream(move |call| {
            if call.params.as_deref() == Some(r#"["finalized",false]"#) && !flag.get() {
                return Err(RpcError::new(-32002, "no upstream node is reachable"));
            }
            if call.params.as_deref() == Some(r#"["finalized",false]"#) {
                return Ok(format!(r#"{{"number":"0x64","hash":"{HASH}"}}"#));
            }
            Ok("\"0x1\"".to_string())
        });
        let params = format!(r#"["{ADDRESS}","0x1"]"#);
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&params)));
        reachable.set(true);
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&params)));
    }

    #[test]
    fn block_hashes_are_cached_unless_canonical_membership_is_required() {
        node(Some(0), None);
        let mut harness = harness();
        let object = format!(r#"["{ADDRESS}",{{"blockHash":"{HASH}"}}]"#);
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&object)));
        let canonical = format!(r#"["{ADDRESS}",{{"blockHash":"{HASH}","requireCanonical":true}}]"#);
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&canonical)));
        let short = format!(r#"["{ADDRESS}","{}"]"#, &HASH[..65]);
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(&short)));
        assert_eq!(finalized_lookups(), 0);
    }

    #[test]
    fn null_results_and_errors_are_not_cached() {
        node(Some(100), Some("null"));
        let mut harness = harness();
        assert!(!cached_on_second_call(&mut harness, "eth_getTransactionReceipt", Some(&format!(r#"["{HASH}"]"#))));
        assert!(!cached_on_second_call(&mut harness, "eth_getBlockByHash", Some(&format!(r#"["{HASH}",false]"#))));
        assert!(!cached_on_second_call(&mut harness, "eth_getBlockByNumber", Some(r#"["0x5",false]"#)));

        MockHost::current().set_upstream(|_| Err(RpcError::new(-32000, "header not found")));
        assert!(!cached_on_second_call(&mut harness, "eth_chainId", None));
        assert_eq!(counted("hit"), 0);
        assert_eq!(counted("miss"), 8, "every one of those calls was a miss");
    }

    #[test]
    fn transactions_and_receipts_are_cached_once_their_block_is_finalized() {
        let host = MockHost::current();
        node(Some(100), None);
        let mut harness = harness();
        let mined = |block: &str| format!(r#"{{"transactionHash":"{HASH}","blockNumber":"{block}","status":"0x1"}}"#);
        let params = format!(r#"["{HASH}"]"#);
        for (answer, cached) in [
            (mined("0x64"), true),
            (mined("0x65"), false),
            (format!(r#"{{"hash":"{HASH}","blockHash":null,"blockNumber":null}}"#), false),
        ] {
            host.reset();
            let answer_for_node = answer.clone();
            let finalized = format!(r#"{{"number":"0x64","hash":"{HASH}"}}"#);
            host.set_upstream(move |call| {
                Ok(if call.method == "eth_getBlockByNumber" { finalized.clone() } else { answer_for_node.clone() })
            });
            for method in ["eth_getTransactionReceipt", "eth_getTransactionByHash"] {
                assert_eq!(cached_on_second_call(&mut harness, method, Some(&params)), cached, "{method} {answer}");
            }
        }
    }

    #[test]
    fn the_key_is_the_method_and_the_canonical_params() {
        node(Some(100), None);
        let mut harness = harness();
        let one = r#"[{"to":"0xaa","data":"0x01","value":{"b":1,"a":2}},"0x10"]"#;
        let same = r#"[ {"value":{"a":2,"b":1}, "data":"0x01","to":"0xaa"} , "0x10" ]"#;
        let other = r#"[{"to":"0xaa","data":"0x02"},"0x10"]"#;
        let first = harness.call("eth_call", Some(one)).unwrap();
        assert_eq!(harness.call("eth_call", Some(same)), Ok(first), "the same call, members reordered");
        harness.call("eth_call", Some(other)).unwrap();
        assert_eq!(node_calls().len(), 2);

        assert_eq!(
            classify(&Call::new("eth_call", Some(one.to_string()))),
            classify(&Call::new("eth_call", Some(same.to_string())))
        );
        let key = classify(&Call::new("eth_call", Some(one.to_string()))).unwrap().key;
        assert!(key.starts_with("cache:entry:eth_call:"), "{key}");
        assert_eq!(key.len(), "cache:entry:eth_call:".len() + 64);
        assert_ne!(
            classify(&Call::new("eth_getCode", Some(format!(r#"["{ADDRESS}","0x1"]"#)))).unwrap().key,
            classify(&Call::new("eth_getBalance", Some(format!(r#"["{ADDRESS}","0x1"]"#)))).unwrap().key,
            "the method is part of the key"
        );
        let mut text = String::new();
        canonical_json(&serde_json::from_str(same).unwrap(), &mut text);
        assert_eq!(text, r#"[{"data":"0x01","to":"0xaa","value":{"a":2,"b":1}},"0x10"]"#);
    }

    #[test]
    fn a_reorg_below_the_final_block_drops_answers_read_at_numbers_but_not_by_hash() {
        // A node whose blocks' hashes depend on `fork`: a reorg rewrites every one of them.
        let fork = Rc::new(Cell::new(0u64));
        let node_fork = fork.clone();
        MockHost::current().set_upstream(move |call| {
            let fork = node_fork.get();
            Ok(match call.params.as_deref() {
                Some(r#"["finalized",false]"#) => {
                    json!({"number": "0x64", "hash": format!("0x{fork:064x}")}).to_string()
                }
                Some(params) => json!(format!("{} {params} on fork {fork}", call.method)).to_string(),
                None => json!(format!("{} on fork {fork}", call.method)).to_string(),
            })
        });
        let mut harness = harness();
        let at_number = format!(r#"["{ADDRESS}","0x40"]"#);
        let by_hash = format!(r#"["{HASH}",false]"#);
        let receipt = format!(r#"["{HASH}"]"#);
        harness.call("eth_getBlockByHash", Some(&by_hash)).unwrap();
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&at_number)));

        fork.set(1);
        // Until the next check (1 s), the cache cannot know.
        MockHost::current().advance_ms(chain::CHECK_MS);
        assert_eq!(
            harness.call("eth_getBalance", Some(&at_number)),
            Ok(json!(format!("eth_getBalance {at_number} on fork 1")).to_string()),
            "the answer of the old chain is not served"
        );
        assert!(
            MockHost::current()
                .logs()
                .iter()
                .any(|(level, line)| *level == Level::Warn && line.contains("reorganized"))
        );
        let calls = node_calls().len();
        harness.call("eth_getBalance", Some(&at_number)).unwrap();
        assert_eq!(node_calls().len(), calls, "the new chain's answer is kept");
        assert_eq!(
            harness.call("eth_getBlockByHash", Some(&by_hash)),
            Ok(json!(format!("eth_getBlockByHash {by_hash} on fork 0")).to_string()),
            "a block hash names the same block on any fork"
        );
        // A transaction's answer depends on its block: kept per epoch too.
        let calls = node_calls().len();
        MockHost::current().set_upstream(move |call| {
            Ok(match call.params.as_deref() {
                Some(r#"["finalized",false]"#) => {
                    json!({"number": "0x64", "hash": format!("0x{:064x}", 1)}).to_string()
                }
                _ => json!({"blockNumber": "0x10"}).to_string(),
            })
        });
        assert!(cached_on_second_call(&mut harness, "eth_getTransactionReceipt", Some(&receipt)));
        assert_eq!(node_calls().len(), calls + 1);
        let key = classify(&Call::new("eth_getTransactionReceipt", Some(receipt.clone()))).unwrap().key;
        assert!(kv::get(&in_epoch(&key, 1)).is_some(), "stored in epoch 1");
    }

    #[test]
    fn without_the_finalized_tag_blocks_finality_depth_below_latest_are_final() {
        MockHost::current().set_upstream(|call| match call.params.as_deref() {
            Some(r#"["finalized",false]"#) => Err(RpcError::new(-32602, "unknown block tag")),
            Some(r#"["latest",false]"#) => Ok(json!({"number": "0x64", "hash": HASH}).to_string()),
            Some(r#"["0x5a",false]"#) => Ok(json!({"number": "0x5a", "hash": HASH}).to_string()),
            _ => Ok("\"0x1\"".to_string()),
        });
        let mut harness = Harness::<Cache>::new(r#"{"finality_depth": 10}"#).unwrap();
        let balance_calls =
            || MockHost::current().upstream_calls().iter().filter(|c| c.method == "eth_getBalance").count();
        for (block, cached) in [("0x5a", true), ("0x5b", false)] {
            let params = format!(r#"["{ADDRESS}","{block}"]"#);
            harness.call("eth_getBalance", Some(&params)).unwrap();
            harness.call("eth_getBalance", Some(&params)).unwrap();
            assert_eq!(balance_calls(), if cached { 1 } else { 3 }, "{block}: 100 - 10 = 0x5a is final, 0x5b is not");
        }
    }

    #[test]
    fn a_full_store_evicts_the_oldest_answers_and_the_cache_keeps_caching() {
        node(Some(100_000), None);
        let host = MockHost::current();
        let mut harness = harness();
        host.set_kv_max_entries(Some(200));
        let at = |n: u64| format!(r#"["{ADDRESS}","0x{n:x}"]"#);
        for n in 1..=500 {
            harness.call("eth_getBalance", Some(&at(n))).unwrap();
        }
        assert!(host.kv_len() <= 200);
        let before = node_calls().len();
        harness.call("eth_getBalance", Some(&at(500))).unwrap();
        assert_eq!(node_calls().len(), before, "the newest answer is served from the cache");
        harness.call("eth_getBalance", Some(&at(1))).unwrap();
        assert_eq!(node_calls().len(), before + 1, "the oldest was evicted");
        assert!(cached_on_second_call(&mut harness, "eth_getBalance", Some(&at(501))), "new answers are kept");
    }

    #[test]
    fn entries_expire_after_ttl_seconds() {
        node(Some(100), Some("\"0x1\""));
        let host = MockHost::current();
        let mut harness = Harness::<Cache>::new(r#"{"ttl_seconds": 10}"#).unwrap();
        harness.call("eth_chainId", None).unwrap();
        host.advance_ms(9_999);
        harness.call("eth_chainId", None).unwrap();
        assert_eq!(node_calls().len(), 1);
        host.advance_ms(1);
        harness.call("eth_chainId", None).unwrap();
        assert_eq!(node_calls().len(), 2);
    }

    #[test]
    fn answers_over_max_entry_bytes_are_not_kept() {
        node(Some(100), Some("\"0x0123456789\""));
        let mut harness = Harness::<Cache>::new(r#"{"max_entry_bytes": 13}"#).unwrap();
        assert!(!cached_on_second_call(&mut harness, "eth_chainId", None));
        let mut harness = Harness::<Cache>::new(r#"{"max_entry_bytes": 14}"#).unwrap();
        assert!(cached_on_second_call(&mut harness, "net_version", None));
    }

    #[test]
    fn an_unreadable_entry_is_a_miss_and_is_replaced() {
        node(Some(100), Some("\"0x1\""));
        let mut harness = harness();
        let key = classify(&Call::new("eth_chainId", None)).unwrap().key;
        kv::set(&key, &[0xff, 0xfe], None).unwrap();
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(kv::get(&key), Some(b"\"0x1\"".to_vec()));
    }

    #[test]
    fn malformed_params_are_forwarded_untouched_and_not_cached() {
        node(Some(100), None);
        let mut harness = harness();
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some("not json")));
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"{"a":1}"#)));
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"["0xaa","0x"]"#)));
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"["0xaa","0x10000000000000000"]"#)));
        assert!(!cached_on_second_call(&mut harness, "eth_getBalance", Some(r#"["0xaa",16]"#)));
        assert_eq!(node_calls()[0], "eth_getBalance not json");
    }

    #[test]
    fn configuration_defaults_and_limits() {
        let mut harness = harness();
        assert_eq!(harness.plugin().ttl_ms, 300_000);
        assert_eq!(harness.plugin().max_entry_bytes, 262_144);
        assert_eq!(harness.plugin().finality_depth, 64);
        let mut harness = Harness::<Cache>::new(r#"{"ttl_seconds": 604800, "max_entry_bytes": 16777216}"#).unwrap();
        assert_eq!(harness.plugin().ttl_ms, 604_800_000);
        assert!(Harness::<Cache>::new("{}").is_ok());
        let cases = [
            (r#"{"ttl_seconds": 0}"#, "invalid configuration: ttl_seconds must be at least 1"),
            (r#"{"ttl_seconds": 604801}"#, "invalid configuration: ttl_seconds must be at most 604800"),
            (
                r#"{"ttl_seconds": "300"}"#,
                "invalid configuration: ttl_seconds must be a whole number of at least 1, got \"300\"",
            ),
            (
                r#"{"ttl_seconds": 1.5}"#,
                "invalid configuration: ttl_seconds must be a whole number of at least 1, got 1.5",
            ),
            (r#"{"max_entry_bytes": 0}"#, "invalid configuration: max_entry_bytes must be at least 1"),
            (r#"{"max_entry_bytes": 16777217}"#, "invalid configuration: max_entry_bytes must be at most 16777216"),
            (r#"{"finality_depth": 0}"#, "invalid configuration: finality_depth must be at least 1"),
            (r#"{"finality_depth": 1000001}"#, "invalid configuration: finality_depth must be at most 1000000"),
            (
                r#"{"ttl": 5}"#,
                "invalid configuration: unknown field `ttl`, expected `ttl_seconds`, `max_entry_bytes` or `finality_depth`",
            ),
            ("[]", "invalid configuration: expected an object like"),
        ];
        for (config, expected) in cases {
            let err = Harness::<Cache>::new(config).err().expect(config);
            assert!(err.starts_with(expected), "{config}: {err}");
        }
    }

    #[test]
    fn the_schema_describes_the_same_fields_and_limits() {
        let schema = check_schema_fields(include_str!("../schema.json"), &FIELDS);
        assert_eq!(schema["properties"]["ttl_seconds"]["default"], DEFAULT_TTL_SECONDS);
        assert_eq!(schema["properties"]["ttl_seconds"]["maximum"], MAX_TTL_SECONDS);
        assert_eq!(schema["properties"]["max_entry_bytes"]["default"], DEFAULT_MAX_ENTRY_BYTES);
        assert_eq!(schema["properties"]["max_entry_bytes"]["maximum"], MAX_MAX_ENTRY_BYTES);
        assert_eq!(schema["properties"]["finality_depth"]["default"], DEFAULT_FINALITY_DEPTH);
        assert_eq!(schema["properties"]["finality_depth"]["maximum"], MAX_FINALITY_DEPTH);
    }
}
