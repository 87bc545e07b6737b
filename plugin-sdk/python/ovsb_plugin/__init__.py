"""ovsb_plugin: write plugins for ovsb's JSON-RPC endpoints in Python.

A plugin sees every call to an instance's endpoint (or those it selects) and may pass it on
(possibly rewritten), answer it itself, or post-process the node's answer. The contract is the
WIT package ``ovsb:plugin`` in the repository's ``wit/`` folder; this package wraps it in plain
Python, and ``build.sh`` turns a plugin into a component with componentize-py::

    from ovsb_plugin import Plugin, Methods, RpcError, METHOD_NOT_FOUND, export

    class NoServerSigning(Plugin):
        def methods(self):
            return Methods.matching("eth_sendTransaction")

        def on_call(self, ctx, call):
            raise RpcError(METHOD_NOT_FOUND, "eth_sendTransaction is disabled on this endpoint")

    WitWorld = export(NoServerSigning)

Natively (pytest), the host functions (:func:`upstream`, :class:`kv`, :class:`log`,
:func:`now_ms`, :class:`Context`) are served by :class:`ovsb_plugin.testing.MockHost`.
"""

from ._config import Config, ConfigError, Fields
from ._glob import glob_matches
from ._host import KvError, kv, log, now_ms, upstream, upstream_raw
from ._plugin import Context, Methods, Plugin
from ._runtime import export
from ._types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Call,
    Hooks,
    Level,
    Outcome,
    RpcError,
    err,
    json_kind,
    ok,
    ok_raw,
    to_json,
)

__version__ = "0.1.0"

__all__ = [
    "Call", "Config", "ConfigError", "Context", "Fields", "Hooks", "KvError", "Level", "Methods",
    "Outcome", "Plugin", "RpcError", "err", "export", "glob_matches", "json_kind", "kv", "log",
    "now_ms", "ok", "ok_raw", "to_json", "upstream", "upstream_raw",
    "PARSE_ERROR", "INVALID_REQUEST", "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR",
    "LIMIT_EXCEEDED",
]
