//! The OSB state matrix of instances (provision, update, deprovision), table by table: each row
//! names the case, the state the store holds, the request, the answer (status and OSB error
//! code) and the changes written. A decision changed in [`super`] fails a row here. The
//! fixtures serve the bindings' matrix too (`decide_binding_tests.rs`).

// Each table is a list of tuples, its fields named in the comment above it.
#![allow(clippy::type_complexity)]

use serde_json::{Value, json};

use crate::store::OperationRequest;

use super::*;

pub(super) const SERVICE: &str = "svc";
pub(super) const PLAN: &str = "plan-a";
pub(super) const OTHER_PLAN: &str = "plan-b";
pub(super) const NOW: i64 = 1_000_000;

pub(super) fn instance(state: InstanceState) -> InstanceRow {
    InstanceRow {
        id: "i1".into(),
        service_id: SERVICE.into(),
        plan_id: PLAN.into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        parameters: Some(json!({"plugins": []})),
        context: None,
        maintenance_version: Some("1.0.0".into()),
        state,
        operation_id: "op-running".into(),
        created_ms: 1,
        updated_ms: 1,
    }
}

pub(super) fn operation(id: &str, kind: OperationKind, state: OperationState, deadline_ms: i64) -> OperationRow {
    OperationRow {
        id: id.into(),
        instance_id: "i1".into(),
        kind,
        state,
        description: String::new(),
        request: match kind {
            OperationKind::Provision => OperationRequest::Provision(Default::default()),
            // What no decision reads as an update of its own (a test sets the update it means).
            _ => OperationRequest::Deprovision,
        },
        deadline_ms,
        lease_owner: "replica".into(),
        lease_until_ms: NOW + 5_000,
        created_ms: NOW,
        updated_ms: NOW,
    }
}

pub(super) fn new_operation(kind: OperationKind) -> OperationRow {
    operation("op-new", kind, OperationState::InProgress, NOW + 600_000)
}

pub(super) fn audit(action: &str) -> AuditEntry {
    AuditEntry { action: action.into(), ..AuditEntry::default() }
}

pub(super) fn view<'a>(
    instance: Option<&'a InstanceRow>,
    operation: Option<&'a OperationRow>,
    plan_count: u64,
) -> InstanceView<'a> {
    InstanceView { instance, operation, plan_count }
}

/// The answer as the platform sees it: status, then the OSB error code or what the body carries.
fn instance_answer(outcome: &InstanceOutcome) -> String {
    match outcome {
        InstanceOutcome::Started(op) => format!("202 {}", op.id),
        InstanceOutcome::InProgress(id) => format!("202 {id}"),
        InstanceOutcome::Done => "200".into(),
        InstanceOutcome::Refused(err) => refused(err),
    }
}

pub(super) fn binding_answer(outcome: &BindingOutcome) -> String {
    match outcome {
        BindingOutcome::Created(row) => format!("201 {}", row.id),
        BindingOutcome::Exists(row) => format!("200 {}", row.id),
        BindingOutcome::Deleted => "200".into(),
        BindingOutcome::Refused(err) => refused(err),
    }
}

pub(super) fn refused(err: &ApiError) -> String {
    format!("{} {}", err.status().as_u16(), err.code().unwrap_or("-"))
}

/// The changes, one word each (an instance row with the state it is put in).
pub(super) fn changes(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            Change::PutInstance(row) => format!("put {} {}", row.state.as_str(), row.operation_id),
            Change::InsertOperation(op) => format!("insert {} {}", op.kind.as_str(), op.id),
            Change::FailOperation { id, .. } => format!("fail {id}"),
            Change::DeleteBindings => "delete-bindings".into(),
            Change::InsertBinding(row) => format!("bind {}", row.id),
            Change::DeleteBinding => "unbind".into(),
            Change::Audit(entry) => format!("audit {}", entry.action),
        })
        .collect()
}

