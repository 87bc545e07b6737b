//! # Per-binding allowlists
//!
//! Owns what a binding's parameters may restrict its key to (a key shipped in a browser page is
//! public): `allowed_origins` (exact origins or `*.example.com`, checked against `Origin` on
//! HTTP and on the WebSocket upgrade), `allowed_methods` / `denied_methods` (globs, the SDK's
//! `glob_matches`, checked before the plugin chain), and `allowed_contracts` (the addresses that
//! `eth_call`, `eth_estimateGas`, `eth_sendRawTransaction` (its decoded `to`) and `eth_getLogs`
//! (`address`) may touch). An empty or absent list is no restriction.
//!
//! The rules are parsed once, when the binding's route is built; a refusal is a JSON-RPC error
//! whose code and message name the rule, made without a store query or a plugin call.
//!
//! Must not: allocate for a binding without restrictions, or let a call through that it cannot
//! read when a contract list applies (a contract creation, a transaction it cannot decode, logs
//! of every address are refused then).

use std::collections::HashSet;

use serde_json::Value;
use serde_json::value::RawValue;

/// The origin was not in the binding's `allowed_origins` (HTTP 403).
pub const ORIGIN_NOT_ALLOWED: i32 = -32051;
/// The method is not in `allowed_methods`, or is in `denied_methods`.
pub const METHOD_NOT_ALLOWED: i32 = -32052;
/// The call touches an address not in `allowed_contracts`.
pub const CONTRACT_NOT_ALLOWED: i32 = -32053;

/// A binding's restrictions, from its bind parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    origins: Vec<String>,
    allowed_methods: Vec<String>,
    denied_methods: Vec<String>,
    contracts: HashSet<[u8; 20]>,
}

/// Why a call or request was refused: its JSON-RPC code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The JSON-RPC error code.
    pub code: i32,
    /// The message, naming the rule.
    pub message: &'static str,
}

const ORIGIN: Refusal = Refusal {
    code: ORIGIN_NOT_ALLOWED,
    message: "refused by the binding's allowed_origins: this origin may not use the key",
};
const NOT_ALLOWED_METHOD: Refusal = Refusal {
    code: METHOD_NOT_ALLOWED,
    message: "refused by the binding's allowed_methods: this method is not allowed",
};
const DENIED_METHOD: Refusal =
    Refusal { code: METHOD_NOT_ALLOWED, message: "refused by the binding's denied_methods: this method is denied" };
const CONTRACT: Refusal = Refusal {
    code: CONTRACT_NOT_ALLOWED,
    message: "refused by the binding's allowed_contracts: the call touches an address not in the list",
};

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

/// Whether `text` is an allowed origin entry: `*`, an origin (`https://app.example.com`,
/// `http://127.0.0.1:8080`) or a subdomain pattern (`*.example.com`, `https://*.example.com`).
/// The binding schema in the catalog says the same.
pub fn valid_origin_pattern(text: &str) -> bool {
    let host_ok = |host: &str| {
        !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    let scheme_ok = |scheme: &str| {
        scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    };
    if text == "*" {
        return true;
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) if scheme_ok(scheme) => (Some(scheme), rest),
        Some(_) => return false,
        None => (None, text),
    };
    match rest.strip_prefix("*.") {
        Some(suffix) => host_ok(suffix),
        None => scheme.is_some() && host_ok(rest),
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
            allowed_methods: strings(parameters, "allowed_methods"),
            denied_methods: strings(parameters, "denied_methods"),
            contracts: strings(parameters, "allowed_contracts").iter().filter_map(|a| address(a)).collect(),
        };
        (list != Allowlist::default()).then_some(list)
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

    /// Checks a call's method and, for the calls that name contracts, its addresses.
    pub fn check_call(&self, method: &str, params: Option<&RawValue>) -> Result<(), Refusal> {
        use ovsb_plugin_sdk::glob_matches;
        if self.denied_methods.iter().any(|p| glob_matches(p, method)) {
            return Err(DENIED_METHOD);
        }
        if !self.allowed_methods.is_empty() && !self.allowed_methods.iter().any(|p| glob_matches(p, method)) {
            return Err(NOT_ALLOWED_METHOD);
        }
        if self.contracts.is_empty() {
            return Ok(());
        }
        let touched = match method {
            "eth_call" | "eth_estimateGas" => first_param(params).and_then(|tx| call_target(&tx)),
            "eth_sendRawTransaction" => first_param(params)
                .and_then(|raw| raw.as_str().and_then(|h| hex::decode(h.trim_start_matches("0x")).ok()))
                .and_then(|bytes| raw_transaction_to(&bytes))
                .map(|to| vec![to]),
            "eth_getLogs" => first_param(params).and_then(|filter| log_addresses(&filter)),
            _ => return Ok(()),
        };
        match touched {
            Some(addresses) if !addresses.is_empty() && addresses.iter().all(|a| self.contracts.contains(a)) => Ok(()),
            _ => Err(CONTRACT),
        }
    }
}

