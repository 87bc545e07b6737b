//! Swapping plugins without a restart: a real `ovsb serve` process, a real anvil, a plugin file
//! replaced on disk, then SIGHUP or `POST /reload` on the admin listener.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;
use support::broker::*;
use support::process::Ovsb;
use support::{Anvil, free_port, rpc};

/// The test configuration with one more plugin, `swap`, read from `swap` (a file the test
/// replaces), and the admin listener on `admin_port`.
fn config(node: &str, swap: &Path, admin_port: u16) -> String {
    let config = test_config_toml(node, free_port())
        .replacen("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""), 1)
        .replacen(
            "[[plugins]]\nname = \"pass\"",
            &format!("[[plugins]]\nname = \"swap\"\npath = \"{}\"\n\n[[plugins]]\nname = \"pass\"", swap.display()),
            1,
        );
    assert!(config.contains(&format!("127.0.0.1:{admin_port}")) && config.contains("name = \"swap\""));
    config
}

/// Replaces `path` by the bytes `with` the way a deploy does: a new file renamed over the old.
fn replace_file(path: &Path, with: &[u8]) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, with).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn metrics(admin_port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.unwrap().text().await.unwrap()
}

fn loaded_line(plugin: &str, sha256: &str) -> String {
    format!("ovsb_plugin_loaded{{plugin=\"{plugin}\",sha256=\"{sha256}\"}} 1")
}

/// Provisions `id` on the shared plan with the chain `[swap]`, binds it; the endpoint's URL.
async fn endpoint(ovsb: &Ovsb, id: &str) -> String {
    ovsb.osb.ready_instance(id, PLAN_SHARED, Some(json!({"plugins": [{"name": "swap"}]}))).await;
    let bound = ovsb.osb.bind(id, &format!("{id}-b"), PLAN_SHARED).await;
    assert_eq!(bound.status, 201, "{bound:?}");
    bound.body["credentials"]["uri"].as_str().unwrap().to_string()
}

/// Waits until `probe` holds, or fails with `what` after 30 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut probe: F) {
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `eth_blockNumber` on `url` from four clients until `stop`; counts calls and failures
/// (anything but a result).
fn steady_load(
    url: &str,
    stop: &Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers = (0..4)
        .map(|_| {
            let (url, stop, calls, failures) = (url.to_string(), stop.clone(), calls.clone(), failures.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []});
                while !stop.load(Ordering::Relaxed) {
                    let answer = match client.post(&url).json(&body).send().await {
                        Ok(resp) => resp.json::<Value>().await.ok(),
                        Err(_) => None,
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    if !answer.as_ref().is_some_and(|a| a["result"].is_string()) {
                        failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed call under reload: {answer:?}");
                    }
                }
            })
        })
        .collect();
    (calls, failures, workers)
}

fn sighup(pid: u32) {
    assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
}

/// Under a steady load of calls, a plugin's file is replaced and ovsb gets SIGHUP: every call
/// succeeds, the answers switch to the new version, `/metrics` shows its digest; a broken new
/// file then leaves that version serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_a_plugin_under_load_and_a_broken_file_leaves_the_running_one() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let swap = dir.path().join("swap.wasm");
    let pass = std::fs::read(ovsb_test_artifacts::PASS_PLUGIN).unwrap();
    let hello = std::fs::read(ovsb_test_artifacts::HELLO_PLUGIN).unwrap();
    std::fs::write(&swap, &pass).unwrap();
    let admin = free_port();
    let mut config = config(&anvil.http_url(), &swap, admin);
    config.insert_str(0, &format!("data_dir = \"{}\"\n", dir.path().join("data").display()));
    let ovsb = Ovsb::start(dir.path(), "ovsb", &config);
    let url = endpoint(&ovsb, "r1").await;

    // The pass-through version sends `hello_world` to the node, which does not know it.
    let before = rpc(&url, "hello_world", json!([])).await;
    assert!(before["error"].is_object(), "{before}");
    assert!(metrics(admin).await.contains(&loaded_line("swap", &sha256_hex(&pass))));

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures, workers) = steady_load(&url, &stop);
    eventually("the load is running", async || calls.load(Ordering::Relaxed) > 20).await;

    replace_file(&swap, &hello);
    sighup(ovsb.pid());
    eventually("the new version answers hello_world", async || {
        rpc(&url, "hello_world", json!([])).await["result"] == "hello from r1"
    })
    .await;
    assert!(metrics(admin).await.contains(&loaded_line("swap", &sha256_hex(&hello))));
    let at_swap = calls.load(Ordering::Relaxed);

    // A broken file: the running version stays, and says why in the log.
    replace_file(&swap, b"\0asm this is not a component");
    sighup(ovsb.pid());
    let log = dir.path().join("ovsb.log");
    eventually("the log says the broken file was not taken", async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("plugin not reloaded, its running version stays")
    })
    .await;
    assert_eq!(rpc(&url, "hello_world", json!([])).await["result"], "hello from r1");
    let page = metrics(admin).await;
    assert!(page.contains(&loaded_line("swap", &sha256_hex(&hello))), "{page}");
    assert!(page.contains("ovsb_plugin_reloads_total{outcome=\"failed\"} 1"), "{page}");

    eventually("calls went on after the swaps", async || calls.load(Ordering::Relaxed) > at_swap + 20).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {} calls", calls.load(Ordering::Relaxed));
}

