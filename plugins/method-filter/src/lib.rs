//! # method-filter: allow or deny JSON-RPC methods by name
//!
//! Refuses calls whose method the operator did not allow, before they reach the node (or any
//! later plugin of the chain).
//!
//! ## Configuration
//!
//! ```json
//! {"allow": ["eth_*", "net_version", "web3_clientVersion"], "deny": ["eth_sendTransaction", "eth_sign*"]}
//! ```
//!
//! | field | type | default | meaning |
//! |---|---|---|---|
//! | `allow` | array of patterns | `[]` | if not empty, only methods matching one of these patterns pass |
//! | `deny` | array of patterns | `[]` | methods matching any of these patterns are refused, even if allowed |
//!
//! A method is refused if it matches any `deny` pattern, or if `allow` is not empty and the
//! method matches none of its patterns. `deny` wins over `allow`.
//!
//! At least one pattern must be given, in `allow` or `deny`: a filter that lets everything
//! through (`{}`, `null`, or two empty lists) is almost certainly a mistake, so it is rejected.
//!
//! Patterns are globs matched against the whole method name, case-sensitively (as Ethereum
//! nodes match method names): `*` matches any run of characters (also none), `?` exactly one
//! character; every other character matches itself. For example `eth_*` matches `eth_call` and
//! `eth_getBalance`, `debug_*` every `debug_` method, `eth_get?lock*` matches `eth_getBlockByNumber`.
//! A pattern is 1 to 128 characters from `A-Z a-z 0-9 _ - .` plus `*` and `?`. At most 256
//! patterns may be given (`allow` and `deny` together). Unknown fields are rejected.
//!
//! ## Errors
//!
//! | code | when | message |
//! |---|---|---|
//! | -32601 (method not found) | the method is refused | `method eth_sendTransaction is not allowed on this endpoint` |
//!
//! Method names longer than 128 characters are cut (with `…`) in the message. The refused call
//! never reaches the node or later plugins.
//!
//! ## Behaviour
//!
//! Only the `on-call` hook is declared, so the host never calls `on-result`. The plugin selects
//! exactly the methods it refuses (`deny`, and with `allow` every method outside it): ovsb
//! passes allowed calls by without entering the plugin at all. Keep in mind that the
//! filter sees the method the client called: methods that plugins build from upstream calls (for
//! example `ovsb_getBalances` of `eth-extras`, which calls `eth_getBalance`) are filtered by
//! their own name, and their upstream calls are not filtered by a method-filter earlier in the
//! chain.

use ovsb_plugin_sdk::{
    Call, Config, Context, Decision, Hooks, Methods, Plugin, RpcError, codes, glob_matches, json_kind,
};
use serde_json::{Map, Value};

/// Most patterns accepted, `allow` and `deny` together.
pub const MAX_PATTERNS: usize = 256;
/// Longest pattern accepted, in characters.
pub const MAX_PATTERN_CHARS: usize = 128;
/// Longest method name quoted in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 128;

/// The configuration fields, in the order error messages list them.
const FIELDS: [&str; 2] = ["allow", "deny"];

/// A checked glob pattern, matched with the SDK's [`glob_matches`], the function ovsb uses for
/// the plugin's method selection too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    /// Checks `pattern`; the error says what is wrong with it.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("a pattern must not be empty".to_string());
        }
        let length = pattern.chars().count();
        if length > MAX_PATTERN_CHARS {
            return Err(format!("pattern `{pattern}` is {length} characters, over the limit of {MAX_PATTERN_CHARS}"));
        }
        if let Some(c) =
            pattern.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*' | '?')))
        {
            return Err(format!(
                "pattern `{pattern}` contains {c:?}; use letters, digits, `_`, `-`, `.`, and the wildcards `*` and `?`"
            ));
        }
        Ok(Glob { pattern: pattern.to_string() })
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        glob_matches(&self.pattern, text)
    }
}

/// The plugin: see the module docs.
pub struct MethodFilter {
    allow: Vec<Glob>,
    deny: Vec<Glob>,
}

