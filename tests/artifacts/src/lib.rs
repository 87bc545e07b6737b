//! Paths of the test plugins, built from source by this crate's build script.
//!
//! `TEST_PLUGIN` is one component whose behaviour its configuration selects (`{"mode": ...}`),
//! so that every test case, well-behaved or hostile, runs the same real `.wasm` file; see
//! `tests/test-plugin/src/lib.rs` for the modes. `PASS_PLUGIN` keeps every SDK default. The first-party plugins of `plugins/` and
//! `examples/hello-plugin` are built here too, so that the end-to-end tests load the real files.
//! The Python and JavaScript plugins (`examples/python-plugin`, `examples/js-plugin`,
//! `tests/polyglot/*`) are built with the toolchains their SDKs pin (`plugin-sdk/python`,
//! `plugin-sdk/js`), which the build sets up itself (idempotently) when they are missing.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