/// `POST /reload` answers with what it did: 200 when everything was taken; 422 when a new
/// version refuses an instance's configuration (that instance keeps its chain, and says so);
/// 409 when the configuration file no longer validates (nothing changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_reports_what_it_took_and_what_kept_running() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let swap = dir.path().join("swap.wasm");
    std::fs::write(&swap, std::fs::read(ovsb_test_artifacts::PASS_PLUGIN).unwrap()).unwrap();
    let admin = free_port();
    let mut config = config(&anvil.http_url(), &swap, admin);
    config.insert_str(0, &format!("data_dir = \"{}\"\n", dir.path().join("data").display()));
    let ovsb = Ovsb::start(dir.path(), "ovsb", &config);
    let url = endpoint(&ovsb, "r2").await;
    let reload = async || {
        let resp = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{admin}/reload"))
            .header("X-Ovsb-Reload", "1")
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };

    // Without the header (what a web page could send): refused, nothing reloaded.
    let bare = reqwest::Client::new().post(format!("http://127.0.0.1:{admin}/reload")).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 400);
    let page = metrics(admin).await;
    assert!(page.contains("ovsb_plugin_reloads_total{outcome=\"unchanged\"} 0"), "nothing was reloaded: {page}");

    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"]["changed"], json!([]), "{body}");

    // `ovsb reload --config FILE` finds this server through the files it wrote in its data
    // directory (its PID, its admin address) and prints the same report.
    let data = dir.path().join("data");
    let pid: u32 = std::fs::read_to_string(data.join("ovsb.pid")).unwrap().trim().parse().unwrap();
    assert_eq!(pid, ovsb.pid(), "ovsb.pid holds the server's process id");
    let command = std::process::Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["reload", "--config"])
        .arg(dir.path().join("ovsb.toml"))
        .output()
        .unwrap();
    assert!(command.status.success(), "{}", String::from_utf8_lossy(&command.stderr));
    let printed: Value = serde_json::from_slice(&command.stdout).unwrap();
    assert_eq!(printed["plugins"]["changed"], json!([]), "{printed}");
    assert!(body["plugins"]["unchanged"].as_array().unwrap().contains(&json!("swap")), "{body}");

    replace_file(&swap, &std::fs::read(ovsb_test_artifacts::HELLO_PLUGIN).unwrap());
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"]["changed"], json!(["swap"]), "{body}");
    assert_eq!(body["routes"]["rebuilt"], 1, "{body}");
    // Rebuilt before the answer: the next call runs the new version.
    assert_eq!(rpc(&url, "hello_world", json!([])).await["result"], "hello from r2");

    // Limits alone are a new version too: the route is rebuilt with them. The file's limit is
    // checked against the running runtime (its slots are not resized by a reload).
    let file = dir.path().join("ovsb.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let with_limits = |limits: &str| {
        text.replacen(
            &format!("path = \"{}\"\n", swap.display()),
            &format!("path = \"{}\"\n[plugins.limits]\n{limits}\n", swap.display()),
            1,
        )
    };
    std::fs::write(&file, with_limits("call_budget_ms = 200")).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["plugins"]["changed"].clone(), body["routes"]["rebuilt"].clone()), (json!(["swap"]), json!(1)));
    std::fs::write(&file, with_limits("memory_bytes = 1099511627776")).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 409, "the whole file is checked first: {body}");
    std::fs::write(&file, with_limits("call_budget_ms = 200")).unwrap();

    // method-filter refuses a chain entry without configuration: r2 keeps the hello version,
    // and /metrics shows which version its routes run.
    let hello_sha = sha256_hex(&std::fs::read(ovsb_test_artifacts::HELLO_PLUGIN).unwrap());
    let filter = std::fs::read(ovsb_test_artifacts::METHOD_FILTER_PLUGIN).unwrap();
    replace_file(&swap, &filter);
    let (status, body) = reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["routes"]["kept_previous"], json!(["r2"]), "{body}");
    assert_eq!(rpc(&url, "hello_world", json!([])).await["result"], "hello from r2");
    assert_eq!(rpc(&url, "eth_chainId", json!([])).await["result"], "0x7a69");
    let page = metrics(admin).await;
    assert!(page.contains(&loaded_line("swap", &sha256_hex(&filter))), "{page}");
    assert!(page.contains(&format!("ovsb_plugin_instances{{plugin=\"swap\",sha256=\"{hello_sha}\"}} 1")), "{page}");
    // Not tried again with the version it refused: a bind on r2 works and keeps it serving.
    let another = ovsb.osb.bind("r2", "r2-c", PLAN_SHARED).await;
    assert_eq!(another.status, 201, "{another:?}");
    let other_url = another.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&other_url, "hello_world", json!([])).await["result"], "hello from r2");
    let (status, body) = reload().await;
    assert_eq!((status, body["routes"]["kept_previous"].clone()), (200, json!([])), "{body}");

    // A configuration file that no longer validates is refused as a whole.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("name = \"swap\"", "name = \"Not A Slug\"", 1)).unwrap();
    let (status, body) = reload().await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Not A Slug"), "{body}");
    assert_eq!(rpc(&url, "hello_world", json!([])).await["result"], "hello from r2");
}

