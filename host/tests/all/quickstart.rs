//! The quick start as a newcomer runs it: `ovsb serve` with the built-in configuration (from the
//! repository root, as `examples/quick-start.sh` does), then the README's walkthrough
//! (`examples/walkthrough.sh`) against it.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

#[test]
fn the_walkthrough_works_against_the_built_in_configuration() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    let data = tempfile::tempdir().unwrap();
    let _reaper = support::NodeReaper(data.path().to_path_buf());
    let (broker, gateway, admin) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(data.path().join("ovsb.log")).unwrap();
    let mut ovsb = Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .arg("serve")
        .current_dir(&root)
        .env("OVSB_DATA_DIR", data.path())
        .env("OVSB_BROKER_LISTEN", format!("127.0.0.1:{broker}"))
        .env("OVSB_GATEWAY_LISTEN", format!("127.0.0.1:{gateway}"))
        .env("OVSB_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", broker)).is_err() {
        assert!(ovsb.try_wait().unwrap().is_none(), "ovsb exited: {}", log_of(data.path()));
        assert!(started.elapsed() < Duration::from_secs(60), "ovsb did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("bash")
        .arg(root.join("examples/walkthrough.sh"))
        .env("OVSB_BROKER_URL", format!("http://127.0.0.1:{broker}"))
        .env("OVSB_DATA_DIR", data.path())
        .output()
        .unwrap();
    let _ = ovsb.kill();
    let _ = ovsb.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n--- ovsb log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(data.path())
    );
    assert!(stdout.contains("walkthrough complete"), "{stdout}");
    assert!(std::fs::read_to_string(data.path().join("broker-password")).is_ok_and(|p| p.len() >= 20));
}

fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("ovsb.log")).unwrap_or_default()
}
