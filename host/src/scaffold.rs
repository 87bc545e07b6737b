//! `ovsb plugin new NAME --lang rust|python|js`: a new plugin project that builds with one
//! command and passes its own tests out of the box.
//!
//! Owns: the Rust template (here) and the copying of the Python and JavaScript templates, which
//! live beside their SDKs (`plugin-sdk/python/template`, `plugin-sdk/js/template`, each listing
//! its files in `FILES`). Every template makes the same plugin: it answers a new method,
//! `hello_world`, and passes every other call through; its tests run natively against the
//! SDK's mock host (`cargo test`, `pytest`, `node --test`).
//!
//! The SDK is the one `--sdk` names, or the `plugin-sdk` of the ovsb clone the project is made
//! in; never a path fixed when ovsb was built. A project inside the clone names it by a relative
//! path, so it moves with the clone. The Rust crate gets a `Cargo.lock` with the versions the
//! clone locks.

use std::path::{Path, PathBuf};

/// Why a plugin crate could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a crate name.
    #[error("plugin name {0:?} must be lowercase letters, digits, '-' or '_', starting with a letter")]
    Name(String),
    /// The directory exists already.
    #[error("{0} exists already; choose another name or directory")]
    Exists(PathBuf),
    /// The language is not one ovsb has an SDK for.
    #[error("language {0:?} is not one of rust, python, js")]
    Lang(String),
    /// A template cannot be used as it is.
    #[error("the project template cannot be used: {0}")]
    Template(String),
    /// The SDK given is not one.
    #[error(
        "the plugin SDK is not at {0}: pass --sdk PATH, the plugin-sdk directory of an ovsb clone (beside its wit/)"
    )]
    Sdk(PathBuf),
    /// No SDK was given and the directory is not inside an ovsb checkout.
    #[error(
        "{0} is not inside an ovsb clone, so the plugin SDK was not found: pass --sdk PATH (the plugin-sdk \
         directory of an ovsb clone) or set OVSB_PLUGIN_SDK, or make the project inside the clone"
    )]
    NoSdk(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A Rust crate built with `cargo` to `wasm32-wasip2`.
    Rust,
    /// A Python module built with `componentize-py`.
    Python,
    /// A JavaScript module built with `componentize-js`.
    Js,
}

impl std::str::FromStr for Lang {
    type Err = ScaffoldError;

    fn from_str(s: &str) -> Result<Lang, ScaffoldError> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" => Ok(Lang::Python),
            "js" => Ok(Lang::Js),
            other => Err(ScaffoldError::Lang(other.to_string())),
        }
    }
}

impl Lang {
    /// The project's build and test commands, run in its directory.
    pub fn commands(self) -> (&'static str, &'static str) {
        match self {
            Lang::Rust => ("cargo build --release --target wasm32-wasip2", "cargo test"),
            Lang::Python => ("./build.sh", "./test.sh"),
            Lang::Js => ("npm ci && npm run build", "npm test"),
        }
    }
}

/// A project [`new_project`] made.
#[derive(Debug)]
pub struct Created {
    /// Its directory.
    pub root: PathBuf,
    /// How it refers to the SDK: a path relative to the project when it is inside the SDK's
    /// checkout, else the SDK's absolute path.
    pub sdk: String,
    /// Something the operator should know (a `Cargo.lock` that could not be trimmed, say).
    pub note: Option<String>,
}

