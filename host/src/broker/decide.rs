//! The OSB decisions: what a provision, update, deprovision, bind or unbind does, given the
//! request and the rows the store read for it.
//!
//! Owns: the OSB state matrix (which request in which state is a 200, 201, 202, 400, 404, 409,
//! 410 or 422, and which rows it writes), as pure functions of (request, current state) →
//! [`Decision`]. The handlers call them inside the store's transition closures, which hand them
//! the rows read in the transaction, and the store applies the changes atomically. Must not: do
//! I/O, read the clock, draw random ids or look at the catalog (the handlers do, and pass what
//! they found in); each function here is tested table-driven over its whole matrix below.
//!
//! Stored JSON columns are compared with the request's JSON in one place, [`same_json`].

use serde_json::{Map, Value};

use super::ApiError;
use super::requests::{BindRequest, ProvisionRequest};
use crate::store::UpdateRequest;
use crate::store::{
    AuditEntry, BindingRow, Change, Decision, InstanceRow, InstanceState, InstanceView, OperationKind, OperationRow,
    OperationState,
};

/// What an instance request comes to.
#[derive(Debug)]
pub enum InstanceOutcome {
    /// An operation was started (202 with it).
    Started(OperationRow),
    /// The same operation already runs (202 with its id).
    InProgress(String),
    /// Nothing to do: the instance is as asked (200).
    Done,
    /// Refused.
    Refused(ApiError),
}

/// What a binding request comes to.
#[derive(Debug)]
pub enum BindingOutcome {
    /// The binding was created (201).
    Created(BindingRow),
    /// The same binding exists (200).
    Exists(BindingRow),
    /// The binding was removed (200).
    Deleted,
    /// Refused.
    Refused(ApiError),
}

/// Whether a stored JSON column holds the JSON a request gives (key order ignored; absent,
/// `null` and `{}` alike). The one comparison of stored JSON with a request's.
pub fn same_json(stored: Option<&Value>, given: Option<&Value>) -> bool {
    let empty = |v: &Option<&Value>| v.is_none_or(|v| v.as_object().is_some_and(Map::is_empty));
    match (stored, given) {
        (Some(a), Some(b)) => a == b,
        (a, b) => empty(&a) && empty(&b),
    }
}

/// `maintenance_info.version` of a request against the plan's: none given is fine, another than
/// the plan's is a 422 `MaintenanceInfoConflict`.
pub fn maintenance(plan_version: Option<&str>, requested: Option<&str>) -> Result<(), ApiError> {
    let Some(requested) = requested else { return Ok(()) };
    match plan_version {
        Some(version) if version == requested => Ok(()),
        Some(version) => Err(ApiError::maintenance_conflict(format!(
            "maintenance_info.version {requested:?} is not the plan's current version {version:?}"
        ))),
        None => Err(ApiError::maintenance_conflict(format!(
            "maintenance_info.version {requested:?} given, but the plan has no maintenance_info"
        ))),
    }
}

/// The two plans of an update, as the catalog describes them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanMove {
    /// Whether the plan changes at all.
    pub changes: bool,
    /// Whether the instance's plan may be left (`plan_updateable`; false for a plan gone from
    /// the catalog).
    pub from_updateable: bool,
    /// Whether the target plan may be moved to.
    pub to_updateable: bool,
    /// Whether the instance's plan runs validators (false for a plan gone from the catalog).
    pub from_validator: bool,
    /// Whether the target plan runs validators.
    pub to_validator: bool,
}

/// Whether an update may move the instance to the target plan: both plans must be updateable
/// (else 422 `PlanChangeNotSupported`, `update_repeatable: false`), and neither a validator plan.
pub fn plan_change(plans: PlanMove) -> Result<(), ApiError> {
    if !plans.changes {
        return Ok(());
    }
    if !(plans.from_updateable && plans.to_updateable) {
        return Err(ApiError::unprocessable("PlanChangeNotSupported", "this instance's plan cannot be changed")
            .with_update_repeatable(false));
    }
    if plans.from_validator || plans.to_validator {
        // Another plan is another client: the keys would have to move with their history.
        return Err(ApiError::unprocessable(
            "PlanChangeNotSupported",
            "validator instances cannot change plan; deprovision (the keys' history is kept) and provision on the other plan",
        )
        .with_update_repeatable(false));
    }
    Ok(())
}

