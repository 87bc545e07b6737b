//! `ovsb plugin new NAME --lang rust|python|js`: a new plugin project that builds with one
//! command and passes its own tests out of the box.
//!
//! Owns: the Rust template (here) and the copying of the Python and JavaScript templates, which
//! live beside their SDKs (`plugin-sdk/python/template`, `plugin-sdk/js/template`, each listing
//! its files in `FILES`). Every template makes the same plugin: it answers a new method,
//! `hello_world`, and passes every other call through; its tests run natively against the
//! SDK's mock host (`cargo test`, `pytest`, `node --test`).

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
    /// The SDK was not found.
    #[error("the plugin SDK is not at {0}; pass --sdk PATH (the plugin-sdk directory of an ovsb clone)")]
    Sdk(PathBuf),
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

/// Creates the project `dir/name` in `lang`; returns its directory.
pub fn new_project(name: &str, lang: Lang, dir: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    match lang {
        Lang::Rust => new_plugin(name, dir, sdk),
        Lang::Python => from_template(name, dir, sdk, "python"),
        Lang::Js => from_template(name, dir, sdk, "js"),
    }
}

/// Copies `<sdk>/<lang>/template`'s files (those its `FILES` lists) to `dir/name`, replacing
/// `{{name}}`, `{{module}}` (the name as an identifier), `{{sdk}}` (the language's SDK
/// directory) and `{{wit}}` (the contract's directory) in each.
fn from_template(name: &str, dir: &Path, sdk: &Path, lang: &str) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let sdk = sdk.canonicalize().map_err(|_| ScaffoldError::Sdk(sdk.to_path_buf()))?;
    let lang_sdk = sdk.join(lang);
    let template = lang_sdk.join("template");
    let wit = sdk.join("../wit").canonicalize().map_err(|_| ScaffoldError::Sdk(sdk.clone()))?;
    let list = std::fs::read_to_string(template.join("FILES")).map_err(|_| ScaffoldError::Sdk(sdk.clone()))?;
    let files: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    // Every file stays inside the project: plain relative names only.
    if let Some(bad) =
        files.iter().find(|file| !Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_))))
    {
        return Err(ScaffoldError::Template(format!("{}: {bad:?} is not a plain relative path", template.display())));
    }
    // The paths are written into shell scripts and JSON: refuse what would need quoting there.
    for path in [&lang_sdk, &wit] {
        let text = path.display().to_string();
        if text.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`' | '\n' | '\r')) {
            return Err(ScaffoldError::Template(format!(
                "{text} holds a quote, backslash, `$`, backquote or line break, which the project's scripts cannot carry: \
                 use an ovsb clone at a plainer path"
            )));
        }
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let written = write_template(&root, &template, &files, name, &lang_sdk, &wit);
    if written.is_err() {
        // No half-made project left behind (it would be "exists already" on the next try).
        let _ = std::fs::remove_dir_all(&root);
    }
    written.map(|()| root)
}

fn write_template(
    root: &Path,
    template: &Path,
    files: &[&str],
    name: &str,
    lang_sdk: &Path,
    wit: &Path,
) -> Result<(), ScaffoldError> {
    let module = name.replace('-', "_");
    for &file in files {
        let source = template.join(file);
        let text = std::fs::read_to_string(&source).map_err(|_| ScaffoldError::Sdk(source.clone()))?;
        let text = text
            .replace("{{name}}", name)
            .replace("{{module}}", &module)
            .replace("{{sdk}}", &lang_sdk.display().to_string())
            .replace("{{wit}}", &wit.display().to_string());
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

/// The SDK this binary was built with (the `plugin-sdk` directory next to `host`).
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

/// Creates the Rust crate `dir/name`; returns its directory.
pub fn new_plugin(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let sdk = sdk.canonicalize().map_err(|_| ScaffoldError::Sdk(sdk.to_path_buf()))?;
    if !sdk.join("Cargo.toml").exists() {
        return Err(ScaffoldError::Sdk(sdk));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let type_name: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect::<String>()
        })
        .collect();
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{name}", name).replace("{Type}", &type_name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, content) in files {
        write_file(&root.join(file), &content)?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
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
"#,
        sdk = sdk.display()
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
