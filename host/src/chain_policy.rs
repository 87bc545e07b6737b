//! Which chain of plugins an instance runs: the one place that decides it.
//!
//! Owns: the rule that turns a plan (its default `plugins` and its policy's `plugins_before` /
//! `plugins_after`) and an instance's parameters (`plugins`) into the chain the instance runs,
//! the check a provision or update must pass to keep the policy plugins, and opening the sealed
//! settings of the chain's plugins. The broker asks it at provision, update and for the
//! dashboard; routing asks it when it builds an instance's route. Must not: build or configure
//! plugins (the registry does), or read the store; it sits below the broker and routing and
//! depends only on `config` and `identity`.

use serde_json::Value;

use crate::config::{ChainElement, PlanDecl, PlanPolicy};
use crate::identity::Identity;

/// The chain an instance of `plan` with `parameters` runs: its parameters' `plugins`, or its
/// plan's default, within the plan's policy plugins (`plugins_before` + the tenant's +
/// `plugins_after`, with the plan's configurations). A chain given in parameters that breaks the
/// policy (an instance made before the policy was) still runs inside it: the policy plugins are
/// never left out. A plan no longer in the catalog has no default and no policy.
pub fn chain_of(plan: Option<&PlanDecl>, parameters: Option<&Value>) -> Vec<ChainElement> {
    match plan {
        Some(plan) => chain_within(&plan.plugins, &plan.policy, parameters),
        None => chain_within(&[], &PlanPolicy::default(), parameters),
    }
}

/// [`chain_of`] for a plan's default chain and policy.
pub fn chain_within(default: &[ChainElement], policy: &PlanPolicy, parameters: Option<&Value>) -> Vec<ChainElement> {
    if let Some(plugins) = parameters.and_then(|p| p.get("plugins"))
        && let Ok(elements) = serde_json::from_value::<Vec<ChainElement>>(plugins.clone())
    {
        return match policy.has_plugins() {
            true => policy.compose(policy.tenant_part(&elements).unwrap_or(&elements)),
            false => elements,
        };
    }
    policy.compose(default)
}

/// Whether `parameters` keep the policy plugins of `plan` (provision and update check it): the
/// message of the 400 when they do not. A plan without policy plugins takes any chain here
/// (its schema checks the chain's shape).
pub fn check(plan: Option<&PlanDecl>, parameters: Option<&Value>) -> Result<(), String> {
    match plan {
        Some(plan) => check_within(&plan.policy, parameters),
        None => Ok(()),
    }
}

/// [`check`] for a plan's policy.
pub fn check_within(policy: &PlanPolicy, parameters: Option<&Value>) -> Result<(), String> {
    if !policy.has_plugins() {
        return Ok(());
    }
    let Some(plugins) = parameters.and_then(|p| p.get("plugins")) else { return Ok(()) };
    let elements = serde_json::from_value::<Vec<ChainElement>>(plugins.clone())
        .map_err(|err| format!("parameters.plugins: {err}"))?;
    policy.tenant_part(&elements).map(|_| ())
}

