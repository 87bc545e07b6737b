//! Each instance's dashboard: reachable only with its token, fed with the instance's state,
//! chain and traffic, and rendered by a real browser (headless Chromium, Debian's `chromium`).

use crate::support;

use std::process::Command;

use serde_json::json;
use support::broker::*;
use support::{Anvil, rpc};

/// Debian's Chromium, if installed (tests/run-all.sh installs it).
fn chromium() -> Option<String> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let found = Command::new("which").arg(name).output().ok()?;
        found.status.success().then(|| String::from_utf8_lossy(&found.stdout).trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_state_chain_and_traffic_and_renders_in_chromium() {
    let anvil = Anvil::start(&[]);
    let broker = TestBroker::start(Db::Sqlite, &anvil.http_url(), |_| {}).await;
    let osb = &broker.osb;
    let chain = json!({"plugins": [{"name": "test", "config": {"mode": "pass"}}, {"name": "pass", "fail_open": true}]});
    let resp = osb.provision("dash", PLAN_SHARED, Some(chain)).await;
    assert_eq!(resp.status, 202);
    let url = resp.body["dashboard_url"].as_str().expect("the first answer carries the dashboard").to_string();
    assert!(url.starts_with(&format!("{}/dashboard/dash?token=", osb.base)), "{url}");
    assert_eq!(osb.wait("dash").await["state"], "succeeded");
    let fetched = osb.call(reqwest::Method::GET, "/v2/service_instances/dash", None).await;
    assert_eq!(fetched.body["dashboard_url"], url.as_str());
    let bound = osb.bind("dash", "b", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    for _ in 0..25 {
        rpc(&uri, "eth_blockNumber", json!([])).await;
    }
    rpc(&uri, "no_such_method", json!([])).await;

    // The feed.
    let (path, query) = url.split_once('?').unwrap();
    let data: serde_json::Value = reqwest::get(format!("{path}/data?{query}")).await.unwrap().json().await.unwrap();
    assert_eq!(data["state"], "ready");
    assert_eq!(data["plan"], "shared");
    assert_eq!(data["chain"], json!([{"name": "test", "fail_open": false}, {"name": "pass", "fail_open": true}]));
    let calls: u64 = data["traffic"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
    let errors: u64 = data["traffic"].as_array().unwrap().iter().map(|p| p[2].as_u64().unwrap()).sum();
    assert_eq!((calls, errors), (26, 1), "{data}");
    // No token, a wrong token, another instance's token: nothing.
    for bad in [path.to_string(), format!("{path}?token=x"), format!("{}/dashboard/other?{query}", osb.base)] {
        assert_eq!(reqwest::get(&bad).await.unwrap().status(), 404, "{bad}");
    }
    let page = reqwest::get(&url).await.unwrap();
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(page.text().await.unwrap().contains("instance <span id=\"instance\">dash</span>"));

    // The page as a browser renders it, after its script has loaded the feed.
    let Some(chromium) = chromium() else {
        panic!("Chromium is not installed: tests/run-all.sh installs Debian's chromium");
    };
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("dashboard.png");
    let dom = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains(r#"data-loaded="true""#), "the script loaded the feed: {dom}");
    assert!(dom.contains(r#"<div id="state" class="state ready">ready</div>"#), "{dom}");
    assert!(dom.contains("<li>pass (fail-open)</li>"), "{dom}");
    assert!(dom.contains(r#"<span id="total">26</span>"#), "{dom}");
    let status = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", dir.path().join("profile2").display()))
        .args(["--virtual-time-budget=5000", "--window-size=1200,700", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .status()
        .unwrap();
    assert!(status.success());
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "a rendered page, not a blank one ({} bytes)", png.len());
    if let Ok(keep) = std::env::var("OVSB_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
