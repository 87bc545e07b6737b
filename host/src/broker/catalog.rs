//! The catalog: the JSON `GET /v2/catalog` returns, and the parameter schemas requests are
//! validated against. Built once from the configuration.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

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
        let mut plans = HashMap::new();
        let mut services = HashMap::new();
        let mut listed = Vec::new();
        for service in &config.services {
            let mut plan_json = Vec::new();
            for plan in &service.plans {
                let driver_parameters = plan.driver.parameters();
                let builtin =
                    if plan.driver.is_validator() { crate::provision::validator_parameter_schema() } else { json!({}) };
                // Validation uses the schema without the plugins' own config schemas: each
                // plugin's `configure` then judges its config, with a message naming the field.
                let mut builtin = builtin;
                let bound = plan.plugin_calls_per_instance.unwrap_or(config.gateway.plugin_calls_per_instance);
                builtin[crate::plugins::PLUGIN_CALLS_PARAMETER] = json!({
                    "type": "integer",
                    "minimum": 1,
                    "maximum": bound,
                    "description": "Plugin calls this instance runs at once (its share); at most the plan's bound",
                });
                let instance_schema = instance_parameters_schema(plugin_names, &builtin, driver_parameters, None);
                let published =
                    instance_parameters_schema(plugin_names, &builtin, driver_parameters, Some(plugin_schemas));
                let plan_updateable = plan.plan_updateable.unwrap_or(service.plan_updateable);
                let mut entry = json!({
                    "id": plan.id,
                    "name": plan.name,
                    "description": plan.description,
                    "free": plan.free,
                    "bindable": service.bindable,
                    "plan_updateable": plan_updateable,
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
                plan_json.push(entry);
                plans.insert(
                    plan.id.clone(),
                    PlanEntry {
                        service: service.clone(),
                        plan: plan.clone(),
                        plan_updateable,
                        instance_schema: compile(&instance_schema)
                            .map_err(|err| format!("plan {:?}: {err}", plan.name))?,
                        binding_schema: compile(&binding_schema)
                            .map_err(|err| format!("plan {:?}: {err}", plan.name))?,
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
    /// Checks instance parameters against the plan's schema; a 400 names the field and reason.
    pub fn check_instance_parameters(&self, parameters: &Value) -> Result<(), ApiError> {
        check(&self.instance_schema, parameters)
    }

    /// Checks binding parameters against the plan's schema.
    pub fn check_binding_parameters(&self, parameters: &Value) -> Result<(), ApiError> {
        check(&self.binding_schema, parameters)
    }
}

fn check(validator: &jsonschema::Validator, parameters: &Value) -> Result<(), ApiError> {
    let problems: Vec<String> = validator
        .iter_errors(parameters)
        .take(5)
        .map(|err| {
            let path = err.instance_path.to_string();
            // Never echo a secret back (a platform may log the answer).
            if ["/keystores", "/passwords", "/slashing_protection"].iter().any(|s| path.starts_with(s)) {
                let expected = err.schema_path.to_string();
                format!("parameters{path}: does not match the schema (at {expected}); the value is not shown")
            } else {
                format!("parameters{path}: {err}")
            }
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(ApiError::bad_request(problems.join("; "))) }
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
    plugin_schemas: Option<&BTreeMap<String, Value>>,
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
    if let Some(schemas) = plugin_schemas.filter(|s| !s.is_empty()) {
        let mut by_plugin: Vec<Value> = plugin_names
            .iter()
            .map(|name| match schemas.get(name) {
                Some(schema) => {
                    let mut schema = schema.clone();
                    if let Some(object) = schema.as_object_mut() {
                        object.remove("$schema");
                    }
                    json!({"properties": {"name": {"enum": [name]}, "config": schema}})
                }
                None => json!({"properties": {"name": {"enum": [name]}}}),
            })
            .collect();
        by_plugin.sort_by_key(|v| v["properties"]["name"]["enum"][0].as_str().map(str::to_string));
        plugins["items"]["anyOf"] = json!(by_plugin);
    }
    let mut properties = json!({ "plugins": plugins });
    for (name, schema) in builtin.as_object().into_iter().flatten() {
        properties[name] = schema.clone();
    }
    for (name, schema) in driver_parameters.into_iter().flatten() {
        properties[name] = json!(schema);
    }
    json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    })
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
                       "pattern": "^(\\*|([a-z][a-z0-9+.-]*://)?\\*\\.[A-Za-z0-9.-]+|[a-z][a-z0-9+.-]*://[^/\\s*]+)$"}),
                "Origins (https://app.example.com) or patterns (*.example.com, https://*.example.com) whose pages may use the key; empty: any",
            ),
            "allowed_methods": list(
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
                "Glob patterns (eth_*) of the methods the key may call; empty: any",
            ),
            "denied_methods": list(
                json!({"type": "string", "minLength": 1, "maxLength": 128}),
                "Glob patterns of methods the key may not call",
            ),
            "allowed_contracts": list(
                json!({"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}),
                "Addresses that eth_call, eth_estimateGas, eth_sendRawTransaction (its to) and eth_getLogs (address) may touch; empty: any",
            ),
        },
    })
}
