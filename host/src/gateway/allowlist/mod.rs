//! # Per-binding allowlists and plan method rules
//!
//! Owns the decisions (pure functions of a call and the rules) that restrict what a key may do:
//! - a binding's `allowed_origins` (exact origins or `*.example.com` patterns, ports matched as
//!   described at [`valid_origin_pattern`]), checked against `Origin` on HTTP and on the WebSocket
//!   upgrade;
//! - [`MethodRules`]: `allowed_methods` / `denied_methods` globs (the SDK's `glob_matches`), a
//!   binding's and a plan's (the plan's policy binds every instance of the plan);
//! - a binding's `allowed_contracts`, **sound by construction**: a call passes only when this
//!   module can name every contract it may touch and every one is on the list. Calls that name
//!   contracts are read field by field (call objects, log filters, decoded signed transactions of
//!   every type); state and block overrides, contract creations and EIP-7702 authorizations are
//!   refused; so is every method this module does not know ([`Allowlist::check_node_call`]).
//!   Answers that can carry logs of a filter made elsewhere (`eth_getFilterChanges`,
//!   `eth_getFilterLogs`) are checked too ([`Allowlist::check_answer`]).
//!
//! The gateway checks each call on its way in ([`Allowlist::check_entry`]: a method the host
//! does not know may still be answered by a plugin) and again for everything that reaches the
//! node on the binding's behalf, the chain's forward and every plugin's `upstream` import alike
//! ([`Allowlist::check_node_call`], strict).
//!
//! The rules are parsed once, when the binding's route is built; a refusal is a JSON-RPC error
//! whose code and message name the rule, made without a store query or a plugin call.
//!
//! Must not: allocate for a binding without restrictions, do I/O, panic on any input, or let a
//! call through that it cannot read while a contract list applies.

mod decode;

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::config::origins::split_port;
pub use crate::config::origins::valid_origin_pattern;

/// The allowlists' codes (see [`crate::call::codes`]): origin, method, contract not allowed.
pub use crate::call::codes::{CONTRACT_NOT_ALLOWED, METHOD_NOT_ALLOWED, ORIGIN_NOT_ALLOWED};
pub use decode::decode_raw_transaction;
use decode::{no_overrides, positional};

/// Why a call or request was refused: its JSON-RPC code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The JSON-RPC error code.
    pub code: i32,
    /// The message, naming the rule.
    pub message: &'static str,
}

const fn refusal(code: i32, message: &'static str) -> Refusal {
    Refusal { code, message }
}

const ORIGIN: Refusal =
    refusal(ORIGIN_NOT_ALLOWED, "refused by the binding's allowed_origins: this origin may not use the key");
const NOT_ALLOWED_METHOD: Refusal =
    refusal(METHOD_NOT_ALLOWED, "refused by the binding's allowed_methods: this method is not allowed");
const DENIED_METHOD: Refusal =
    refusal(METHOD_NOT_ALLOWED, "refused by the binding's denied_methods: this method is denied");
const PLAN_NOT_ALLOWED_METHOD: Refusal =
    refusal(METHOD_NOT_ALLOWED, "refused by the plan's allowed_methods: this method is not allowed on this plan");
const PLAN_DENIED_METHOD: Refusal =
    refusal(METHOD_NOT_ALLOWED, "refused by the plan's denied_methods: this method is denied on this plan");

const CONTRACT: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the call touches an address not in the list",
);
const CONTRACT_UNNAMED: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the call does not name the contract it touches (a `to` or an address is required)",
);
const CONTRACT_OVERRIDES: Refusal =
    refusal(CONTRACT_NOT_ALLOWED, "refused by the binding's allowed_contracts: state and block overrides are refused");
const CONTRACT_CREATION: Refusal =
    refusal(CONTRACT_NOT_ALLOWED, "refused by the binding's allowed_contracts: a contract creation is refused");
