//! The OSB state matrix of bindings (bind, rotation, unbind), table by table: each row names
//! the case, the state the store holds, the request, the answer (status and OSB error code) and
//! the changes written. A decision changed in [`super`] fails a row here.

// Each table is a list of tuples, its fields named in the comment above it.
#![allow(clippy::type_complexity)]

use serde_json::{Value, json};

use super::tests::{NOW, OTHER_PLAN, PLAN, SERVICE, audit, binding_answer, changes, instance};
use super::*;

fn binding(id: &str, parameters: Option<Value>, predecessor: Option<&str>) -> BindingRow {
    BindingRow {
        instance_id: "i1".into(),
        id: id.into(),
        service_id: SERVICE.into(),
        plan_id: PLAN.into(),
        parameters,
        bind_resource: None,
        context: None,
        key_salt: "00".into(),
        key_sha256: "ff".into(),
        created_ms: NOW,
        predecessor_id: predecessor.map(str::to_string),
        expires_ms: None,
    }
}

fn bind_request(parameters: Option<Value>, predecessor: Option<&str>) -> BindRequest {
    BindRequest {
        predecessor: predecessor.map(str::to_string),
        context: None,
        parameters,
        bind_resource: None,
        service_id: Some(SERVICE.into()),
        plan_id: Some(PLAN.into()),
    }
}

const CREATES: &[&str] = &["bind b1", "audit bind"];

#[test]
fn bind_matrix() {
    use InstanceState::*;
    let origins = || Some(json!({"allowed_origins": ["https://a.example"]}));
    let expired = BindingRow { expires_ms: Some(NOW), ..binding("b0", None, None) };
    // (case, instance state, existing binding, predecessor binding, request, the row's plan, answer, changes)
    let rows: Vec<(
        &str,
        Option<InstanceState>,
        Option<BindingRow>,
        Option<BindingRow>,
        BindRequest,
        &str,
        &str,
        &[&str],
    )> = vec![
        ("no instance", None, None, None, bind_request(None, None), PLAN, "404 NotFound", &[]),
        ("a tombstone", Some(Deleted), None, None, bind_request(None, None), PLAN, "404 NotFound", &[]),
        ("new, the instance ready", Some(Ready), None, None, bind_request(None, None), PLAN, "201 b1", CREATES),
        ("new, the instance updating", Some(Updating), None, None, bind_request(None, None), PLAN, "201 b1", CREATES),
        (
            "new, the instance still provisioning",
            Some(Provisioning),
            None,
            None,
            bind_request(None, None),
            PLAN,
            "422 ConcurrencyError",
            &[],
        ),
        (
            "new, the instance being deprovisioned",
            Some(Deprovisioning),
            None,
            None,
            bind_request(None, None),
            PLAN,
            "422 ConcurrencyError",
            &[],
        ),
        (
            "new, the instance failed",
            Some(Failed),
            None,
            None,
            bind_request(None, None),
            PLAN,
            "422 InstanceFailed",
            &[],
        ),
        (
            "new, another plan than the instance's",
            Some(Ready),
            None,
            None,
            bind_request(None, None),
            OTHER_PLAN,
            "400 BadRequest",
            &[],
        ),
        (
            "identical",
            Some(Ready),
            Some(binding("b1", origins(), None)),
            None,
            bind_request(origins(), None),
            PLAN,
            "200 b1",
            &[],
        ),
        (
            "identical, whatever the instance is doing",
            Some(Deprovisioning),
            Some(binding("b1", None, None)),
            None,
            bind_request(Some(json!({})), None),
            PLAN,
            "200 b1",
            &[],
        ),
        (
            "other parameters",
            Some(Ready),
            Some(binding("b1", origins(), None)),
            None,
            bind_request(None, None),
            PLAN,
            "409 Conflict",
            &[],
        ),
        (
            "another plan",
            Some(Ready),
            Some(binding("b1", None, None)),
            None,
            bind_request(None, None),
            OTHER_PLAN,
            "409 Conflict",
            &[],
        ),
        (
            "a rotation of a live predecessor",
            Some(Ready),
            None,
            Some(binding("b0", origins(), None)),
            bind_request(None, Some("b0")),
            PLAN,
            "201 b1",
            &["bind b1", "audit bind"],
        ),
        (
            "a rotation of an unknown predecessor",
            Some(Ready),
            None,
            None,
            bind_request(None, Some("b0")),
            PLAN,
            "400 BadRequest",
            &[],
        ),
        (
            "a rotation of an expired predecessor",
            Some(Ready),
            None,
            Some(expired),
            bind_request(None, Some("b0")),
            PLAN,
            "400 BadRequest",
            &[],
        ),
        (
            "a replayed rotation, its predecessor gone",
            Some(Ready),
            Some(binding("b1", origins(), Some("b0"))),
            None,
            bind_request(None, Some("b0")),
            PLAN,
            "200 b1",
            &[],
        ),
        (
            "a rotation replayed naming another predecessor",
            Some(Ready),
            Some(binding("b1", None, Some("b0"))),
            None,
            bind_request(None, Some("b9")),
            PLAN,
            "409 Conflict",
            &[],
        ),
    ];
    for (case, state, existing, previous, request, plan, answer, written) in rows {
        let stored = state.map(instance);
        let mut row = binding("b1", request.parameters.clone(), request.predecessor.as_deref());
        row.plan_id = plan.into();
        let input = Bind { request, row, audit: audit("bind"), now_ms: NOW };
        let decision = bind(input, stored.as_ref(), existing.as_ref(), previous.as_ref());
        assert_eq!(binding_answer(&decision.answer), answer, "{case}: answer");
        assert_eq!(changes(&decision.changes), written.to_vec(), "{case}: changes");
    }
}

