//! # eth-extras: several balances in one call
//!
//! Adds two methods that the plugin answers itself by calling the node (through `upstream`) once
//! per item; every other call passes through untouched.
//!
//! ## Methods
//!
//! ### `ovsb_getBalances(addresses, block?)`
//!
//! The balances of `addresses` (an array of addresses) at `block`, as an array of hex quantities
//! in the order of `addresses`: element *i* is the answer of `eth_getBalance(addresses[i], block)`.
//!
//! ```json
//! {"method": "ovsb_getBalances", "params": [["0x00000000000000000000000000000000000000aa", "0x00000000000000000000000000000000000000bb"], "latest"]}
//! → ["0x1bc16d674ec80000", "0x0"]
//! ```
//!
//! If one `eth_getBalance` fails, the whole call fails with that error (same code and data, the
//! message prefixed with the failing position) and the remaining addresses are not asked.
//!
//! ### `ovsb_getTokenBalances(owner, tokens, block?)`
//!
//! The ERC-20 balances of `owner` in each of `tokens` at `block`: element *i* is
//! `eth_call({"to": tokens[i], "data": "0x70a08231" + owner left-padded to 32 bytes}, block)`
//! (`balanceOf(owner)`), read as a uint256 and given as a hex quantity (`"0x1a"`, `"0x0"`). When
//! the node answers with more than 32 bytes only the first 32 are read, as an ABI decoder does.
//!
//! A token whose call fails gives `null` in its position: the call reverted or the node
//! refused it, or the answer is shorter than 32 bytes (for example `"0x"` from an address without
//! code). Failures that say nothing about the token fail the whole call instead, with the node's
//! error: -32002 (no node reachable), -32003 (deadline passed) and -32005 (a limit, such as the
//! host's cap on upstream calls).
//!
//! ### Parameters
//!
//! An address is `0x` followed by 40 hex digits (either case; checksums are not verified).
//! `block` is optional and defaults to `"latest"`; it may be a tag (`latest`, `pending`, `safe`,
//! `finalized`, `earliest`), a hex block number, a block hash, or an EIP-1898 object
//! (`{"blockNumber": ...}` or `{"blockHash": ..., "requireCanonical": ...}`), and is passed to
//! every upstream call as given. Each upstream call is answered on its own, so with a tag such
//! as `latest` a new block may arrive between two of them: pass a block number or hash for a
//! consistent snapshot.
//!
//! ## Configuration
//!
//! ```json
//! {"max_items": 16}
//! ```
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `max_items` | integer | `16` | most addresses (`ovsb_getBalances`) or tokens (`ovsb_getTokenBalances`) per call: 1 to 100 |
//!
//! No configuration (`null`) means the default. Unknown fields are rejected.
//!
//! Every item costs one upstream call, and the host caps upstream calls per plugin call
//! (`max_upstream_calls`, 16 by default): keep `max_items` at or below that cap. Above it, the
//! calls past the cap fail with -32005, which fails the whole call.
//!
//! ## Errors
//!
//! | code | when |
//! |---|---|
//! | -32602 (invalid params) | params are not an array of the right length, an address is malformed, the block parameter is malformed, or more than `max_items` addresses or tokens are given (the message names the limit) |
//! | the node's code | an `eth_getBalance` failed; an `eth_call` failed with -32002, -32003 or -32005 |
//! | -32603 (internal error) | the node answered with something that is not JSON |
//!
//! ## Behaviour
//!
//! Only the `on-call` hook is declared. The upstream calls bypass the rest of the chain: plugins
//! after this one (a cache, say) never see them, and plugins before it see `ovsb_getBalances`,
//! not the `eth_getBalance` calls it makes (a `method-filter` must allow or deny the `ovsb_*`
//! names themselves).

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Methods, Plugin, RpcError, codes, json_kind, upstream};
use serde_json::{Map, Value, json};

/// Default `max_items`.
pub const DEFAULT_MAX_ITEMS: u64 = 16;
/// Highest `max_items`.
pub const MAX_MAX_ITEMS: u64 = 100;
/// The selector of ERC-20 `balanceOf(address)`.
pub const BALANCE_OF: &str = "0x70a08231";

