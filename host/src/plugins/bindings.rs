//! Host-side bindings generated from `wit/plugin.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: {
        "ovsb:plugin/host.upstream": async,
    },
    exports: { default: async },
    // The data types are the call vocabulary's (`crate::call`), generated there once.
    with: { "ovsb:plugin/types": crate::call::contract },
});
