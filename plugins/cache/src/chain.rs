//! Which blocks are final, and the chain epoch that a reorg advances.
//!
//! Owns: the finality check (at most one per [`CHECK_MS`] per instance, through `upstream`), the
//! reorg detection it does, and the keys `cache:finalized` and `cache:anchor`.
//! Must not: store or serve answers (that is the plugin's, in `lib.rs`).
//!
//! A check asks the node for its `finalized` block; a node without the tag (an error or `null`)
//! is asked for `latest` instead, and the block `finality_depth` below it counts as final. The
//! final block's number and hash are kept as the *anchor*. At the next check the new final
//! block must descend from the anchor: the same height with the same hash, the next height with
//! the anchor as its parent, or a higher one whose block at the anchor's height still has the
//! anchor's hash (one more call). Anything else (the final block went back, or its hash at the
//! anchor's height changed) is a reorg reaching into blocks the cache took for final: the epoch
//! goes up by one. Answers whose truth depends on the chain's history (read at a block number,
//! or a transaction's block) are keyed by the epoch ([`in_epoch`]), so none stored before the
//! reorg is ever served after it; they are left to expire or to be evicted.

use ovsb_plugin_sdk::{Call, kv, log, upstream};
use serde_json::Value;

use crate::{parse_quantity, room};

/// How long a check's outcome is kept, in milliseconds: the node sees at most one check (one to
/// three calls) per second per instance, and a reorg is noticed at most this long after the
/// node reports it.
pub const CHECK_MS: u64 = 1000;
/// Default `finality_depth`: how far below `latest` a block counts as final on a node without
/// the `finalized` tag (64 blocks, two epochs of Ethereum's beacon chain).
pub const DEFAULT_FINALITY_DEPTH: u64 = 64;
/// Highest `finality_depth`.
pub const MAX_FINALITY_DEPTH: u64 = 1_000_000;

/// Key of the last check's outcome, kept for [`CHECK_MS`]: `<epoch> <finalized number or none>`.
pub const FINALIZED_KEY: &str = "cache:finalized";
/// Key of the anchor, kept without expiry: `<epoch>` or `<epoch> <number> <hash>`.
pub const ANCHOR_KEY: &str = "cache:anchor";

/// Error codes of upstream failures that say nothing about the node's support for `finalized`:
/// no node reachable, deadline passed, a limit (such as the host's cap on upstream calls).
const TRANSIENT_CODES: [i32; 3] = [-32002, -32003, -32005];

/// What the cache knows about the chain now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainState {
    /// Goes up by one at every reorg detected in the final part of the chain.
    pub epoch: u64,
    /// The highest final block, if the node tells (block 0 is always final).
    pub finalized: Option<u64>,
}

impl ChainState {
    /// Whether block `number` is at or below the final block (block 0 always is).
    pub fn is_final(&self, number: u64) -> bool {
        number == 0 || self.finalized.is_some_and(|finalized| number <= finalized)
    }
}

/// `key` in `epoch`: the key of an answer that a reorg invalidates.
pub fn in_epoch(key: &str, epoch: u64) -> String {
    format!("{key}@{epoch}")
}

/// A block as the check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: String,
    /// Its parent's hash, when the node said.
    pub parent: Option<String>,
}

/// How a new final block relates to the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descent {
    /// It descends from the anchor.
    Continues,
    /// It does not: the chain reorganized below the anchor, or at it.
    Reorg,
    /// Cannot tell without the hash of the block at the anchor's height.
    Unknown,
}

/// Whether `new` descends from `anchor` (pure: see the module docs).
pub fn descent(anchor: &Block, new: &Block) -> Descent {
    if new.number < anchor.number {
        Descent::Reorg
    } else if new.number == anchor.number {
        if new.hash == anchor.hash { Descent::Continues } else { Descent::Reorg }
    } else if new.number == anchor.number + 1 && new.parent.is_some() {
        if new.parent.as_deref() == Some(anchor.hash.as_str()) { Descent::Continues } else { Descent::Reorg }
    } else {
        Descent::Unknown
    }
}

/// Why a block could not be learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The node could not be asked (unreachable, deadline, a limit): try again later.
    Transient,
    /// The node does not know this block (an error other than a transient one).
    Refused,
}

