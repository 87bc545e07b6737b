//! Identical subscriptions of an instance share one subscription at the node, fanned out to each
//! subscriber with its own id and its own bounded queue (issue #29).

use futures::{SinkExt, StreamExt};
use ovsb::gateway::GatewayConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{SECOND, Ws, read_logs, subscribe};
use crate::support::{Anvil, TestGateway, deploy_emitter, emit, rpc};

/// `ovsb_gateway_node_subscriptions{instance}` now.
fn node_subscriptions(instance: &str) -> i64 {
    let metrics = ovsb::telemetry::metrics().encode();
    let series = format!(r#"ovsb_gateway_node_subscriptions{{instance="{instance}"}} "#);
    metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

/// Waits (up to 10 s) for the gauge to read `expected`: the node's unsubscribe is asynchronous.
async fn node_subscriptions_become(instance: &str, expected: i64) -> i64 {
    for _ in 0..100 {
        if node_subscriptions(instance) == expected {
            break;
        }
        tokio::time::sleep(SECOND / 10).await;
    }
    node_subscriptions(instance)
}

/// The next `eth_subscription` notification on `ws`: its subscription id and result.
async fn notification(ws: &mut Ws) -> (String, Value) {
    loop {
        let frame = tokio::time::timeout(10 * SECOND, ws.next()).await.expect("a notification").unwrap().unwrap();
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["method"] == "eth_subscription" {
            return (
                message["params"]["subscription"].as_str().unwrap().to_string(),
                message["params"]["result"].clone(),
            );
        }
    }
}

async fn unsubscribe(ws: &mut Ws, id: u64, subscription: &str) -> Value {
    let request = json!({"jsonrpc": "2.0", "id": id, "method": "eth_unsubscribe", "params": [subscription]});
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(10 * SECOND, ws.next()).await.expect("an answer").unwrap().unwrap();
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["id"] == id {
            return message["result"].clone();
        }
    }
}

#[tokio::test]
async fn identical_subscriptions_share_one_at_the_node_and_each_subscriber_gets_every_notification() {
    let anvil = Anvil::start(&[]);
    let node = anvil.http_url();
    let contract = deploy_emitter(&node).await;
    let gw = TestGateway::start(GatewayConfig::default()).await;
    let instance = gw.instance("merged", std::slice::from_ref(&node), &[anvil.ws_url()], &[], 10 * SECOND).await;
    let (a, b) = (gw.bind(&instance, "a"), gw.bind(&instance, "b"));
    let (mut ws_a, _) = tokio_tungstenite::connect_async(gw.ws_url(&a)).await.unwrap();
    let (mut ws_b, _) = tokio_tungstenite::connect_async(gw.ws_url(&b)).await.unwrap();

    let heads_a = subscribe(&mut ws_a, 1, json!(["newHeads"])).await.expect("subscribed");
    let heads_b = subscribe(&mut ws_b, 1, json!(["newHeads"])).await.expect("subscribed");
    assert_ne!(heads_a, heads_b, "each subscriber has its own id");
    assert_eq!(node_subscriptions("merged"), 1, "two newHeads subscribers, one subscription at the node");
    // The same logs filter, written two ways: one more at the node, not two.
    let logs_a = subscribe(&mut ws_a, 2, json!(["logs", {"address": contract, "topics": []}])).await.unwrap();
    let filter_b: Value =
        serde_json::from_str(&format!(r#"["logs", {{"topics": [], "address": "{contract}"}}]"#)).unwrap();
    let logs_b = subscribe(&mut ws_b, 2, filter_b).await.unwrap();
    assert_eq!(node_subscriptions("merged"), 2);

    // Each gets every head and every log, under its own subscription id.
    for _ in 0..3 {
        rpc(&node, "evm_mine", json!([])).await;
    }
    emit(&node, &contract, 2).await;
    for (ws, heads, logs) in [(&mut ws_a, &heads_a, &logs_a), (&mut ws_b, &heads_b, &logs_b)] {
        let mut seen = (0, 0);
        while seen != (4, 2) {
            let (subscription, _) = notification(ws).await;
            if &subscription == heads {
                seen.0 += 1;
            } else {
                assert_eq!(&subscription, logs, "a notification of another subscriber's id");
                seen.1 += 1;
            }
        }
    }

    // One leaves: the other keeps its heads, and the node subscription stays.
    assert_eq!(unsubscribe(&mut ws_a, 3, &heads_a).await, true);
    rpc(&node, "evm_mine", json!([])).await;
    assert_eq!(notification(&mut ws_b).await.0, heads_b);
    assert_eq!(node_subscriptions("merged"), 2);
    // The last one leaves: the node subscription goes.
    assert_eq!(unsubscribe(&mut ws_b, 3, &heads_b).await, true);
    assert_eq!(node_subscriptions_become("merged", 1).await, 1, "newHeads is unsubscribed at the node");
    drop((ws_a, ws_b));
    assert_eq!(node_subscriptions_become("merged", 0).await, 0, "the logs subscription goes with its sockets");
}

/// Two subscribers of the same logs: one reads each burst as it comes, the other never reads.
/// The reader gets every log; the other, once more than its queue waits for it, is closed
/// with 4008 after what it was sent, with no gap. (The bursts are paced so that the reader
/// keeps up in a debug build; what is tested is that the other does not hold it up.)
#[tokio::test]
async fn a_subscriber_that_stops_reading_ends_with_4008_while_the_other_gets_every_log() {
    let anvil = Anvil::start(&[]);
    let mut config = GatewayConfig::default();
    config.subscriptions.buffer = 1024;
    let gw = TestGateway::start(config).await;
    let instance = gw.instance("merged-slow", &[anvil.http_url()], &[anvil.ws_url()], &[], 10 * SECOND).await;
    let (slow_key, fast_key) = (gw.bind(&instance, "slow"), gw.bind(&instance, "fast"));
    let node = anvil.http_url();
    let contract = deploy_emitter(&node).await;

    // A client with a small receive buffer, so the kernel does not hold much for it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(socket.connect(gw.addr).await.unwrap());
    let (mut slow, _) = tokio_tungstenite::client_async(gw.ws_url(&slow_key), stream).await.unwrap();
    let (mut fast, _) = tokio_tungstenite::connect_async(gw.ws_url(&fast_key)).await.unwrap();
    let filter = json!(["logs", {"address": contract}]);
    subscribe(&mut slow, 1, filter.clone()).await.expect("subscribed");
    subscribe(&mut fast, 1, filter).await.expect("subscribed");
    assert_eq!(node_subscriptions("merged-slow"), 1);

    // 30 bursts of 500 logs: 15,000 in all, far past the other's queue of 1024.
    for burst in 0..30 {
        emit(&node, &contract, 500).await;
        let (seen, closed) = read_logs(&mut fast, 500).await;
        assert_eq!(closed, None, "burst {burst}: the reader is not held up by the other subscriber");
        assert_eq!(seen, (0..500).collect::<Vec<_>>(), "burst {burst}: all of them, in order");
    }
    let (seen, closed) = read_logs(&mut slow, 15_000).await;
    assert_eq!(closed, Some(4008), "closed with the documented code after {} logs", seen.len());
    let expected: Vec<u64> = (0..seen.len()).map(|n| (n % 500) as u64).collect();
    assert_eq!(seen, expected, "what arrived has no gap");
    assert_eq!(node_subscriptions("merged-slow"), 1, "the reader still holds the node subscription");
}