/// A provision, as the handler prepared it.
#[derive(Debug, Clone)]
pub struct Provision {
    /// The request; its `parameters` are those the instance keeps (a validator's public part).
    pub request: ProvisionRequest,
    /// The plan's `maintenance_info.version`, which a new instance runs.
    pub plan_version: Option<String>,
    /// The plan's `max_instances` (0: no cap).
    pub cap: u64,
    /// The operation a new instance starts with (its id, times and lease).
    pub operation: OperationRow,
    /// Who asked.
    pub audit: AuditEntry,
}

/// `PUT /v2/service_instances/:id`: a new id (or a tombstone's) starts a provision unless the
/// plan is full; an existing id is a replay if its attributes are those asked for (200 once
/// ready, 202 while provisioning), else a 409.
pub fn provision(provision: Provision, view: InstanceView<'_>) -> Decision<InstanceOutcome> {
    let Provision { request, plan_version, cap, operation, audit } = provision;
    let Some(existing) = view.instance.filter(|i| i.state != InstanceState::Deleted) else {
        if cap > 0 && view.plan_count >= cap {
            return Decision::answer(InstanceOutcome::Refused(ApiError::unprocessable(
                "InstanceLimitReached",
                format!("the plan allows at most {cap} instances"),
            )));
        }
        let row = InstanceRow {
            id: operation.instance_id.clone(),
            service_id: request.service_id,
            plan_id: request.plan_id,
            organization_guid: request.organization_guid,
            space_guid: request.space_guid,
            parameters: request.parameters.clone(),
            context: request.context.clone(),
            maintenance_version: plan_version,
            state: InstanceState::Provisioning,
            operation_id: operation.id.clone(),
            created_ms: operation.created_ms,
            updated_ms: operation.created_ms,
        };
        return Decision {
            changes: vec![Change::PutInstance(row), Change::InsertOperation(operation.clone()), Change::Audit(audit)],
            answer: InstanceOutcome::Started(operation),
        };
    };
    // `maintenance_info` is part of the request: naming another version than the instance runs
    // is asking for another instance. `context` is not compared.
    let identical = existing.service_id == request.service_id
        && existing.plan_id == request.plan_id
        && existing.organization_guid == request.organization_guid
        && existing.space_guid == request.space_guid
        && same_json(existing.parameters.as_ref(), request.parameters.as_ref())
        && request.maintenance_version.as_ref().is_none_or(|v| existing.maintenance_version.as_ref() == Some(v));
    if !identical {
        return Decision::answer(InstanceOutcome::Refused(ApiError::conflict(
            "an instance with this id exists with different attributes",
        )));
    }
    Decision::answer(match existing.state {
        InstanceState::Provisioning => InstanceOutcome::InProgress(existing.operation_id.clone()),
        InstanceState::Ready | InstanceState::Updating => InstanceOutcome::Done,
        InstanceState::Failed => InstanceOutcome::Refused(ApiError::conflict(
            "an instance with this id exists but failed; deprovision it before provisioning it again",
        )),
        InstanceState::Deprovisioning => {
            InstanceOutcome::Refused(ApiError::concurrency("the instance is being deprovisioned"))
        }
        InstanceState::Deleted => unreachable!("filtered above"),
    })
}

/// An update, as the handler prepared it.
#[derive(Debug, Clone)]
pub struct Update {
    /// What the instance is to become (plan, parameters, maintenance version, sealed keys).
    pub request: UpdateRequest,
    /// The operation it starts.
    pub operation: OperationRow,
    /// Who asked.
    pub audit: AuditEntry,
    /// Now (ms), the instance row's new `updated_ms`.
    pub now_ms: i64,
}

/// `PATCH /v2/service_instances/:id`: a ready instance starts an update unless nothing changes
/// (200); the same update already running is a 202 with its operation; any other running
/// operation is a 422 `ConcurrencyError`; a failed instance a 422; a missing one a 404.
pub fn update(update: Update, view: InstanceView<'_>) -> Decision<InstanceOutcome> {
    let Update { request, operation, audit, now_ms } = update;
    let refuse = |err| Decision::answer(InstanceOutcome::Refused(err));
    let Some(instance) = view.instance else { return refuse(ApiError::not_found("no such instance")) };
    match instance.state {
        InstanceState::Ready => {
            let unchanged = instance.plan_id == request.plan_id
                && instance.parameters == request.parameters
                && instance.maintenance_version == request.maintenance_version;
            if unchanged {
                return Decision::answer(InstanceOutcome::Done);
            }
            let row = InstanceRow {
                state: InstanceState::Updating,
                operation_id: operation.id.clone(),
                updated_ms: now_ms,
                ..instance.clone()
            };
            Decision {
                changes: vec![
                    Change::PutInstance(row),
                    Change::InsertOperation(operation.clone()),
                    Change::Audit(audit),
                ],
                answer: InstanceOutcome::Started(operation),
            }
        }
        InstanceState::Updating => {
            let same = view
                .operation
                .filter(|op| op.kind == OperationKind::Update)
                .filter(|op| op.request.update().is_some_and(|running| *running == request));
            match same {
                Some(op) => Decision::answer(InstanceOutcome::InProgress(op.id.clone())),
                None => refuse(ApiError::concurrency("another update of this instance is running")),
            }
        }
        InstanceState::Provisioning => refuse(ApiError::concurrency("the instance is still being provisioned")),
        InstanceState::Deprovisioning => refuse(ApiError::concurrency("the instance is being deprovisioned")),
        InstanceState::Failed => {
            refuse(ApiError::unprocessable("InstanceFailed", "the instance failed; deprovision it"))
        }
        InstanceState::Deleted => refuse(ApiError::not_found("no such instance")),
    }
}