/// `eth_getBlockByNumber([block, false])`: `Ok(None)` for a `null` answer.
fn fetch(block: &str) -> Result<Option<Block>, Failure> {
    let params = format!(r#"["{block}",false]"#);
    match upstream(&Call::new("eth_getBlockByNumber", Some(params))) {
        Ok(json) => {
            let Ok(value) = serde_json::from_str::<Value>(&json) else {
                return Err(Failure::Refused);
            };
            if value.is_null() {
                return Ok(None);
            }
            let text = |field: &str| value.get(field).and_then(Value::as_str);
            match (text("number").and_then(parse_quantity), text("hash")) {
                (Some(number), Some(hash)) => {
                    Ok(Some(Block { number, hash: hash.to_string(), parent: text("parentHash").map(str::to_string) }))
                }
                _ => Err(Failure::Refused),
            }
        }
        Err(err) if TRANSIENT_CODES.contains(&err.code) => {
            log::debug(&format!("cannot learn the final block: {} ({})", err.message, err.code));
            Err(Failure::Transient)
        }
        Err(err) => {
            log::debug(&format!(
                "the node does not answer eth_getBlockByNumber({block}): {} ({})",
                err.message, err.code
            ));
            Err(Failure::Refused)
        }
    }
}

/// The final block: the node's `finalized` one, else `latest` minus `depth`. `Ok(None)` when no
/// block but block 0 is final (the chain is shorter than `depth`, or the node answers neither).
fn final_block(depth: u64) -> Result<Option<Block>, Failure> {
    match fetch("finalized") {
        Ok(Some(block)) => return Ok(Some(block)),
        Err(Failure::Transient) => return Err(Failure::Transient),
        Ok(None) | Err(Failure::Refused) => {}
    }
    let latest = match fetch("latest") {
        Ok(Some(latest)) => latest,
        Ok(None) | Err(Failure::Refused) => return Ok(None),
        Err(Failure::Transient) => return Err(Failure::Transient),
    };
    let Some(number) = latest.number.checked_sub(depth) else {
        return Ok(None);
    };
    match fetch(&format!("0x{number:x}")) {
        Ok(Some(block)) => Ok(Some(block)),
        // The node just said it has a longer chain: take a missing block for a passing glitch.
        Ok(None) | Err(_) => Err(Failure::Transient),
    }
}

/// The anchor as stored: the epoch, and the final block of the last check (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Anchor {
    epoch: u64,
    block: Option<Block>,
}

impl Anchor {
    fn parse(text: &str) -> Option<Anchor> {
        let mut words = text.split(' ');
        let epoch = words.next()?.parse().ok()?;
        let block = match (words.next(), words.next()) {
            (Some(number), Some(hash)) => {
                Some(Block { number: number.parse().ok()?, hash: hash.to_string(), parent: None })
            }
            _ => None,
        };
        Some(Anchor { epoch, block })
    }

    fn text(&self) -> String {
        match &self.block {
            Some(block) => format!("{} {} {}", self.epoch, block.number, block.hash),
            None => self.epoch.to_string(),
        }
    }
}

fn read_state() -> Option<ChainState> {
    let stored = kv::get(FINALIZED_KEY)?;
    let text = std::str::from_utf8(&stored).ok()?;
    let (epoch, finalized) = text.split_once(' ')?;
    let finalized = if finalized == "none" { None } else { Some(finalized.parse().ok()?) };
    Some(ChainState { epoch: epoch.parse().ok()?, finalized })
}

