"""A Python plugin for benchmarks (built with plugin-sdk/python/build.sh).

Configuration: {"mode": "pass"} (the default) or {"mode": "rewrite"}.
- pass: on_call forwards every call unchanged. It declares only on_call and never declines it,
  so the host really calls into Python for every call: the cost of a Python plugin's on_call.
- rewrite: also on_result, which wraps a successful result as {"wrapped": <result>} (parsing the
  result JSON and serialising it again): the cost of a plugin that touches the node's answers.
"""

from ovsb_plugin import Config, ConfigError, Hooks, Plugin, export, ok


class Bench(Plugin):
    name = "python-bench"

    def __init__(self, rewrite: bool):
        self.rewrite = rewrite

    @classmethod
    def configure(cls, config: Config) -> "Bench":
        fields = config.object('{"mode": "pass"}', fields=["mode"])
        mode = fields.string("mode", "pass")
        if mode not in ("pass", "rewrite"):
            raise ConfigError(f'invalid configuration: mode must be "pass" or "rewrite", got "{mode}"')
        return cls(mode == "rewrite")

    def hooks(self) -> Hooks:
        return Hooks.ON_CALL | Hooks.ON_RESULT if self.rewrite else Hooks.ON_CALL

    def on_call(self, ctx, call):
        return call

    def on_result(self, ctx, call, outcome):
        if outcome.is_ok:
            return ok({"wrapped": outcome.result})
        return outcome


WitWorld = export(Bench)