/// A deprovision, as the handler prepared it.
#[derive(Debug, Clone)]
pub struct Deprovision {
    /// `service_id` of the query.
    pub service_id: String,
    /// `plan_id` of the query.
    pub plan_id: String,
    /// Who asked.
    pub audit: AuditEntry,
    /// Now (ms): when a running operation is overdue, and the row's new `updated_ms`.
    pub now_ms: i64,
}

/// `DELETE /v2/service_instances/:id`: a ready or failed instance starts a deprovision that
/// revokes its bindings at once (202); one being deprovisioned answers with that operation; a
/// missing one is a 410; other ids than the instance's a 400; a provision or update still
/// running a 422, unless it is past its deadline: then it is failed and the deprovision goes
/// ahead. `operation` makes the deprovision's operation for the instance (its polling time
/// depends on the instance's plan).
pub fn deprovision(
    deprovision: Deprovision,
    operation: impl FnOnce(&InstanceRow) -> OperationRow,
    view: InstanceView<'_>,
) -> Decision<InstanceOutcome> {
    let Deprovision { service_id, plan_id, audit, now_ms } = deprovision;
    let refuse = |err| Decision::answer(InstanceOutcome::Refused(err));
    let Some(instance) = view.instance.filter(|i| i.state != InstanceState::Deleted) else {
        return refuse(ApiError::gone("no such instance"));
    };
    // An operation past its deadline (its runner is gone, or the store failed under it) no
    // longer holds the instance: it ends as failed and the deprovision goes ahead.
    let overdue = view
        .operation
        .filter(|op| op.state == OperationState::InProgress && op.deadline_ms < now_ms)
        .map(|op| op.id.clone());
    let start = |superseded: Option<String>| {
        let operation = operation(instance);
        let row = InstanceRow {
            state: InstanceState::Deprovisioning,
            operation_id: operation.id.clone(),
            updated_ms: now_ms,
            ..instance.clone()
        };
        let mut changes = Vec::with_capacity(5);
        if let Some(id) = superseded {
            let description = "did not finish by its deadline; superseded by a deprovision".into();
            changes.push(Change::FailOperation { id, description });
        }
        changes.extend([
            Change::PutInstance(row),
            Change::InsertOperation(operation.clone()),
            // Cascade: the instance's credentials stop working now.
            Change::DeleteBindings,
            Change::Audit(audit),
        ]);
        Decision { changes, answer: InstanceOutcome::Started(operation) }
    };
    // The ids say which instance the platform means: another one's ids delete nothing,
    // whatever the instance is doing (checked before its state, as on every request).
    if instance.service_id != service_id || instance.plan_id != plan_id {
        return refuse(ApiError::bad_request("service_id and plan_id must be those of the instance"));
    }
    match instance.state {
        InstanceState::Ready | InstanceState::Failed => start(None),
        InstanceState::Provisioning | InstanceState::Updating | InstanceState::Deprovisioning if overdue.is_some() => {
            start(overdue)
        }
        InstanceState::Deprovisioning => Decision::answer(InstanceOutcome::InProgress(instance.operation_id.clone())),
        InstanceState::Provisioning => refuse(ApiError::concurrency(
            "the instance is still being provisioned; deprovision it once last_operation reports the result",
        )),
        InstanceState::Updating => refuse(ApiError::concurrency("the instance is being updated")),
        InstanceState::Deleted => unreachable!("filtered above"),
    }
}

/// A bind, as the handler prepared it.
#[derive(Debug, Clone)]
pub struct Bind {
    /// The request (its parameters, bind_resource and predecessor).
    pub request: BindRequest,
    /// The binding it creates: the ids (the instance's, for a rotation that named none), the
    /// request's JSON, a fresh key salt and hash, times.
    pub row: BindingRow,
    /// Who asked.
    pub audit: AuditEntry,
    /// Now (ms): whether a predecessor has expired.
    pub now_ms: i64,
}

