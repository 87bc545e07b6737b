//! The store's rows as typed values: instances, operations, bindings, audit entries, their state
//! enums with the text each is stored as, and the operation's request.
//!
//! Owns: decoding a row into its type, once, as it is read. A JSON column is decoded here into a
//! [`serde_json::Value`] (free-form parameters, context, bind resource) or into ovsb's own type
//! (an operation's [`OperationRequest`]); a column that does not decode is a
//! [`StoreError::Corrupt`] (logged, counted in `ovsb_store_corrupt_rows_total{table}`), never
//! skipped and never read as empty. The text written for a value is the text ovsb always wrote,
//! so databases written by earlier versions read back unchanged. Must not: run SQL, or decide
//! what a row means for a request (callers decide).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, corrupt};

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),* }
        impl $name {
            /// The text stored (and, for operation states, sent to platforms).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            fn parse(text: &str) -> std::result::Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(
    /// Where an instance is in its life.
    InstanceState {
        /// Its provision operation is running.
        Provisioning = "provisioning",
        /// Serving.
        Ready = "ready",
        /// Serving with its old settings while an update runs.
        Updating = "updating",
        /// Its deprovision operation is running; its bindings are already revoked.
        Deprovisioning = "deprovisioning",
        /// Provisioning or deprovisioning failed; only a deprovision helps.
        Failed = "failed",
        /// Deprovisioned; the row is a tombstone so that `last_operation` can still answer.
        Deleted = "deleted",
    }
);

string_enum!(
    /// What an operation does.
    OperationKind {
        /// Create the instance.
        Provision = "provision",
        /// Change its plan or parameters.
        Update = "update",
        /// Remove it.
        Deprovision = "deprovision",
    }
);

string_enum!(
    /// An operation's state, with the OSB spellings.
    OperationState {
        /// Running.
        InProgress = "in progress",
        /// Done.
        Succeeded = "succeeded",
        /// Given up, with a reason in the description.
        Failed = "failed",
    }
);

/// A service instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    /// Platform-chosen id.
    pub id: String,
    /// Catalog service id.
    pub service_id: String,
    /// Catalog plan id (the old one while an update to another plan runs).
    pub plan_id: String,
    /// From the provision request.
    pub organization_guid: String,
    /// From the provision request.
    pub space_guid: String,
    /// `parameters`, if given.
    pub parameters: Option<Value>,
    /// `context`, if given.
    pub context: Option<Value>,
    /// The `maintenance_info.version` it runs.
    pub maintenance_version: Option<String>,
    /// Life-cycle state.
    pub state: InstanceState,
    /// Its latest operation.
    pub operation_id: String,
    /// Created at (ms).
    pub created_ms: i64,
    /// Last changed at (ms).
    pub updated_ms: i64,
}

/// An asynchronous operation on an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    /// Broker-chosen id, sent to platforms as `operation`.
    pub id: String,
    /// The instance.
    pub instance_id: String,
    /// What it does.
    pub kind: OperationKind,
    /// Where it is.
    pub state: OperationState,
    /// Progress or the reason it failed; shown to users.
    pub description: String,
    /// What it applies (of the variant its `kind` names).
    pub request: OperationRequest,
    /// When it is given up (ms).
    pub deadline_ms: i64,
    /// The replica running it.
    pub lease_owner: String,
    /// Until when that replica's claim holds (ms).
    pub lease_until_ms: i64,
    /// Started at (ms).
    pub created_ms: i64,
    /// Last changed at (ms).
    pub updated_ms: i64,
}

/// What an operation applies, stored as its `request` column (JSON). Which variant a stored
/// text is follows from the operation's kind: a provision's and a deprovision's text is `{}`
/// (or, for a provision that brings secrets, `{"sealed": …}`), an update's an [`UpdateRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum OperationRequest {
    /// A provision, with the secrets it brings (a validator's keys), sealed, if any.
    Provision(SealedRequest),
    /// An update: what the instance becomes.
    Update(UpdateRequest),
    /// A deprovision: nothing to apply.
    Deprovision,
}

/// What a provision's `request` holds: the secrets, sealed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SealedRequest {
    /// [`crate::credentials::SecretKey::seal`] of the secrets' JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// What an update operation applies, stored as the operation's `request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The plan after the update.
    pub plan_id: String,
    /// The parameters after the update, if any (stored as JSON text inside the request).
    #[serde(default, with = "json_text")]
    pub parameters: Option<Value>,
    /// The maintenance version after the update.
    pub maintenance_version: Option<String>,
    /// Secrets the update brings (keys to add), sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
}

/// A deprovision's request: an object, nothing in it that is read.
#[derive(Deserialize)]
struct NoRequest {}

