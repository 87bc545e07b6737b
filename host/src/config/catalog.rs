//! The catalog: `[[services]]` and their `[[services.plans]]` with stable ids, each plan's
//! default chain, its policy (method rules, fixed plugins) and the driver that gives its instances
//! a node; and the checks of all that.
//!
//! Owns: the service and plan declarations and every rule on them that parsing cannot check
//! (ids, names, versions, origins, chains naming declared plugins). The settings of a plan's
//! driver, and their checks, are in `drivers.rs`.
//! Must not: build the OSB catalog document (the broker's), or depend on any module above
//! `config`.

use std::collections::HashSet;

use serde::Deserialize;

use super::origins::valid_origin_pattern;
use super::{ConfigError, DriverDecl};

/// A service offering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    /// Stable id (a GUID is recommended); never change it once platforms know it.
    pub id: String,
    /// Lowercase-hyphen name.
    pub name: String,
    /// What the service is.
    pub description: String,
    /// Tags shown by platforms.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether instances can be bound.
    #[serde(default = "yes")]
    pub bindable: bool,
    /// Whether plans may be changed by update.
    #[serde(default)]
    pub plan_updateable: bool,
    /// Free-form catalog metadata (`displayName`, `documentationUrl`, …).
    #[serde(default)]
    pub metadata: Option<toml::Table>,
    /// The plans, at least one.
    pub plans: Vec<PlanDecl>,
}

/// A plan of a service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDecl {
    /// Stable id.
    pub id: String,
    /// Lowercase-hyphen name, unique within the service.
    pub name: String,
    /// What the plan gives.
    pub description: String,
    /// Whether the plan costs nothing.
    #[serde(default = "yes")]
    pub free: bool,
    /// Overrides the service's `plan_updateable`.
    #[serde(default)]
    pub plan_updateable: Option<bool>,
    /// Seconds after which an operation that has not finished is failed.
    #[serde(default = "default_polling")]
    pub maximum_polling_duration: u64,
    /// The version of what instances of this plan run; provision/update with another is a 422.
    #[serde(default)]
    pub maintenance_info: Option<MaintenanceInfo>,
    /// Most instances of this plan at once (0: no cap).
    #[serde(default)]
    pub max_instances: u64,
    /// Whether bindings may be rotated (OSB 2.17 `binding_rotatable`, published in the catalog):
    /// a bind naming a live `predecessor_binding_id` gets new credentials beside the predecessor's.
    #[serde(default)]
    pub binding_rotatable: bool,
    /// Seconds a binding's credentials work after the bind (`metadata.expires_at`); absent: they
    /// work until the unbind.
    #[serde(default)]
    pub binding_ttl: Option<u64>,
    /// Plugin calls one instance of this plan may run at once (its share of the plugin runtime);
    /// an instance may ask for less with its `plugin_calls` parameter. Default:
    /// `gateway.plugin_calls_per_instance`.
    #[serde(default)]
    pub plugin_calls_per_instance: Option<u32>,
    /// Calls one instance of this plan may have at its nodes at once. Default:
    /// `gateway.upstream_calls_per_instance`.
    #[serde(default)]
    pub upstream_calls_per_instance: Option<u32>,
    /// Calls a paced instance of this plan runs at its nodes at once (after a slow call). Default:
    /// `gateway.slow_calls_per_instance`.
    #[serde(default)]
    pub slow_calls_per_instance: Option<u32>,
    /// The chain an instance gets when its parameters name none.
    #[serde(default)]
    pub plugins: Vec<ChainElement>,
    /// The operator's rules for every instance of the plan (see [`PlanPolicy`]).
    #[serde(default)]
    pub policy: PlanPolicy,
    /// Origins whose pages may call the endpoint of this plan's instances, as the bind parameter
    /// `allowed_origins` (exact origins or `*.example.com` patterns); a binding's own list replaces
    /// it. Empty: any origin (CORS `*`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Free-form catalog metadata.
    #[serde(default)]
    pub metadata: Option<toml::Table>,
    /// The plan's compute-unit weights and quota (see the README's "Usage and quotas").
    #[serde(default)]
    pub usage: super::PlanUsageDecl,
    /// How an instance of this plan gets a node.
    pub driver: DriverDecl,
}