fn provision_request() -> ProvisionRequest {
    ProvisionRequest {
        service_id: SERVICE.into(),
        plan_id: PLAN.into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        context: Some(json!({"platform": "test"})),
        parameters: Some(json!({"plugins": []})),
        maintenance_version: None,
    }
}

const STARTS_PROVISION: &[&str] = &["put provisioning op-new", "insert provision op-new", "audit provision"];

#[test]
fn provision_matrix() {
    use InstanceState::*;
    let with = |edit: fn(&mut ProvisionRequest)| {
        let mut request = provision_request();
        edit(&mut request);
        request
    };
    // (case, stored state, request, plan cap, instances of the plan, answer, changes)
    let rows: Vec<(&str, Option<InstanceState>, ProvisionRequest, u64, u64, &str, &[&str])> = vec![
        ("a new id starts a provision", None, provision_request(), 0, 7, "202 op-new", STARTS_PROVISION),
        (
            "a tombstone's id starts a provision",
            Some(Deleted),
            provision_request(),
            0,
            0,
            "202 op-new",
            STARTS_PROVISION,
        ),
        ("a new id under the plan cap", None, provision_request(), 3, 2, "202 op-new", STARTS_PROVISION),
        ("a new id over the plan cap", None, provision_request(), 3, 3, "422 InstanceLimitReached", &[]),
        ("identical while provisioning", Some(Provisioning), provision_request(), 0, 1, "202 op-running", &[]),
        ("identical once ready", Some(Ready), provision_request(), 0, 1, "200", &[]),
        ("identical while updating", Some(Updating), provision_request(), 0, 1, "200", &[]),
        ("identical once failed", Some(Failed), provision_request(), 0, 1, "409 Conflict", &[]),
        (
            "identical while deprovisioning",
            Some(Deprovisioning),
            provision_request(),
            0,
            1,
            "422 ConcurrencyError",
            &[],
        ),
        ("identical on a full plan is still a replay", Some(Ready), provision_request(), 1, 1, "200", &[]),
        (
            "identical but for the context (not compared)",
            Some(Ready),
            with(|r| r.context = Some(json!({"other": 1}))),
            0,
            1,
            "200",
            &[],
        ),
        ("absent parameters are {} stored", Some(Ready), with(|r| r.parameters = None), 0, 1, "409 Conflict", &[]),
        ("another plan", Some(Ready), with(|r| r.plan_id = OTHER_PLAN.into()), 0, 1, "409 Conflict", &[]),
        ("another service", Some(Ready), with(|r| r.service_id = "svc-2".into()), 0, 1, "409 Conflict", &[]),
        ("another organization", Some(Ready), with(|r| r.organization_guid = "o2".into()), 0, 1, "409 Conflict", &[]),
        ("another space", Some(Ready), with(|r| r.space_guid = "s2".into()), 0, 1, "409 Conflict", &[]),
        (
            "other parameters",
            Some(Provisioning),
            with(|r| r.parameters = Some(json!({"plugins": [{"name": "x"}]}))),
            0,
            1,
            "409 Conflict",
            &[],
        ),
        (
            "the maintenance version it runs",
            Some(Ready),
            with(|r| r.maintenance_version = Some("1.0.0".into())),
            0,
            1,
            "200",
            &[],
        ),
        (
            "another maintenance version",
            Some(Ready),
            with(|r| r.maintenance_version = Some("2.0.0".into())),
            0,
            1,
            "409 Conflict",
            &[],
        ),
    ];
    for (case, state, request, cap, count, answer, written) in rows {
        let stored = state.map(instance);
        let input = Provision {
            request,
            plan_version: Some("1.0.0".into()),
            cap,
            operation: new_operation(OperationKind::Provision),
            audit: audit("provision"),
        };
        let decision = provision(input, view(stored.as_ref(), None, count));
        assert_eq!(instance_answer(&decision.answer), answer, "{case}: answer");
        assert_eq!(changes(&decision.changes), written.to_vec(), "{case}: changes");
    }
}