/// `https://app.example.com` against `https://app.example.com` (exact) or `*.example.com` /
/// `https://*.example.com` (any subdomain, any or that scheme).
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern == origin {
        return true;
    }
    let Some((scheme, suffix)) = pattern.split_once("*.") else { return false };
    let host = match origin.split_once("://") {
        Some((origin_scheme, host)) if scheme.is_empty() || scheme.strip_suffix("://") == Some(origin_scheme) => host,
        _ => return false,
    };
    host.len() > suffix.len() + 1 && host.ends_with(suffix) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn first_param(params: Option<&RawValue>) -> Option<Value> {
    let params: Vec<Value> = serde_json::from_str(params?.get()).ok()?;
    params.into_iter().next()
}

fn call_target(tx: &Value) -> Option<Vec<[u8; 20]>> {
    Some(vec![address(tx.get("to")?.as_str()?)?])
}

fn log_addresses(filter: &Value) -> Option<Vec<[u8; 20]>> {
    match filter.get("address")? {
        Value::String(one) => Some(vec![address(one)?]),
        Value::Array(many) => many.iter().map(|a| a.as_str().and_then(address)).collect(),
        _ => None,
    }
}

/// One RLP item at the start of `data`: (is a list, its payload, the rest after it).
fn rlp_item(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&first, rest) = data.split_first()?;
    let (list, len, rest) = match first {
        0x00..=0x7f => return Some((false, &data[..1], rest)),
        0x80..=0xb7 => (false, usize::from(first - 0x80), rest),
        0xc0..=0xf7 => (true, usize::from(first - 0xc0), rest),
        _ => {
            let (list, len_of_len) = if first >= 0xf8 { (true, first - 0xf7) } else { (false, first - 0xb7) };
            let (len_bytes, rest) = rest.split_at_checked(usize::from(len_of_len))?;
            if len_bytes.len() > 8 {
                return None;
            }
            let len = len_bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            (list, usize::try_from(len).ok()?, rest)
        }
    };
    let (payload, rest) = rest.split_at_checked(len)?;
    Some((list, payload, rest))
}

/// The `index`-th item of an RLP list's payload.
fn rlp_nth(mut list: &[u8], index: usize) -> Option<(bool, &[u8])> {
    for _ in 0..index {
        list = rlp_item(list)?.2;
    }
    let (is_list, payload, _) = rlp_item(list)?;
    Some((is_list, payload))
}