impl OperationRequest {
    /// Decodes the stored text of an operation of `kind`.
    pub fn decode(kind: OperationKind, text: &str) -> std::result::Result<Self, serde_json::Error> {
        match kind {
            OperationKind::Provision => serde_json::from_str(text).map(OperationRequest::Provision),
            OperationKind::Update => serde_json::from_str(text).map(OperationRequest::Update),
            OperationKind::Deprovision => {
                serde_json::from_str::<NoRequest>(text).map(|_| OperationRequest::Deprovision)
            }
        }
    }

    /// The text stored for it.
    pub fn to_text(&self) -> String {
        match self {
            OperationRequest::Provision(sealed) => serde_json::to_string(sealed),
            OperationRequest::Update(update) => serde_json::to_string(update),
            OperationRequest::Deprovision => Ok("{}".to_string()),
        }
        .expect("a request serializes")
    }

    /// The kind of operation it belongs to.
    pub fn kind(&self) -> OperationKind {
        match self {
            OperationRequest::Provision(_) => OperationKind::Provision,
            OperationRequest::Update(_) => OperationKind::Update,
            OperationRequest::Deprovision => OperationKind::Deprovision,
        }
    }

    /// The secrets it brings, sealed.
    pub fn sealed(&self) -> Option<&str> {
        match self {
            OperationRequest::Provision(request) => request.sealed.as_deref(),
            OperationRequest::Update(update) => update.sealed.as_deref(),
            OperationRequest::Deprovision => None,
        }
    }

    /// The update it applies, for an update.
    pub fn update(&self) -> Option<&UpdateRequest> {
        match self {
            OperationRequest::Update(update) => Some(update),
            _ => None,
        }
    }

    /// The same request without its secrets (what is kept once the operation ends).
    pub fn without_secrets(&self) -> OperationRequest {
        match self {
            OperationRequest::Provision(_) => OperationRequest::Provision(SealedRequest::default()),
            OperationRequest::Update(update) => {
                OperationRequest::Update(UpdateRequest { sealed: None, ..update.clone() })
            }
            OperationRequest::Deprovision => OperationRequest::Deprovision,
        }
    }
}

/// `Option<Value>` stored as JSON text in a JSON string (how an update's parameters always were).
mod json_text {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(value: &Option<Value>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&value.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| D::Error::custom(format!("parameters: {e}"))))
            .transpose()
    }
}

/// A binding.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRow {
    /// The instance.
    pub instance_id: String,
    /// Platform-chosen id.
    pub id: String,
    /// From the bind request.
    pub service_id: String,
    /// From the bind request.
    pub plan_id: String,
    /// `parameters`, if given.
    pub parameters: Option<Value>,
    /// `bind_resource`, if given.
    pub bind_resource: Option<Value>,
    /// `context`, if given.
    pub context: Option<Value>,
    /// Salt of the key derivation (hex).
    pub key_salt: String,
    /// SHA-256 of the key (hex).
    pub key_sha256: String,
    /// Created at (ms).
    pub created_ms: i64,
    /// The binding this one rotated (`predecessor_binding_id`), if any.
    pub predecessor_id: Option<String>,
    /// When its credentials stop working (ms), if they expire.
    pub expires_ms: Option<i64>,
}

/// Who asked for a change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditEntry {
    /// `provision`, `update`, `deprovision`, `bind`, `unbind`.
    pub action: String,
    /// The binding, for bind and unbind.
    pub binding_id: Option<String>,
    /// `X-Broker-API-Request-Identity`.
    pub request_identity: Option<String>,
    /// Platform named by `X-Broker-API-Originating-Identity`.
    pub platform: Option<String>,
    /// The decoded identity (JSON text, kept as the platform sent it; ovsb never reads it back).
    pub identity: Option<String>,
}

pub(super) const INSTANCE_COLUMNS: &str = "id, service_id, plan_id, organization_guid, space_guid, parameters, \
     context, maintenance_version, state, operation_id, created_ms, updated_ms";
pub(super) const OPERATION_COLUMNS: &str = "id, instance_id, kind, state, description, request, deadline_ms, \
     lease_owner, lease_until_ms, created_ms, updated_ms";
pub(super) const BINDING_COLUMNS: &str = "instance_id, id, service_id, plan_id, parameters, bind_resource, context, \
     key_salt, key_sha256, created_ms, predecessor_id, expires_ms";

/// The text stored for an optional JSON column.
pub(super) fn json_text(value: Option<&Value>) -> Option<String> {
    value.map(Value::to_string)
}

/// Decodes optional JSON column `column` of row `row` (named `id` in the message) of `table`.
pub(super) fn json_column(row: &AnyRow, table: &'static str, id: &str, column: &str) -> Result<Option<Value>> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|err| corrupt(table, format!("{table} row {id}: {column} is not JSON ({err})")))
    })
    .transpose()
}

