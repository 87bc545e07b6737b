//! `ovsb plugin new NAME --lang rust|python|js`: the project it makes builds and passes its own
//! tests with the commands it prints, and the component it builds answers in ovsb.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `ovsb plugin new name --lang lang` in `dir`; the printed build and test commands.
fn scaffold(dir: &Path, name: &str, lang: &str) -> (PathBuf, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ovsb"))
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(dir)
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