#[test]
fn a_new_instance_keeps_the_request_and_the_plans_maintenance_version() {
    let input = Provision {
        request: provision_request(),
        plan_version: Some("3.1.0".into()),
        cap: 0,
        operation: new_operation(OperationKind::Provision),
        audit: audit("provision"),
    };
    let decision = provision(input, view(None, None, 0));
    let Change::PutInstance(row) = &decision.changes[0] else { panic!("the instance is put first") };
    assert_eq!(row.id, "i1");
    assert_eq!((row.service_id.as_str(), row.plan_id.as_str()), (SERVICE, PLAN));
    assert_eq!((row.organization_guid.as_str(), row.space_guid.as_str()), ("org", "space"));
    assert!(same_json(row.parameters.as_ref(), Some(&json!({"plugins": []}))));
    assert!(same_json(row.context.as_ref(), Some(&json!({"platform": "test"}))));
    assert_eq!(row.maintenance_version.as_deref(), Some("3.1.0"));
}

fn update_request(plan_id: &str, parameters: Option<Value>, version: Option<&str>) -> UpdateRequest {
    UpdateRequest {
        plan_id: plan_id.into(),
        parameters,
        maintenance_version: version.map(str::to_string),
        sealed: None,
    }
}

const STARTS_UPDATE: &[&str] = &["put updating op-new", "insert update op-new", "audit update"];