/// `[services.plans.policy]`: what binds every instance of a plan, whatever its parameters.
///
/// Method rules (globs, as a binding's `allowed_methods` / `denied_methods`) are checked in the
/// host before any plugin and again on every call to the node (plugins' `upstream` imports
/// included): a refused call gets -32052 naming the plan's rule. `plugins_before` and
/// `plugins_after` run in every instance's chain, before and after the tenant's own plugins, with
/// the plan's configuration. An instance's `parameters.plugins` is its whole chain: it must
/// start with `plugins_before` and end with `plugins_after`, by name and in order (an entry may
/// leave out its `config`, or give the plan's); a provision or update that drops, moves or
/// reconfigures one is a 400 naming `parameters.plugins`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanPolicy {
    /// Methods instances of the plan may call (empty: any not denied).
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// Methods no instance of the plan may call; wins over `allowed_methods`.
    #[serde(default)]
    pub denied_methods: Vec<String>,
    /// Plugins every chain of the plan starts with.
    #[serde(default)]
    pub plugins_before: Vec<ChainElement>,
    /// Plugins every chain of the plan ends with.
    #[serde(default)]
    pub plugins_after: Vec<ChainElement>,
}

impl PlanPolicy {
    /// Whether the policy has method rules.
    pub fn has_method_rules(&self) -> bool {
        !self.allowed_methods.is_empty() || !self.denied_methods.is_empty()
    }

    /// Whether the policy puts plugins in every chain.
    pub fn has_plugins(&self) -> bool {
        !self.plugins_before.is_empty() || !self.plugins_after.is_empty()
    }

    /// The whole chain of an instance whose own plugins are `tenant`.
    pub fn compose(&self, tenant: &[ChainElement]) -> Vec<ChainElement> {
        [&self.plugins_before[..], tenant, &self.plugins_after[..]].concat()
    }

    /// The tenant's part of a whole chain given in instance parameters, or why the chain breaks
    /// the policy (the message of a 400 on `parameters.plugins`).
    pub fn tenant_part<'a>(&self, chain: &'a [ChainElement]) -> Result<&'a [ChainElement], String> {
        let (before, after) = (self.plugins_before.len(), self.plugins_after.len());
        fn names(list: &[ChainElement]) -> Vec<&str> {
            list.iter().map(|e| e.name.as_str()).collect()
        }
        let broken = || {
            format!(
                "parameters.plugins: the plan's policy runs {:?} first and {:?} last in every chain \
                 (plugins_before / plugins_after); they may not be removed, moved or configured \
                 otherwise: give the chain as {:?} + your plugins + {:?}",
                names(&self.plugins_before),
                names(&self.plugins_after),
                names(&self.plugins_before),
                names(&self.plugins_after),
            )
        };
        if chain.len() < before + after {
            return Err(broken());
        }
        let (head, rest) = chain.split_at(before);
        let (middle, tail) = rest.split_at(rest.len() - after);
        let same = |given: &ChainElement, fixed: &ChainElement| {
            given.name == fixed.name
                && (given.config == fixed.config || given.config.as_object().is_some_and(|c| c.is_empty()))
                && (given.fail_open == fixed.fail_open || !given.fail_open)
        };
        let kept = head.iter().zip(&self.plugins_before).all(|(g, f)| same(g, f))
            && tail.iter().zip(&self.plugins_after).all(|(g, f)| same(g, f));
        if kept { Ok(middle) } else { Err(broken()) }
    }

    /// What the catalog publishes of the policy (plugin names, not their configurations).
    pub fn published(&self) -> Option<serde_json::Value> {
        if !self.has_method_rules() && !self.has_plugins() {
            return None;
        }
        let names = |list: &[ChainElement]| list.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        Some(serde_json::json!({
            "allowed_methods": self.allowed_methods,
            "denied_methods": self.denied_methods,
            "plugins_before": names(&self.plugins_before),
            "plugins_after": names(&self.plugins_after),
        }))
    }
}