/// The `to` of a signed transaction (legacy, or typed per EIP-2718: 1, 2, 3 including the
/// network form with blobs, and 4); `None` for a contract creation or what cannot be decoded.
pub fn raw_transaction_to(raw: &[u8]) -> Option<[u8; 20]> {
    let (&first, body) = raw.split_first()?;
    let (fields, to_index) = if first >= 0xc0 {
        (raw, 3)
    } else {
        let to_index = match first {
            0x01 => 4,
            0x02..=0x04 => 5,
            _ => return None,
        };
        (body, to_index)
    };
    let (is_list, mut payload, _) = rlp_item(fields)?;
    if !is_list {
        return None;
    }
    // A blob transaction in its network form: [tx_payload_body, blobs, commitments, proofs].
    if first == 0x03
        && let Some((true, inner)) = rlp_nth(payload, 0)
    {
        payload = inner;
    }
    let (to_is_list, to) = rlp_nth(payload, to_index)?;
    if to_is_list {
        return None;
    }
    to.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).unwrap()
    }

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
    fn origin_entries_are_origins_or_subdomain_patterns() {
        for good in ["*", "https://app.example.com", "http://127.0.0.1:8080", "*.example.com", "https://*.example.com"]
        {
            assert!(valid_origin_pattern(good), "{good}");
        }
        for bad in [
            "",
            "not an origin",
            "example.com",
            "https://",
            "https://a.com/path",
            "https://*",
            "1http://a.b",
            "*example.com",
        ] {
            assert!(!valid_origin_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_pattern() {
        let list =
            Allowlist::from_parameters(&json!({"allowed_origins": ["https://app.example.com", "*.dapp.io"]})).unwrap();
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
    }

    #[test]
    fn methods_are_allowed_and_denied_by_glob() {
        let list = Allowlist::from_parameters(
            &json!({"allowed_methods": ["eth_*", "net_version"], "denied_methods": ["eth_send*"]}),
        )
        .unwrap();
        assert_eq!(list.check_call("eth_chainId", None), Ok(()));
        assert_eq!(list.check_call("net_version", None), Ok(()));
        assert_eq!(list.check_call("eth_sendRawTransaction", None), Err(DENIED_METHOD));
        assert_eq!(list.check_call("evm_mine", None), Err(NOT_ALLOWED_METHOD));
    }

    #[test]
    fn contracts_are_checked_in_calls_and_log_filters() {
        let allowed = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        let other = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let list = Allowlist::from_parameters(&json!({"allowed_contracts": [allowed]})).unwrap();
        let call = |method: &str, params: Value| list.check_call(method, Some(&raw(&params.to_string())));
        assert_eq!(call("eth_call", json!([{"to": allowed.to_lowercase(), "data": "0x"}, "latest"])), Ok(()));
        assert_eq!(call("eth_estimateGas", json!([{"to": other}])), Err(CONTRACT));
        assert_eq!(call("eth_call", json!([{"data": "0x60"}])), Err(CONTRACT), "a creation touches no listed contract");
        assert_eq!(call("eth_getLogs", json!([{"address": allowed}])), Ok(()));
        assert_eq!(call("eth_getLogs", json!([{"address": [allowed, other]}])), Err(CONTRACT));
        assert_eq!(call("eth_getLogs", json!([{"fromBlock": "0x0"}])), Err(CONTRACT), "every address");
        assert_eq!(call("eth_blockNumber", json!([])), Ok(()));
    }

    #[test]
    fn the_to_of_legacy_and_typed_transactions_is_decoded() {
        // Signed by anvil's first account (cast mktx), to 0x7099…79c8.
        let to: [u8; 20] = hex::decode("70997970c51812dc3a010c7d01b50e0d17dc79c8").unwrap().try_into().unwrap();
        // Legacy: [nonce, gasPrice, gas, to, value, data, v, r, s].
        let mut legacy = vec![0x80, 0x01, 0x82, 0x52, 0x08, 0x94];
        legacy.extend_from_slice(&to);
        legacy.extend_from_slice(&[0x01, 0x80, 0x1b, 0x01, 0x01]);
        let legacy = [&[0xc0 + legacy.len() as u8][..], &legacy].concat();
        assert_eq!(raw_transaction_to(&legacy), Some(to));
        // EIP-1559: 0x02 || [chainId, nonce, maxPrio, maxFee, gas, to, value, data, accessList, y, r, s].
        let mut typed = vec![0x01, 0x80, 0x01, 0x01, 0x82, 0x52, 0x08, 0x94];
        typed.extend_from_slice(&to);
        typed.extend_from_slice(&[0x01, 0x80, 0xc0, 0x01, 0x01, 0x01]);
        let typed = [&[0x02, 0xc0 + typed.len() as u8][..], &typed].concat();
        assert_eq!(raw_transaction_to(&typed), Some(to));
        // A creation (empty to) and garbage.
        let creation = [0xc9, 0x80, 0x01, 0x82, 0x52, 0x08, 0x80, 0x01, 0x80, 0x1b];
        assert_eq!(raw_transaction_to(&creation), None);
        for junk in [&[][..], &[0x02], &[0xff, 0xff], &[0x02, 0xf8, 0xff, 0x01], &[0x05, 0xc0]] {
            assert_eq!(raw_transaction_to(junk), None, "{junk:?}");
        }
    }
}
