//! `ovsb plugin new NAME --lang rust|python|js`: the project it makes builds and passes its own
//! tests with the commands it prints, and the component it builds answers in ovsb. The SDK comes
//! from `--sdk` or from the ovsb clone the project is made in, never from where ovsb was built.

use std::path::{Path, PathBuf};
use std::process::Command;

/// This repository's `plugin-sdk`.
fn repository_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

/// Runs `ovsb plugin new name --lang lang --sdk <this repository's SDK>` in `dir`; the printed
/// build and test commands.
fn scaffold(dir: &Path, name: &str, lang: &str) -> (PathBuf, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(dir)
        .arg("--sdk")
        .arg(repository_sdk())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let command = |label: &str| {
        let line = printed.lines().find_map(|l| l.trim().strip_prefix(label)).unwrap_or_else(|| panic!("{printed}"));
        line.trim().to_string()
    };
    (dir.join(name), command("build:"), command("test:"))
}

/// Runs a printed `cd DIR && ...` command line with bash; fails with its output.
fn run(line: &str, env: &[(&str, &str)]) {
    let out = Command::new("bash").args(["-c", line]).envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "`{line}` failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ovsb plugin call FILE --method hello_world`: what the plugin answers. With a generous time
/// budget: this checks what the scaffold makes, not how fast an interpreter starts on a machine
/// busy with the other tests (the gateway's 50 ms is measured by the benchmarks).
fn hello_world(wasm: &Path, config: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["plugin", "call"])
        .arg(wasm)
        .args(["--config", config, "--method", "hello_world", "--budget-ms", "5000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The build's output: the one `.wasm` file under `root` (outside installed packages).
fn built_component(root: &Path) -> PathBuf {
    fn walk(path: &Path, found: &mut Vec<PathBuf>) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | ".venv" | "deps") {
            return;
        }
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap().flatten() {
                walk(&entry.path(), found);
            }
        } else if name.ends_with(".wasm") {
            found.push(path.to_path_buf());
        }
    }
    let mut found = Vec::new();
    walk(root, &mut found);
    assert_eq!(found.len(), 1, "one component built: {found:?}");
    found.remove(0)
}

/// Scaffolds, tests and builds a plugin in `lang`, then calls it. The component is the one
/// `.wasm` file the build left in the project, or `target/wasm32-wasip2/release/demo_plugin.wasm`
/// of `target` when given (a shared cargo target directory).
fn check_language(lang: &str, env: &[(&str, &str)], target: Option<&Path>) {
    let dir = tempfile::tempdir().unwrap();
    let (root, build, test) = scaffold(dir.path(), "demo-plugin", lang);
    run(&test, env);
    run(&build, env);
    let wasm = match target {
        Some(target) => target.join("wasm32-wasip2/release/demo_plugin.wasm"),
        None => built_component(&root),
    };
    let answer = hello_world(&wasm, r#"{"greeting": "hi"}"#);
    assert!(answer.contains("hi from"), "{lang}: {answer}");
}

#[test]
fn a_new_python_plugin_builds_and_passes_its_tests_with_the_printed_commands() {
    check_language("python", &[], None);
}

#[test]
fn a_new_javascript_plugin_builds_and_passes_its_tests_with_the_printed_commands() {
    check_language("js", &[], None);
}

#[test]
fn a_new_rust_plugin_builds_and_passes_its_tests_with_the_printed_commands() {
    // The test plugins' target directory: the wasm dependencies are built there already.
    let target = Path::new(ovsb_test_artifacts::PASS_PLUGIN).ancestors().nth(3).unwrap();
    check_language("rust", &[("CARGO_TARGET_DIR", &target.display().to_string())], Some(target));
}

#[test]
fn an_unknown_language_is_refused_with_the_ones_there_are() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_ovsb")).args(["plugin", "new", "demo", "--lang", "cobol"]).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("rust") && said.contains("python") && said.contains("js"), "{said}");
}

/// Copies the directory `from` to `to`, without installed packages and build output.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        if matches!(name.to_str(), Some("node_modules" | ".toolchain" | "target" | ".venv")) {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&source, &dest);
        } else {
            std::fs::copy(&source, &dest).unwrap();
        }
    }
}

/// Every file under `root` (not `target/`) that names `path`.
fn files_naming(root: &Path, path: &Path) -> Vec<PathBuf> {
    let needle = path.display().to_string();
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                if entry.file_name() != "target" {
                    stack.push(entry.path());
                }
            } else if std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(&needle)) {
                found.push(entry.path());
            }
        }
    }
    found
}

