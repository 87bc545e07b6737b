//! The catalog: the JSON `GET /v2/catalog` returns, and the parameter schemas requests are
//! validated against. Built once from the configuration.
//!
//! The schemas published are the schemas requests are checked with: each is compiled (draft-04)
//! at start-up, so a schema a platform's validator could not compile stops ovsb from starting
//! instead of reaching a platform. A plugin's config schema is embedded in the instance schema
//! with its `definitions` moved to the root (as `<plugin>.<name>`) and its local `$ref`s rewritten
//! to match, since draft-04 resolves `#/…` against the root of the whole document.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::ApiError;
use crate::config::{Config, MaintenanceInfo, PlanDecl, ServiceDecl};

/// Most plugins an instance's chain may have.
pub const MAX_CHAIN_LENGTH: usize = 16;

/// One plan with what requests against it are checked with.
pub struct PlanEntry {
    /// The plan's service.
    pub service: ServiceDecl,
    /// The plan.
    pub plan: PlanDecl,
    /// Whether instances may move to another plan of the service.
    pub plan_updateable: bool,
    instance_schema: jsonschema::Validator,
    binding_schema: jsonschema::Validator,
    /// The plugin each alternative of `plugins.items.anyOf` configures, in order.
    plugin_alternatives: Vec<String>,
}

impl PlanEntry {
    /// The plan's maintenance info.
    pub fn maintenance_info(&self) -> Option<&MaintenanceInfo> {
        self.plan.maintenance_info.as_ref()
    }
}

/// The catalog.
pub struct Catalog {
    body: String,
    plans: HashMap<String, PlanEntry>,
    services: HashMap<String, ServiceDecl>,
}

impl Catalog {
    /// Builds the catalog; `plugin_names` are the plugins instances may name.
    /// `encryption_public_key` is ovsb's identity, published in every service's metadata.
    pub fn new(
        config: &Config,
        plugin_names: &[String],
        plugin_schemas: &BTreeMap<String, Value>,
        encryption_public_key: &str,
    ) -> Result<Catalog, String> {
        let binding_schema = binding_parameters_schema();
        let plugin_configs = PluginConfigs::new(plugin_names, plugin_schemas)?;
        let mut plans = HashMap::new();
        let mut services = HashMap::new();
        let mut listed = Vec::new();
        for service in &config.services {
            let mut plan_json = Vec::new();
            for plan in &service.plans {
                let driver_parameters = plan.driver.parameters();
                let mut builtin = if plan.driver.is_validator() {
                    crate::validator_params::validator_parameter_schema()
                } else {
                    json!({})
                };
                let bound = plan.plugin_calls_per_instance.unwrap_or(config.gateway.plugin_calls_per_instance);
                builtin[crate::plugins::PLUGIN_CALLS_PARAMETER] = json!({
                    "type": "integer",
                    "minimum": 1,
                    "maximum": bound,
                    "description": "Plugin calls this instance runs at once (its share); at most the plan's bound",
                });
                // One schema, published and used: requests are checked with what platforms see.
                let published = instance_parameters_schema(plugin_names, &builtin, driver_parameters, &plugin_configs);
                let plan_updateable = plan.plan_updateable.unwrap_or(service.plan_updateable);
                let mut entry = json!({
                    "id": plan.id,
                    "name": plan.name,
                    "description": plan.description,
                    "free": plan.free,
                    "bindable": service.bindable,
                    "plan_updateable": plan_updateable,
                    "binding_rotatable": plan.binding_rotatable,
                    "maximum_polling_duration": plan.maximum_polling_duration,
                    "schemas": {
                        "service_instance": {
                            "create": {"parameters": published},
                            "update": {"parameters": published},
                        },
                        "service_binding": {"create": {"parameters": binding_schema}},
                    },
                });
                if let Some(info) = &plan.maintenance_info {
                    entry["maintenance_info"] = json!(info);
                }
                if let Some(metadata) = &plan.metadata {
                    entry["metadata"] = json!(metadata);
                }
                // The operator's policy, binding on every instance (OSB leaves plan metadata
                // free-form): its method rules and the names of the plugins every chain runs.
                if let Some(policy) = plan.policy.published() {
                    if !entry["metadata"].is_object() {
                        entry["metadata"] = json!({});
                    }
                    entry["metadata"]["policy"] = policy;
                }
                plan_json.push(entry);
                plans.insert(
                    plan.id.clone(),
                    PlanEntry {
                        service: service.clone(),
                        plan: plan.clone(),
                        plan_updateable,
                        instance_schema: compile(&published).map_err(|err| format!("plan {:?}: {err}", plan.name))?,
                        binding_schema: compile(&binding_schema)
                            .map_err(|err| format!("plan {:?}: {err}", plan.name))?,
                        plugin_alternatives: plugin_configs.names.clone(),
                    },
                );
            }
            let mut entry = json!({
                "id": service.id,
                "name": service.name,
                "description": service.description,
                "tags": service.tags,
                "bindable": service.bindable,
                "instances_retrievable": true,
                "bindings_retrievable": true,
                "allow_context_updates": false,
                "plan_updateable": service.plan_updateable,
                "plans": plan_json,
            });
            let mut metadata = service.metadata.as_ref().map_or_else(|| json!({}), |m| json!(m));
            // Where platforms and users seal secrets to (eth_getEncryptionPublicKey's form).
            metadata["encryptionPublicKey"] = json!(encryption_public_key);
            metadata["encryptionPublicKeyFormat"] = json!(crate::identity::SEALED_VERSION);
            entry["metadata"] = metadata;
            listed.push(entry);
            services.insert(service.id.clone(), service.clone());
        }
        Ok(Catalog { body: json!({ "services": listed }).to_string(), plans, services })
    }

