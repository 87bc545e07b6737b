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
    ("BENCH_PLUGIN", "ovsb-bench-plugin"),
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
        "tests/bench-plugin",
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
    build_polyglot(&root, &target_dir.join("polyglot"), &mut generated);
    writeln!(generated, "/// A compile cache directory the tests share (`[runtime] cache_dir`): Python and JavaScript")
        .unwrap();
    writeln!(generated, "/// plugins take seconds to compile, once per test run instead of once per test.").unwrap();
    writeln!(
        generated,
        "pub const COMPILE_CACHE_DIR: &str = {:?};",
        target_dir.join("compile-cache").display().to_string()
    )
    .unwrap();
    std::fs::write(out_dir.join("artifacts.rs"), generated).expect("write artifacts.rs");
}

/// A plugin's language, for [`POLYGLOT`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lang {
    Python,
    Js,
}

/// (constant name, language, source) of every Python and JavaScript plugin this crate builds,
/// with the toolchains their SDKs pin: a Python plugin is a directory holding `app.py`, a
/// JavaScript plugin its module file.
const POLYGLOT: &[(&str, Lang, &str)] = &[
    ("PY_EXAMPLE_PLUGIN", Lang::Python, "examples/python-plugin"),
    ("PY_HOSTILE_PLUGIN", Lang::Python, "tests/polyglot/python-hostile"),
    ("PY_BENCH_PLUGIN", Lang::Python, "tests/polyglot/python-bench"),
    ("JS_EXAMPLE_PLUGIN", Lang::Js, "examples/js-plugin/plugin.js"),
    ("JS_HOSTILE_PLUGIN", Lang::Js, "tests/polyglot/js-hostile/plugin.js"),
    ("JS_BENCH_PLUGIN", Lang::Js, "tests/polyglot/js-bench/plugin.js"),
];

/// What a Python or JavaScript build reads, besides the plugin's own source.
const POLYGLOT_INPUTS: &[&str] = &[
    "wit",
    "plugin-sdk/python/ovsb_plugin",
    "plugin-sdk/python/build.sh",
    "plugin-sdk/python/toolchain.sh",
    "plugin-sdk/python/requirements.lock",
    "plugin-sdk/js/src",
    "plugin-sdk/js/build.mjs",
    "plugin-sdk/js/setup.sh",
    "plugin-sdk/js/package.json",
    "plugin-sdk/js/package-lock.json",
];

/// Builds the Python and JavaScript plugins into `dir` (the Python ones and the JavaScript ones
/// side by side, on two threads), each only when its inputs changed since its last build (a
/// stamp file beside it), and adds their paths to `generated`. The toolchains are set up by the
/// SDKs' own scripts, idempotently, from their lock files.
fn build_polyglot(root: &Path, dir: &Path, generated: &mut String) {
    std::fs::create_dir_all(dir).expect("create the polyglot plugin directory");
    // The files the hashes read, one by one: not the directories, which also hold what builds
    // and installs leave (virtual environments, node_modules, caches).
    let sources: Vec<&str> = POLYGLOT.iter().map(|(_, _, source)| source_dir(source)).collect();
    for file in input_files(root, POLYGLOT_INPUTS).into_iter().chain(input_files(root, &sources)) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let common = inputs_hash(root, POLYGLOT_INPUTS);
    let build_lang = |lang: Lang| {
        for (constant, _, source) in POLYGLOT.iter().filter(|(_, l, _)| *l == lang) {
            let out = polyglot_output(dir, constant);
            let stamp = out.with_extension("stamp");
            let want = format!("{common:016x}-{:016x}", inputs_hash(root, &[source_dir(source)]));
            if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
                continue;
            }
            // Written beside, then renamed: a build that fails or races another (the check, test
            // and bench builds share this directory) never leaves a half-written component.
            let partial = dir.join(format!("{}.{}.partial.wasm", constant.to_ascii_lowercase(), std::process::id()));
            let status = match lang {
                Lang::Python => Command::new("bash")
                    .arg(root.join("plugin-sdk/python/build.sh"))
                    .arg(root.join(source))
                    .arg(&partial)
                    .status(),
                Lang::Js => {
                    Command::new("bash").arg(root.join("plugin-sdk/js/setup.sh")).status().and_then(|setup| match setup
                        .success()
                    {
                        true => Command::new("node")
                            .arg(root.join("plugin-sdk/js/build.mjs"))
                            .arg(root.join(source))
                            .arg(&partial)
                            .status(),
                        false => Ok(setup),
                    })
                }
            };
            let which = match lang {
                Lang::Python => {
                    "the Python plugin toolchain (componentize-py, pinned in plugin-sdk/python/requirements.lock; needs python3 and PyPI)"
                }
                Lang::Js => {
                    "the JavaScript plugin toolchain (componentize-js, pinned in plugin-sdk/js/package-lock.json; needs node and the npm registry)"
                }
            };
            match status {
                Ok(status) if status.success() => {
                    std::fs::rename(&partial, &out).expect("move the built component in place");
                    std::fs::write(&stamp, &want).expect("write the build stamp");
                }
                Ok(_) => panic!("building {source} failed with {which} (see the output above)"),
                Err(err) => panic!("cannot run {which} for {source}: {err}"),
            }
        }
    };
    std::thread::scope(|scope| {
        let python = scope.spawn(|| build_lang(Lang::Python));
        build_lang(Lang::Js);
        if let Err(panic) = python.join() {
            std::panic::resume_unwind(panic);
        }
    });
    for (constant, lang, source) in POLYGLOT {
        let out = polyglot_output(dir, constant);
        let language = if *lang == Lang::Python { "Python" } else { "JavaScript" };
        writeln!(generated, "/// Path of the {language} plugin `{source}`, as a component.").unwrap();
        writeln!(generated, "pub const {constant}: &str = {:?};", out.display().to_string()).unwrap();
    }
}

/// Where the component of the [`POLYGLOT`] plugin `constant` is built.
fn polyglot_output(dir: &Path, constant: &str) -> PathBuf {
    dir.join(format!("{}.wasm", constant.to_ascii_lowercase()))
}

/// The directory of a plugin's source (`source` itself when it is one).
fn source_dir(source: &str) -> &str {
    match source.rsplit_once('/') {
        Some((dir, file)) if file.contains('.') => dir,
        _ => source,
    }
}

/// A hash of the names and contents of the files under `paths` (relative to `root`), skipping
/// what builds and installs leave behind (`node_modules`, virtual environments, caches, outputs).
fn inputs_hash(root: &Path, paths: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for file in input_files(root, paths) {
        file.strip_prefix(root).unwrap_or(&file).hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// The files under `paths` (relative to `root`), sorted, without what builds and installs
/// leave behind.
fn input_files(root: &Path, paths: &[&str]) -> Vec<PathBuf> {
    fn walk(path: &Path, files: &mut Vec<PathBuf>) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "__pycache__" | ".pytest_cache" | ".toolchain" | ".venv")
            || name.ends_with(".wasm")
            || name.ends_with(".pyc")
        {
            return;
        }
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    walk(&entry.path(), files);
                }
            }
        } else if path.is_file() {
            files.push(path.to_path_buf());
        }
    }
    let mut files = Vec::new();
    for path in paths {
        walk(&root.join(path), &mut files);
    }
    files.sort();
    files.dedup();
    files
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