/// `ovsb` (a copy of the binary, away from the checkout it was built in) runs `plugin new` in
/// `cwd` with `args`; its stdout, or its stderr when it failed.
fn moved_ovsb(ovsb: &Path, cwd: &Path, args: &[&str], dir: &Path) -> Result<String, String> {
    let run = || {
        Command::new(ovsb)
            .args(["plugin", "new"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .current_dir(cwd)
            .env_remove("OVSB_PLUGIN_SDK")
            .output()
    };
    // A binary copied a moment ago can be "busy" for a while: a process another test forked
    // meanwhile holds the copy's write descriptor until it execs (ETXTBSY). Bounded retries.
    let mut out = run();
    for _ in 0..50 {
        match &out {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                out = run();
            }
            _ => break,
        }
    }
    let out = out.unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
}

/// `cargo build --release --locked --offline --target wasm32-wasip2` in `project`: only the
/// versions its `Cargo.lock` names, from the local registry cache.
fn build_locked(project: &Path, target: &Path) {
    let out = Command::new("cargo")
        .args(["build", "--release", "--locked", "--offline", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(target)
        .current_dir(project)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", project.display(), String::from_utf8_lossy(&out.stderr));
}

/// The checkout ovsb was built in is not used: a copy of the binary makes a project inside a
/// copied clone (found from the project's directory, named relatively, so the project builds
/// after the clone moves), and one outside any clone from `--sdk`; outside a clone and without
/// `--sdk` it is refused, naming `--sdk`. The Rust crates build with `--locked --offline`.
#[test]
fn a_plugin_made_by_a_moved_ovsb_finds_its_sdk_from_the_project_or_sdk_and_builds() {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path().canonicalize().unwrap();
    // A clone with only what plugin authors need, and the binary elsewhere.
    let clone = tmp.join("clone");
    for file in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        std::fs::create_dir_all(&clone).unwrap();
        std::fs::copy(built_in.join(file), clone.join(file)).unwrap();
    }
    copy_tree(&built_in.join("wit"), &clone.join("wit"));
    copy_tree(&built_in.join("plugin-sdk"), &clone.join("plugin-sdk"));
    let ovsb = tmp.join("bin/ovsb");
    std::fs::create_dir_all(ovsb.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_ovsb"), &ovsb).unwrap();

    // Inside the clone: found by walking up from --dir, whatever the working directory.
    let mine = clone.join("my-plugins");
    let said = moved_ovsb(&ovsb, &tmp, &["in-clone"], &mine).unwrap();
    assert!(said.contains("SDK: ../../plugin-sdk"), "{said}");
    moved_ovsb(&ovsb, &tmp, &["js-in-clone", "--lang", "js"], &mine).unwrap();
    moved_ovsb(&ovsb, &tmp, &["py-in-clone", "--lang", "python"], &mine).unwrap();
    let manifest = std::fs::read_to_string(mine.join("in-clone/Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"ovsb-plugin-sdk = { path = "../../plugin-sdk" }"#), "{manifest}");
    let package = std::fs::read_to_string(mine.join("js-in-clone/package.json")).unwrap();
    assert!(package.contains(r#"--import \"../../plugin-sdk/js/register.mjs\""#), "{package}");
    let build_sh = std::fs::read_to_string(mine.join("py-in-clone/build.sh")).unwrap();
    assert!(build_sh.contains(r#"sdk="../../plugin-sdk/python""#) && build_sh.contains(r#"wit="../../wit""#));
    let readme = std::fs::read_to_string(mine.join("py-in-clone/README.md")).unwrap();
    assert!(readme.contains("(../../plugin-sdk/python/../../README.md#write-a-plugin"), "{readme}");
    assert!(!readme.contains("example.invalid"));
    assert_eq!(files_naming(&mine, &built_in), Vec::<PathBuf>::new(), "nothing names the build checkout");
    assert_eq!(files_naming(&mine, &tmp), Vec::<PathBuf>::new(), "a project in a clone names it relatively");
    // The lock is the clone's, trimmed to the plugin: every version in it is one the clone locks.
    let lock = std::fs::read_to_string(mine.join("in-clone/Cargo.lock")).unwrap();
    let clone_lock = std::fs::read_to_string(clone.join("Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"wit-bindgen\"") && !lock.contains("name = \"wasmtime\""), "{lock}");
    for package in lock.split("[[package]]").skip(1).filter(|p| p.contains("source = ")) {
        // Name, version, source and checksum (the dependency lists differ: features unify
        // differently in the clone's larger graph).
        let pinned: Vec<&str> = package.trim().lines().take_while(|l| !l.starts_with("dependencies")).collect();
        assert!(clone_lock.contains(&pinned.join("\n")), "not as the clone locks it: {package}");
    }

    // The clone moves: the projects in it still build (Rust) and pass their tests (JavaScript).
    let moved = tmp.join("moved-clone");
    std::fs::rename(&clone, &moved).unwrap();
    let target = Path::new(ovsb_test_artifacts::PASS_PLUGIN).ancestors().nth(3).unwrap();
    build_locked(&moved.join("my-plugins/in-clone"), target);
    let wasm = target.join("wasm32-wasip2/release/in_clone.wasm");
    assert!(hello_world(&wasm, r#"{"greeting": "moved"}"#).contains("moved from"));
    run(&format!("cd {} && npm test", moved.join("my-plugins/js-in-clone").display()), &[]);

    // Outside any clone: refused without --sdk (naming it), made with it.
    let elsewhere = tmp.join("elsewhere");
    let refused = moved_ovsb(&ovsb, &tmp, &["outside"], &elsewhere).unwrap_err();
    assert!(refused.contains("--sdk") && refused.contains("OVSB_PLUGIN_SDK"), "{refused}");
    assert!(!elsewhere.join("outside").exists(), "nothing made");
    let sdk = moved.join("plugin-sdk");
    let given = moved_ovsb(&ovsb, &tmp, &["outside", "--sdk", &sdk.display().to_string()], &elsewhere).unwrap();
    assert!(given.contains(&format!("SDK: {}", sdk.display())), "{given}");
    let wrong = moved_ovsb(&ovsb, &tmp, &["wrong", "--sdk", &tmp.display().to_string()], &elsewhere).unwrap_err();
    assert!(wrong.contains("the plugin SDK is not at") && wrong.contains("--sdk"), "{wrong}");
    build_locked(&elsewhere.join("outside"), target);
}