    /// The catalog response body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The service with this id, or a 400 naming it.
    pub fn service(&self, service_id: &str) -> Result<&ServiceDecl, ApiError> {
        self.services
            .get(service_id)
            .ok_or_else(|| ApiError::bad_request(format!("service_id {service_id:?} is not in the catalog")))
    }

    /// The plan with this id in this service, or a 400 naming what is wrong.
    pub fn plan(&self, service_id: &str, plan_id: &str) -> Result<&PlanEntry, ApiError> {
        self.service(service_id)?;
        match self.plans.get(plan_id) {
            Some(entry) if entry.service.id == service_id => Ok(entry),
            Some(_) => {
                Err(ApiError::bad_request(format!("plan_id {plan_id:?} is not a plan of service {service_id:?}")))
            }
            None => Err(ApiError::bad_request(format!("plan_id {plan_id:?} is not in the catalog"))),
        }
    }

    /// The plan with this id, whatever its service.
    pub fn plan_by_id(&self, plan_id: &str) -> Option<&PlanEntry> {
        self.plans.get(plan_id)
    }
}

impl PlanEntry {
    /// Whether bindings of the plan may be rotated.
    pub fn binding_rotatable(&self) -> bool {
        self.plan.binding_rotatable
    }

    /// Checks instance parameters (with sealed plugin settings opened) against the plan's
    /// published schema; a 400 names the field and the reason. `sealed` lists the chain entries
    /// whose config had sealed values: their values are never quoted back.
    pub fn check_instance_parameters(&self, parameters: &Value, sealed: &[usize]) -> Result<(), ApiError> {
        Problems::check(&self.instance_schema, parameters, &self.plugin_alternatives, sealed)
    }

    /// Checks binding parameters against the plan's schema.
    pub fn check_binding_parameters(&self, parameters: &Value) -> Result<(), ApiError> {
        Problems::check(&self.binding_schema, parameters, &[], &[])
    }
}

/// Where the plugin alternatives are in an instance schema (a schema path).
const PLUGIN_ALTERNATIVES: &str = "/properties/plugins/items/anyOf";

/// The messages of a failed validation, at most [`Problems::MAX`].
struct Problems<'a> {
    parameters: &'a Value,
    alternatives: &'a [String],
    sealed: &'a [usize],
    messages: Vec<String>,
}

impl<'a> Problems<'a> {
    const MAX: usize = 5;