const CONTRACT_AUTHORIZATION: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: EIP-7702 authorizations (set-code transactions) are refused",
);
const CONTRACT_UNDECODED: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the transaction cannot be decoded (legacy and EIP-2718 types 1, 2, 3 are read)",
);
const CONTRACT_UNREAD: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the parameters are not in a form the host can check",
);
const CONTRACT_TRACE: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: debug_* and trace_* methods are refused",
);
const CONTRACT_UNKNOWN_METHOD: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the host does not know what this method touches",
);
const CONTRACT_ANSWER: Refusal = refusal(
    CONTRACT_NOT_ALLOWED,
    "refused by the binding's allowed_contracts: the answer holds logs of an address not in the list",
);

/// Glob rules on method names (`*`, `?`; the SDK's `glob_matches`): a method passes when no
/// denied pattern matches it and, if there are allowed patterns, one of them does. Patterns
/// without a wildcard are looked up in a set, so a long list of plain names (a plan's allowlist)
/// costs one hash per check.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MethodRules {
    allowed: Patterns,
    denied: Patterns,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Patterns {
    exact: HashSet<String>,
    globs: Vec<String>,
}

impl Patterns {
    fn new(patterns: Vec<String>) -> Self {
        let mut rules = Patterns::default();
        for pattern in patterns {
            if pattern.contains(['*', '?']) {
                rules.globs.push(pattern);
            } else {
                rules.exact.insert(pattern);
            }
        }
        rules
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    fn matches(&self, method: &str) -> bool {
        self.exact.contains(method) || self.globs.iter().any(|p| ovsb_plugin_sdk::glob_matches(p, method))
    }
}

impl MethodRules {
    /// Rules from these patterns.
    pub fn new(allowed: Vec<String>, denied: Vec<String>) -> Self {
        MethodRules { allowed: Patterns::new(allowed), denied: Patterns::new(denied) }
    }

    /// Whether the rules restrict nothing.
    pub fn is_empty(&self) -> bool {
        self.allowed.is_empty() && self.denied.is_empty()
    }

    /// `Err(true)`: denied; `Err(false)`: not allowed.
    fn decide(&self, method: &str) -> Result<(), bool> {
        if self.denied.matches(method) {
            return Err(true);
        }
        if !self.allowed.is_empty() && !self.allowed.matches(method) {
            return Err(false);
        }
        Ok(())
    }

    /// Checks a method against a plan's rules.
    pub fn check_plan(&self, method: &str) -> Result<(), Refusal> {
        self.decide(method).map_err(|denied| if denied { PLAN_DENIED_METHOD } else { PLAN_NOT_ALLOWED_METHOD })
    }

    /// Checks a method against a binding's rules.
    fn check_binding(&self, method: &str) -> Result<(), Refusal> {
        self.decide(method).map_err(|denied| if denied { DENIED_METHOD } else { NOT_ALLOWED_METHOD })
    }
}

/// A binding's restrictions, from its bind parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    origins: Vec<String>,
    methods: MethodRules,
    contracts: HashSet<[u8; 20]>,
}

fn strings(parameters: &Value, name: &str) -> Vec<String> {
    parameters
        .get(name)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn address(text: &str) -> Option<[u8; 20]> {
    let hex_text = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))?;
    let mut out = [0u8; 20];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// `https://app.example.com` against a pattern: an exact origin, or `*.example.com` /