/// `maintenance_info` of a plan.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceInfo {
    /// Semantic version.
    pub version: String,
    /// What changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One plugin of a chain, as plans and instance parameters give it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainElement {
    /// A name from `[[plugins]]`.
    pub name: String,
    /// The plugin's configuration (any JSON object), handed to its `configure`.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Skip this plugin on a call it fails, instead of failing the call.
    #[serde(default)]
    pub fail_open: bool,
}

/// Checks each plan's own shares of the plugin runtime and of its nodes.
pub(super) fn check_plan_shares(services: &[ServiceDecl]) -> Result<(), ConfigError> {
    for plan in services.iter().flat_map(|s| &s.plans) {
        let upstream = plan.upstream_calls_per_instance.unwrap_or(65_536);
        let shares = [
            ("plugin_calls_per_instance", plan.plugin_calls_per_instance, 4096),
            ("upstream_calls_per_instance", plan.upstream_calls_per_instance, 65_536),
            ("slow_calls_per_instance", plan.slow_calls_per_instance, upstream),
        ];
        for (name, value, high) in shares {
            if let Some(value) = value
                && !(1..=high).contains(&value)
            {
                return Err(ConfigError::Invalid(format!(
                    "plan {}: {name} is {value}; it must be between 1 and {high}",
                    plan.id
                )));
            }
        }
    }
    Ok(())
}

/// Checks every service and plan: unique names and ids, their syntax, plan bounds, and chains
/// that name only `plugin_names`; each plan's driver checks its own settings.
pub(super) fn check_services(services: &[ServiceDecl], plugin_names: &HashSet<&str>) -> Result<(), ConfigError> {
    let bad = |message: String| Err(ConfigError::Invalid(message));
    let mut ids = HashSet::new();
    let mut service_names = HashSet::new();
    for service in services {
        let what = format!("service {:?}", service.name);
        if !is_slug(&service.name) {
            return bad(format!("{what}: names must be lowercase letters, digits and '-'"));
        }
        if !service_names.insert(service.name.as_str()) {
            return bad(format!("{what} is declared twice"));
        }
        if !is_id(&service.id) || !ids.insert(service.id.as_str()) {
            return bad(format!("{what}: id {:?} must be unique, non-empty, and URL-safe", service.id));
        }
        if service.description.is_empty() || service.plans.is_empty() {
            return bad(format!("{what}: needs a description and at least one plan"));
        }
        let mut plan_names = HashSet::new();
        for plan in &service.plans {
            let what = format!("{what}, plan {:?}", plan.name);
            if !is_slug(&plan.name) || !plan_names.insert(plan.name.as_str()) {
                return bad(format!("{what}: names must be unique lowercase letters, digits and '-'"));
            }
            if !is_id(&plan.id) || !ids.insert(plan.id.as_str()) {
                return bad(format!("{what}: id {:?} must be unique, non-empty, and URL-safe", plan.id));
            }
            if plan.description.is_empty() {
                return bad(format!("{what}: needs a description"));
            }
            if let Some(origin) = plan.allowed_origins.iter().find(|o| !valid_origin_pattern(o)) {
                return bad(format!(
                    "{what}: allowed_origins entry {origin:?} must be an origin (https://app.example.com) or a pattern (*.example.com)"
                ));
            }
            if plan.maximum_polling_duration == 0 {
                return bad(format!("{what}: maximum_polling_duration must be positive"));
            }
            if let Some(ttl) = plan.binding_ttl
                && !(1..=MAX_BINDING_TTL).contains(&ttl)
            {
                return bad(format!(
                    "{what}: binding_ttl is {ttl}; it must be between 1 and {MAX_BINDING_TTL} seconds"
                ));
            }
            if let Some(info) = &plan.maintenance_info
                && !is_semver(&info.version)
            {
                return bad(format!("{what}: maintenance_info.version {:?} is not a semantic version", info.version));
            }
            let policy = &plan.policy;
            if let Some(pattern) =
                policy.allowed_methods.iter().chain(&policy.denied_methods).find(|p| p.trim().is_empty())
            {
                return bad(format!("{what}: policy method pattern {pattern:?} must not be empty"));
            }
            for element in plan.plugins.iter().chain(&policy.plugins_before).chain(&policy.plugins_after) {
                if !plugin_names.contains(element.name.as_str()) {
                    return bad(format!("{what}: default chain names unknown plugin {:?}", element.name));
                }
                if !element.config.is_object() {
                    return bad(format!("{what}: the config of plugin {:?} must be a table", element.name));
                }
            }
            plan.driver.validate(&what, &plan.id)?;
        }
    }
    Ok(())
}