    fn check(
        validator: &jsonschema::Validator,
        parameters: &'a Value,
        alternatives: &'a [String],
        sealed: &'a [usize],
    ) -> Result<(), ApiError> {
        let mut problems = Problems { parameters, alternatives, sealed, messages: Vec::new() };
        for err in validator.iter_errors(parameters) {
            problems.describe(&err);
            if problems.messages.len() >= Self::MAX {
                break;
            }
        }
        problems.messages.truncate(Self::MAX);
        if problems.messages.is_empty() { Ok(()) } else { Err(ApiError::bad_request(problems.messages.join("; "))) }
    }

    /// Adds the message(s) of one error. A chain entry that fails the plugin alternatives is
    /// described by the alternative of the plugin it names (an unknown name has its own error);
    /// other `anyOf`/`oneOf` failures list what each alternative wanted.
    fn describe(&mut self, err: &jsonschema::ValidationError<'_>) {
        use jsonschema::error::ValidationErrorKind;
        match &err.kind {
            ValidationErrorKind::AnyOf { context } if err.schema_path.as_str() == PLUGIN_ALTERNATIVES => {
                let named = err.instance.get("name").and_then(Value::as_str);
                if let Some(branch) = named.and_then(|n| self.alternatives.iter().position(|a| a == n)) {
                    for inner in context.get(branch).into_iter().flatten() {
                        self.describe(inner);
                    }
                }
            }
            ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
                let wanted: Vec<String> =
                    context.iter().filter_map(|branch| branch.first()).map(|e| self.reason(e)).collect();
                let path = err.instance_path.to_string();
                let plugin = self.plugin_of(&path);
                self.messages.push(format!("parameters{path}{plugin}: {}", wanted.join(", or ")));
            }
            _ => {
                let path = err.instance_path.to_string();
                let plugin = self.plugin_of(&path);
                let reason = self.reason(err);
                self.messages.push(format!("parameters{path}{plugin}: {reason}"));
            }
        }
    }

    /// Why one error failed, without the value when it may be a secret (a platform may log the
    /// answer): a validator's keys and passwords, and sealed plugin settings.
    fn reason(&self, err: &jsonschema::ValidationError<'_>) -> String {
        let path = err.instance_path.to_string();
        let secret = ["/keystores", "/passwords", "/slashing_protection"].iter().any(|s| path.starts_with(s))
            || chain_entry(&path).is_some_and(|(i, config)| config && self.sealed.contains(&i));
        if secret {
            format!("does not match the schema (at {}); the value is not shown", err.schema_path)
        } else {
            err.to_string()
        }
    }

    /// ` (plugin "<name>")` for a path inside a chain entry, else "".
    fn plugin_of(&self, path: &str) -> String {
        chain_entry(path)
            .and_then(|(i, _)| self.parameters.get("plugins")?.get(i)?.get("name")?.as_str())
            .map_or_else(String::new, |name| format!(" (plugin {name:?})"))
    }
}

/// For a path inside `/plugins/<i>`: `i`, and whether the path is inside its `config`.
fn chain_entry(path: &str) -> Option<(usize, bool)> {
    let rest = path.strip_prefix("/plugins/")?;
    let (index, rest) = rest.split_once('/').unwrap_or((rest, ""));
    Some((index.parse().ok()?, rest == "config" || rest.starts_with("config/")))
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft4::new(schema).map_err(|err| format!("invalid parameter schema: {err}"))
}