/// `POST /reload` with the admin header: its status and body.
async fn post_reload(admin: u16) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{admin}/reload"))
        .header("X-Ovsb-Reload", "1")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
}

/// A plugin declared anew is added by a reload, with no restart: one client calls through a
/// binding in a loop and another provisions and binds in a loop throughout, and not one call or
/// request fails; the new plugin is then in the catalog and usable in a provision.
/// `ovsb plugin compile` filled the compile cache first, so the reload loads it from there.
/// Removing a plugin that an instance or a plan uses is refused (422, naming them) and changes
/// nothing; once its instance is gone, a reload removes it. The log says what the answer says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_plugin_under_load_and_removes_one_no_longer_used() {
    let anvil = Anvil::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let swap = dir.path().join("swap.wasm");
    std::fs::write(&swap, std::fs::read(ovsb_test_artifacts::PASS_PLUGIN).unwrap()).unwrap();
    let admin = free_port();
    let mut config = config(&anvil.http_url(), &swap, admin);
    config.insert_str(0, &format!("data_dir = \"{}\"\n", dir.path().join("data").display()));
    let ovsb = Ovsb::start(dir.path(), "ovsb", &config);
    let url = endpoint(&ovsb, "steady").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures, workers) = steady_load(&url, &stop);
    // The second client: provisions and binds, one instance after the other, until stopped.
    let provisioner = {
        let (osb, stop) = (ovsb.osb.clone(), stop.clone());
        tokio::spawn(async move {
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("p{made}");
                osb.ready_instance(&id, PLAN_SHARED, None).await;
                let bound = osb.bind(&id, &format!("{id}-b"), PLAN_SHARED).await;
                assert_eq!(bound.status, 201, "{bound:?}");
                made += 1;
            }
            made
        })
    };
    eventually("the load is running", async || calls.load(Ordering::Relaxed) > 20).await;

    // A new plugin in the file, compiled ahead into the cache the server reads.
    let file = dir.path().join("ovsb.toml");
    let without = std::fs::read_to_string(&file).unwrap();
    let with = without.replacen(
        "[[plugins]]\nname = \"pass\"",
        &format!(
            "[[plugins]]\nname = \"hello\"\npath = \"{}\"\n\n[[plugins]]\nname = \"pass\"",
            ovsb_test_artifacts::HELLO_PLUGIN
        ),
        1,
    );
    std::fs::write(&file, &with).unwrap();
    let compile = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ovsb"))
            .args(["plugin", "compile", "--config"])
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let said = compile(&file);
    assert!(said.contains("hello: compiled") && said.contains("swap: already in the compile cache"), "{said}");
    assert!(compile(&file).contains("hello: already in the compile cache"));

    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["outcome"].clone(), body["plugins"]["added"].clone()), (json!("complete"), json!(["hello"])));
    let log = std::fs::read_to_string(dir.path().join("ovsb.log")).unwrap();
    let loaded = log.lines().find(|l| l.contains("plugin=hello") && l.contains("plugin loaded from the compile cache"));
    assert!(loaded.is_some(), "the reload read the compiled plugin from the cache:\n{log}");
    assert!(log.lines().any(|l| l.contains("plugins reloaded") && l.contains("added=hello")), "{log}");
    let catalog = ovsb.osb.call(reqwest::Method::GET, "/v2/catalog", None).await;
    assert!(catalog.body.to_string().contains("\"hello\""), "the catalog names the new plugin");

    // Usable at once, while the load goes on.
    ovsb.osb.ready_instance("with-hello", PLAN_SHARED, Some(json!({"plugins": [{"name": "hello"}]}))).await;
    let bound = ovsb.osb.bind("with-hello", "with-hello-b", PLAN_SHARED).await;
    let hello_url = bound.body["credentials"]["uri"].as_str().unwrap().to_string();
    assert_eq!(rpc(&hello_url, "hello_world", json!([])).await["result"], "hello from with-hello");
    let at_add = calls.load(Ordering::Relaxed);
    eventually("calls went on after the reload", async || calls.load(Ordering::Relaxed) > at_add + 20).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let made = provisioner.await.unwrap();
    assert!(made >= 1, "the second client provisioned and bound throughout");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {} calls", calls.load(Ordering::Relaxed));

    // Removing a plugin still in use is refused as a whole, naming who uses it.
    std::fs::write(&file, &without).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["outcome"], "refused", "{body}");
    assert_eq!(body["in_use"], json!([{"plugin": "hello", "by": "instance", "id": "with-hello"}]), "{body}");
    assert!(body["error"].as_str().unwrap().contains("with-hello"), "{body}");
    assert_eq!(rpc(&hello_url, "hello_world", json!([])).await["result"], "hello from with-hello");
    // The plan `other` runs `test`: a file without both validates, but the running plan keeps it.
    let test_block = format!("[[plugins]]\nname = \"test\"\npath = \"{}\"\n", ovsb_test_artifacts::TEST_PLUGIN);
    let plan_chain = "plugins = [{ name = \"test\", config = { mode = \"respond\", tag = \"plan-default\" } }]\n";
    assert!(with.contains(&test_block) && with.contains(plan_chain));
    std::fs::write(&file, with.replacen(&test_block, "", 1).replacen(plan_chain, "", 1)).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["in_use"].as_array().unwrap().iter().any(|u| u["plugin"] == "test" && u["by"] == "plan"), "{body}");
    let log = std::fs::read_to_string(dir.path().join("ovsb.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("plugin reload refused") && l.contains("with-hello")), "{log}");

    // Once nothing uses it, a reload removes it: no longer in the catalog or a provision.
    assert_eq!(ovsb.osb.deprovision("with-hello", PLAN_SHARED).await.status, 202);
    assert_eq!(ovsb.osb.wait("with-hello").await["state"], "succeeded");
    std::fs::write(&file, &without).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugins"]["removed"], json!(["hello"]), "{body}");
    let refused = ovsb.osb.provision("again", PLAN_SHARED, Some(json!({"plugins": [{"name": "hello"}]}))).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let catalog = ovsb.osb.call(reqwest::Method::GET, "/v2/catalog", None).await;
    assert!(!catalog.body.to_string().contains("\"hello\""), "the catalog no longer names it");
}