/// `PUT …/service_bindings/:id`: an existing binding id is a replay if its attributes are those
/// asked for (200), else a 409; a new one binds an instance that is ready or updating (201),
/// is a 422 on one still provisioning, being deprovisioned or failed, a 404 on a missing one, and
/// a 400 with other ids than the instance's. A rotation needs a live predecessor of the instance
/// (else 400) and takes from it what it does not give (parameters, bind_resource).
pub fn bind(
    bind: Bind,
    instance: Option<&InstanceRow>,
    existing: Option<&BindingRow>,
    previous: Option<&BindingRow>,
) -> Decision<BindingOutcome> {
    let Bind { request, mut row, audit, now_ms } = bind;
    let refuse = |err| Decision::answer(BindingOutcome::Refused(err));
    let Some(instance) = instance.filter(|i| i.state != InstanceState::Deleted) else {
        return refuse(ApiError::not_found("no such instance"));
    };
    if let Some(existing) = existing {
        // A replayed rotation is the same binding (its predecessor may be gone by now); what a
        // rotation did not give, it took from the predecessor.
        let inherited = request.predecessor.is_some();
        let identical = existing.service_id == row.service_id
            && existing.plan_id == row.plan_id
            && existing.predecessor_id == request.predecessor
            && (inherited && request.parameters.is_none()
                || same_json(existing.parameters.as_ref(), request.parameters.as_ref()))
            && (inherited && request.bind_resource.is_none()
                || same_json(existing.bind_resource.as_ref(), request.bind_resource.as_ref()));
        return Decision::answer(if identical {
            BindingOutcome::Exists(existing.clone())
        } else {
            BindingOutcome::Refused(ApiError::conflict("a binding with this id exists with different attributes"))
        });
    }
    if instance.service_id != row.service_id || instance.plan_id != row.plan_id {
        return refuse(ApiError::bad_request("service_id and plan_id must be those of the instance"));
    }
    if let Some(predecessor) = &request.predecessor {
        // Only a live binding of this instance can be rotated (binding ids are the instance's
        // own: another instance's binding is not found here).
        let Some(previous) = previous else {
            return refuse(ApiError::bad_request(format!(
                "predecessor_binding_id {predecessor:?} is not a binding of this instance (unknown or unbound)"
            )));
        };
        if previous.expires_ms.is_some_and(|expires| expires <= now_ms) {
            return refuse(ApiError::bad_request(format!(
                "predecessor_binding_id {predecessor:?} has expired; create a new binding without a predecessor"
            )));
        }
        if request.parameters.is_none() {
            row.parameters = previous.parameters.clone();
        }
        if request.bind_resource.is_none() {
            row.bind_resource = previous.bind_resource.clone();
        }
    }
    match instance.state {
        InstanceState::Ready | InstanceState::Updating => Decision {
            changes: vec![Change::InsertBinding(row.clone()), Change::Audit(audit)],
            answer: BindingOutcome::Created(row),
        },
        InstanceState::Provisioning => refuse(ApiError::concurrency("the instance is still being provisioned")),
        InstanceState::Deprovisioning => refuse(ApiError::concurrency("the instance is being deprovisioned")),
        InstanceState::Failed | InstanceState::Deleted => {
            refuse(ApiError::unprocessable("InstanceFailed", "the instance failed; it cannot be bound"))
        }
    }
}

/// `DELETE …/service_bindings/:id?service_id&plan_id`: an existing binding is removed (200)
/// when the ids are the instance's (its plan now, or the one the binding was made on), else a
/// 400 that deletes nothing; a missing one is a 410.
pub fn unbind(
    service_id: &str,
    plan_id: &str,
    audit: AuditEntry,
    instance: Option<&InstanceRow>,
    existing: Option<&BindingRow>,
) -> Decision<BindingOutcome> {
    match (instance, existing) {
        (Some(instance), Some(binding))
            if instance.service_id != service_id || (instance.plan_id != plan_id && binding.plan_id != plan_id) =>
        {
            Decision::answer(BindingOutcome::Refused(ApiError::bad_request(
                "service_id and plan_id must be those of the instance",
            )))
        }
        (_, Some(_)) => {
            Decision { changes: vec![Change::DeleteBinding, Change::Audit(audit)], answer: BindingOutcome::Deleted }
        }
        (_, None) => Decision::answer(BindingOutcome::Refused(ApiError::gone("no such binding"))),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "decide_binding_tests.rs"]
mod binding_tests;