/// Instance parameters: `{"plugins": [{"name", "config", "fail_open"}]}`, the parameters every
/// plan of the driver's kind takes (`builtin`: a validator's keys), the plan's own driver
/// parameters (e.g. a node's chain id), and nothing else.
fn instance_parameters_schema(
    plugin_names: &[String],
    builtin: &Value,
    driver_parameters: Option<&toml::Table>,
    plugin_configs: &PluginConfigs,
) -> Value {
    let mut name = json!({"type": "string", "description": "A plugin the operator made available"});
    if !plugin_names.is_empty() {
        name["enum"] = json!(plugin_names);
    }
    let mut plugins = json!({
        "type": "array",
        "description": "The instance's plugin chain, in call order; replaces the plan's default chain",
        "maxItems": MAX_CHAIN_LENGTH,
        "items": {
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": name,
                "config": {"type": "object", "description": "Handed to the plugin's configure"},
                "fail_open": {"type": "boolean", "description": "Skip the plugin on a call it fails"},
            },
        },
    });
    if plugin_names.is_empty() {
        plugins["maxItems"] = json!(0);
    }
    // Each plugin's config schema, for the platform's UI: the entry naming plugin P has P's config.
    if !plugin_configs.alternatives.is_empty() {
        plugins["items"]["anyOf"] = json!(plugin_configs.alternatives);
    }
    let mut properties = json!({ "plugins": plugins });
    for (name, schema) in builtin.as_object().into_iter().flatten() {
        properties[name] = schema.clone();
    }
    for (name, schema) in driver_parameters.into_iter().flatten() {
        properties[name] = json!(schema);
    }
    let mut schema = json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    if !plugin_configs.definitions.is_empty() {
        schema["definitions"] = Value::Object(plugin_configs.definitions.clone());
    }
    schema
}

/// The plugins' config schemas, made embeddable in an instance schema.
struct PluginConfigs {
    /// The plugins in the order of `alternatives` (sorted by name).
    names: Vec<String>,
    /// One `plugins.items.anyOf` alternative per plugin: `{"properties": {"name": {"enum":
    /// [P]}, "config": <P's schema>}}`. Empty when no plugin has a schema.
    alternatives: Vec<Value>,
    /// The plugins' `definitions`, for the root's, keyed `<plugin>.<name>`.
    definitions: Map<String, Value>,
}

impl PluginConfigs {
    fn new(plugin_names: &[String], schemas: &BTreeMap<String, Value>) -> Result<PluginConfigs, String> {
        let mut names = plugin_names.to_vec();
        names.sort();
        let mut configs = PluginConfigs { names, alternatives: Vec::new(), definitions: Map::new() };
        if schemas.is_empty() {
            configs.names.clear();
            return Ok(configs);
        }
        for (i, name) in configs.names.iter().enumerate() {
            let mut alternative = json!({"properties": {"name": {"enum": [name]}}});
            if let Some(schema) = schemas.get(name) {
                let at = format!("{PLUGIN_ALTERNATIVES}/{i}/properties/config");
                let mut schema = schema.clone();
                if let Some(object) = schema.as_object_mut() {
                    // The document's `$schema` is the root's; an `id` would move the base of refs.
                    for keyword in ["$schema", "id", "$id"] {
                        object.remove(keyword);
                    }
                    if let Some(Value::Object(definitions)) = object.remove("definitions") {
                        for (definition, mut value) in definitions {
                            rewrite_refs(name, &at, &mut value)?;
                            configs.definitions.insert(format!("{name}.{definition}"), value);
                        }
                    }
                }
                rewrite_refs(name, &at, &mut schema)?;
                alternative["properties"]["config"] = schema;
            }
            configs.alternatives.push(alternative);
        }
        Ok(configs)
    }
}