/// The longest `binding_ttl` (ten years, in seconds).
pub const MAX_BINDING_TTL: u64 = 10 * 365 * 24 * 3600;

/// Lowercase letters, digits and '-', not empty (what OSB checkers accept as names).
pub(super) fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// RFC 3986 unreserved characters only.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The default of a flag that is on unless turned off.
pub(super) fn yes() -> bool {
    true
}

/// The value of a chain element's `config` left out.
pub(super) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// `maximum_polling_duration` left out: ten minutes.
fn default_polling() -> u64 {
    600
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn element(name: &str, config: serde_json::Value, fail_open: bool) -> ChainElement {
        ChainElement { name: name.into(), config, fail_open }
    }

    #[test]
    fn a_plans_policy_plugins_stay_first_and_last_in_every_chain() {
        let fixed = serde_json::json!({"rate": 1});
        let policy = PlanPolicy {
            plugins_before: vec![element("a", fixed.clone(), false)],
            plugins_after: vec![element("z", empty_object(), true)],
            ..Default::default()
        };
        let mine = element("mine", serde_json::json!({"x": 1}), false);
        let whole = vec![element("a", empty_object(), false), mine.clone(), element("z", empty_object(), true)];
        assert_eq!(policy.tenant_part(&whole), Ok(&whole[1..2]), "a policy entry may leave out its config");
        assert_eq!(
            policy.compose(std::slice::from_ref(&mine)),
            vec![element("a", fixed.clone(), false), mine.clone(), element("z", empty_object(), true)]
        );
        let as_given = vec![element("a", fixed.clone(), false), element("z", empty_object(), false)];
        assert_eq!(policy.tenant_part(&as_given), Ok(&[][..]), "fail_open may be left off");
        for broken in [
            vec![],
            vec![mine.clone()],
            vec![element("z", empty_object(), true), mine.clone(), element("a", empty_object(), false)],
            vec![element("a", serde_json::json!({"rate": 1000}), false), element("z", empty_object(), true)],
            vec![element("a", empty_object(), true), element("z", empty_object(), true)],
            vec![mine.clone(), element("a", empty_object(), false), element("z", empty_object(), true)],
        ] {
            let err = policy.tenant_part(&broken).unwrap_err();
            assert!(err.starts_with("parameters.plugins:") && err.contains("policy"), "{err}");
        }
        assert_eq!(PlanPolicy::default().tenant_part(&whole), Ok(&whole[..]));
        assert!(PlanPolicy::default().published().is_none());
        assert_eq!(policy.published().unwrap()["plugins_after"], serde_json::json!(["z"]));
    }

    #[test]
    fn the_quick_start_shared_plan_allows_standard_methods_only() {
        let config = Config::quick_start();
        let shared = config.services[0].plans.iter().find(|p| p.name == "shared").unwrap();
        let allowed = &shared.policy.allowed_methods;
        let allows = |method: &str| allowed.iter().any(|p| ovsb_plugin_sdk::glob_matches(p, method));
        for method in
            ["eth_call", "eth_getLogs", "eth_sendRawTransaction", "eth_subscribe", "net_version", "web3_clientVersion"]
        {
            assert!(allows(method), "{method}");
        }
        for method in [
            "debug_traceCall",
            "trace_block",
            "admin_peers",
            "personal_sign",
            "txpool_content",
            "miner_start",
            "anvil_setBalance",
            "hardhat_setBalance",
            "evm_mine",
            "eth_sendTransaction",
            "eth_sign",
            "eth_signTypedData_v4",
        ] {
            assert!(!allows(method), "{method}");
        }
    }
}
