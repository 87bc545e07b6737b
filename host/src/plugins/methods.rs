//! Which calls a plugin sees: the method selection a plugin declares during `configure` with
//! `host.select-methods`, checked by the chain before it makes any wasm call.
//!
//! Owns the bounds on what a plugin may declare. The declarations add up into the SDK's own
//! [`Methods`], so that a plugin's native tests (the SDK's `Harness`) and ovsb agree on what a
//! selection takes. A selection only ever narrows what a plugin sees, so a chain without
//! selections behaves exactly as before; one that is refused fails `configure` with a message
//! that says why.

use ovsb_plugin_sdk::Methods;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 128;
/// Most patterns one plugin may declare, across all its `select-methods` calls.
pub const MAX_PATTERNS: usize = 256;

/// The calls a plugin selected: a method is seen if any declaration takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodSelection {
    /// The union of the declarations; `None` before the first (every call is seen).
    methods: Option<Methods>,
    /// Patterns declared so far.
    patterns: usize,
}

impl MethodSelection {
    /// Adds one `select-methods` declaration, or says why it is refused.
    pub fn add(&mut self, patterns: Vec<String>, except: bool) -> Result<(), String> {
        let total = self.patterns + patterns.len();
        if total > MAX_PATTERNS {
            return Err(format!("select-methods: {total} patterns in all, over the limit of {MAX_PATTERNS}"));
        }
        if let Some(bad) = patterns.iter().find(|p| p.is_empty() || p.len() > MAX_PATTERN_BYTES) {
            let shown: String = bad.chars().take(40).collect();
            return Err(format!("select-methods: the pattern {shown:?} must be 1 to {MAX_PATTERN_BYTES} bytes long"));
        }
        let declared = if except { Methods::not_matching(patterns) } else { Methods::matching(patterns) };
        self.methods = Some(match self.methods.take() {
            Some(methods) => methods.or(declared),
            None => declared,
        });
        self.patterns = total;
        Ok(())
    }

    /// Whether no declaration was made (the plugin sees every call).
    pub fn is_empty(&self) -> bool {
        self.methods.is_none()
    }

    /// Whether the plugin sees a call of `method`.
    pub fn sees(&self, method: &str) -> bool {
        self.methods.as_ref().is_none_or(|methods| methods.sees(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_add_up_and_except_inverts_one() {
        let mut selection = MethodSelection::default();
        assert!(selection.sees("anything"), "no declaration: every call");
        selection.add(vec!["debug_*".into()], false).unwrap();
        assert!(selection.sees("debug_traceCall"));
        assert!(!selection.sees("eth_call"));
        selection.add(vec!["eth_*".into(), "net_version".into()], true).unwrap();
        assert!(selection.sees("debug_traceCall"), "still taken by the first");
        assert!(selection.sees("web3_clientVersion"), "matches none of the second's patterns");
        assert!(!selection.sees("eth_call"));
        assert!(!selection.sees("net_version"));
    }

    #[test]
    fn bounds_are_enforced_with_a_reason() {
        let mut selection = MethodSelection::default();
        let err = selection.add(vec![String::new()], false).unwrap_err();
        assert!(err.contains("1 to 128 bytes"), "{err}");
        let err = selection.add(vec!["x".repeat(129)], false).unwrap_err();
        assert!(err.contains("1 to 128 bytes"), "{err}");
        let err = selection.add((0..257).map(|i| format!("m{i}")).collect(), false).unwrap_err();
        assert!(err.contains("over the limit of 256"), "{err}");
        assert!(selection.is_empty(), "a refused declaration changes nothing");
    }
}
