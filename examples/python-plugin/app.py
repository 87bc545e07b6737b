"""python-plugin: per-binding method quotas, an ovsb plugin in Python.

Each binding (each set of credentials; calls without one count as "anonymous") may make at most
N calls of each quota'd method per window. Over its quota a call is answered -32005
`quota exceeded: at most N eth_call calls per 60 s for this binding`, with
`data: {"reason": "quota", "limit": N, "retry_after_ms": M}` (M: until the window ends), and the
first refusal of a binding in a window is logged at info. Counters live in the instance's
key-value store (one `kv.incr` per call, expiring with the window), so every copy of the plugin
shares them.

It also answers a new method, `quota_status`: the caller's use in the current window,
`{"eth_call": 3, "eth_getLogs": 0, "block": "0x12a4"}`, where `block` is the node's
`eth_blockNumber` (asked with the host's `upstream`), so a client sees how far its quota goes.

Only the quota'd methods and `quota_status` are selected: ovsb passes every other call by
without entering the plugin.

Configuration: {"quotas": {"eth_call": 100, "eth_getLogs": 10}, "window_ms": 60000}
  quotas     method name -> calls allowed per window per binding (an integer >= 1); required
  window_ms  the window, in milliseconds (1000 to 86400000, default 60000)

Build: ./build.sh  ->  python-plugin.wasm        Test: ./test.sh
Try:   ovsb plugin call python-plugin.wasm --config '{"quotas": {"eth_call": 2}}' --method quota_status
"""

from ovsb_plugin import (
    LIMIT_EXCEEDED,
    Config,
    ConfigError,
    Hooks,
    Methods,
    Plugin,
    RpcError,
    export,
    kv,
    log,
    now_ms,
    ok,
    upstream,
)

STATUS_METHOD = "quota_status"
EXAMPLE = '{"quotas": {"eth_call": 100, "eth_getLogs": 10}, "window_ms": 60000}'
MAX_METHODS = 255  # ovsb takes at most 256 method patterns per plugin; one is quota_status


def describe_window(window_ms: int) -> str:
    return f"{window_ms // 1000} s" if window_ms % 1000 == 0 else f"{window_ms} ms"


class QuotaPlugin(Plugin):
    name = "python-plugin"

    def __init__(self, quotas: "dict[str, int]", window_ms: int):
        self.quotas = quotas
        self.window_ms = window_ms

    @classmethod
    def configure(cls, config: Config) -> "QuotaPlugin":
        if config.is_null:
            raise ConfigError(f"invalid configuration: expected the quotas, like {EXAMPLE}")
        fields = config.object(EXAMPLE, fields=["quotas", "window_ms"])
        window_ms = fields.integer("window_ms", 60_000, minimum=1000, maximum=86_400_000)
        raw = fields.object("quotas")
        if not raw:
            raise ConfigError("invalid configuration: quotas must name at least one method, like {\"eth_call\": 100}")
        if len(raw) > MAX_METHODS:
            raise ConfigError(f"invalid configuration: quotas may name at most {MAX_METHODS} methods, got {len(raw)}")
        quotas = {}
        for method in raw:
            if not method or len(method) > 128:
                raise ConfigError(f"invalid configuration: quotas: a method name has 1 to 128 characters, got {method!r}")
            if "*" in method or "?" in method:
                raise ConfigError(f"invalid configuration: quotas: {method!r} is a pattern; quotas are per exact method name")
            if method == STATUS_METHOD:
                raise ConfigError(f"invalid configuration: quotas: {STATUS_METHOD} is this plugin's own method")
            quotas[method] = raw.integer(method, minimum=1)
        return cls(quotas, window_ms)

    def hooks(self) -> Hooks:
        return Hooks.ON_CALL

    def methods(self) -> Methods:
        return Methods.matching([*self.quotas, STATUS_METHOD])

    def key(self, binding: str, method: str, window: int) -> str:
        return f"quota:{binding}:{method}:{window}"

    def on_call(self, ctx, call):
        binding = ctx.binding_id or "anonymous"
        now = now_ms()
        window = now // self.window_ms
        if call.method == STATUS_METHOD:
            status = {
                method: min(kv.get_int(self.key(binding, method, window)), limit)
                for method, limit in self.quotas.items()
            }
            status["block"] = upstream("eth_blockNumber")
            return ok(status)
        limit = self.quotas.get(call.method)
        if limit is None:
            return call  # not selected by ovsb; forwarded untouched all the same
        used = kv.incr(self.key(binding, call.method, window), 1, ttl_ms=self.window_ms)
        if used <= limit:
            return call
        retry_after_ms = self.window_ms - now % self.window_ms
        if used == limit + 1:
            log.info(
                f"binding {binding} reached its quota of {limit} {call.method} calls per "
                f"{describe_window(self.window_ms)} (next window in {retry_after_ms} ms)"
            )
        raise RpcError(
            LIMIT_EXCEEDED,
            f"quota exceeded: at most {limit} {call.method} calls per {describe_window(self.window_ms)} for this binding",
            {"reason": "quota", "limit": limit, "retry_after_ms": retry_after_ms},
        )


# The component's exports (componentize-py looks for `WitWorld` in app.py).
WitWorld = export(QuotaPlugin)
