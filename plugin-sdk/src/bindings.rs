//! Bindings generated from `wit/plugin.wit` (the only copy of the contract).
//!
//! Plugin authors do not use this module directly: the types are re-exported at the crate root
//! and the exports are wired by [`export_plugin!`](crate::export_plugin).
#![allow(missing_docs, clippy::all)]

wit_bindgen::generate!({
    path: "../wit",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "__ovsb_export_world",
    default_bindings_module: "::ovsb_plugin_sdk::bindings",
    runtime_path: "::ovsb_plugin_sdk::__private::wit_bindgen::rt",
    bitflags_path: "::ovsb_plugin_sdk::__private::wit_bindgen::rt::bitflags",
    additional_derives: [PartialEq, Eq],
});
