//! Placeholders of a node's command: the values an instance's parameters give, and filling
//! `{name}` templates with them (shared by the `process` and `kubernetes` drivers).
//!
//! Owns: which parameter may fill which placeholder, and that a parameter never becomes an
//! option. Must not: start anything.

use std::collections::HashMap;

use super::super::{DriverError, InstanceSpec};

/// The placeholder values an instance's parameters give: the `template_names` it sets, and
/// each of the driver's `parameters` (its default when the instance does not set it).
pub(crate) fn parameter_values(
    spec: &InstanceSpec,
    template_names: &[&str],
    parameters: &toml::Table,
) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for name in template_names {
        if let Some(value) = spec.parameters.get(*name) {
            values.insert(name.to_string(), placeholder_text(value.clone()));
        }
    }
    for (name, schema) in parameters {
        let value =
            spec.parameters.get(name).cloned().or_else(|| {
                schema.as_table().and_then(|t| t.get("default")).and_then(|d| serde_json::to_value(d).ok())
            });
        if let Some(value) = value {
            values.insert(name.clone(), placeholder_text(value));
        }
    }
    values
}

/// Fills each argument template; `from_parameters` tells which names an instance sets. An
/// instance's parameter that is a whole argument must not become an option (start with '-').
pub(crate) fn fill_arguments(
    templates: &[String],
    values: &HashMap<String, String>,
    from_parameters: impl Fn(&str) -> bool,
) -> Result<Vec<String>, DriverError> {
    templates
        .iter()
        .map(|arg| {
            let filled = fill(arg, values)
                .map_err(|name| DriverError::Failed(format!("the command needs a value for {{{name}}}")))?;
            if let Some(name) = arg.strip_prefix('{').and_then(|a| a.strip_suffix('}'))
                && from_parameters(name)
                && filled.starts_with('-')
            {
                return Err(DriverError::Failed(format!("parameter {name} must not start with '-'")));
            }
            Ok(filled)
        })
        .collect()
}

/// A parameter's value as a command-line argument: a string as it is, anything else as JSON.
fn placeholder_text(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Fills `{name}` placeholders; an unknown name is an error carrying it.
pub(crate) fn fill(template: &str, values: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let name = &after[..close];
        out.push_str(values.get(name).ok_or_else(|| name.to_string())?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub use crate::config::placeholders;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_ones_named() {
        let values: HashMap<String, String> =
            [("port", "8545"), ("chain_id", "7")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(fill("--port={port}", &values).unwrap(), "--port=8545");
        assert_eq!(fill("{chain_id}{port}", &values).unwrap(), "78545");
        assert_eq!(fill("plain", &values).unwrap(), "plain");
        assert_eq!(fill("{nope}", &values).unwrap_err(), "nope");
        assert_eq!(placeholders("a {x} b {y}"), vec!["x", "y"]);
    }
}