/// [`chain_of`] with every sealed value of the plugins' configs opened by `identity` (a
/// plugin's secret settings), as the plugins are configured with them; each opened text is
/// added to `opened` (for [`crate::identity::redact`]). The error names the config field and
/// the reason.
pub fn opened_chain(
    identity: &Identity,
    plan: Option<&PlanDecl>,
    parameters: Option<&Value>,
    opened: &mut Vec<String>,
) -> Result<Vec<ChainElement>, String> {
    let mut elements = chain_of(plan, parameters);
    for (i, element) in elements.iter_mut().enumerate() {
        identity.open_all_noting(&mut element.config, &format!("parameters.plugins[{i}].config"), opened)?;
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn element(name: &str, config: Value, fail_open: bool) -> ChainElement {
        ChainElement { name: name.into(), config, fail_open }
    }

    fn names(chain: &[ChainElement]) -> Vec<&str> {
        chain.iter().map(|e| e.name.as_str()).collect()
    }

    fn policy() -> PlanPolicy {
        PlanPolicy {
            plugins_before: vec![element("auth", json!({"realm": "plan"}), false)],
            plugins_after: vec![element("audit", json!({}), false)],
            ..PlanPolicy::default()
        }
    }

    #[test]
    fn the_chain_is_the_parameters_plugins_else_the_plans_default_within_the_policy() {
        let default = [element("cache", json!({}), true)];
        let none = PlanPolicy::default();
        let given = json!({"plugins": [{"name": "rate-limit", "config": {"rps": 5}}]});
        let cases: &[(&str, &PlanPolicy, Option<Value>, &[&str])] = &[
            ("no parameters, no policy: the default", &none, None, &["cache"]),
            ("parameters without plugins: the default", &none, Some(json!({"chain_id": 1})), &["cache"]),
            ("the tenant's plugins replace the default", &none, Some(given.clone()), &["rate-limit"]),
            ("an empty chain given runs no plugin", &none, Some(json!({"plugins": []})), &[]),
            ("plugins that do not parse: the default", &none, Some(json!({"plugins": "x"})), &["cache"]),
            ("the default within the policy", &policy(), None, &["auth", "cache", "audit"]),
            (
                "a chain that breaks the policy still runs inside it",
                &policy(),
                Some(given.clone()),
                &["auth", "rate-limit", "audit"],
            ),
            (
                "a whole chain that keeps the policy runs as given",
                &policy(),
                Some(json!({"plugins": [{"name": "auth"}, {"name": "rate-limit"}, {"name": "audit"}]})),
                &["auth", "rate-limit", "audit"],
            ),
        ];
        for (case, policy, parameters, expected) in cases {
            assert_eq!(names(&chain_within(&default, policy, parameters.as_ref())), *expected, "{case}");
        }
        // The policy plugins keep the plan's configuration, whatever the tenant left out.
        let kept = chain_within(&default, &policy(), Some(&json!({"plugins": [{"name": "auth"}, {"name": "audit"}]})));
        assert_eq!(kept[0].config, json!({"realm": "plan"}));
    }

    #[test]
    fn a_plan_gone_from_the_catalog_runs_only_what_its_parameters_name() {
        assert!(chain_of(None, None).is_empty());
        let given = json!({"plugins": [{"name": "rate-limit"}]});
        assert_eq!(names(&chain_of(None, Some(&given))), ["rate-limit"]);
        assert_eq!(check(None, Some(&given)), Ok(()));
    }

    #[test]
    fn the_check_refuses_chains_that_drop_move_or_reconfigure_policy_plugins() {
        let ok: &[(&str, Option<Value>)] = &[
            ("no parameters", None),
            ("no plugins named", Some(json!({"chain_id": 1}))),
            ("the policy kept", Some(json!({"plugins": [{"name": "auth"}, {"name": "x"}, {"name": "audit"}]}))),
        ];
        for (case, parameters) in ok {
            assert_eq!(check_within(&policy(), parameters.as_ref()), Ok(()), "{case}");
        }
        let refused: &[(&str, Value)] = &[
            ("dropped", json!({"plugins": [{"name": "x"}]})),
            ("moved", json!({"plugins": [{"name": "audit"}, {"name": "auth"}]})),
            ("reconfigured", json!({"plugins": [{"name": "auth", "config": {"realm": "mine"}}, {"name": "audit"}]})),
            ("made fail-open", json!({"plugins": [{"name": "auth", "fail_open": true}, {"name": "audit"}]})),
        ];
        for (case, parameters) in refused {
            let err = check_within(&policy(), Some(parameters)).expect_err(case);
            assert!(err.starts_with("parameters.plugins: the plan's policy runs"), "{case}: {err}");
        }
        let malformed = check_within(&policy(), Some(&json!({"plugins": [{"nom": "x"}]}))).unwrap_err();
        assert!(malformed.starts_with("parameters.plugins: "), "{malformed}");
        // Without policy plugins the shape is the schema's business, not the policy's.
        assert_eq!(check_within(&PlanPolicy::default(), Some(&json!({"plugins": "x"}))), Ok(()));
    }
}
