//! The wallet side of sealed secrets: the real `@metamask/eth-sig-util` from npm (installed by
//! tests/run-all.sh into tests/ethsig), driven through tests/ethsig/sealbox.mjs.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn sealbox() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/ethsig").canonicalize().unwrap();
    assert!(
        dir.join("node_modules/@metamask/eth-sig-util").exists(),
        "@metamask/eth-sig-util is not installed in {}: run tests/run-all.sh (it runs npm ci there)",
        dir.display()
    );
    dir.join("sealbox.mjs")
}

fn run(args: &[&str]) -> String {
    let output = Command::new("node").arg(sealbox()).args(args).output().expect("node runs");
    assert!(output.status.success(), "sealbox.mjs {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A wallet encryption key pair: (private key hex, public key base64).
pub fn keypair() -> (String, String) {
    let pair: Value = serde_json::from_str(&run(&["keypair"])).unwrap();
    (pair["privateKey"].as_str().unwrap().to_string(), pair["publicKey"].as_str().unwrap().to_string())
}

/// eth-sig-util's `encrypt` of `text` to `public_key`.
pub fn seal(public_key: &str, text: &str) -> Value {
    serde_json::from_str(&run(&["seal", public_key, text])).unwrap()
}

/// eth-sig-util's `decrypt` with `private_key`.
pub fn open(private_key: &str, sealed: &Value) -> String {
    run(&["open", private_key, &sealed.to_string()])
}