pub(super) fn instance_from(row: &AnyRow) -> Result<InstanceRow> {
    let id: String = row.try_get("id")?;
    Ok(InstanceRow {
        service_id: row.try_get("service_id")?,
        plan_id: row.try_get("plan_id")?,
        organization_guid: row.try_get("organization_guid")?,
        space_guid: row.try_get("space_guid")?,
        parameters: json_column(row, "instances", &id, "parameters")?,
        context: json_column(row, "instances", &id, "context")?,
        maintenance_version: row.try_get("maintenance_version")?,
        state: InstanceState::parse(&row.try_get::<String, _>("state")?)
            .map_err(|err| corrupt("instances", format!("instances row {id}: {err}")))?,
        operation_id: row.try_get("operation_id")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        id,
    })
}

pub(super) fn operation_from(row: &AnyRow) -> Result<OperationRow> {
    let id: String = row.try_get("id")?;
    let unknown = |err: String| corrupt("operations", format!("operations row {id}: {err}"));
    let kind = OperationKind::parse(&row.try_get::<String, _>("kind")?).map_err(unknown)?;
    let text: String = row.try_get("request")?;
    let request = OperationRequest::decode(kind, &text).map_err(|err| {
        corrupt("operations", format!("operations row {id}: request is not a {} request ({err})", kind.as_str()))
    })?;
    Ok(OperationRow {
        instance_id: row.try_get("instance_id")?,
        kind,
        state: OperationState::parse(&row.try_get::<String, _>("state")?).map_err(unknown)?,
        description: row.try_get("description")?,
        request,
        deadline_ms: row.try_get("deadline_ms")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        id,
    })
}

pub(super) fn binding_from(row: &AnyRow) -> Result<BindingRow> {
    let instance_id: String = row.try_get("instance_id")?;
    let id: String = row.try_get("id")?;
    let name = format!("{instance_id}/{id}");
    Ok(BindingRow {
        service_id: row.try_get("service_id")?,
        plan_id: row.try_get("plan_id")?,
        parameters: json_column(row, "bindings", &name, "parameters")?,
        bind_resource: json_column(row, "bindings", &name, "bind_resource")?,
        context: json_column(row, "bindings", &name, "context")?,
        key_salt: row.try_get("key_salt")?,
        key_sha256: row.try_get("key_sha256")?,
        created_ms: row.try_get("created_ms")?,
        predecessor_id: row.try_get("predecessor_id")?,
        expires_ms: row.try_get("expires_ms")?,
        instance_id,
        id,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The texts earlier versions stored, each with the kind of its operation.
    const STORED: &[(OperationKind, &str)] = &[
        (OperationKind::Provision, "{}"),
        (OperationKind::Provision, r#"{"sealed":"c2VhbGVk"}"#),
        (OperationKind::Deprovision, "{}"),
        (OperationKind::Update, r#"{"plan_id":"p","parameters":null,"maintenance_version":null}"#),
        (OperationKind::Update, r#"{"plan_id":"p","parameters":"{\"a\":[1,\"x\"]}","maintenance_version":"2"}"#),
        (OperationKind::Update, r#"{"plan_id":"p","parameters":"{}","maintenance_version":null,"sealed":"c2Vh"}"#),
    ];

    #[test]
    fn a_stored_request_reads_back_as_the_text_it_was() {
        for (kind, text) in STORED {
            let request = OperationRequest::decode(*kind, text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(request.kind(), *kind);
            assert_eq!(request.to_text(), *text, "written back unchanged");
        }
    }

    #[test]
    fn an_update_request_holds_its_parameters_decoded() {
        let (kind, text) = STORED[4];
        let request = OperationRequest::decode(kind, text).unwrap();
        assert_eq!(request.update().unwrap().parameters, Some(json!({"a": [1, "x"]})));
        assert_eq!(request.sealed(), None);
        let sealed = OperationRequest::decode(STORED[5].0, STORED[5].1).unwrap();
        assert_eq!(sealed.sealed(), Some("c2Vh"));
        assert_eq!(sealed.without_secrets().sealed(), None);
        assert_eq!(
            OperationRequest::decode(STORED[1].0, STORED[1].1).unwrap().without_secrets().to_text(),
            "{}",
            "a provision keeps nothing of its secrets"
        );
    }

    #[test]
    fn a_request_that_does_not_decode_is_an_error() {
        for (kind, text) in [
            (OperationKind::Provision, "not json"),
            (OperationKind::Provision, r#"{"sealed":7}"#),
            (OperationKind::Update, "{}"),
            (OperationKind::Update, r#"{"plan_id":"p","parameters":"{not json","maintenance_version":null}"#),
            (OperationKind::Deprovision, "\"text\""),
        ] {
            assert!(OperationRequest::decode(kind, text).is_err(), "{text} is not a {} request", kind.as_str());
        }
    }
}
