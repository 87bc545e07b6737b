//! The OSB request bodies (provision, update, bind) as typed values.
//!
//! Owns: turning a body that is a JSON object (see [`super::json_object`]) into a typed request,
//! with the 400 texts platforms and the conformance suites see ("service_id is required",
//! "plan_id must be a string, not a number", …), checked in the order of the fields below.
//! Unknown fields are allowed, as OSB requires. Must not: look at the catalog or the store
//! (the handlers do), or decide anything (see [`super::decide`]).
//!
//! Each body is first read by serde into a wire struct whose fields take any JSON value
//! ([`Text`], [`Object`]), so that a field of the wrong type does not hide a missing field
//! named before it; the wire struct then becomes the request, field by field, in a fixed order.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ApiError;

/// A string field as sent: absent, `null` and `""` are all missing.
#[derive(Debug, Default)]
pub enum Text {
    /// Absent, `null` or empty.
    #[default]
    Missing,
    /// A non-empty string.
    Given(String),
    /// Another JSON type (its kind, as the 400 names it).
    Wrong(&'static str),
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Text::Missing,
            Value::String(s) if s.is_empty() => Text::Missing,
            Value::String(s) => Text::Given(s),
            other => Text::Wrong(kind(&other)),
        })
    }
}

impl Text {
    /// The string, if given; a 400 naming `name` if it is not a string.
    pub fn optional(self, name: &str) -> Result<Option<String>, ApiError> {
        match self {
            Text::Missing => Ok(None),
            Text::Given(s) => Ok(Some(s)),
            Text::Wrong(kind) => Err(ApiError::bad_request(format!("{name} must be a string, not {kind}"))),
        }
    }

    /// The string; a 400 naming `name` if it is missing or not a string.
    pub fn required(self, name: &str) -> Result<String, ApiError> {
        self.optional(name)?.ok_or_else(|| ApiError::bad_request(format!("{name} is required")))
    }
}

/// An object field as sent: absent and `null` are missing.
#[derive(Debug, Default)]
pub enum Object {
    /// Absent or `null`.
    #[default]
    Missing,
    /// An object.
    Given(Map<String, Value>),
    /// Another JSON type (its kind, as the 400 names it).
    Wrong(&'static str),
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Object::Missing,
            Value::Object(map) => Object::Given(map),
            other => Object::Wrong(kind(&other)),
        })
    }
}

impl Object {
    /// The object (a `Value::Object`), if given; a 400 naming `name` if it is not an object.
    pub fn optional(self, name: &str) -> Result<Option<Value>, ApiError> {
        match self {
            Object::Missing => Ok(None),
            Object::Given(map) => Ok(Some(Value::Object(map))),
            Object::Wrong(kind) => Err(ApiError::bad_request(format!("{name} must be an object, not {kind}"))),
        }
    }
}

/// `maintenance_info.version`, if given (`{}` counts as not given).
fn maintenance_version(info: Object) -> Result<Option<String>, ApiError> {
    match info.optional("maintenance_info")? {
        Some(Value::Object(mut info)) => match info.remove("version") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
            Some(_) => Err(ApiError::bad_request("maintenance_info.version must be a string")),
        },
        _ => Ok(None),
    }
}

/// Reads a wire struct from a body object; its fields take any value, so this cannot fail on
/// what a platform sends (a failure would be a 400 all the same, never ignored).
fn wire<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(body)).map_err(|err| ApiError::bad_request(format!("malformed body: {err}")))
}

#[derive(Deserialize)]
struct ProvisionWire {
    #[serde(default)]
    service_id: Text,
    #[serde(default)]
    plan_id: Text,
    #[serde(default)]
    organization_guid: Text,
    #[serde(default)]
    space_guid: Text,
    #[serde(default)]
    context: Object,
    #[serde(default)]
    parameters: Object,
    #[serde(default)]
    maintenance_info: Object,
}

/// `PUT /v2/service_instances/:instance_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionRequest {
    /// `service_id`.
    pub service_id: String,
    /// `plan_id`.
    pub plan_id: String,
    /// `organization_guid`.
    pub organization_guid: String,
    /// `space_guid`.
    pub space_guid: String,
    /// `context`, an object.
    pub context: Option<Value>,
    /// `parameters`, an object.
    pub parameters: Option<Value>,
    /// `maintenance_info.version`.
    pub maintenance_version: Option<String>,
}