/// `https://*.example.com` (any subdomain, any or that scheme); ports as [`valid_origin_pattern`]
/// says.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern == origin {
        return true;
    }
    let (pattern_scheme, pattern_rest) = match pattern.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, pattern),
    };
    let Some((origin_scheme, origin_rest)) = origin.split_once("://") else { return false };
    if pattern_scheme.is_some_and(|scheme| scheme != origin_scheme) {
        return false;
    }
    let (pattern_host, pattern_port) = split_port(pattern_rest);
    let (origin_host, origin_port) = split_port(origin_rest);
    let port_matches = match (pattern_port, origin_port) {
        (Some("*"), _) | (None, None) => true,
        (Some(want), Some(have)) => want == have,
        _ => false,
    };
    if !port_matches {
        return false;
    }
    match pattern_host.strip_prefix("*.") {
        Some(suffix) => {
            origin_host.len() > suffix.len() + 1
                && origin_host.ends_with(suffix)
                && origin_host.as_bytes()[origin_host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern_scheme.is_some() && pattern_host == origin_host,
    }
}

impl Allowlist {
    /// A binding's restrictions: those of its parameters, with the plan's `allowed_origins` when
    /// the binding names no origins; `None` when nothing is restricted (the usual case).
    pub fn for_binding(parameters: Option<&Value>, plan_origins: &[String]) -> Option<Allowlist> {
        let mut list = parameters.and_then(Allowlist::from_parameters).unwrap_or_default();
        if list.origins.is_empty() {
            list.origins = plan_origins.iter().map(|o| o.to_ascii_lowercase()).collect();
        }
        (list != Allowlist::default()).then_some(list)
    }

    /// The restrictions in a binding's parameters; `None` when there are none.
    pub fn from_parameters(parameters: &Value) -> Option<Allowlist> {
        let list = Allowlist {
            origins: strings(parameters, "allowed_origins").into_iter().map(|o| o.to_ascii_lowercase()).collect(),
            methods: MethodRules::new(strings(parameters, "allowed_methods"), strings(parameters, "denied_methods")),
            contracts: strings(parameters, "allowed_contracts").iter().filter_map(|a| address(a)).collect(),
        };
        (list != Allowlist::default()).then_some(list)
    }

    /// Whether the binding restricts its calls (methods or contracts), not only its origins.
    pub fn restricts_calls(&self) -> bool {
        !self.methods.is_empty() || !self.contracts.is_empty()
    }

    /// Checks a request's `Origin` header (absent: not a page, allowed).
    pub fn check_origin(&self, origin: Option<&http::HeaderValue>) -> Result<(), Refusal> {
        let Some(origin) = origin else { return Ok(()) };
        if self.origins.is_empty() {
            return Ok(());
        }
        let origin = origin.to_str().map_err(|_| ORIGIN)?.to_ascii_lowercase();
        if self.origins.iter().any(|pattern| origin_matches(pattern, &origin)) { Ok(()) } else { Err(ORIGIN) }
    }

    /// Checks a call as it enters the gateway: the method rules and, for the methods the host
    /// knows, the contracts. A method it does not know passes here (a plugin of the chain may
    /// answer it); [`Allowlist::check_node_call`] refuses it if it reaches the node.
    pub fn check_entry(&self, method: &str, params: Option<&str>) -> Result<(), Refusal> {
        self.methods.check_binding(method)?;
        if self.contracts.is_empty() {
            return Ok(());
        }
        match self.contracts_of(method, params) {
            Ok(_) => Ok(()),
            Err(refused) if refused == CONTRACT_UNKNOWN_METHOD => Ok(()),
            Err(refused) => Err(refused),
        }
    }

    /// Checks a call about to reach the node on the binding's behalf (the chain's forward, a
    /// plugin's `upstream` import, a call of an empty chain): a method the host does not know is
    /// refused while `allowed_contracts` is set.
    pub fn check_node_call(&self, method: &str, params: Option<&str>) -> Result<(), Refusal> {
        self.methods.check_binding(method)?;
        if self.contracts.is_empty() {
            return Ok(());
        }
        self.contracts_of(method, params).map(|_| ())
    }

    /// Whether the answer of `method` may be handed to the caller: the logs that filter methods
    /// return must all come from listed addresses (a filter id may have been made elsewhere).
    pub fn check_answer(&self, method: &str, result: &str) -> Result<(), Refusal> {
        if self.contracts.is_empty() || !matches!(method, "eth_getFilterChanges" | "eth_getFilterLogs") {
            return Ok(());
        }
        let Ok(items) = serde_json::from_str::<Vec<Value>>(result) else { return Err(CONTRACT_ANSWER) };
        for item in &items {
            match item {
                // Block and transaction hashes (block and pending-transaction filters).
                Value::String(_) => {}
                Value::Object(log) => {
                    let listed = log.get("address").and_then(Value::as_str).and_then(address);
                    if !listed.is_some_and(|a| self.contracts.contains(&a)) {
                        return Err(CONTRACT_ANSWER);
                    }
                }
                _ => return Err(CONTRACT_ANSWER),
            }
        }
        Ok(())
    }

    fn listed(&self, text: &Value) -> Result<(), Refusal> {
        let address = text.as_str().and_then(address).ok_or(CONTRACT_UNREAD)?;
        if self.contracts.contains(&address) { Ok(()) } else { Err(CONTRACT) }
    }

    /// Every contract the call may touch is listed (`Ok`), or why not. The method table of the
    /// README's allowlist section.
    fn contracts_of(&self, method: &str, params: Option<&str>) -> Result<(), Refusal> {
        if method.starts_with("debug_") || method.starts_with("trace_") {
            return Err(CONTRACT_TRACE);
        }
        match method {
            // Chain data addressed by block or transaction, accounts' balances and nonces, node
            // information: no contract code runs, no contract storage is read.
            "eth_chainId"
            | "eth_blockNumber"
            | "eth_gasPrice"
            | "eth_maxPriorityFeePerGas"
            | "eth_blobBaseFee"
            | "eth_feeHistory"
            | "eth_syncing"
            | "eth_protocolVersion"
            | "eth_accounts"
            | "eth_coinbase"
            | "eth_mining"
            | "eth_hashrate"
            | "eth_getBlockByNumber"
            | "eth_getBlockByHash"
            | "eth_getHeaderByNumber"
            | "eth_getHeaderByHash"
            | "eth_getBlockTransactionCountByNumber"
            | "eth_getBlockTransactionCountByHash"
            | "eth_getUncleCountByBlockNumber"
            | "eth_getUncleCountByBlockHash"
            | "eth_getUncleByBlockNumberAndIndex"
            | "eth_getUncleByBlockHashAndIndex"
            | "eth_getTransactionByHash"
            | "eth_getTransactionByBlockNumberAndIndex"
            | "eth_getTransactionByBlockHashAndIndex"
            | "eth_getTransactionReceipt"
            | "eth_getBlockReceipts"
            | "eth_getBalance"
            | "eth_getTransactionCount"
            | "eth_newBlockFilter"
            | "eth_newPendingTransactionFilter"
            | "eth_uninstallFilter"
            | "eth_getFilterChanges"
            | "eth_getFilterLogs"
            | "eth_unsubscribe"
            | "net_version"
            | "net_listening"
            | "net_peerCount"
            | "web3_clientVersion"
            | "web3_sha3" => Ok(()),
            "eth_call" | "eth_estimateGas" | "eth_createAccessList" => {
                let params = positional(params)?;
                no_overrides(params.get(2..).unwrap_or_default())?;
                self.call_object(params.first().ok_or(CONTRACT_UNNAMED)?)
            }
            "eth_sendTransaction" | "eth_sendTransactionSync" => {
                let params = positional(params)?;
                self.call_object(params.first().ok_or(CONTRACT_UNNAMED)?)
            }
            "eth_simulateV1" => self.simulation(positional(params)?.first().ok_or(CONTRACT_UNREAD)?),
            "eth_getStorageAt" | "eth_getCode" | "eth_getProof" => {
                self.listed(positional(params)?.first().ok_or(CONTRACT_UNNAMED)?)
            }
            "eth_sendRawTransaction" | "eth_sendRawTransactionSync" | "eth_sendRawTransactionConditional" => {
                let params = positional(params)?;
                let raw = params.first().and_then(Value::as_str).ok_or(CONTRACT_UNDECODED)?;
                let hex_text = raw.strip_prefix("0x").ok_or(CONTRACT_UNDECODED)?;
                let bytes = hex::decode(hex_text).map_err(|_| CONTRACT_UNDECODED)?;
                match decode_raw_transaction(&bytes)? {
                    Some(to) if self.contracts.contains(&to) => Ok(()),
                    Some(_) => Err(CONTRACT),
                    None => Err(CONTRACT_CREATION),
                }
            }
            "eth_getLogs" | "eth_newFilter" => self.filter(positional(params)?.first().ok_or(CONTRACT_UNNAMED)?),
            "eth_subscribe" => {
                let params = positional(params)?;
                match params.first().and_then(Value::as_str) {
                    Some("newHeads" | "newPendingTransactions" | "syncing") if params.len() == 1 => Ok(()),
                    Some("logs") if params.len() == 2 => self.filter(&params[1]),
                    Some("logs") => Err(CONTRACT_UNNAMED),
                    _ => Err(CONTRACT_UNREAD),
                }
            }
            _ => Err(CONTRACT_UNKNOWN_METHOD),
        }
    }

    /// A transaction or call object: every field known, a listed `to`, no creation, no
    /// EIP-7702 authorizations.
    fn call_object(&self, call: &Value) -> Result<(), Refusal> {
        const FIELDS: &[&str] = &[
            "from",
            "to",
            "gas",
            "gasPrice",
            "maxFeePerGas",
            "maxPriorityFeePerGas",
            "maxFeePerBlobGas",
            "value",
            "data",
            "input",
            "nonce",
            "chainId",
            "type",
            "accessList",
            "blobVersionedHashes",
            "blobs",
            "commitments",
            "proofs",
            "sidecar",
            "authorizationList",
        ];
        let call = call.as_object().ok_or(CONTRACT_UNREAD)?;
        if call.keys().any(|k| !FIELDS.contains(&k.as_str())) {
            return Err(CONTRACT_UNREAD);
        }
        match call.get("authorizationList") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.is_empty() => {}
            Some(_) => return Err(CONTRACT_AUTHORIZATION),
        }
        match call.get("to") {
            None | Some(Value::Null) => Err(CONTRACT_CREATION),
            Some(to) => self.listed(to),
        }
    }

    /// `eth_simulateV1`'s payload: every call of every block, no overrides.
    fn simulation(&self, payload: &Value) -> Result<(), Refusal> {
        let payload = payload.as_object().ok_or(CONTRACT_UNREAD)?;
        const FIELDS: &[&str] = &["blockStateCalls", "traceTransfers", "validation", "returnFullTransactions"];
        if payload.keys().any(|k| !FIELDS.contains(&k.as_str())) {
            return Err(CONTRACT_UNREAD);
        }
        let blocks = payload.get("blockStateCalls").and_then(Value::as_array).ok_or(CONTRACT_UNREAD)?;
        for block in blocks {
            let block = block.as_object().ok_or(CONTRACT_UNREAD)?;
            for (key, value) in block {
                match key.as_str() {
                    "blockOverrides" | "stateOverrides" => no_overrides(std::slice::from_ref(value))?,
                    "calls" => {
                        for call in value.as_array().ok_or(CONTRACT_UNREAD)? {
                            self.call_object(call)?;
                        }
                    }
                    _ => return Err(CONTRACT_UNREAD),
                }
            }
        }
        Ok(())
    }

    /// A log filter: `address` (one or a non-empty list), every entry listed.
    fn filter(&self, filter: &Value) -> Result<(), Refusal> {
        let filter: &Map<String, Value> = filter.as_object().ok_or(CONTRACT_UNREAD)?;
        if filter.keys().any(|k| !["address", "fromBlock", "toBlock", "blockHash", "topics"].contains(&k.as_str())) {
            return Err(CONTRACT_UNREAD);
        }
        match filter.get("address") {
            Some(Value::String(_)) => self.listed(&filter["address"]),
            Some(Value::Array(many)) if !many.is_empty() => many.iter().try_for_each(|a| self.listed(a)),
            _ => Err(CONTRACT_UNNAMED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode::rlp::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn no_restriction_parameters_give_no_allowlist() {
        assert_eq!(Allowlist::from_parameters(&json!({})), None);
        assert_eq!(Allowlist::from_parameters(&json!({"allowed_origins": [], "encryption_public_key": "k"})), None);
    }

    #[test]
    fn the_plans_origins_apply_unless_the_binding_names_its_own() {
        let plan = vec!["https://Plan.example".to_string()];
        let list = Allowlist::for_binding(None, &plan).unwrap();
        let from = |list: &Allowlist, o: &str| list.check_origin(Some(&http::HeaderValue::from_str(o).unwrap()));
        assert_eq!(from(&list, "https://plan.example"), Ok(()));
        assert_eq!(from(&list, "https://other.example"), Err(ORIGIN));
        let own = json!({"allowed_origins": ["https://own.example"], "denied_methods": ["evm_*"]});
        let list = Allowlist::for_binding(Some(&own), &plan).unwrap();
        assert_eq!(from(&list, "https://own.example"), Ok(()));
        assert_eq!(from(&list, "https://plan.example"), Err(ORIGIN));
        assert_eq!(Allowlist::for_binding(Some(&json!({})), &[]), None);
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_pattern_and_ports_only_when_named() {
        let list = Allowlist::from_parameters(&json!({"allowed_origins": [
            "https://app.example.com", "*.dapp.io", "https://*.ports.io:*", "https://*.one.io:8443",
            "http://127.0.0.1:8080"
        ]}))
        .unwrap();
        let check = |o: &str| list.check_origin(Some(&http::HeaderValue::from_str(o).unwrap()));
        assert_eq!(check("https://app.example.com"), Ok(()));
        assert_eq!(check("https://APP.example.com"), Ok(()));
        assert_eq!(check("https://x.dapp.io"), Ok(()));
        assert_eq!(check("http://a.b.dapp.io"), Ok(()));
        assert_eq!(check("https://dapp.io"), Err(ORIGIN));
        assert_eq!(check("https://evildapp.io"), Err(ORIGIN));
        assert_eq!(check("https://app.example.com.evil.io"), Err(ORIGIN));
        assert_eq!(check("null"), Err(ORIGIN));
        assert_eq!(list.check_origin(None), Ok(()), "not from a page");
        // Ports: none in the pattern matches none in the origin; `:*` any; `:8443` that one.
        assert_eq!(check("https://a.example.com:8443"), Err(ORIGIN));
        assert_eq!(check("https://app.example.com:8443"), Err(ORIGIN));
        assert_eq!(check("https://x.dapp.io:8443"), Err(ORIGIN));
        assert_eq!(check("https://a.ports.io:8443"), Ok(()));
        assert_eq!(check("https://a.ports.io"), Ok(()));
        assert_eq!(check("http://a.ports.io:80"), Err(ORIGIN), "the scheme still matches");
        assert_eq!(check("https://a.one.io:8443"), Ok(()));
        assert_eq!(check("https://a.one.io:8444"), Err(ORIGIN));
        assert_eq!(check("https://a.one.io"), Err(ORIGIN));
        assert_eq!(check("http://127.0.0.1:8080"), Ok(()));
        assert_eq!(check("http://127.0.0.1:8081"), Err(ORIGIN));
    }

    #[test]
    fn methods_are_allowed_and_denied_by_glob() {
        let list = Allowlist::from_parameters(
            &json!({"allowed_methods": ["eth_*", "net_version"], "denied_methods": ["eth_send*"]}),
        )
        .unwrap();
        assert_eq!(list.check_entry("eth_chainId", None), Ok(()));
        assert_eq!(list.check_entry("net_version", None), Ok(()));
        assert_eq!(list.check_entry("eth_sendRawTransaction", None), Err(DENIED_METHOD));
        assert_eq!(list.check_node_call("evm_mine", None), Err(NOT_ALLOWED_METHOD));
        let plan = MethodRules::new(vec!["eth_*".into()], vec!["eth_sign*".into()]);
        assert_eq!(plan.check_plan("eth_chainId"), Ok(()));
        assert_eq!(plan.check_plan("eth_signTypedData"), Err(PLAN_DENIED_METHOD));
        assert_eq!(plan.check_plan("anvil_setBalance"), Err(PLAN_NOT_ALLOWED_METHOD));
        assert!(PLAN_DENIED_METHOD.message.contains("plan's denied_methods"));
    }

    /// The method table, as the README states it, for a binding with one allowed contract.
    #[test]
    fn contracts_are_checked_by_construction_method_by_method() {
        let allowed = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        let other = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let list = Allowlist::from_parameters(&json!({"allowed_contracts": [allowed]})).unwrap();
        let allowed_bytes = address(allowed).unwrap();
        let hex0x = |b: &[u8]| format!("0x{}", hex::encode(b));
        let code = json!({other: {"code": "0x00"}});
        let cases: Vec<(&str, Value, Result<(), Refusal>)> = vec![
            ("eth_call", json!([{"to": allowed.to_lowercase(), "data": "0x"}, "latest"]), Ok(())),
            ("eth_call", json!([{"to": allowed}, "latest", null, {}]), Ok(())),
            ("eth_call", json!([{"to": other}]), Err(CONTRACT)),
            ("eth_call", json!([{"data": "0x60"}]), Err(CONTRACT_CREATION)),
            ("eth_call", json!([{"to": null, "data": "0x60"}]), Err(CONTRACT_CREATION)),
            ("eth_call", json!([{"to": allowed}, "latest", code]), Err(CONTRACT_OVERRIDES)),
            ("eth_call", json!([{"to": allowed}, "latest", {}, {"number": "0x1"}]), Err(CONTRACT_OVERRIDES)),
            ("eth_call", json!([{"to": allowed, "authorizationList": [{}]}]), Err(CONTRACT_AUTHORIZATION)),
            ("eth_call", json!([{"to": allowed, "unknownField": 1}]), Err(CONTRACT_UNREAD)),
            ("eth_call", json!({"to": allowed}), Err(CONTRACT_UNREAD)),
            ("eth_call", json!([]), Err(CONTRACT_UNNAMED)),
            ("eth_call", json!([{"to": "0x12"}]), Err(CONTRACT_UNREAD)),
            ("eth_call", json!([[1, 2.5, -3, true, null, "x", {"a": {}}]]), Err(CONTRACT_UNREAD)),
            ("eth_estimateGas", json!([{"to": other}]), Err(CONTRACT)),
            ("eth_estimateGas", json!([{"to": allowed}, "latest", code]), Err(CONTRACT_OVERRIDES)),
            ("eth_createAccessList", json!([{"to": other}]), Err(CONTRACT)),
            ("eth_createAccessList", json!([{"to": allowed}, "latest"]), Ok(())),
            ("eth_simulateV1", json!([{"blockStateCalls": [{"calls": [{"to": allowed}]}]}, "latest"]), Ok(())),
            (
                "eth_simulateV1",
                json!([{"blockStateCalls": [{"calls": [{"to": allowed}]}, {"calls": [{"to": other}]}]}]),
                Err(CONTRACT),
            ),
            (
                "eth_simulateV1",
                json!([{"blockStateCalls": [{"stateOverrides": code, "calls": [{"to": allowed}]}]}]),
                Err(CONTRACT_OVERRIDES),
            ),
            (
                "eth_simulateV1",
                json!([{"blockStateCalls": [{"blockOverrides": {"number": "0x9"}, "calls": []}]}]),
                Err(CONTRACT_OVERRIDES),
            ),
            ("debug_traceCall", json!([{"to": allowed}, "latest"]), Err(CONTRACT_TRACE)),
            ("trace_call", json!([{"to": allowed}, ["trace"], "latest"]), Err(CONTRACT_TRACE)),
            ("eth_getStorageAt", json!([other, "0x0", "latest"]), Err(CONTRACT)),
            ("eth_getStorageAt", json!([allowed, "0x0", "latest"]), Ok(())),
            ("eth_getCode", json!([other, "latest"]), Err(CONTRACT)),
            ("eth_getProof", json!([other, [], "latest"]), Err(CONTRACT)),
            ("eth_sendTransaction", json!([{"from": other, "to": other}]), Err(CONTRACT)),
            ("eth_sendTransaction", json!([{"from": other, "to": allowed}]), Ok(())),
            ("eth_sendTransaction", json!([{"from": other, "data": "0x60"}]), Err(CONTRACT_CREATION)),
            ("eth_sendTransactionSync", json!([{"from": other, "to": other}]), Err(CONTRACT)),
            ("eth_sendRawTransaction", json!([hex0x(&eip1559(&allowed_bytes))]), Ok(())),
            ("eth_sendRawTransactionSync", json!([hex0x(&eip1559(&TO))]), Err(CONTRACT)),
            ("eth_sendRawTransactionConditional", json!([hex0x(&legacy(&TO)), {}]), Err(CONTRACT)),
            ("eth_sendRawTransaction", json!([hex0x(&legacy(&[]))]), Err(CONTRACT_CREATION)),
            ("eth_sendRawTransaction", json!(["not hex"]), Err(CONTRACT_UNDECODED)),
            ("eth_sendRawTransaction", json!([]), Err(CONTRACT_UNDECODED)),
            ("eth_getLogs", json!([{"address": allowed}]), Ok(())),
            ("eth_getLogs", json!([{"address": [allowed, other]}]), Err(CONTRACT)),
            ("eth_getLogs", json!([{"address": []}]), Err(CONTRACT_UNNAMED)),
            ("eth_getLogs", json!([{"fromBlock": "0x0"}]), Err(CONTRACT_UNNAMED)),
            ("eth_newFilter", json!([{"address": other}]), Err(CONTRACT)),
            ("eth_newFilter", json!([{}]), Err(CONTRACT_UNNAMED)),
            ("eth_newFilter", json!([{"address": [allowed], "topics": []}]), Ok(())),
            ("eth_subscribe", json!(["logs", {"address": other}]), Err(CONTRACT)),
            ("eth_subscribe", json!(["logs", {}]), Err(CONTRACT_UNNAMED)),
            ("eth_subscribe", json!(["logs"]), Err(CONTRACT_UNNAMED)),
            ("eth_subscribe", json!(["logs", {"address": allowed}]), Ok(())),
            ("eth_subscribe", json!(["newHeads"]), Ok(())),
            ("eth_subscribe", json!(["somethingNew"]), Err(CONTRACT_UNREAD)),
            ("eth_blockNumber", json!([]), Ok(())),
            ("eth_getBalance", json!([other, "latest"]), Ok(())),
            ("ovsb_getTokenBalances", json!([other, [other]]), Err(CONTRACT_UNKNOWN_METHOD)),
            ("eth_signTransaction", json!([{"to": other}]), Err(CONTRACT_UNKNOWN_METHOD)),
            ("anvil_setBalance", json!([other, "0x1"]), Err(CONTRACT_UNKNOWN_METHOD)),
        ];
        for (method, params, expected) in cases {
            let params = params.to_string();
            assert_eq!(list.check_node_call(method, Some(&params)), expected, "{method} {params}");
            let entry = if expected == Err(CONTRACT_UNKNOWN_METHOD) { Ok(()) } else { expected };
            assert_eq!(list.check_entry(method, Some(&params)), entry, "entry: {method} {params}");
            if let Err(refused) = expected {
                assert!(refused.message.contains("allowed_contracts"), "{method}: the message names the rule");
                assert_eq!(refused.code, CONTRACT_NOT_ALLOWED);
            }
        }
        assert_eq!(list.check_node_call("eth_chainId", None), Ok(()), "no params");
        // A key twice: serde_json would keep the last `to`, another parser the first.
        let twice = format!(r#"[{{"to": "{other}", "to": "{allowed}"}}, "latest"]"#);
        assert_eq!(list.check_node_call("eth_call", Some(&twice)), Err(CONTRACT_UNREAD));
        let nested = format!(r#"[{{"to": "{allowed}"}}, "latest", {{"a": 1, "a": 2}}]"#);
        assert_eq!(list.check_node_call("eth_call", Some(&nested)), Err(CONTRACT_UNREAD));
        let once = format!(r#"[{{"to": "{allowed}", "value": 1e3, "nonce": -1}}, "latest"]"#);
        assert_eq!(list.check_node_call("eth_call", Some(&once)), Ok(()));
    }

    #[test]
    fn filter_answers_hold_only_logs_of_listed_contracts() {
        let allowed = "0x5fbdb2315678afecb367f032d93f642f64180aa3";
        let list = Allowlist::from_parameters(&json!({"allowed_contracts": [allowed]})).unwrap();
        let ok = json!([{"address": allowed, "data": "0x"}, "0xabc"]).to_string();
        assert_eq!(list.check_answer("eth_getFilterChanges", &ok), Ok(()));
        let leak = json!([{"address": "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"}]).to_string();
        assert_eq!(list.check_answer("eth_getFilterLogs", &leak), Err(CONTRACT_ANSWER));
        assert_eq!(list.check_answer("eth_getFilterLogs", "{}"), Err(CONTRACT_ANSWER));
        assert_eq!(list.check_answer("eth_getLogs", &leak), Ok(()), "checked on the way in");
    }
}
