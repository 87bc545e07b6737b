//! What metering adds per call, in process, and how fast a flush writes with 10,000 active
//! bindings. Not a timed test: it prints figures.
//!
//! `cargo bench -p ovsb --bench usage_meter [-- ROUNDS]` (PostgreSQL too when
//! `OVSB_TEST_POSTGRES_URL` names a server in which a database may be created).
//!
//! 1. `meter`: the hot-path hook (`usage::admit` + `usage::meter`) for one binding, without and
//!    with a quota, one thread; then two threads on two bindings (no shared lock).
//! 2. `flush`: 10,000 bindings with three methods each in the current minute (30,000 rows), flushed
//!    to SQLite (a file) and PostgreSQL: rows written per second, statements of `flush_batch_rows`.

#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ovsb::config::{Config, QuotaDecl, QuotaScope, QuotaWindow};
use ovsb::usage::{BindingMeter, InstanceUsage, PlanUsage, Usage};

const METHODS: [&str; 3] = ["eth_blockNumber", "eth_call", "eth_getLogs"];

fn per_call(calls: u64, elapsed: Duration) -> f64 {
    elapsed.as_nanos() as f64 / calls as f64
}

fn metering(instance: &InstanceUsage, meter: &BindingMeter, calls: u64) -> Duration {
    let started = Instant::now();
    for i in 0..calls {
        let method = METHODS[(i % 3) as usize];
        let _ = std::hint::black_box(ovsb::usage::admit(instance, meter));
        ovsb::usage::meter(instance, meter, method, "ok", 120);
    }
    started.elapsed()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn bench_meter(rounds: usize) {
    const CALLS: u64 = 1_000_000;
    let settings = ovsb::config::UsageSettings::default();
    let plain = InstanceUsage::for_plan(Arc::new(PlanUsage::new(&settings, "p", None)), None);
    let mut plan = ovsb::config::PlanDecl::clone(&quota_plan());
    plan.usage.quota = Some(QuotaDecl { compute_units: u64::MAX, window: QuotaWindow::Day, per: QuotaScope::Binding });
    let quota = InstanceUsage::for_plan(Arc::new(PlanUsage::new(&settings, "q", Some(&plan))), None);
    for (name, instance) in [("no quota", &plain), ("quota per binding", &quota)] {
        let samples: Vec<f64> = (0..rounds)
            .map(|_| {
                let meter = BindingMeter::detached("i", "b");
                per_call(CALLS, metering(instance, &meter, CALLS))
            })
            .collect();
        println!("meter, one thread, {name:<18} median {:>6.1} ns/call over {rounds} x {CALLS}", median(samples));
    }
    let samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let instance = InstanceUsage::for_plan(plain.plan.clone(), None);
                    std::thread::spawn(move || {
                        let meter = BindingMeter::detached("i", &format!("b{t}"));
                        per_call(CALLS, metering(&instance, &meter, CALLS))
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum::<f64>() / 2.0
        })
        .collect();
    println!("meter, two threads, two bindings    median {:>6.1} ns/call per thread", median(samples));
}

fn quota_plan() -> ovsb::config::PlanDecl {
    toml::from_str(
        r#"
id = "q"
name = "q"
description = "q"
driver = { kind = "upstream", http = ["http://127.0.0.1:9"] }
"#,
    )
    .unwrap()
}

async fn bench_flush(name: &str, url: &str, rounds: usize) {
    const BINDINGS: usize = 10_000;
    let store = ovsb::store::Store::open(url).await.unwrap();
    let usage = Usage::new(&Config::default(), "bench-replica");
    let instances: Vec<Arc<InstanceUsage>> =
        (0..BINDINGS / 10).map(|i| usage.instance(&format!("i{i}"), "p")).collect();
    let meters: Vec<Arc<BindingMeter>> =
        (0..BINDINGS).map(|b| usage.binding(&format!("i{}", b / 10), &format!("b{b}"))).collect();
    let mut rates = Vec::new();
    for round in 0..rounds {
        for (b, meter) in meters.iter().enumerate() {
            for method in METHODS {
                ovsb::usage::meter(&instances[b / 10], meter, method, "ok", 100);
            }
        }
        let started = Instant::now();
        let rows = usage.flush(&store).await.unwrap();
        let elapsed = started.elapsed();
        rates.push(rows as f64 / elapsed.as_secs_f64());
        println!("flush {name:<10} round {round}: {rows} rows in {:>7.1} ms", elapsed.as_secs_f64() * 1000.0);
    }
    println!("flush {name:<10} median {:>9.0} rows/s ({BINDINGS} bindings x {} methods)", median(rates), METHODS.len());
    store.close().await;
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5).clamp(1, 50);
    bench_meter(rounds);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        bench_flush("sqlite", &format!("sqlite://{}", dir.path().join("bench.db").display()), rounds).await;
        if let Ok(admin) = std::env::var("OVSB_TEST_POSTGRES_URL") {
            use sqlx::Connection as _;
            let name = format!("ovsb_bench_{}", ovsb::store::random_id());
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base).to_string();
            bench_flush("postgres", &format!("{base}/{name}"), rounds).await;
            sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
        }
    });
}