const FIELDS: [&str; 1] = ["max_items"];
const BLOCK_TAGS: [&str; 5] = ["latest", "pending", "safe", "finalized", "earliest"];
/// Upstream error codes that fail a whole `ovsb_getTokenBalances` call: no node reachable,
/// deadline passed, a limit exceeded.
const FATAL_CODES: [i32; 3] = [-32002, -32003, -32005];

/// The plugin: see the module docs.
pub struct EthExtras {
    max_items: usize,
}

fn invalid(method: &str, detail: impl std::fmt::Display) -> RpcError {
    RpcError::new(codes::INVALID_PARAMS, format!("invalid params for {method}: {detail}"))
}

/// Whether `text` is `0x` followed by 40 hex digits.
pub fn is_address(text: &str) -> bool {
    text.len() == 42 && text.starts_with("0x") && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_hex_quantity(text: &str) -> bool {
    text.strip_prefix("0x").is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_hash(text: &str) -> bool {
    text.len() == 66 && is_hex_quantity(text)
}

/// Whether `block` is a valid block parameter: a tag, a hex number, a hash, or EIP-1898.
fn is_block(block: &Value) -> bool {
    match block {
        Value::String(text) => BLOCK_TAGS.contains(&text.as_str()) || is_hex_quantity(text),
        Value::Object(object) => {
            let known =
                object.keys().all(|key| matches!(key.as_str(), "blockNumber" | "blockHash" | "requireCanonical"));
            let by_number = object
                .get("blockNumber")
                .and_then(Value::as_str)
                .is_some_and(|n| is_hex_quantity(n) || BLOCK_TAGS.contains(&n));
            let by_hash = object.get("blockHash").and_then(Value::as_str).is_some_and(is_hash);
            let canonical_ok = object.get("requireCanonical").is_none_or(Value::is_boolean);
            known && canonical_ok && (by_number != by_hash)
        }
        _ => false,
    }
}

/// The 32-byte word at the start of `data` (hex, `0x`-prefixed) as a hex quantity; `None` if
/// `data` is not hex or shorter than 32 bytes.
pub fn word_to_quantity(data: &str) -> Option<String> {
    let digits = data.strip_prefix("0x")?;
    let word = digits.get(..64)?;
    if digits.len() % 2 != 0 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let significant = word.trim_start_matches('0').to_ascii_lowercase();
    Some(if significant.is_empty() { "0x0".to_string() } else { format!("0x{significant}") })
}

impl EthExtras {
    /// The params as an array of `min..=max` elements.
    fn params(call: &Call, shape: &str, min: usize, max: usize) -> Result<Vec<Value>, RpcError> {
        let params = match call.params_as::<Value>()? {
            Value::Array(params) => params,
            other => {
                return Err(invalid(&call.method, format!("expected an array {shape}, got {}", json_kind(&other))));
            }
        };
        if params.len() < min || params.len() > max {
            return Err(invalid(
                &call.method,
                format!("expected {shape} ({min} or {max} parameters), got {} parameters", params.len()),
            ));
        }
        Ok(params)
    }

    /// The addresses in `params[index]`, named `name` in messages, checked against `max_items`.
    fn addresses<'p>(
        &self,
        method: &str,
        params: &'p [Value],
        index: usize,
        name: &str,
    ) -> Result<Vec<&'p str>, RpcError> {
        let Some(items) = params[index].as_array() else {
            return Err(invalid(
                method,
                format!("{name} must be an array of addresses, got {}", json_kind(&params[index])),
            ));
        };
        if items.len() > self.max_items {
            return Err(invalid(
                method,
                format!("{} {name} given, at most {} per call (max_items)", items.len(), self.max_items),
            ));
        }
        items.iter().enumerate().map(|(i, item)| address(method, item, &format!("{name}[{i}]"))).collect()
    }

    fn get_balances(&self, call: &Call) -> Result<Value, RpcError> {
        let method = &call.method;
        let params = Self::params(call, "[addresses, block?]", 1, 2)?;
        let addresses = self.addresses(method, &params, 0, "addresses")?;
        let block = block(method, params.get(1))?;
        addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                let outcome = upstream(&Call::with_params("eth_getBalance", &json!([address, block])));
                let json = outcome.map_err(|err| prefixed(err, &format!("eth_getBalance for addresses[{i}]")))?;
                parse_answer(&json)
            })
            .collect::<Result<Vec<Value>, RpcError>>()
            .map(Value::Array)
    }

    fn get_token_balances(&self, call: &Call) -> Result<Value, RpcError> {
        let method = &call.method;
        let params = Self::params(call, "[owner, tokens, block?]", 2, 3)?;
        let owner = address(method, &params[0], "owner")?;
        let tokens = self.addresses(method, &params, 1, "tokens")?;
        let block = block(method, params.get(2))?;
        let data = format!("{BALANCE_OF}{:0>64}", owner[2..].to_ascii_lowercase());
        let mut balances = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            let outcome = upstream(&Call::with_params("eth_call", &json!([{"to": token, "data": data}, block])));
            let balance = match outcome {
                Ok(json) => match parse_answer(&json)? {
                    Value::String(data) => word_to_quantity(&data).map_or(Value::Null, Value::String),
                    _ => Value::Null,
                },
                Err(err) if FATAL_CODES.contains(&err.code) => {
                    return Err(prefixed(err, &format!("eth_call for tokens[{i}]")));
                }
                Err(_) => Value::Null,
            };
            balances.push(balance);
        }
        Ok(Value::Array(balances))
    }
}