/// The chain now: the last check's outcome while it is fresh, else a new check (see the module
/// docs). A check that could not reach the node is not remembered, and counts nothing as final
/// but block 0.
pub fn chain_state(depth: u64) -> ChainState {
    if let Some(state) = read_state() {
        return state;
    }
    let stored = kv::get(ANCHOR_KEY);
    let anchor = stored
        .as_deref()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(Anchor::parse)
        .unwrap_or(Anchor { epoch: 0, block: None });
    let unknown = ChainState { epoch: anchor.epoch, finalized: None };
    let Ok(new) = final_block(depth) else {
        return unknown;
    };
    let reorg = match (&anchor.block, &new) {
        (None, _) => false,
        // The chain went back to where nothing but block 0 is final.
        (Some(old), None) => old.number > 0,
        (Some(old), Some(new)) => match descent(old, new) {
            Descent::Continues => false,
            Descent::Reorg => true,
            Descent::Unknown => match fetch(&format!("0x{:x}", old.number)) {
                Ok(Some(block)) => block.hash != old.hash,
                Ok(None) => true,
                Err(_) => return unknown,
            },
        },
    };
    let mut epoch = anchor.epoch;
    if reorg {
        epoch += 1;
        let old = anchor.block.as_ref().map_or(0, |block| block.number);
        log::warn(&format!(
            "the chain reorganized at or below block {old}, which was final: answers read at a block \
             number or about a transaction are dropped (epoch {epoch})"
        ));
    }
    let next = Anchor { epoch, block: new.clone().map(|block| Block { parent: None, ..block }) };
    // Another copy may have checked at the same time: its anchor then stands, and so does its
    // epoch (it saw the same chain).
    match room::with_room(|| kv::compare_and_swap(ANCHOR_KEY, stored.as_deref(), next.text().as_bytes(), None)) {
        Ok(true) => {}
        Ok(false) => {
            if let Some(theirs) = kv::get(ANCHOR_KEY).and_then(|bytes| Anchor::parse(std::str::from_utf8(&bytes).ok()?))
            {
                epoch = theirs.epoch.max(epoch);
            }
        }
        Err(err) => log::debug(&format!("cannot keep the anchor block: {err}")),
    }
    let state = ChainState { epoch, finalized: new.map(|block| block.number) };
    let text = format!("{epoch} {}", state.finalized.map_or_else(|| "none".to_string(), |n| n.to_string()));
    if let Err(err) = room::with_room(|| kv::set(FINALIZED_KEY, text.as_bytes(), Some(CHECK_MS))) {
        log::debug(&format!("cannot keep the final block number: {err}"));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::RpcError;
    use ovsb_plugin_sdk::testing::MockHost;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn block(number: u64, hash: &str, parent: Option<&str>) -> Block {
        Block { number, hash: hash.to_string(), parent: parent.map(str::to_string) }
    }

    #[test]
    fn descent_over_every_case() {
        let anchor = block(10, "0xa", None);
        let cases = [
            (block(9, "0x9", None), Descent::Reorg),
            (block(10, "0xa", None), Descent::Continues),
            (block(10, "0xb", None), Descent::Reorg),
            (block(11, "0xc", Some("0xa")), Descent::Continues),
            (block(11, "0xc", Some("0xb")), Descent::Reorg),
            (block(11, "0xc", None), Descent::Unknown),
            (block(12, "0xd", Some("0xc")), Descent::Unknown),
        ];
        for (new, expected) in cases {
            assert_eq!(descent(&anchor, &new), expected, "{new:?}");
        }
    }

    /// A scripted chain: blocks 0..=`height` on fork `fork` (hash `0x<fork>…<number>`), the
    /// `finalized` tag `depth` below the head unless `finality` is off.
    struct Chain {
        height: u64,
        fork: u64,
        depth: u64,
        finality: bool,
        /// Blocks below this number are the same on every fork.
        shared_below: u64,
    }

    impl Chain {
        fn hash(&self, number: u64) -> String {
            let fork = if number < self.shared_below { 0 } else { self.fork };
            format!("0x{fork:02x}{number:062x}")
        }
        fn block(&self, number: u64) -> Value {
            if number > self.height {
                return Value::Null;
            }
            let parent = if number == 0 { format!("0x{:064x}", 0) } else { self.hash(number - 1) };
            serde_json::json!({"number": format!("0x{number:x}"), "hash": self.hash(number), "parentHash": parent})
        }
    }

    fn chain(height: u64, finality: bool) -> Rc<RefCell<Chain>> {
        let chain = Rc::new(RefCell::new(Chain { height, fork: 0, depth: 64, finality, shared_below: 0 }));
        let node = chain.clone();
        MockHost::current().set_upstream(move |call| {
            let chain = node.borrow();
            let params: Value = serde_json::from_str(call.params.as_deref().unwrap()).unwrap();
            let number = match params[0].as_str().unwrap() {
                "finalized" if !chain.finality => return Err(RpcError::new(-32602, "unknown block tag")),
                "finalized" => chain.height.saturating_sub(chain.depth),
                "latest" => chain.height,
                hex => parse_quantity(hex).unwrap(),
            };
            Ok(chain.block(number).to_string())
        });
        chain
    }

    fn lookups() -> Vec<String> {
        MockHost::current().upstream_calls().into_iter().map(|call| call.params.unwrap()).collect()
    }

    #[test]
    fn the_node_finalized_block_is_final_and_asked_once_a_second() {
        chain(200, true);
        let host = MockHost::current();
        let state = chain_state(64);
        assert_eq!(state, ChainState { epoch: 0, finalized: Some(136) });
        assert!(state.is_final(136) && !state.is_final(137) && state.is_final(0));
        host.advance_ms(CHECK_MS - 1);
        assert_eq!(chain_state(64), state);
        assert_eq!(lookups(), [r#"["finalized",false]"#]);
    }

    #[test]
    fn without_the_finalized_tag_the_block_depth_below_latest_is_final() {
        let node = chain(200, false);
        assert_eq!(chain_state(10), ChainState { epoch: 0, finalized: Some(190) });
        assert_eq!(lookups(), [r#"["finalized",false]"#, r#"["latest",false]"#, r#"["0xbe",false]"#]);
        // A chain shorter than the depth: only block 0 is final.
        MockHost::current().reset();
        node.borrow_mut().height = 5;
        assert_eq!(chain_state(10), ChainState { epoch: 0, finalized: None });
    }

    #[test]
    fn a_chain_that_grows_keeps_its_epoch_checking_parents_or_the_anchor_height() {
        let node = chain(200, true);
        let host = MockHost::current();
        assert_eq!(chain_state(64).epoch, 0);
        for (height, extra_lookup) in [(201, false), (201, false), (250, true)] {
            node.borrow_mut().height = height;
            let before = lookups().len();
            host.advance_ms(CHECK_MS);
            assert_eq!(chain_state(64), ChainState { epoch: 0, finalized: Some(height - 64) });
            assert_eq!(lookups().len() - before, 1 + usize::from(extra_lookup), "{height}: {:?}", lookups());
        }
        assert_eq!(lookups().last().unwrap(), r#"["0x89",false]"#, "the block at the anchor's height (137)");
    }

    #[test]
    fn a_reorg_below_the_final_block_advances_the_epoch_once() {
        for (label, rewrite) in [
            // evm_revert to a snapshot, then as many blocks mined again: same height, new hashes.
            ("same height", (200, 1, 100)),
            // Reverted and not mined again yet: the final block went back.
            ("went back", (150, 0, 0)),
            // Mined further on the new fork: the anchor's height has another hash.
            ("further", (300, 1, 100)),
            // One block further, on a new fork from below the anchor: its parent is not the anchor.
            ("one further", (201, 1, 100)),
        ] {
            let node = chain(200, true);
            let host = MockHost::current();
            host.reset();
            assert_eq!(chain_state(64).epoch, 0, "{label}");
            {
                let mut chain = node.borrow_mut();
                (chain.height, chain.fork, chain.shared_below) = rewrite;
            }
            host.advance_ms(CHECK_MS);
            let state = chain_state(64);
            assert_eq!(state.epoch, 1, "{label}");
            host.advance_ms(CHECK_MS);
            assert_eq!(chain_state(64).epoch, 1, "{label}: the new chain is the anchor now");
        }
    }

    #[test]
    fn an_unreachable_node_is_not_remembered_and_keeps_the_epoch() {
        let node = chain(200, true);
        let host = MockHost::current();
        chain_state(64);
        node.borrow_mut().fork = 1;
        host.advance_ms(CHECK_MS);
        host.set_upstream(|_| Err(RpcError::new(-32002, "no upstream node is reachable")));
        assert_eq!(chain_state(64), ChainState { epoch: 0, finalized: None });
        assert_eq!(chain_state(64), ChainState { epoch: 0, finalized: None });
        assert_eq!(host.upstream_calls().len(), 3, "a failed check is not remembered");
    }

    #[test]
    fn the_anchor_text_round_trips_and_garbage_reads_as_none() {
        let anchor = Anchor { epoch: 3, block: Some(block(7, "0xab", None)) };
        assert_eq!(Anchor::parse(&anchor.text()), Some(anchor));
        assert_eq!(Anchor::parse("4"), Some(Anchor { epoch: 4, block: None }));
        assert_eq!(Anchor::parse("x 1 0xab"), None);
        assert_eq!(Anchor::parse("1 x 0xab"), None);
    }
}
