//! Each instance's dashboard: reachable only with its token, rendered on the server (the first
//! answer carries the figures, so a browser with JavaScript off shows them), and rendered by a
//! real browser (headless Chromium, Debian's `chromium`): a busy RPC instance's usage with
//! refusals kept apart from failures, the same after a graceful restart, at phone width; and a
//! validator instance's keys with what a real Lodestar beacon node says of them.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::broker::*;
use support::lodestar::{KEYSTORE_PASSWORD, PLAN_VALIDATOR, keystore, pubkey, validator_plan};
use support::process::Ovsb;
use support::{Anvil, NodeReaper, free_port, rpc};

/// Debian's Chromium, if installed (tests/run-all.sh installs it).
fn chromium() -> String {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            let found = Command::new("which").arg(name).output().ok()?;
            found.status.success().then(|| String::from_utf8_lossy(&found.stdout).trim().to_string())
        })
        .expect("Chromium is not installed: tests/run-all.sh installs Debian's chromium")
}

/// Headless Chromium with a fresh profile under `dir` (named `profile`) and `args`; its stdout.
fn headless(dir: &Path, profile: &str, args: &[&str]) -> String {
    let output = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", dir.join(profile).display()))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The served page `html` as Chromium lays it out in a frame 375 px wide with its scripts off
/// (a sandboxed frame: what the first paint shows, on a phone): the frame's (clientWidth,
/// scrollWidth), and the DOM of its `<main>` as the browser built it.
fn first_paint_on_a_phone(dir: &Path, html: &str) -> (u32, u32, String) {
    std::fs::write(dir.join("page.html"), html).unwrap();
    let wrapper = r#"<!doctype html><html><body style="margin:0">
<iframe id="f" src="page.html" sandbox="allow-same-origin" style="width:375px;height:2400px;border:0"></iframe>
<script>
const f = document.getElementById('f');
f.addEventListener('load', () => {
  const d = f.contentDocument;
  document.body.dataset.widths = d.documentElement.clientWidth + ' ' + d.documentElement.scrollWidth;
  document.body.dataset.scriptRan = d.body.dataset.live === 'true' ? 'yes' : 'no';
  const main = d.querySelector('main');
  if (main) document.body.appendChild(document.importNode(main, true));
});
</script></body></html>"#;
    std::fs::write(dir.join("phone.html"), wrapper).unwrap();
    let url = format!("file://{}", dir.join("phone.html").display());
    let dom =
        headless(dir, "phone", &["--allow-file-access-from-files", "--virtual-time-budget=3000", "--dump-dom", &url]);
    assert!(dom.contains(r#"data-script-ran="no""#), "the frame ran no script: {dom}");
    let widths = dom.split(r#"data-widths=""#).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
    let widths: Vec<u32> = widths.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(widths.len(), 2, "the frame was measured: {dom}");
    (widths[0], widths[1], dom)
}

/// A screenshot of `url` at `width`×`height`, kept in `OVSB_KEEP_SCREENSHOT_DIR` if set.
fn screenshot(dir: &Path, profile: &str, url: &str, (width, height): (u32, u32), name: &str) {
    let shot = dir.join(name);
    headless(
        dir,
        profile,
        &[
            "--virtual-time-budget=3000",
            &format!("--window-size={width},{height}"),
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
            url,
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 10_000, "a rendered page, not a blank one ({} bytes)", png.len());
    if let Ok(keep) = std::env::var("OVSB_KEEP_SCREENSHOT_DIR") {
        std::fs::copy(&shot, Path::new(&keep).join(name)).unwrap();
    }
}

/// Fetches `url` and returns (status, Content-Security-Policy, body).
async fn fetch(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let csp =
        response.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, csp, response.text().await.unwrap())
}

/// The texts of `<text class="{class}" …>TEXT</text>` in an SVG chart.
fn axis_labels(html: &str, class: &str) -> Vec<String> {
    let start = format!(r#"<text class="{class}""#);
    html.split(&start).skip(1).filter_map(|rest| Some(rest.split_once('>')?.1.split_once('<')?.0.to_string())).collect()
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

    // Before any call: no chart, a plain "No calls yet".
    let (_, _, page) = fetch(&url).await;
    assert!(page.contains(r#"<p class="empty" id="no-calls">No calls yet</p>"#), "{page}");
    assert!(!page.contains(r#"<svg class="chart""#), "{page}");

    let bound = osb.bind("dash", "b", PLAN_SHARED).await;
    let uri = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    for _ in 0..25 {
        rpc(&uri, "eth_blockNumber", json!([])).await;
    }
    rpc(&uri, "no_such_method", json!([])).await;

    // The feed.
    let (path, query) = url.split_once('?').unwrap();
    let data: Value = reqwest::get(format!("{path}/data?{query}")).await.unwrap().json().await.unwrap();
    assert_eq!(data["state"], "ready");
    assert_eq!(data["plan"], "shared");
    assert_eq!(data["chain"], json!([{"name": "test", "fail_open": false}, {"name": "pass", "fail_open": true}]));
    let calls: u64 = data["traffic"].as_array().unwrap().iter().map(|p| p[1].as_u64().unwrap()).sum();
    let errors: u64 = data["traffic"].as_array().unwrap().iter().map(|p| p[2].as_u64().unwrap()).sum();
    assert_eq!((calls, errors), (26, 1), "{data}");
    let day = &data["usage"]["last_24h"];
    // The unknown method is refused by the gateway's rule, at no cost; it is not a failure.
    assert_eq!(
        (day["calls"].as_u64(), day["answered"].as_u64(), day["refused_rule"].as_u64(), day["failed_node"].as_u64()),
        (Some(26), Some(25), Some(1), Some(0)),
        "{data}"
    );
    assert_eq!(day["compute_units"], 250, "{data}");
    assert_eq!(data["node"]["state"], "in_sync", "{data}");
    // No token, a wrong token, another instance's token: nothing.
    for bad in [path.to_string(), format!("{path}?token=x"), format!("{}/dashboard/other?{query}", osb.base)] {
        assert_eq!(reqwest::get(&bad).await.unwrap().status(), 404, "{bad}");
    }
    let (_, csp, page) = fetch(&url).await;
    assert!(csp.contains("default-src 'none'") && csp.contains("img-src 'none'"), "no logo, no images: {csp}");
    assert!(page.contains("instance <span id=\"instance\">dash</span>"));

    // The page as a browser renders it (its script on).
    let dir = tempfile::tempdir().unwrap();
    let dom = headless(dir.path(), "profile", &["--virtual-time-budget=3000", "--dump-dom", &url]);
    assert!(dom.contains(r#"data-live="true""#), "the script runs under the page's CSP: {dom}");
    assert!(dom.contains(r#"<span id="state" class="state ready">ready</span>"#), "{dom}");
    assert!(dom.contains("<li>pass (fail-open)</li>"), "{dom}");
    assert!(dom.contains(r#"<span id="calls">26</span>"#), "{dom}");
    screenshot(dir.path(), "profile2", &url, (1200, 900), "dashboard.png");
}

const PROVIDER: &str = "Acme <RPC> & Co";
const LOGO: &str = "https://127.0.0.1:9/acme.svg";

/// An `ovsb serve` configuration: the test catalog over `node`, the rate-limit plugin, a
/// provider's name and logo, usage flushed only at stop (an hour's interval).
fn busy_config(dir: &Path, node: &str) -> String {
    let config = test_config_toml_with(node, free_port(), "");
    format!(
        r#"data_dir = "{data}"

[usage]
flush_interval_ms = 3600000

[[plugins]]
name = "rate-limit"
path = "{plugin}"
schema = "{schema}"
{config}
[broker.dashboard]
provider_name = "{provider}"
logo_url = "{LOGO}"
"#,
        data = dir.join("data").display(),
        plugin = ovsb_test_artifacts::RATE_LIMIT_PLUGIN,
        schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/rate-limit/schema.json").display(),
        provider = PROVIDER.replace('"', "\\\""),
    )
}

/// What the busy instance's page must show, at first paint, before and after the restart.
fn assert_busy_figures(page: &str) {
    assert!(page.contains(r#"<span id="calls">9</span>"#), "{page}");
    assert!(page.contains(r#"<span id="compute-units">102</span>"#), "{page}");
    // The customer's own rate limit is a refusal, apart from the node's failure.
    for (id, n) in [
        ("answered", 7),
        ("call-errors", 0),
        ("refused-rule", 1),
        ("refused-limit", 0),
        ("failed-plugin", 0),
        ("failed-node", 1),
        ("failed-internal", 0),
    ] {
        assert!(page.contains(&format!(r#"<td id="{id}">{n}</td>"#)), "{id} = {n}: {page}");
    }
    // Per binding and per method: calls, compute units, answered, refused, failed.
    for row in [
        "<td class=\"id\">web</td><td>5</td><td>30</td><td>4</td><td>1</td><td>0</td>",
        "<td class=\"id\">bot</td><td>4</td><td>72</td><td>3</td><td>0</td><td>1</td>",
        "<td class=\"id\">eth_blockNumber</td><td>6</td><td>50</td><td>4</td><td>1</td><td>1</td>",
        "<td class=\"id\">eth_call</td><td>2</td><td>52</td><td>2</td><td>0</td><td>0</td>",
        "<td class=\"id\">eth_chainId</td><td>1</td><td>0</td><td>1</td><td>0</td><td>0</td>",
    ] {
        assert!(page.contains(row), "{row}: {page}");
    }
    // Two charts, each with a time axis, a y axis of distinct whole numbers from 0, and a
    // legend that names refusals and failures apart.
    assert_eq!(page.matches(r#"<svg class="chart""#).count(), 2, "{page}");
    let times = axis_labels(page, "x");
    assert!(times.len() >= 6, "{times:?}");
    assert!(
        times.iter().all(|t| t.len() == 5 && t.as_bytes()[2] == b':' && t.replace(':', "").parse::<u32>().is_ok()),
        "{times:?}"
    );
    for chart in page.split(r#"<svg class="chart""#).skip(1) {
        let chart = chart.split("</svg>").next().unwrap();
        let ticks: Vec<u64> = axis_labels(chart, "y").iter().map(|t| t.parse().unwrap()).collect();
        assert_eq!(ticks.first(), Some(&0), "{ticks:?}");
        assert!(ticks.windows(2).all(|w| w[0] < w[1]), "no repeated tick: {ticks:?}");
        assert!(*ticks.last().unwrap() <= 10, "a scale for a few calls: {ticks:?}");
    }
    assert!(page.contains("Refused by rules and limits (rate limit, allowlist, quota) <b>1</b>"), "{page}");
    assert!(page.contains("Failed (plugin, node) <b>1</b>"), "{page}");
    assert!(page.contains("Answered <b>7</b>"), "{page}");
}

/// Two bindings of one instance make known calls: the rate limit the customer set refuses one,
/// the node fails one (it is gone). The page shows, at first paint (JavaScript off), the
/// totals, the outcomes with the refusal apart from the failure, each binding's and method's
/// calls and compute units, two charts with their axes and legends, the provider's name and
/// logo; the node's head block while it runs and "unreachable" once it is gone; the same
/// figures after a graceful restart (they come from the store); and nothing wider than a phone's
/// 375 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_rpc_dashboard_shows_its_figures_at_first_paint_the_same_after_a_restart_and_fits_a_phone() {
    let mut anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = busy_config(dir.path(), &anvil.http_url());
    let ports = (free_port(), free_port());
    let mut first = Ovsb::start_on(dir.path(), "first", &config, ports);
    let osb = &first.osb;
    let limit = json!({"plugins": [{"name": "rate-limit", "config": {"requests_per_second": 0.000001, "burst": 4}}]});
    let resp = osb.provision("shop", PLAN_SHARED, Some(limit)).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let url = resp.body["dashboard_url"].as_str().unwrap().to_string();
    assert_eq!(osb.wait("shop").await["state"], "succeeded");
    let bind = |binding: &'static str| async move {
        let bound = osb.bind("shop", binding, PLAN_SHARED).await;
        assert_eq!(bound.status, 201, "{bound:?}");
        bound.body["credentials"]["uri"].as_str().unwrap().to_string()
    };
    let (web, bot) = (bind("web").await, bind("bot").await);

    // web: 4 answered (its bucket holds 4), then its own rate limit refuses one.
    for method in ["eth_blockNumber", "eth_blockNumber", "eth_blockNumber", "eth_chainId"] {
        let answer = rpc(&web, method, json!([])).await;
        assert!(answer.get("result").is_some(), "{answer}");
    }
    let refused = rpc(&web, "eth_blockNumber", json!([])).await;
    assert_eq!(refused["error"]["code"], -32005, "{refused}");
    // bot: 3 answered.
    let call = json!([{"to": "0x0000000000000000000000000000000000000001", "data": "0x"}, "latest"]);
    for (method, params) in [("eth_call", call.clone()), ("eth_call", call), ("eth_blockNumber", json!([]))] {
        let answer = rpc(&bot, method, params).await;
        assert!(answer.get("result").is_some(), "{answer}");
    }

    // While the node runs: its head block, in sync.
    let (status, csp, page) = fetch(&url).await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"block <span id="head">0</span>"#) && page.contains("in sync"), "{page}");
    assert!(csp.contains("img-src https://127.0.0.1:9;"), "the logo's origin, and only it: {csp}");

    // The node goes: bot's next call fails there.
    anvil.kill();
    let failed = rpc(&bot, "eth_blockNumber", json!([])).await;
    assert_eq!(failed["error"]["code"], -32002, "{failed}");

    let (status, _, page) = fetch(&url).await;
    assert_eq!(status, 200, "{page}");
    assert_busy_figures(&page);
    assert!(page.contains(r#"<span id="sync" class="bad">unreachable</span>"#), "{page}");
    assert!(page.contains("Acme &lt;RPC&gt; &amp; Co") && !page.contains(PROVIDER), "escaped: {page}");
    assert!(page.contains(&format!(r#"<img class="logo" src="{LOGO}""#)), "{page}");

    // The browser's first paint, its scripts off, in a phone's 375 px: the same figures, and
    // nothing wider than the screen.
    let shots = tempfile::tempdir().unwrap();
    let (width, scroll_width, dom) = first_paint_on_a_phone(shots.path(), &page);
    assert_eq!(width, 375);
    assert!(scroll_width <= 375, "the page is {scroll_width} px wide on a 375 px screen");
    assert_busy_figures(&dom);
    // With its script on, as a browser shows it.
    let dom = headless(shots.path(), "js", &["--virtual-time-budget=3000", "--dump-dom", &url]);
    assert!(dom.contains(r#"data-live="true""#), "{dom}");
    assert_busy_figures(&dom);
    let phone = format!("file://{}", shots.path().join("phone.html").display());
    screenshot(shots.path(), "phone-shot", &phone, (500, 2400), "dashboard-phone.png");
    screenshot(shots.path(), "wide-shot", &url, (1200, 1400), "dashboard-busy.png");

    // A graceful restart flushes the meters; the next process reads the same from the store.
    assert!(first.terminate(Duration::from_secs(30)).success());
    let second = Ovsb::start_on(dir.path(), "second", &config, ports);
    second.osb.wait("shop").await;
    let (status, _, page) = fetch(&url).await;
    assert_eq!(status, 200, "{page}");
    assert_busy_figures(&page);
}

/// A validator instance of a real Lodestar client: its dashboard lists its key with the beacon
/// node's status and balance, its duty, and the fee recipient; never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_dashboard_lists_its_keys_with_status_and_balance_from_a_real_beacon_node() {
    const FEE: &str = "0x00000000000000000000000000000000000000bb";
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let _reaper = NodeReaper(dir.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let key3 = keystore(3, keys.path());
    let pk3 = pubkey(&key3);
    let db = TestDb::new(Db::Sqlite, dir.path()).await;
    let plans = validator_plan(&anvil.http_url());
    let broker = TestBroker::start_with_plans(dir, db, &anvil.http_url(), free_port(), &plans, |c| {
        // A busy 2-core machine: give the client time to answer (the page waits at most this).
        c.broker.dashboard.node_timeout_ms = 10_000;
    })
    .await;
    let osb = &broker.osb;
    let params = json!({"keystores": [key3], "passwords": [KEYSTORE_PASSWORD], "fee_recipient": FEE});
    let resp = osb.provision("vd", PLAN_VALIDATOR, Some(params)).await;
    assert_eq!(resp.status, 202, "{resp:?}");
    let url = resp.body["dashboard_url"].as_str().unwrap().to_string();
    let done = osb.finished("vd").await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let (status, _, page) = fetch(&url).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Validator keys") && page.contains(&pk3), "the key is listed: {page}");
    assert!(page.contains(&format!(r#"<code class="id" id="fee-recipient">{FEE}</code>"#)), "{page}");
    assert!(page.contains("Beacon node: head slot"), "the beacon node answered: {page}");
    let row = page.split(&pk3).nth(1).and_then(|rest| rest.split("</tr>").next()).unwrap_or_default();
    assert!(row.contains(r#"<td class="status">active_"#), "the beacon node's status: {row}");
    assert!(row.contains(" ETH</td>"), "its balance: {row}");
    assert!(row.contains(FEE), "its fee recipient, as the keymanager says: {row}");
    let ciphertext = key3["crypto"]["cipher"]["message"].as_str().unwrap();
    assert!(!page.contains(KEYSTORE_PASSWORD) && !page.contains(ciphertext), "no secret on the page");

    // The feed says the same; the browser shows it with JavaScript off.
    let (path, query) = url.split_once('?').unwrap();
    let data: Value = reqwest::get(format!("{path}/data?{query}")).await.unwrap().json().await.unwrap();
    let key = &data["validator"]["keys"][0];
    assert_eq!(key["pubkey"], pk3.as_str(), "{data}");
    assert!(key["status"].as_str().unwrap().starts_with("active_"), "{data}");
    assert!(key["balance_gwei"].as_u64().unwrap() > 31_000_000_000, "{data}");
    let shots = tempfile::tempdir().unwrap();
    let (width, scroll_width, dom) = first_paint_on_a_phone(shots.path(), &page);
    assert!(dom.contains(&pk3) && dom.contains("active_"), "{dom}");
    assert!(width == 375 && scroll_width <= 375, "a key of 98 characters wraps on a phone: {scroll_width}");
    screenshot(shots.path(), "shot", &url, (1200, 1000), "dashboard-validator.png");
    broker.stop().await;
}