/// The address at `value`, named `name` in messages.
fn address<'v>(method: &str, value: &'v Value, name: &str) -> Result<&'v str, RpcError> {
    match value.as_str() {
        Some(text) if is_address(text) => Ok(text),
        _ => Err(invalid(method, format!("{name} is not an address (0x followed by 40 hex digits): {value}"))),
    }
}

/// The block parameter, `"latest"` when absent or `null`.
fn block(method: &str, value: Option<&Value>) -> Result<Value, RpcError> {
    match value {
        None | Some(Value::Null) => Ok(json!("latest")),
        Some(block) if is_block(block) => Ok(block.clone()),
        Some(other) => Err(invalid(
            method,
            format!(
                "block must be a block number, a block hash, an EIP-1898 object or one of {}, got {other}",
                BLOCK_TAGS.join(", ")
            ),
        )),
    }
}

/// The node's answer as JSON.
fn parse_answer(json: &str) -> Result<Value, RpcError> {
    serde_json::from_str(json)
        .map_err(|err| RpcError::new(codes::INTERNAL_ERROR, format!("the node's answer is not JSON: {err}")))
}

/// `err` with `what` in front of its message; code and data kept.
fn prefixed(err: RpcError, what: &str) -> RpcError {
    RpcError { message: format!("{what} failed: {}", err.message), ..err }
}

impl Plugin for EthExtras {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = settings(&config)?;
        let max_items = match settings.get("max_items") {
            None => DEFAULT_MAX_ITEMS,
            Some(value) => match value.as_u64() {
                Some(0) => return Err("invalid configuration: max_items must be at least 1".to_string()),
                Some(n) if n > MAX_MAX_ITEMS => {
                    return Err(format!("invalid configuration: max_items must be at most {MAX_MAX_ITEMS}"));
                }
                Some(n) => n,
                None => {
                    return Err(format!(
                        "invalid configuration: max_items must be a whole number of at least 1, got {value}"
                    ));
                }
            },
        };
        Ok(EthExtras { max_items: max_items as usize })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL
    }

    /// Only its own methods: every other call passes it by without a wasm call.
    fn methods(&self) -> Methods {
        Methods::matching(["ovsb_getBalances", "ovsb_getTokenBalances"])
    }

    fn on_call(&mut self, _ctx: &Context, call: Call) -> Decision {
        let answer = match call.method.as_str() {
            "ovsb_getBalances" => self.get_balances(&call),
            "ovsb_getTokenBalances" => self.get_token_balances(&call),
            _ => return Decision::Forward(call),
        };
        match answer {
            Ok(result) => Decision::respond_ok(&result),
            Err(err) => Decision::respond_err(err),
        }
    }
}