impl ProvisionRequest {
    /// The request a body object makes, or the 400 for its first bad field.
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        let wire: ProvisionWire = wire(body)?;
        Ok(ProvisionRequest {
            service_id: wire.service_id.required("service_id")?,
            plan_id: wire.plan_id.required("plan_id")?,
            organization_guid: wire.organization_guid.required("organization_guid")?,
            space_guid: wire.space_guid.required("space_guid")?,
            context: wire.context.optional("context")?,
            parameters: wire.parameters.optional("parameters")?,
            maintenance_version: maintenance_version(wire.maintenance_info)?,
        })
    }
}

#[derive(Deserialize)]
struct UpdateWire {
    #[serde(default)]
    service_id: Text,
    #[serde(default)]
    plan_id: Text,
    #[serde(default)]
    parameters: Object,
    #[serde(default)]
    context: Object,
    #[serde(default)]
    maintenance_info: Object,
}

/// `PATCH /v2/service_instances/:instance_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateBody {
    /// `service_id`.
    pub service_id: String,
    /// `plan_id`, when the plan is to change.
    pub plan_id: Option<String>,
    /// `parameters`, an object.
    pub parameters: Option<Value>,
    /// `context`, an object (checked, not used).
    pub context: Option<Value>,
    /// `maintenance_info.version`.
    pub maintenance_version: Option<String>,
}

impl UpdateBody {
    /// The request a body object makes, or the 400 for its first bad field.
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        let wire: UpdateWire = wire(body)?;
        Ok(UpdateBody {
            service_id: wire.service_id.required("service_id")?,
            plan_id: wire.plan_id.optional("plan_id")?,
            parameters: wire.parameters.optional("parameters")?,
            context: wire.context.optional("context")?,
            maintenance_version: maintenance_version(wire.maintenance_info)?,
        })
    }
}

#[derive(Deserialize)]
struct BindWire {
    #[serde(default)]
    predecessor_binding_id: Text,
    #[serde(default)]
    context: Object,
    #[serde(default)]
    parameters: Object,
    #[serde(default)]
    bind_resource: Object,
    #[serde(default)]
    service_id: Text,
    #[serde(default)]
    plan_id: Text,
}

/// `PUT /v2/service_instances/:instance_id/service_bindings/:binding_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct BindRequest {
    /// `predecessor_binding_id` (a rotation, OSB 2.17).
    pub predecessor: Option<String>,
    /// `context`, an object.
    pub context: Option<Value>,
    /// `parameters`, an object.
    pub parameters: Option<Value>,
    /// `bind_resource`, a non-empty object (`{}` counts as not given).
    pub bind_resource: Option<Value>,
    /// `service_id`: required, except in a rotation (the instance's by default).
    pub service_id: Option<String>,
    /// `plan_id`: required, except in a rotation (the instance's by default).
    pub plan_id: Option<String>,
}

