//! Paths of the test plugins, built from source by this crate's build script.
//!
//! `TEST_PLUGIN` is one component whose behaviour its configuration selects (`{"mode": ...}`),
//! so that every test case, well-behaved or hostile, runs the same real `.wasm` file; see
//! `tests/test-plugin/src/lib.rs` for the modes. `PASS_PLUGIN` keeps every SDK default. The first-party plugins of `plugins/` and
//! `examples/hello-plugin` are built here too, so that the end-to-end tests load the real files.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