/// Creates the project `dir/name` in `lang` with the SDK `sdk` (`--sdk`), or, when `None`, the
/// `plugin-sdk` of the ovsb checkout `dir` lies in ([`find_sdk`]).
pub fn new_project(name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> Result<Created, ScaffoldError> {
    check_name(name)?;
    let dir = absolute(dir)?;
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let sdk = find_sdk(&dir, sdk)?;
    let paths = SdkPaths::new(&root, &sdk, lang)?;
    let made = match lang {
        Lang::Rust => new_plugin(name, &root, &paths).map(|()| write_lock(&root, &paths.checkout)),
        Lang::Python | Lang::Js => from_template(name, &root, &paths).map(|()| None),
    };
    match made {
        Ok(note) => Ok(Created { root, sdk: paths.sdk, note }),
        Err(err) => {
            // No half-made project left behind (it would be "exists already" on the next try).
            let _ = std::fs::remove_dir_all(&root);
            Err(err)
        }
    }
}

/// Whether `dir` is the `plugin-sdk` directory of an ovsb checkout: the Rust crate, beside the
/// checkout's `wit/`.
fn is_sdk(dir: &Path) -> bool {
    dir.join("Cargo.toml").is_file() && dir.join("../wit/plugin.wit").is_file()
}

/// The SDK a project made in `dir` uses: `given` (`--sdk`, `OVSB_PLUGIN_SDK`) when set, else the
/// `plugin-sdk` of the nearest directory above `dir` (or `dir` itself) that is an ovsb checkout.
/// Never a path fixed when ovsb was built: a binary runs on machines and in images where its
/// builder's checkout does not exist.
pub fn find_sdk(dir: &Path, given: Option<&Path>) -> Result<PathBuf, ScaffoldError> {
    if let Some(given) = given {
        let sdk = given.canonicalize().map_err(|_| ScaffoldError::Sdk(given.to_path_buf()))?;
        return if is_sdk(&sdk) { Ok(sdk) } else { Err(ScaffoldError::Sdk(given.to_path_buf())) };
    }
    let dir = absolute(dir)?;
    dir.ancestors()
        .map(|at| at.join("plugin-sdk"))
        .find(|sdk| is_sdk(sdk))
        .and_then(|sdk| sdk.canonicalize().ok())
        .ok_or_else(|| ScaffoldError::NoSdk(dir.clone()))
}

/// `dir` as an absolute path, its existing part with symbolic links resolved (so that it
/// compares with a canonical SDK path), the rest appended as written.
fn absolute(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let dir = std::path::absolute(dir).map_err(|source| ScaffoldError::Write { path: dir.to_path_buf(), source })?;
    let mut rest = Vec::new();
    let mut existing = dir.as_path();
    let base = loop {
        if let Ok(found) = existing.canonicalize() {
            break found;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break existing.to_path_buf(),
        }
    };
    let mut path = base;
    for part in rest.iter().rev() {
        if part == ".." {
            path.pop();
        } else if part != "." {
            path.push(part);
        }
    }
    Ok(path)
}

/// The SDK's places as a new project's files name them.
struct SdkPaths {
    /// The ovsb checkout the SDK belongs to (absolute).
    checkout: PathBuf,
    /// The language's SDK directory (absolute), where its template is.
    lang_dir: PathBuf,
    /// The `plugin-sdk` directory (the Rust crate).
    sdk: String,
    /// The language's SDK directory (`plugin-sdk/python`, `plugin-sdk/js`; the crate for Rust).
    lang_sdk: String,
    /// The contract, `wit/`.
    wit: String,
}

impl SdkPaths {
    /// Relative to `root` when the project lies inside the SDK's checkout (the project then
    /// moves with it), else absolute.
    fn new(root: &Path, sdk: &Path, lang: Lang) -> Result<SdkPaths, ScaffoldError> {
        let checkout = sdk.parent().unwrap_or(sdk).to_path_buf();
        let name = |path: &Path| match (root.strip_prefix(&checkout), path.strip_prefix(&checkout)) {
            (Ok(up), Ok(down)) => {
                let mut text = vec![".."; up.components().count()].join("/");
                for part in down.components() {
                    text.push('/');
                    text.push_str(&part.as_os_str().to_string_lossy());
                }
                text
            }
            _ => path.display().to_string(),
        };
        let lang_sdk = match lang {
            Lang::Rust => sdk.to_path_buf(),
            Lang::Python => sdk.join("python"),
            Lang::Js => sdk.join("js"),
        };
        let paths = SdkPaths {
            sdk: name(sdk),
            lang_sdk: name(&lang_sdk),
            wit: name(&checkout.join("wit")),
            checkout,
            lang_dir: lang_sdk,
        };
        // The paths are written into shell scripts, JSON and TOML: refuse what would need quoting.
        for text in [&paths.sdk, &paths.lang_sdk, &paths.wit] {
            if text.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`' | '\n' | '\r')) {
                return Err(ScaffoldError::Template(format!(
                    "{text} holds a quote, backslash, `$`, backquote or line break, which the project's files cannot carry: \
                     use an ovsb clone at a plainer path"
                )));
            }
        }
        Ok(paths)
    }
}

/// Copies `<sdk>/<lang>/template`'s files (those its `FILES` lists) to `root`, replacing
/// `{{name}}`, `{{module}}` (the name as an identifier), `{{sdk}}` (the language's SDK
/// directory) and `{{wit}}` (the contract's directory) in each.
fn from_template(name: &str, root: &Path, paths: &SdkPaths) -> Result<(), ScaffoldError> {
    let template = paths.lang_dir.join("template");
    let sdk_error = || ScaffoldError::Sdk(paths.lang_dir.clone());
    let list = std::fs::read_to_string(template.join("FILES")).map_err(|_| sdk_error())?;
    let files: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    // Every file stays inside the project: plain relative names only.
    if let Some(bad) =
        files.iter().find(|file| !Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_))))
    {
        return Err(ScaffoldError::Template(format!("{}: {bad:?} is not a plain relative path", template.display())));
    }
    write_template(root, &template, &files, name, paths)
}

fn write_template(
    root: &Path,
    template: &Path,
    files: &[&str],
    name: &str,
    paths: &SdkPaths,
) -> Result<(), ScaffoldError> {
    let module = name.replace('-', "_");
    for &file in files {
        let source = template.join(file);
        let text = std::fs::read_to_string(&source).map_err(|_| ScaffoldError::Sdk(source.clone()))?;
        let text = text
            .replace("{{name}}", name)
            .replace("{{module}}", &module)
            .replace("{{sdk}}", &paths.lang_sdk)
            .replace("{{wit}}", &paths.wit);
        write_file(&root.join(file), &text)?;
    }
    Ok(())
}

/// Writes one file of a new project, with its directories; shell scripts (`*.sh`) executable.
fn write_file(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
        #[cfg(unix)]
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    };
    write().map_err(|source| ScaffoldError::Write { path: path.to_path_buf(), source })
}

fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64;
    if valid { Ok(()) } else { Err(ScaffoldError::Name(name.to_string())) }
}

/// Writes the Rust crate at `root`.
fn new_plugin(name: &str, root: &Path, paths: &SdkPaths) -> Result<(), ScaffoldError> {
    let type_name: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect::<String>()
        })
        .collect();
    let files = [
        ("Cargo.toml", cargo_toml(name, &paths.sdk)),
        ("src/lib.rs", LIB_RS.replace("{name}", name).replace("{Type}", &type_name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, content) in files {
        write_file(&root.join(file), &content)?;
    }
    Ok(())
}

/// Writes the crate's `Cargo.lock`: the checkout's own lock (the versions ovsb is built and
/// tested with, which an offline registry cache that built ovsb holds), trimmed to what the
/// plugin uses by `cargo update --workspace --offline` (which keeps every locked version).
/// Without the checkout's lock, `cargo generate-lockfile --offline`. A note when cargo could
/// not run: the untrimmed lock still pins the versions (cargo trims it at the first build).
fn write_lock(root: &Path, checkout: &Path) -> Option<String> {
    let seed = checkout.join("Cargo.lock");
    let seeded = std::fs::copy(&seed, root.join("Cargo.lock")).is_ok();
    let args: &[&str] = if seeded {
        &["update", "--workspace", "--offline", "--quiet"]
    } else {
        &["generate-lockfile", "--offline", "--quiet"]
    };
    let ran = std::process::Command::new("cargo")
        .args(args)
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .output();
    let failed = match ran {
        Ok(out) if out.status.success() => return None,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(err) => format!("cannot run cargo: {err}"),
    };
    Some(if seeded {
        format!(
            "Cargo.lock is the checkout's lock, untrimmed (`cargo {}` failed: {failed}); it pins the same versions",
            args.join(" ")
        )
    } else {
        format!("no Cargo.lock written (`cargo {}` failed: {failed}); run `cargo generate-lockfile`", args.join(" "))
    })
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the wasm component ovsb loads; rlib: for `cargo test`.
crate-type = ["cdylib", "rlib"]

[dependencies]
ovsb-plugin-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}

# A plugin is a workspace of its own, wherever it lives.
[workspace]

[profile.release]
opt-level = "s"
lto = true
strip = true
"#
    )
}

const LIB_RS: &str = r##"//! `{name}`: an ovsb plugin.
//!
//! It answers a new method, `hello_world`, itself, and passes every other call on untouched.
//! Configuration (optional): `{"greeting": "text"}` (default `"hello"`).
//!
//! Build: `cargo build --release --target wasm32-wasip2` → `target/wasm32-wasip2/release/*.wasm`.
//! Test: `cargo test` (natively, with the SDK's mock host).
//! Try: `ovsb plugin call target/wasm32-wasip2/release/<crate>.wasm --method hello_world`.

use ovsb_plugin_sdk::{Call, Config, Context, Decision, Hooks, Methods, Plugin};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".to_string()
}

/// The plugin: one copy per warm instance, configured once.
pub struct {Type} {
    greeting: String,
}

impl Plugin for {Type} {
    fn configure(config: Config) -> Result<Self, String> {
        let settings = if config.as_json() == "null" {
            Settings { greeting: default_greeting() }
        } else {
            config.parse::<Settings>()?
        };
        if settings.greeting.is_empty() {
            return Err("invalid configuration: greeting must not be empty".to_string());
        }
        Ok({Type} { greeting: settings.greeting })
    }

    /// Only `on_call`: ovsb then never calls `on_result` for this plugin.
    fn hooks(&self) -> Hooks {
        Hooks::ON_CALL
    }

    /// Only `hello_world`: every other call passes the plugin by, without a wasm call.
    fn methods(&self) -> Methods {
        Methods::matching(["hello_world"])
    }

    fn on_call(&mut self, ctx: &Context, call: Call) -> Decision {
        if call.method == "hello_world" {
            return Decision::respond_ok(&format!("{} from {}", self.greeting, ctx.instance_id()));
        }
        Decision::Forward(call)
    }
}

ovsb_plugin_sdk::export_plugin!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use ovsb_plugin_sdk::testing::{Harness, MockHost};

    #[test]
    fn hello_world_is_answered_by_the_plugin() {
        let host = MockHost::current();
        let mut harness = Harness::<{Type}>::new(r#"{"greeting": "hi"}"#).unwrap();
        assert_eq!(harness.call("hello_world", None), Ok(r#""hi from test-instance""#.to_string()));
        assert!(host.upstream_calls().is_empty(), "answered without the node");
    }

    #[test]
    fn other_calls_go_to_the_node() {
        let host = MockHost::current();
        host.set_upstream(|_| Ok("\"0x1\"".to_string()));
        let mut harness = Harness::<{Type}>::new("null").unwrap();
        assert_eq!(harness.call("eth_chainId", None), Ok("\"0x1\"".to_string()));
        assert_eq!(host.upstream_calls()[0].method, "eth_chainId");
    }

    #[test]
    fn a_bad_configuration_is_refused_with_a_message() {
        let err = Harness::<{Type}>::new(r#"{"greeting": ""}"#).err().unwrap();
        assert!(err.contains("greeting"), "{err}");
        let err = Harness::<{Type}>::new(r#"{"greting": "x"}"#).err().unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }
}
"##;
