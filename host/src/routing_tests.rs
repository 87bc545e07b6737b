//! Routing's pure parts: when a built route is kept, key digests.

use super::*;
use crate::store::InstanceState;

fn instance(plan_id: &str, parameters: Option<&str>) -> InstanceRow {
    InstanceRow {
        id: "i1".into(),
        service_id: "svc".into(),
        plan_id: plan_id.into(),
        organization_guid: "org".into(),
        space_guid: "space".into(),
        parameters: parameters.map(|text| serde_json::from_str(text).unwrap()),
        context: None,
        maintenance_version: None,
        state: InstanceState::Ready,
        operation_id: "op".into(),
        created_ms: 0,
        updated_ms: 0,
    }
}

fn owner(replica_id: &str, http_url: Option<&str>) -> NodeOwner {
    NodeOwner { replica_id: replica_id.into(), http_url: http_url.map(str::to_string), ws_url: None }
}

#[test]
fn a_route_is_kept_only_for_the_plan_parameters_and_node_it_was_built_with() {
    let params = Some(r#"{"plugins":[]}"#);
    let a = owner("a", Some("http://10.0.0.1:8545"));
    let cases: &[(&str, InstanceRow, Option<NodeOwner>, bool, bool)] = &[
        ("the same instance and node", instance("p", params), Some(a.clone()), false, true),
        ("another plan", instance("q", params), Some(a.clone()), false, false),
        ("other parameters", instance("p", Some(r#"{"plugins":[{"name":"x"}]}"#)), Some(a.clone()), false, false),
        ("parameters removed", instance("p", None), Some(a.clone()), false, false),
        ("another owner", instance("p", params), Some(owner("b", Some("http://10.0.0.1:8545"))), false, false),
        ("the node moved", instance("p", params), Some(owner("a", Some("http://10.0.0.2:8545"))), false, false),
        ("no owner any more", instance("p", params), None, false, false),
        ("built without a node to reach", instance("p", params), Some(a.clone()), true, false),
    ];
    let built: Option<serde_json::Value> = params.map(|text| serde_json::from_str(text).unwrap());
    for (case, now, node, nodeless, kept) in cases {
        assert_eq!(keeps_route("p", built.as_ref(), Some(&a), *nodeless, now, node.as_ref()), *kept, "{case}");
    }
    // Shared plans have no owner at all.
    assert!(keeps_route("p", None, None, false, &instance("p", None), None));
}

#[test]
fn a_key_digest_is_32_bytes_of_hex() {
    let hex_text = "ab".repeat(32);
    assert_eq!(decode_digest(&hex_text), Some([0xab; 32]));
    assert_eq!(decode_digest(&"AB".repeat(32)), Some([0xab; 32]), "either case");
    for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32)] {
        assert_eq!(decode_digest(bad), None, "{bad:?}");
    }
}
