//! How long from `PUT /v2/service_instances/:id` to the first `eth_blockNumber` served through
//! the new binding, for a `devnet` plan (a new anvil per instance, process driver) and for a
//! shared plan (an existing anvil, upstream driver). Not a timed test: it prints figures.
//!
//! `cargo bench -p ovsb --bench provision_latency [-- ROUNDS]`

#![allow(missing_docs)]

#[path = "../tests/all/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::broker::{Db, OsbClient, PLAN_SHARED, TestBroker};
use support::{Anvil, anvil_binary, rpc};

const PLAN_DEVNET: &str = "plan-devnet";

async fn put_to_served(osb: &OsbClient, id: &str, plan: &str) -> Duration {
    let started = Instant::now();
    let resp = osb.provision(id, plan, None).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    loop {
        let poll = osb.last_operation(id).await;
        match poll.body["state"].as_str() {
            Some("succeeded") => break,
            Some("in progress") => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => panic!("{poll:?}"),
        }
    }
    let bound = osb.bind(id, "b", plan).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    let answer = rpc(&uri, "eth_blockNumber", json!([])).await;
    assert!(answer.get("result").is_some(), "{answer}");
    started.elapsed()
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} n={:<3} min {:>7.1} ms  median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[samples.len() - 1]),
    );
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let anvil = Anvil::start(&[]);
        let anvil_path = anvil_binary();
        let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |config| {
            let plan = format!(
                r#"
id = "{PLAN_DEVNET}"
name = "devnet"
description = "an anvil per instance"
[driver]
kind = "process"
command = ["{}", "--host", "127.0.0.1", "--port", "{{port}}", "--quiet"]
ports = [30000, 30999]
"#,
                anvil_path.display()
            );
            config.services[0].plans.push(toml::from_str(&plan).unwrap());
        })
        .await;
        let mut shared = Vec::new();
        let mut devnet = Vec::new();
        for round in 0..rounds {
            shared.push(put_to_served(&broker.osb, &format!("s{round}"), PLAN_SHARED).await);
            devnet.push(put_to_served(&broker.osb, &format!("d{round}"), PLAN_DEVNET).await);
        }
        report("shared plan (upstream)", shared);
        report("devnet plan (anvil/instance)", devnet);
    });
}