impl MethodFilter {
    /// Whether `method` may pass.
    pub fn allows(&self, method: &str) -> bool {
        if self.deny.iter().any(|glob| glob.matches(method)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|glob| glob.matches(method))
    }
}

/// The configuration as an object (`null` reads as `{}`), refusing unknown fields.
fn settings(config: &Config) -> Result<Map<String, Value>, String> {
    config.object(r#"{"deny": ["debug_*"]}"#, &FIELDS)
}

/// The patterns of `field`, compiled.
fn patterns(settings: &Map<String, Value>, field: &str) -> Result<Vec<Glob>, String> {
    let Some(value) = settings.get(field) else {
        return Ok(Vec::new());
    };
    let Some(items) = value.as_array() else {
        return Err(format!("invalid configuration: {field} must be an array of patterns, got {}", json_kind(value)));
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let pattern = item.as_str().ok_or_else(|| {
                format!("invalid configuration: {field}[{index}] must be a string pattern, got {}", json_kind(item))
            })?;
            Glob::new(pattern).map_err(|err| format!("invalid configuration: {field}[{index}]: {err}"))
        })
        .collect()
}

impl Plugin for MethodFilter {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = settings(&config)?;
        let (allow, deny) = (patterns(&settings, "allow")?, patterns(&settings, "deny")?);
        let total = allow.len() + deny.len();
        if total == 0 {
            return Err("invalid configuration: give at least one pattern in allow or deny, for example \
                 {\"deny\": [\"debug_*\"]}; a filter without patterns would let every method through"
                .to_string());
        }
        if total > MAX_PATTERNS {
            return Err(format!(
                "invalid configuration: allow and deny hold {total} patterns together, over the limit of {MAX_PATTERNS}"
            ));
        }
        Ok(MethodFilter { allow, deny })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL
    }

    /// Exactly the calls it refuses: the rest pass it by without a wasm call.
    fn methods(&self) -> Methods {
        let names = |globs: &[Glob]| globs.iter().map(|glob| glob.pattern.clone()).collect::<Vec<_>>();
        let denied = Methods::matching(names(&self.deny));
        if self.allow.is_empty() { denied } else { denied.or(Methods::not_matching(names(&self.allow))) }
    }

    fn on_call(&mut self, _ctx: &Context, call: Call) -> Decision {
        if self.allows(&call.method) {
            return Decision::Forward(call);
        }
        Decision::respond_err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("method {} is not allowed on this endpoint", quote(&call.method)),
        ))
    }
}

/// The method name for a message, cut to a readable length.
fn quote(method: &str) -> String {
    match method.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &method[..cut]),
        None => method.to_string(),
    }
}