impl BindRequest {
    /// The request a body object makes, or the 400 for its first bad field.
    pub fn parse(body: Map<String, Value>) -> Result<Self, ApiError> {
        let wire: BindWire = wire(body)?;
        let predecessor = wire.predecessor_binding_id.optional("predecessor_binding_id")?;
        let context = wire.context.optional("context")?;
        let parameters = wire.parameters.optional("parameters")?;
        let bind_resource =
            wire.bind_resource.optional("bind_resource")?.filter(|r| r.as_object().is_some_and(|o| !o.is_empty()));
        let (service_id, plan_id) = if predecessor.is_some() {
            (wire.service_id.optional("service_id")?, wire.plan_id.optional("plan_id")?)
        } else {
            (Some(wire.service_id.required("service_id")?), Some(wire.plan_id.required("plan_id")?))
        };
        Ok(BindRequest { predecessor, context, parameters, bind_resource, service_id, plan_id })
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn refusal<T: std::fmt::Debug>(parsed: Result<T, ApiError>) -> String {
        let err = parsed.expect_err("a 400");
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        err.description().to_string()
    }

    fn provision_body() -> Value {
        json!({"service_id": "s", "plan_id": "p", "organization_guid": "o", "space_guid": "sp"})
    }

    #[test]
    fn a_provision_body_becomes_a_typed_request_and_unknown_fields_are_allowed() {
        let mut given = provision_body();
        given["parameters"] = json!({"plugins": []});
        given["context"] = json!({"platform": "cloudfoundry"});
        given["maintenance_info"] = json!({"version": "1.0.0"});
        given["something_new"] = json!([1, 2]);
        let request = ProvisionRequest::parse(body(given)).unwrap();
        assert_eq!(
            request,
            ProvisionRequest {
                service_id: "s".into(),
                plan_id: "p".into(),
                organization_guid: "o".into(),
                space_guid: "sp".into(),
                context: Some(json!({"platform": "cloudfoundry"})),
                parameters: Some(json!({"plugins": []})),
                maintenance_version: Some("1.0.0".into()),
            }
        );
    }

    #[test]
    fn provision_refusals_name_the_first_bad_field_in_order_with_the_texts_of_before() {
        let cases: &[(&str, Value, &str)] = &[
            ("missing service_id", json!({"plan_id": 5}), "service_id is required"),
            ("empty service_id", json!({"service_id": ""}), "service_id is required"),
            ("null service_id", json!({"service_id": null}), "service_id is required"),
            ("numeric service_id", json!({"service_id": 5}), "service_id must be a string, not a number"),
            ("missing plan_id", json!({"service_id": "s", "space_guid": 1}), "plan_id is required"),
            (
                "array organization_guid",
                json!({"service_id": "s", "plan_id": "p", "organization_guid": []}),
                "organization_guid must be a string, not an array",
            ),
            (
                "missing space_guid",
                json!({"service_id": "s", "plan_id": "p", "organization_guid": "o"}),
                "space_guid is required",
            ),
        ];
        for (case, given, expected) in cases {
            assert_eq!(refusal(ProvisionRequest::parse(body(given.clone()))), *expected, "{case}");
        }
        let with = |field: &str, value: Value| {
            let mut given = provision_body();
            given[field] = value;
            refusal(ProvisionRequest::parse(body(given)))
        };
        assert_eq!(with("context", json!("x")), "context must be an object, not a string");
        assert_eq!(with("parameters", json!(true)), "parameters must be an object, not a boolean");
        assert_eq!(with("maintenance_info", json!(1)), "maintenance_info must be an object, not a number");
        assert_eq!(with("maintenance_info", json!({"version": 1})), "maintenance_info.version must be a string");
    }

    #[test]
    fn an_empty_maintenance_info_or_version_is_not_given() {
        for info in [json!({}), json!({"version": ""}), json!({"version": null}), Value::Null] {
            let mut given = provision_body();
            given["maintenance_info"] = info.clone();
            assert_eq!(ProvisionRequest::parse(body(given)).unwrap().maintenance_version, None, "{info}");
        }
    }

    #[test]
    fn an_update_needs_only_the_service_id() {
        let request = UpdateBody::parse(body(json!({"service_id": "s"}))).unwrap();
        assert_eq!(
            request,
            UpdateBody {
                service_id: "s".into(),
                plan_id: None,
                parameters: None,
                context: None,
                maintenance_version: None
            }
        );
        assert_eq!(refusal(UpdateBody::parse(body(json!({"plan_id": "p"})))), "service_id is required");
        assert_eq!(
            refusal(UpdateBody::parse(body(json!({"service_id": "s", "plan_id": 1})))),
            "plan_id must be a string, not a number"
        );
        assert_eq!(
            refusal(UpdateBody::parse(body(json!({"service_id": "s", "context": [1]})))),
            "context must be an object, not an array"
        );
    }

    #[test]
    fn a_bind_needs_the_ids_unless_it_names_a_predecessor() {
        assert_eq!(refusal(BindRequest::parse(body(json!({"plan_id": "p"})))), "service_id is required");
        assert_eq!(refusal(BindRequest::parse(body(json!({"service_id": "s"})))), "plan_id is required");
        let rotation = BindRequest::parse(body(json!({"predecessor_binding_id": "b0"}))).unwrap();
        assert_eq!((rotation.predecessor.as_deref(), rotation.service_id, rotation.plan_id), (Some("b0"), None, None));
        assert_eq!(
            refusal(BindRequest::parse(body(json!({"predecessor_binding_id": 3})))),
            "predecessor_binding_id must be a string, not a number"
        );
        // Body fields are checked before the ids.
        assert_eq!(
            refusal(BindRequest::parse(body(json!({"parameters": "x"})))),
            "parameters must be an object, not a string"
        );
        let empty_resource =
            BindRequest::parse(body(json!({"service_id": "s", "plan_id": "p", "bind_resource": {}}))).unwrap();
        assert_eq!(empty_resource.bind_resource, None, "{{}} is no bind_resource");
    }
}
