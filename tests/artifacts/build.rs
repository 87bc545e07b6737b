//! Builds the test plugins to `wasm32-wasip2` once per build of this crate, in the manner of
//! wasmtime's test-programs: a nested `cargo build` into a target directory of its own
//! (`target/test-plugins`), then a generated `artifacts.rs` with the path of every `.wasm` file.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (constant name, crate name) of every guest this crate builds.
const GUESTS: &[(&str, &str)] = &[
    ("TEST_PLUGIN", "ovsb-test-plugin"),
    ("PASS_PLUGIN", "ovsb-pass-plugin"),
    ("METHOD_FILTER_PLUGIN", "ovsb-plugin-method-filter"),
    ("RATE_LIMIT_PLUGIN", "ovsb-plugin-rate-limit"),
    ("CACHE_PLUGIN", "ovsb-plugin-cache"),
    ("ETH_EXTRAS_PLUGIN", "ovsb-plugin-eth-extras"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    // One directory for every build of this crate (clippy's check build, the test build, benches):
    // `<target>/test-plugins`, next to the profile directories (OUT_DIR is
    // `<target>[/<triple>]/<profile>/build/<crate>-<hash>/out`). Its own lock, so the nested cargo
    // never waits for the outer one; after the first build the others find it fresh.
    let target_dir = out_dir.ancestors().nth(4).map_or_else(|| out_dir.join("wasm-target"), |t| t.join("test-plugins"));

    for path in [
        "wit",
        "plugin-sdk/src",
        "plugin-sdk/Cargo.toml",
        "tests/test-plugin",
        "tests/pass-plugin",
        "plugins",
        "Cargo.lock",
        "examples/hello-plugin/src",
        "examples/hello-plugin/Cargo.toml",
        "examples/hello-plugin/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    check_wasm_target();

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"]).arg(&target_dir);
    for (_, krate) in GUESTS {
        cmd.args(["-p", krate]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in
        ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
    {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo to build the test plugins");
    assert!(status.success(), "building the test plugins for wasm32-wasip2 failed (see the output above)");

    // The example plugin is a workspace of its own (as `ovsb plugin new` makes them): built by
    // its manifest, with its own lock file, so that the example cannot rot.
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut example = Command::new(cargo);
    example
        .current_dir(root.join("examples/hello-plugin"))
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for var in
        ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER"]
    {
        example.env_remove(var);
    }
    let status = example.status().expect("run cargo to build examples/hello-plugin");
    assert!(status.success(), "building examples/hello-plugin for wasm32-wasip2 failed (see the output above)");

    let mut generated = String::new();
    for (constant, krate) in GUESTS {
        let wasm = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", krate.replace('-', "_")));
        assert!(wasm.exists(), "expected {} after the build", wasm.display());
        writeln!(generated, "/// Path of the `{krate}` component.").unwrap();
        writeln!(generated, "pub const {constant}: &str = {:?};", wasm.display().to_string()).unwrap();
    }
    let hello = target_dir.join("wasm32-wasip2/release/hello_plugin.wasm");
    assert!(hello.exists(), "expected {} after the build", hello.display());
    writeln!(generated, "/// Path of the `examples/hello-plugin` component.").unwrap();
    writeln!(generated, "pub const HELLO_PLUGIN: &str = {:?};", hello.display().to_string()).unwrap();
    std::fs::write(out_dir.join("artifacts.rs"), generated).expect("write artifacts.rs");
}

/// Fails with the fix spelled out when the wasm target is not installed.
fn check_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let output = Command::new(rustc).args(["--print", "sysroot"]).output().expect("run rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let target = Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2");
    assert!(
        target.exists(),
        "the wasm32-wasip2 target is not installed for {sysroot}: run `rustup target add wasm32-wasip2`"
    );
}
