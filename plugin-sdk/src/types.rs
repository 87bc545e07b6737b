//! Helpers on the contract's types: typed params, outcome and error constructors, the config.

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::cell::OnceCell;

use crate::{Call, CallContext, Decision, Outcome, RpcError};

/// JSON-RPC error codes used by ovsb and its first-party plugins.
pub mod codes {
    /// The JSON sent is not valid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The method does not exist or is not available on this endpoint.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal JSON-RPC error; ovsb also uses it when a plugin fails (trap, limit).
    pub const INTERNAL_ERROR: i32 = -32603;
    /// A limit was exceeded (rate limit, quota); `data` may say when to retry.
    pub const LIMIT_EXCEEDED: i32 = -32005;
}

impl Call {
    /// A call with `params` given as JSON text.
    pub fn new(method: impl Into<String>, params: Option<String>) -> Self {
        Call { method: method.into(), params }
    }

    /// A call whose `params` are `params` serialized to JSON.
    pub fn with_params(method: impl Into<String>, params: &impl Serialize) -> Self {
        Call { method: method.into(), params: Some(to_json(params)) }
    }

    /// Parses `params` into `T`. A call without params parses as JSON `null` (so `Option<T>` and
    /// `()` accept it). The error is a ready JSON-RPC "invalid params" error naming the problem.
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        let text = self.params.as_deref().unwrap_or("null");
        serde_json::from_str(text).map_err(|err| {
            RpcError::new(crate::codes::INVALID_PARAMS, format!("invalid params for {}: {err}", self.method))
        })
    }

    /// Replaces `params` with `params` serialized to JSON.
    pub fn set_params(&mut self, params: &impl Serialize) {
        self.params = Some(to_json(params));
    }
}

impl RpcError {
    /// An error without `data`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None }
    }

    /// Sets `data` to `data` serialized to JSON.
    pub fn with_data(mut self, data: &impl Serialize) -> Self {
        self.data = Some(to_json(data));
        self
    }
}

impl Decision {
    /// Answer the call with `result` serialized to JSON.
    pub fn respond_ok(result: &impl Serialize) -> Self {
        Decision::Respond(ok(result))
    }

    /// Answer the call with an error.
    pub fn respond_err(error: RpcError) -> Self {
        Decision::Respond(Err(error))
    }
}

/// A successful outcome whose `result` is `value` serialized to JSON.
pub fn ok(value: &impl Serialize) -> Outcome {
    Ok(to_json(value))
}

/// A successful outcome from the JSON text of `result`, as is.
pub fn ok_raw(json: impl Into<String>) -> Outcome {
    Ok(json.into())
}

fn to_json(value: &impl Serialize) -> String {
    // Serializing plain data to a String only fails for maps with non-string keys or a failing
    // `Serialize` impl; both are programming errors, reported like any other plugin failure.
    serde_json::to_string(value).unwrap_or_else(|err| panic!("value does not serialize to JSON: {err}"))
}

/// Who is calling: instance, binding, plan and a request id unique to the call. Fetched from the
/// host on first use (plugins that never look pay nothing).
#[derive(Debug, Default)]
pub struct Context {
    cell: OnceCell<CallContext>,
}

impl Context {
    /// A context that asks the host when first read.
    pub fn from_host() -> Self {
        Context { cell: OnceCell::new() }
    }

    /// A context with these values (for tests).
    pub fn new(context: CallContext) -> Self {
        Context { cell: OnceCell::from(context) }
    }

    fn get(&self) -> &CallContext {
        self.cell.get_or_init(crate::host::call_context)
    }

    /// The service instance whose endpoint was called.
    pub fn instance_id(&self) -> &str {
        &self.get().instance_id
    }

    /// The binding whose credentials were used, if any.
    pub fn binding_id(&self) -> Option<&str> {
        self.get().binding_id.as_deref()
    }

    /// The plan id of the instance.
    pub fn plan(&self) -> &str {
        &self.get().plan
    }

    /// An id unique to this call, also in ovsb's logs.
    pub fn request_id(&self) -> &str {
        &self.get().request_id
    }
}

/// A plugin's configuration: the JSON text of the `config` member of its chain entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    json: String,
}

impl Config {
    /// Wraps the JSON text of a configuration.
    pub fn new(json: impl Into<String>) -> Self {
        Config { json: json.into() }
    }

    /// The JSON text as the operator gave it (`null` when no config was given).
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// Parses the configuration into `T`. The error reads well as a 400 at provision time, for
    /// example ``invalid configuration: unknown field `alow`, expected `allow` or `deny` at
    /// line 1 column 7``. Use `#[serde(deny_unknown_fields)]` so that typos are caught.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|err| format!("invalid configuration: {err}"))
    }

    /// The configuration as a JSON object whose keys are all in `fields` (`null` reads as `{}`),
    /// for plugins that check each field by hand so that every message names it. `example` is
    /// shown when the configuration is not an object, e.g. `{"max_items": 16}`.
    pub fn object(&self, example: &str, fields: &[&str]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let object = match self.parse::<serde_json::Value>()? {
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::Object(object) => object,
            other => {
                return Err(format!(
                    "invalid configuration: expected an object like {example}, got {}",
                    json_kind(&other)
                ));
            }
        };
        if let Some(unknown) = object.keys().find(|key| !fields.contains(&key.as_str())) {
            let quoted: Vec<String> = fields.iter().map(|field| format!("`{field}`")).collect();
            let expected = match quoted.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => "no fields".to_string(),
            };
            return Err(format!("invalid configuration: unknown field `{unknown}`, expected {expected}"));
        }
        Ok(object)
    }
}

/// What kind of JSON value `value` is, for messages ("a number", "an array", …).
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    #[test]
    fn object_reads_null_as_empty_and_names_unknown_fields_and_wrong_shapes() {
        assert!(Config::new("null").object("{}", &["a"]).unwrap().is_empty());
        assert_eq!(Config::new(r#"{"a": 1}"#).object("{}", &["a", "b"]).unwrap()["a"], 1);
        let err = |json: &str, fields: &[&str]| Config::new(json).object(r#"{"a": 1}"#, fields).unwrap_err();
        assert_eq!(err(r#"{"x": 1}"#, &["a"]), "invalid configuration: unknown field `x`, expected `a`");
        assert_eq!(err(r#"{"x": 1}"#, &["a", "b"]), "invalid configuration: unknown field `x`, expected `a` or `b`");
        assert_eq!(
            err(r#"{"x": 1}"#, &["a", "b", "c"]),
            "invalid configuration: unknown field `x`, expected `a`, `b` or `c`"
        );
        assert_eq!(err("[1]", &["a"]), r#"invalid configuration: expected an object like {"a": 1}, got an array"#);
        assert!(err("{", &["a"]).starts_with("invalid configuration: "));
    }
}
