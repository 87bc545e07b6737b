//! Host-side bindings generated from `wit/plugin.wit`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: {
        "ovsb:plugin/host.upstream": async,
    },
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
});