/// Rewrites the local `$ref`s of plugin `plugin`'s schema (embedded at pointer `at`) so that
/// they resolve against the instance schema's root: `#/definitions/D…` to the hoisted
/// `#/definitions/<plugin>.D…`, any other `#…` to the same place under `at`. A `$ref` to
/// another document is refused (the OSB spec allows none).
fn rewrite_refs(plugin: &str, at: &str, schema: &mut Value) -> Result<(), String> {
    match schema {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref") {
                let pointer = reference.strip_prefix('#').ok_or_else(|| {
                    format!("the schema of plugin {plugin:?} refers to another document ({reference:?}); only local refs (#…) can be published")
                })?;
                *reference = match pointer.strip_prefix("/definitions/") {
                    Some(definition) => format!("#/definitions/{plugin}.{definition}"),
                    None => format!("#{at}{pointer}"),
                };
            }
            for (keyword, value) in object.iter_mut() {
                // Values that are data, not schemas, are left as they are.
                if !matches!(keyword.as_str(), "enum" | "default" | "examples" | "const" | "$ref") {
                    rewrite_refs(plugin, at, value)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(plugin, at, item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Binding parameters: `encryption_public_key`, to have the credentials sealed, and the key's
/// allowlists (`gateway::allowlist`).
fn binding_parameters_schema() -> Value {
    let list = |items: Value, description: &str| json!({"type": "array", "maxItems": 256, "items": items, "description": description});
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "encryption_public_key": {
                "type": "string",
                "description": "A wallet encryption public key (base64 X25519, as eth_getEncryptionPublicKey returns): the credentials come back sealed to it (x25519-xsalsa20-poly1305)",
            },
            "allowed_origins": list(
                json!({"type": "string", "maxLength": 256,
                       "pattern": "^(\\*|([a-z][a-z0-9+.-]*://)?\\*\\.[A-Za-z0-9.-]+(:([0-9]{1,5}|\\*))?|[a-z][a-z0-9+.-]*://[^/\\s*]+(:\\*)?)$"}),
                "Origins (https://app.example.com) or patterns (*.example.com, https://*.example.com) whose pages may use the key, each with an optional port (:8443 that port, :* any; none: only origins without a port); empty: any",
            ),
            "allowed_methods": list(
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
                "Glob patterns (eth_*) of the methods the key may call; empty: any",
            ),
            "denied_methods": list(
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
                "Glob patterns of methods the key may not call. A deny-list cannot know every alias a node has (anvil answers hardhat_* as anvil_*; eth_sendTransactionSync sends as eth_sendTransaction does): prefer allowed_methods",
            ),
            "allowed_contracts": list(
                json!({"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}),
                "The only contracts the key may touch: a call passes only when ovsb can name every contract it touches and each is listed (calls and transactions by their to, reads and log filters by their address; overrides, traces, creations, EIP-7702 authorizations and methods ovsb does not know are refused); empty: any",
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_definitions_move_to_the_root_and_their_refs_follow() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "object",
            "properties": {
                "deny": {"type": "array", "items": {"$ref": "#/definitions/pattern"}},
                "again": {"$ref": "#/properties/deny"},
            },
            "definitions": {"pattern": {"type": "string", "pattern": "^[a-z_*]+$"}},
        });
        let names = vec!["filter".to_string(), "plain".to_string()];
        let schemas = BTreeMap::from([("filter".to_string(), schema)]);
        let configs = PluginConfigs::new(&names, &schemas).unwrap();
        assert_eq!(configs.names, names);
        let config = &configs.alternatives[0]["properties"]["config"];
        assert_eq!(config["properties"]["deny"]["items"]["$ref"], "#/definitions/filter.pattern");
        assert_eq!(
            config["properties"]["again"]["$ref"],
            format!("#{PLUGIN_ALTERNATIVES}/0/properties/config/properties/deny")
        );
        assert!(config.get("definitions").is_none() && config.get("$schema").is_none());
        assert!(configs.definitions["filter.pattern"].is_object());
        let root = instance_parameters_schema(&names, &json!({}), None, &configs);
        let validator = compile(&root).expect("the embedded schema compiles");
        let ok =
            json!({"plugins": [{"name": "filter", "config": {"deny": ["eth_*"], "again": ["x"]}}, {"name": "plain"}]});
        assert!(validator.is_valid(&ok));
        let bad = json!({"plugins": [{"name": "filter", "config": {"deny": ["eth send"]}}]});
        let entry_problems = Problems::check(&validator, &bad, &configs.names, &[]).unwrap_err();
        let text = format!("{entry_problems:?}");
        assert!(text.contains("parameters/plugins/0/config/deny/0 (plugin \\\"filter\\\")"), "{text}");
        // Sealed settings are not quoted back.
        let hidden = Problems::check(&validator, &bad, &configs.names, &[0]).unwrap_err();
        assert!(!format!("{hidden:?}").contains("eth send"), "{hidden:?}");
    }

    #[test]
    fn a_plugin_schema_referring_to_another_document_is_refused() {
        let schema = json!({"type": "object", "properties": {"x": {"$ref": "http://example.com/s.json"}}});
        let schemas = BTreeMap::from([("remote".to_string(), schema)]);
        let err = PluginConfigs::new(&["remote".to_string()], &schemas).err().unwrap();
        assert!(err.contains("remote") && err.contains("another document"), "{err}");
    }
}