ovsb_plugin_sdk::export_plugin!(MethodFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{Harness, MockHost, check_schema_fields};

    fn glob(pattern: &str) -> Glob {
        Glob::new(pattern).unwrap()
    }

    fn harness(config: &str) -> Harness<MethodFilter> {
        Harness::new(config).unwrap()
    }

    fn config_error(config: &str) -> String {
        Harness::<MethodFilter>::new(config).err().expect("the configuration should be rejected")
    }

    #[test]
    fn star_matches_any_run_and_question_mark_one_character() {
        assert!(glob("eth_*").matches("eth_call"));
        assert!(glob("eth_*").matches("eth_"));
        assert!(!glob("eth_*").matches("eth"));
        assert!(!glob("eth_*").matches("debug_eth_call"));
        assert!(glob("*").matches(""));
        assert!(glob("*").matches("anything"));
        assert!(glob("*_call").matches("eth_call"));
        assert!(!glob("*_call").matches("eth_callMany"));
        assert!(glob("eth_get?lock*").matches("eth_getBlockByNumber"));
        assert!(!glob("eth_get?lock*").matches("eth_getlock"));
        assert!(glob("net_versio?").matches("net_version"));
        assert!(!glob("net_versio?").matches("net_versionX"));
        assert!(glob("a*b*c").matches("aXbYbZc"));
        assert!(glob("a*b*c").matches("abc"));
        assert!(!glob("a*b*c").matches("aXbYcZ"));
        assert!(glob("*a*a*a*").matches("banana_a"));
        assert!(!glob("*a*a*a*a*").matches("banana"));
        assert!(glob("a**b").matches("ab"));
    }

    #[test]
    fn the_plugin_selects_exactly_the_methods_it_refuses() {
        let methods = [
            "eth_call",
            "eth_sendTransaction",
            "eth_sendRawTransaction",
            "debug_traceCall",
            "net_version",
            "web3_clientVersion",
            "eth_é",
        ];
        for config in [
            r#"{"deny": ["debug_*", "eth_send*"]}"#,
            r#"{"allow": ["eth_*", "net_version"]}"#,
            r#"{"allow": ["eth_*"], "deny": ["eth_send?ransaction", "debug_*"]}"#,
            r#"{"allow": ["eth_?"]}"#,
        ] {
            let mut harness = harness(config);
            let selection = harness.plugin().methods();
            for method in methods {
                let refused = !harness.plugin().allows(method);
                assert_eq!(selection.sees(method), refused, "{config}: {method}");
            }
        }
        let host = MockHost::current();
        let before = host.selected_methods().len();
        harness(r#"{"deny": ["debug_*"]}"#);
        assert_eq!(host.selected_methods()[before..], [(vec!["debug_*".to_string()], false)], "told to the host");
    }

    #[test]
    fn literal_patterns_match_only_the_whole_name_case_sensitively() {
        assert!(glob("eth_call").matches("eth_call"));
        assert!(!glob("eth_call").matches("eth_callx"));
        assert!(!glob("eth_call").matches("xeth_call"));
        assert!(!glob("eth_call").matches("ETH_CALL"));
        assert!(!glob("eth_*").matches("ETH_call"));
    }

    #[test]
    fn question_mark_matches_one_character_not_one_byte() {
        assert!(glob("x?y").matches("xéy"));
        assert!(glob("*").matches("é"));
        assert!(!glob("x?y").matches("xy"));
    }

    #[test]
    fn a_long_adversarial_name_is_matched_quickly() {
        let name = "a".repeat(10_000);
        let pattern = glob(&"*a".repeat(60));
        assert!(pattern.matches(&name));
        let pattern = glob(&format!("{}b", "*a".repeat(60)));
        assert!(!pattern.matches(&name));
    }

    #[test]
    fn deny_refuses_matching_methods_with_method_not_found_before_the_node() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("\"0x1\"".to_string()));
        let mut harness = harness(r#"{"deny": ["eth_sendTransaction", "debug_*"]}"#);

        let err = harness.call("eth_sendTransaction", Some("[{}]")).unwrap_err();
        assert_eq!(err.code, codes::METHOD_NOT_FOUND);
        assert_eq!(err.message, "method eth_sendTransaction is not allowed on this endpoint");
        assert_eq!(err.data, None);
        assert_eq!(harness.call("debug_traceTransaction", None).unwrap_err().code, codes::METHOD_NOT_FOUND);
        assert!(host.upstream_calls().is_empty(), "a refused call must not reach the node");

        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(host.upstream_calls().len(), 1);
    }

    #[test]
    fn a_non_empty_allow_list_refuses_everything_else_and_deny_wins() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("true".to_string()));
        let mut harness = harness(r#"{"allow": ["eth_*", "net_version"], "deny": ["eth_send*"]}"#);

        assert_eq!(harness.call("eth_call", Some("[]")), Ok("true".to_string()));
        assert_eq!(harness.call("net_version", None), Ok("true".to_string()));
        let err = harness.call("net_peerCount", None).unwrap_err();
        assert_eq!(err.message, "method net_peerCount is not allowed on this endpoint");
        assert_eq!(harness.call("eth_sendRawTransaction", None).unwrap_err().code, codes::METHOD_NOT_FOUND);
        let methods: Vec<String> = host.upstream_calls().into_iter().map(|call| call.method).collect();
        assert_eq!(methods, ["eth_call", "net_version"]);
    }

    #[test]
    fn forwarded_calls_are_untouched() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("null".to_string()));
        let mut harness = harness(r#"{"allow": ["eth_getBalance"]}"#);
        harness.call("eth_getBalance", Some(r#"["0xAb", "latest"]"#)).unwrap();
        let calls = host.upstream_calls();
        assert_eq!(calls[0], Call::new("eth_getBalance", Some(r#"["0xAb", "latest"]"#.to_string())));
    }

    #[test]
    fn only_the_on_call_hook_is_declared() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("1".to_string()));
        let mut harness = harness(r#"{"deny": ["x"]}"#);
        assert_eq!(harness.plugin().hooks(), Hooks::ON_CALL);
        harness.call("y", None).unwrap();
        assert_eq!(host.declined_hooks(), Hooks::empty(), "on_call is implemented, not a default");
    }

    #[test]
    fn long_method_names_are_cut_in_the_message() {
        let mut harness = harness(r#"{"allow": ["eth_*"]}"#);
        let method = "x".repeat(1000);
        let err = harness.call(&method, None).unwrap_err();
        assert_eq!(err.message, format!("method {}… is not allowed on this endpoint", "x".repeat(128)));
    }

    #[test]
    fn a_filter_without_patterns_is_rejected() {
        for config in ["null", "{}", r#"{"allow": [], "deny": []}"#] {
            let err = config_error(config);
            assert!(err.starts_with("invalid configuration: give at least one pattern in allow or deny"), "{err}");
        }
    }

    #[test]
    fn bad_patterns_are_rejected_naming_the_field_and_index() {
        let err = config_error(r#"{"allow": ["eth_*", ""]}"#);
        assert_eq!(err, "invalid configuration: allow[1]: a pattern must not be empty");
        let err = config_error(r#"{"deny": ["eth call"]}"#);
        assert!(err.starts_with("invalid configuration: deny[0]: pattern `eth call` contains ' '"), "{err}");
        let err = config_error(r#"{"deny": ["eth_[a-z]"]}"#);
        assert!(err.starts_with("invalid configuration: deny[0]: pattern `eth_[a-z]` contains '['"), "{err}");
        let err = config_error(&format!(r#"{{"deny": ["{}"]}}"#, "a".repeat(129)));
        assert!(err.contains("129 characters, over the limit of 128"), "{err}");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_rejected() {
        let err = config_error(r#"{"alow": ["eth_*"]}"#);
        assert_eq!(err, "invalid configuration: unknown field `alow`, expected `allow` or `deny`");
        let err = config_error(r#"{"deny": "eth_*"}"#);
        assert_eq!(err, "invalid configuration: deny must be an array of patterns, got a string");
        let err = config_error(r#"{"allow": ["eth_*", 7]}"#);
        assert_eq!(err, "invalid configuration: allow[1] must be a string pattern, got a number");
        let err = config_error(r#"["eth_*"]"#);
        assert!(err.starts_with("invalid configuration: expected an object like"), "{err}");
        let err = config_error("{not json");
        assert!(err.starts_with("invalid configuration: key must be a string"), "{err}");
    }

    #[test]
    fn at_most_256_patterns_are_accepted() {
        let patterns = |n: usize| (0..n).map(|i| format!("\"m{i}\"")).collect::<Vec<_>>().join(",");
        assert!(
            Harness::<MethodFilter>::new(&format!(r#"{{"allow": [{}], "deny": [{}]}}"#, patterns(200), patterns(56)))
                .is_ok()
        );
        let err = config_error(&format!(r#"{{"allow": [{}], "deny": [{}]}}"#, patterns(200), patterns(57)));
        assert_eq!(err, "invalid configuration: allow and deny hold 257 patterns together, over the limit of 256");
    }

    #[test]
    fn the_schema_describes_the_same_fields_and_limits() {
        let schema = check_schema_fields(include_str!("../schema.json"), &FIELDS);
        assert_eq!(schema["properties"]["allow"]["maxItems"], MAX_PATTERNS);
        assert_eq!(schema["definitions"]["pattern"]["maxLength"], MAX_PATTERN_CHARS);
    }
}