#[test]
fn update_matrix() {
    use InstanceState::*;
    let same = || update_request(PLAN, Some(json!({"plugins": []})), Some("1.0.0"));
    let other_parameters = || update_request(PLAN, Some(json!({"plugins": [{"name": "x"}]})), Some("1.0.0"));
    let running_update = |request: &UpdateRequest| {
        let mut op = operation("op-running", OperationKind::Update, OperationState::InProgress, NOW + 600_000);
        op.request = OperationRequest::Update(request.clone());
        op
    };
    let running_provision = operation("op-running", OperationKind::Provision, OperationState::InProgress, NOW + 1);
    // (case, stored state, its latest operation, request, answer, changes)
    let rows: Vec<(&str, Option<InstanceState>, Option<OperationRow>, UpdateRequest, &str, &[&str])> = vec![
        ("no instance", None, None, same(), "404 NotFound", &[]),
        ("a tombstone", Some(Deleted), None, same(), "404 NotFound", &[]),
        ("ready, nothing changes", Some(Ready), None, same(), "200", &[]),
        ("ready, new parameters", Some(Ready), None, other_parameters(), "202 op-new", STARTS_UPDATE),
        (
            "ready, the same parameters in another key order",
            Some(Ready),
            None,
            update_request(PLAN, Some(serde_json::from_str(r#"{"plugins":[]}"#).unwrap()), Some("1.0.0")),
            "200",
            &[],
        ),
        (
            "ready, a plan change",
            Some(Ready),
            None,
            update_request(OTHER_PLAN, None, None),
            "202 op-new",
            STARTS_UPDATE,
        ),
        (
            "ready, a new maintenance version",
            Some(Ready),
            None,
            update_request(PLAN, Some(json!({"plugins": []})), Some("2.0.0")),
            "202 op-new",
            STARTS_UPDATE,
        ),
        (
            "updating, the same update replayed",
            Some(Updating),
            Some(running_update(&other_parameters())),
            other_parameters(),
            "202 op-running",
            &[],
        ),
        (
            "updating, another update",
            Some(Updating),
            Some(running_update(&other_parameters())),
            same(),
            "422 ConcurrencyError",
            &[],
        ),
        (
            "updating, but the latest operation is no update",
            Some(Updating),
            Some(running_provision.clone()),
            same(),
            "422 ConcurrencyError",
            &[],
        ),
        ("provisioning", Some(Provisioning), Some(running_provision), same(), "422 ConcurrencyError", &[]),
        ("deprovisioning", Some(Deprovisioning), None, same(), "422 ConcurrencyError", &[]),
        ("failed", Some(Failed), None, same(), "422 InstanceFailed", &[]),
    ];
    for (case, state, latest, request, answer, written) in rows {
        let stored = state.map(instance);
        let input =
            Update { request, operation: new_operation(OperationKind::Update), audit: audit("update"), now_ms: NOW };
        let decision = update(input, view(stored.as_ref(), latest.as_ref(), 0));
        assert_eq!(instance_answer(&decision.answer), answer, "{case}: answer");
        assert_eq!(changes(&decision.changes), written.to_vec(), "{case}: changes");
    }
}

#[test]
fn plan_changes_and_maintenance_versions_are_checked_before_the_state() {
    let moves: &[(&str, PlanMove, Option<&str>)] = &[
        ("the same plan", PlanMove::default(), None),
        (
            "between updateable plans",
            PlanMove { changes: true, from_updateable: true, to_updateable: true, ..PlanMove::default() },
            None,
        ),
        (
            "from a plan that is not updateable",
            PlanMove { changes: true, to_updateable: true, ..PlanMove::default() },
            Some("this instance's plan cannot be changed"),
        ),
        (
            "to a plan that is not updateable",
            PlanMove { changes: true, from_updateable: true, ..PlanMove::default() },
            Some("this instance's plan cannot be changed"),
        ),
        (
            "from a validator plan",
            PlanMove {
                changes: true,
                from_updateable: true,
                to_updateable: true,
                from_validator: true,
                ..PlanMove::default()
            },
            Some("validator instances cannot change plan"),
        ),
        (
            "to a validator plan",
            PlanMove {
                changes: true,
                from_updateable: true,
                to_updateable: true,
                to_validator: true,
                ..PlanMove::default()
            },
            Some("validator instances cannot change plan"),
        ),
        (
            "a validator staying on its plan",
            PlanMove { from_validator: true, to_validator: true, ..PlanMove::default() },
            None,
        ),
    ];
    for (case, plans, refusal) in moves {
        match (plan_change(*plans), refusal) {
            (Ok(()), None) => {}
            (Err(err), Some(text)) => {
                assert_eq!(refused(&err), "422 PlanChangeNotSupported", "{case}");
                assert_eq!(err.update_repeatable(), Some(false), "{case}: the platform must not retry");
                assert!(err.description().starts_with(text), "{case}: {}", err.description());
            }
            (got, _) => panic!("{case}: {got:?}"),
        }
    }
    let versions: &[(&str, Option<&str>, Option<&str>, Option<&str>)] = &[
        ("none asked", Some("1.0.0"), None, None),
        ("none asked, the plan has none", None, None, None),
        ("the plan's", Some("1.0.0"), Some("1.0.0"), None),
        ("another", Some("1.0.0"), Some("0.9.0"), Some("422 MaintenanceInfoConflict")),
        ("one where the plan has none", None, Some("1.0.0"), Some("422 MaintenanceInfoConflict")),
    ];
    for (case, plan, requested, expected) in versions {
        assert_eq!(maintenance(*plan, *requested).err().as_ref().map(refused).as_deref(), *expected, "{case}");
    }
}

const STARTS_DEPROVISION: &[&str] =
    &["put deprovisioning op-new", "insert deprovision op-new", "delete-bindings", "audit deprovision"];
const SUPERSEDES: &[&str] = &[
    "fail op-running",
    "put deprovisioning op-new",
    "insert deprovision op-new",
    "delete-bindings",
    "audit deprovision",
];

#[test]
fn deprovision_matrix() {
    use InstanceState::*;
    let running = |kind, deadline_ms| operation("op-running", kind, OperationState::InProgress, deadline_ms);
    let (live, overdue) = (NOW + 1, NOW - 1);
    // (case, stored state, its latest operation, query ids, answer, changes)
    let rows: Vec<(&str, Option<InstanceState>, Option<OperationRow>, (&str, &str), &str, &[&str])> = vec![
        ("no instance", None, None, (SERVICE, PLAN), "410 Gone", &[]),
        ("a tombstone", Some(Deleted), None, (SERVICE, PLAN), "410 Gone", &[]),
        ("ready", Some(Ready), None, (SERVICE, PLAN), "202 op-new", STARTS_DEPROVISION),
        ("failed", Some(Failed), None, (SERVICE, PLAN), "202 op-new", STARTS_DEPROVISION),
        (
            "being deprovisioned",
            Some(Deprovisioning),
            Some(running(OperationKind::Deprovision, live)),
            (SERVICE, PLAN),
            "202 op-running",
            &[],
        ),
        (
            "still provisioning",
            Some(Provisioning),
            Some(running(OperationKind::Provision, live)),
            (SERVICE, PLAN),
            "422 ConcurrencyError",
            &[],
        ),
        (
            "being updated",
            Some(Updating),
            Some(running(OperationKind::Update, live)),
            (SERVICE, PLAN),
            "422 ConcurrencyError",
            &[],
        ),
        (
            "a provision past its deadline is superseded",
            Some(Provisioning),
            Some(running(OperationKind::Provision, overdue)),
            (SERVICE, PLAN),
            "202 op-new",
            SUPERSEDES,
        ),
        (
            "an update past its deadline is superseded",
            Some(Updating),
            Some(running(OperationKind::Update, overdue)),
            (SERVICE, PLAN),
            "202 op-new",
            SUPERSEDES,
        ),
        (
            "a deprovision past its deadline is started again",
            Some(Deprovisioning),
            Some(running(OperationKind::Deprovision, overdue)),
            (SERVICE, PLAN),
            "202 op-new",
            SUPERSEDES,
        ),
        (
            "a finished operation past its deadline holds nothing",
            Some(Updating),
            Some(operation("op-running", OperationKind::Update, OperationState::Succeeded, overdue)),
            (SERVICE, PLAN),
            "422 ConcurrencyError",
            &[],
        ),
        ("another service id", Some(Ready), None, ("svc-2", PLAN), "400 BadRequest", &[]),
        ("another plan id", Some(Ready), None, (SERVICE, OTHER_PLAN), "400 BadRequest", &[]),
        (
            "other ids are refused whatever the state",
            Some(Deprovisioning),
            Some(running(OperationKind::Deprovision, live)),
            (SERVICE, OTHER_PLAN),
            "400 BadRequest",
            &[],
        ),
    ];
    for (case, state, latest, (service_id, plan_id), answer, written) in rows {
        let stored = state.map(instance);
        let input = Deprovision {
            service_id: service_id.into(),
            plan_id: plan_id.into(),
            audit: audit("deprovision"),
            now_ms: NOW,
        };
        let decision = deprovision(
            input,
            |_| new_operation(OperationKind::Deprovision),
            view(stored.as_ref(), latest.as_ref(), 0),
        );
        assert_eq!(instance_answer(&decision.answer), answer, "{case}: answer");
        assert_eq!(changes(&decision.changes), written.to_vec(), "{case}: changes");
    }
}

#[test]
fn stored_json_compares_as_json_with_absent_and_empty_alike() {
    let cases: &[(&str, Option<&str>, Option<Value>, bool)] = &[
        ("both absent", None, None, true),
        ("absent and {}", None, Some(json!({})), true),
        ("{} and absent", Some("{}"), None, true),
        ("key order ignored", Some(r#"{"b":1,"a":2}"#), Some(json!({"a": 2, "b": 1})), true),
        ("other values", Some(r#"{"a":1}"#), Some(json!({"a": 2})), false),
        ("stored and absent", Some(r#"{"a":1}"#), None, false),
    ];
    for (case, stored, given, same) in cases {
        let stored: Option<Value> = stored.map(|text| serde_json::from_str(text).unwrap());
        assert_eq!(same_json(stored.as_ref(), given.as_ref()), *same, "{case}");
    }
}