/// The configuration as an object (`null` reads as `{}`), refusing unknown fields.
fn settings(config: &Config) -> Result<Map<String, Value>, String> {
    config.object(r#"{"max_items": 16}"#, &FIELDS)
}

ovsb_plugin_sdk::export_plugin!(EthExtras);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::Outcome;
    use ovsb_plugin_sdk::testing::{Harness, MockHost};

    const OWNER: &str = "0x00000000000000000000000000000000000000AA";
    /// `balanceOf(OWNER)`: the selector, then the owner left-padded to 32 bytes, lowercase.
    const OWNER_CALLDATA: &str = "0x70a08231\
         000000000000000000000000\
         00000000000000000000000000000000000000aa";

    fn address(n: usize) -> String {
        format!("0x{n:040x}")
    }

    fn harness() -> Harness<EthExtras> {
        Harness::new("null").unwrap()
    }

    /// A node whose balances are `0x<n>` for address n, and whose tokens answer per `token`.
    fn node(token: impl Fn(&str) -> Outcome + 'static) {
        MockHost::current().set_upstream(move |call| {
            let params: Vec<Value> = call.params_as().unwrap();
            match call.method.as_str() {
                "eth_getBalance" => {
                    let n = u64::from_str_radix(&params[0].as_str().unwrap()[2..], 16).unwrap();
                    Ok(json!(format!("0x{n:x}")).to_string())
                }
                "eth_call" => token(params[0]["to"].as_str().unwrap()),
                other => Ok(json!(format!("{other} passed through")).to_string()),
            }
        });
    }

    fn result(outcome: Outcome) -> Value {
        serde_json::from_str(&outcome.expect("a result")).unwrap()
    }

    fn invalid_params(outcome: Outcome) -> String {
        let err = outcome.expect_err("an error");
        assert_eq!(err.code, codes::INVALID_PARAMS, "{}", err.message);
        assert!(MockHost::current().upstream_calls().is_empty(), "invalid params must not reach the node");
        err.message
    }

    #[test]
    fn balances_come_back_in_the_order_of_the_addresses() {
        node(|_| unreachable!());
        let mut harness = harness();
        let addresses = [address(3), address(1), address(0x20), address(3)];
        let params = json!([addresses, "0x10"]).to_string();
        assert_eq!(result(harness.call("ovsb_getBalances", Some(&params))), json!(["0x3", "0x1", "0x20", "0x3"]));
        let calls = MockHost::current().upstream_calls();
        assert_eq!(calls.len(), 4);
        for (call, address) in calls.iter().zip(&addresses) {
            assert_eq!(call.method, "eth_getBalance");
            assert_eq!(call.params_as::<Value>().unwrap(), json!([address, "0x10"]));
        }
    }

    #[test]
    fn the_block_defaults_to_latest_and_is_passed_as_given() {
        node(|_| unreachable!());
        let mut harness = harness();
        for (params, block) in [
            (json!([[address(1)]]), json!("latest")),
            (json!([[address(1)], null]), json!("latest")),
            (json!([[address(1)], "pending"]), json!("pending")),
            (
                json!([[address(1)], {"blockHash": format!("0x{}", "ab".repeat(32)), "requireCanonical": true}]),
                json!({"blockHash": format!("0x{}", "ab".repeat(32)), "requireCanonical": true}),
            ),
            (json!([[address(1)], {"blockNumber": "0x5"}]), json!({"blockNumber": "0x5"})),
        ] {
            MockHost::current().reset();
            assert_eq!(result(harness.call("ovsb_getBalances", Some(&params.to_string()))), json!(["0x1"]));
            let sent: Value = MockHost::current().upstream_calls()[0].params_as().unwrap();
            assert_eq!(sent[1], block, "{params}");
        }
    }

    #[test]
    fn no_addresses_means_no_upstream_call() {
        node(|_| unreachable!());
        let mut harness = harness();
        assert_eq!(result(harness.call("ovsb_getBalances", Some("[[]]"))), json!([]));
        assert!(MockHost::current().upstream_calls().is_empty());
    }

    #[test]
    fn a_failing_balance_fails_the_call_with_the_node_error_and_stops() {
        MockHost::current().set_upstream(|call| {
            let params: Vec<String> = serde_json::from_value(call.params_as::<Value>().unwrap()).unwrap();
            if params[0] == address(2) {
                return Err(RpcError { code: -32000, message: "header not found".into(), data: Some("\"x\"".into()) });
            }
            Ok("\"0x0\"".to_string())
        });
        let mut harness = harness();
        let params = json!([[address(1), address(2), address(3)], "0x99999"]).to_string();
        let err = harness.call("ovsb_getBalances", Some(&params)).unwrap_err();
        assert_eq!(err.code, -32000);
        assert_eq!(err.message, "eth_getBalance for addresses[1] failed: header not found");
        assert_eq!(err.data.as_deref(), Some("\"x\""));
        assert_eq!(MockHost::current().upstream_calls().len(), 2, "the third address is not asked");
    }

    #[test]
    fn token_balances_call_balance_of_with_the_padded_owner() {
        node(|token| {
            Ok(json!(match &token[token.len() - 1..] {
                "1" => format!("0x{:0>64}", "1a"),
                "2" => format!("0x{}", "0".repeat(64)),
                "3" => format!("0x{:0>64}{}", "FF", "1".repeat(64)),
                _ => format!("0x{}", "f".repeat(64)),
            })
            .to_string())
        });
        let mut harness = harness();
        let tokens = [address(1), address(2), address(3), address(4)];
        let params = json!([OWNER, tokens]).to_string();
        assert_eq!(
            result(harness.call("ovsb_getTokenBalances", Some(&params))),
            json!(["0x1a", "0x0", "0xff", format!("0x{}", "f".repeat(64))])
        );
        let calls = MockHost::current().upstream_calls();
        assert_eq!(calls.len(), 4);
        for (call, token) in calls.iter().zip(&tokens) {
            assert_eq!(call.method, "eth_call");
            assert_eq!(call.params_as::<Value>().unwrap(), json!([{"to": token, "data": OWNER_CALLDATA}, "latest"]));
        }
    }

    #[test]
    fn a_failing_token_gives_null_in_its_position() {
        node(|token| match &token[token.len() - 1..] {
            "1" => Err(RpcError { code: 3, message: "execution reverted".into(), data: Some("\"0x\"".into()) }),
            "2" => Ok("\"0x\"".to_string()),
            "3" => Ok(json!(format!("0x{}", "0".repeat(62))).to_string()),
            "4" => Ok("null".to_string()),
            "5" => Err(RpcError::new(-32000, "out of gas")),
            "6" => Ok(json!(format!("0x{}zz", "0".repeat(64))).to_string()),
            _ => Ok(json!(format!("0x{:0>64}", "7")).to_string()),
        });
        let mut harness = harness();
        let tokens: Vec<String> = (1..=7).map(address).collect();
        let params = json!([OWNER, tokens, "0x1"]).to_string();
        assert_eq!(
            result(harness.call("ovsb_getTokenBalances", Some(&params))),
            json!([null, null, null, null, null, null, "0x7"])
        );
    }

    #[test]
    fn an_unreachable_node_or_a_limit_fails_the_token_call() {
        for code in [-32002, -32003, -32005] {
            MockHost::current().reset();
            node(move |token| {
                if token.ends_with('2') {
                    Err(RpcError::new(code, "nope"))
                } else {
                    Ok(json!(format!("0x{:0>64}", "1")).to_string())
                }
            });
            let mut harness = harness();
            let params = json!([OWNER, [address(1), address(2), address(3)]]).to_string();
            let err = harness.call("ovsb_getTokenBalances", Some(&params)).unwrap_err();
            assert_eq!(err.code, code);
            assert_eq!(err.message, "eth_call for tokens[1] failed: nope");
            assert_eq!(MockHost::current().upstream_calls().len(), 2);
        }
    }

    #[test]
    fn more_items_than_max_items_are_refused_naming_the_limit() {
        node(|_| unreachable!());
        let mut harness = harness();
        let seventeen: Vec<String> = (0..17).map(address).collect();
        let message = invalid_params(harness.call("ovsb_getBalances", Some(&json!([seventeen]).to_string())));
        assert_eq!(message, "invalid params for ovsb_getBalances: 17 addresses given, at most 16 per call (max_items)");
        let message =
            invalid_params(harness.call("ovsb_getTokenBalances", Some(&json!([OWNER, seventeen]).to_string())));
        assert_eq!(
            message,
            "invalid params for ovsb_getTokenBalances: 17 tokens given, at most 16 per call (max_items)"
        );
        let sixteen: Vec<String> = (0..16).map(address).collect();
        assert_eq!(
            result(harness.call("ovsb_getBalances", Some(&json!([sixteen]).to_string()))).as_array().unwrap().len(),
            16
        );

        MockHost::current().reset();
        let mut harness = Harness::<EthExtras>::new(r#"{"max_items": 2}"#).unwrap();
        let three: Vec<String> = (0..3).map(address).collect();
        let message = invalid_params(harness.call("ovsb_getBalances", Some(&json!([three]).to_string())));
        assert!(message.ends_with("3 addresses given, at most 2 per call (max_items)"), "{message}");
    }

    #[test]
    fn malformed_params_are_invalid_params_with_a_clear_message() {
        node(|_| unreachable!());
        let mut harness = harness();
        let cases = [
            ("ovsb_getBalances", None, "expected an array [addresses, block?], got null"),
            ("ovsb_getBalances", Some("{}".to_string()), "expected an array [addresses, block?], got an object"),
            (
                "ovsb_getBalances",
                Some("[]".to_string()),
                "expected [addresses, block?] (1 or 2 parameters), got 0 parameters",
            ),
            (
                "ovsb_getBalances",
                Some(json!([[], "latest", 1]).to_string()),
                "expected [addresses, block?] (1 or 2 parameters), got 3 parameters",
            ),
            (
                "ovsb_getBalances",
                Some(json!([address(1)]).to_string()),
                "addresses must be an array of addresses, got a string",
            ),
            (
                "ovsb_getBalances",
                Some(json!([[address(1), "0x12"]]).to_string()),
                "addresses[1] is not an address (0x followed by 40 hex digits): \"0x12\"",
            ),
            (
                "ovsb_getBalances",
                Some(json!([[format!("0x{}", "g".repeat(40))]]).to_string()),
                "addresses[0] is not an address",
            ),
            ("ovsb_getBalances", Some(json!([["00".repeat(21)]]).to_string()), "addresses[0] is not an address"),
            (
                "ovsb_getBalances",
                Some(json!([[7]]).to_string()),
                "addresses[0] is not an address (0x followed by 40 hex digits): 7",
            ),
            (
                "ovsb_getBalances",
                Some(json!([[address(1)], "newest"]).to_string()),
                "block must be a block number, a block hash, an EIP-1898 object or one of latest, pending, safe, finalized, earliest, got \"newest\"",
            ),
            ("ovsb_getBalances", Some(json!([[address(1)], 5]).to_string()), "block must be"),
            ("ovsb_getBalances", Some(json!([[address(1)], "0x"]).to_string()), "block must be"),
            (
                "ovsb_getBalances",
                Some(
                    json!([[address(1)], {"blockNumber": "0x1", "blockHash": format!("0x{}", "0".repeat(64))}])
                        .to_string(),
                ),
                "block must be",
            ),
            (
                "ovsb_getBalances",
                Some(json!([[address(1)], {"blockNumber": "0x1", "extra": 1}]).to_string()),
                "block must be",
            ),
            ("ovsb_getBalances", Some("[[\"0x1\"".to_string()), "invalid params for ovsb_getBalances: EOF"),
            (
                "ovsb_getTokenBalances",
                Some(json!([[address(1)]]).to_string()),
                "expected [owner, tokens, block?] (2 or 3 parameters), got 1 parameters",
            ),
            ("ovsb_getTokenBalances", Some(json!(["0xnothex", [address(1)]]).to_string()), "owner is not an address"),
            (
                "ovsb_getTokenBalances",
                Some(json!([OWNER, [address(1), null]]).to_string()),
                "tokens[1] is not an address (0x followed by 40 hex digits): null",
            ),
            (
                "ovsb_getTokenBalances",
                Some(json!([OWNER, address(1)]).to_string()),
                "tokens must be an array of addresses, got a string",
            ),
            ("ovsb_getTokenBalances", Some(json!([OWNER, [address(1)], "LATEST"]).to_string()), "block must be"),
        ];
        for (method, params, expected) in cases {
            let message = invalid_params(harness.call(method, params.as_deref()));
            assert!(message.starts_with(&format!("invalid params for {method}: ")), "{message}");
            assert!(message.contains(expected), "{method} {params:?}: {message}");
        }
    }

    #[test]
    fn other_methods_pass_through_untouched() {
        node(|_| unreachable!());
        let mut harness = harness();
        assert_eq!(
            harness.call("eth_blockNumber", Some("[ ]")),
            Ok(json!("eth_blockNumber passed through").to_string())
        );
        assert_eq!(MockHost::current().upstream_calls(), [Call::new("eth_blockNumber", Some("[ ]".to_string()))]);
        assert_eq!(harness.plugin().hooks(), Hooks::ON_CALL);
    }

    #[test]
    fn word_to_quantity_reads_the_first_word() {
        assert_eq!(word_to_quantity(&format!("0x{:0>64}", "1A")).as_deref(), Some("0x1a"));
        assert_eq!(word_to_quantity(&format!("0x{}", "0".repeat(64))).as_deref(), Some("0x0"));
        assert_eq!(word_to_quantity(&format!("0x{}", "0".repeat(63))), None, "odd length");
        assert_eq!(word_to_quantity(&format!("0x{}", "0".repeat(62))), None, "31 bytes");
        assert_eq!(word_to_quantity("0x"), None);
        assert_eq!(word_to_quantity(&"0".repeat(64)), None, "no 0x");
    }

    #[test]
    fn configuration_defaults_and_limits() {
        assert_eq!(harness().plugin().max_items, 16);
        assert_eq!(Harness::<EthExtras>::new("{}").unwrap().plugin().max_items, 16);
        assert_eq!(Harness::<EthExtras>::new(r#"{"max_items": 100}"#).unwrap().plugin().max_items, 100);
        let cases = [
            (r#"{"max_items": 0}"#, "invalid configuration: max_items must be at least 1"),
            (r#"{"max_items": 101}"#, "invalid configuration: max_items must be at most 100"),
            (r#"{"max_items": -1}"#, "invalid configuration: max_items must be a whole number of at least 1, got -1"),
            (
                r#"{"max_items": "16"}"#,
                "invalid configuration: max_items must be a whole number of at least 1, got \"16\"",
            ),
            (r#"{"max_item": 16}"#, "invalid configuration: unknown field `max_item`, expected `max_items`"),
            ("16", "invalid configuration: expected an object like {\"max_items\": 16}, got a number"),
        ];
        for (config, expected) in cases {
            assert_eq!(Harness::<EthExtras>::new(config).err().as_deref(), Some(expected), "{config}");
        }
    }

    #[test]
    fn the_schema_describes_the_same_fields_and_limits() {
        let schema: Value = serde_json::from_str(include_str!("../schema.json")).unwrap();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
        assert_eq!(schema["additionalProperties"], false);
        let fields: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fields, FIELDS);
        assert_eq!(schema["properties"]["max_items"]["default"], DEFAULT_MAX_ITEMS);
        assert_eq!(schema["properties"]["max_items"]["maximum"], MAX_MAX_ITEMS);
    }
}