#[test]
fn a_rotation_takes_what_it_does_not_give_from_its_predecessor() {
    let previous = BindingRow {
        bind_resource: Some(json!({"app_guid": "a"})),
        ..binding("b0", Some(json!({"allowed_origins": ["https://a.example"]})), None)
    };
    let inherit = |request: BindRequest| {
        let row = binding("b1", request.parameters.clone(), request.predecessor.as_deref());
        let decision = bind(
            Bind { request, row, audit: audit("rotate"), now_ms: NOW },
            Some(&instance(InstanceState::Ready)),
            None,
            Some(&previous),
        );
        match decision.answer {
            BindingOutcome::Created(row) => row,
            other => panic!("{other:?}"),
        }
    };
    let row = inherit(bind_request(None, Some("b0")));
    assert_eq!((row.parameters, row.bind_resource), (previous.parameters.clone(), previous.bind_resource.clone()));
    let given = json!({"allowed_origins": ["https://b.example"]});
    let row = inherit(bind_request(Some(given.clone()), Some("b0")));
    assert!(same_json(row.parameters.as_ref(), Some(&given)), "what it gives wins");
    assert_eq!(row.predecessor_id.as_deref(), Some("b0"));
}

#[test]
fn unbind_matrix() {
    use InstanceState::*;
    let on_old_plan = binding("b1", None, None);
    let moved = InstanceRow { plan_id: OTHER_PLAN.into(), ..instance(Ready) };
    // (case, instance, binding, query ids, answer, changes)
    let rows: Vec<(&str, Option<InstanceRow>, Option<BindingRow>, (&str, &str), &str, &[&str])> = vec![
        (
            "an existing binding",
            Some(instance(Ready)),
            Some(binding("b1", None, None)),
            (SERVICE, PLAN),
            "200",
            &["unbind", "audit unbind"],
        ),
        ("a missing binding", Some(instance(Ready)), None, (SERVICE, PLAN), "410 Gone", &[]),
        ("no instance, no binding", None, None, (SERVICE, PLAN), "410 Gone", &[]),
        (
            "the bindings of an instance being deprovisioned are gone",
            Some(instance(Deprovisioning)),
            None,
            (SERVICE, PLAN),
            "410 Gone",
            &[],
        ),
        (
            "another service id",
            Some(instance(Ready)),
            Some(binding("b1", None, None)),
            ("svc-2", PLAN),
            "400 BadRequest",
            &[],
        ),
        (
            "another plan id",
            Some(instance(Ready)),
            Some(binding("b1", None, None)),
            (SERVICE, OTHER_PLAN),
            "400 BadRequest",
            &[],
        ),
        (
            "the plan the binding was made on, after a plan change",
            Some(moved.clone()),
            Some(on_old_plan.clone()),
            (SERVICE, PLAN),
            "200",
            &["unbind", "audit unbind"],
        ),
        (
            "the instance's plan now",
            Some(moved),
            Some(on_old_plan),
            (SERVICE, OTHER_PLAN),
            "200",
            &["unbind", "audit unbind"],
        ),
        ("other ids, but nothing to delete", Some(instance(Ready)), None, ("svc-2", OTHER_PLAN), "410 Gone", &[]),
    ];
    for (case, stored, existing, (service_id, plan_id), answer, written) in rows {
        let decision = unbind(service_id, plan_id, audit("unbind"), stored.as_ref(), existing.as_ref());
        assert_eq!(binding_answer(&decision.answer), answer, "{case}: answer");
        assert_eq!(changes(&decision.changes), written.to_vec(), "{case}: changes");
    }
}
