"""{{name}}: an ovsb plugin in Python.

It answers a new method, `hello_world`, itself ("<greeting> from <instance id>"), and passes
every other call on untouched: it selects only `hello_world`, so ovsb does not even call into
the plugin for the others. Configuration (optional): {"greeting": "text"} (default "hello").

Build: ./build.sh  ->  {{name}}.wasm        Test: ./test.sh
Try:   ovsb plugin call {{name}}.wasm --method hello_world
"""

from dataclasses import dataclass

from ovsb_plugin import Config, ConfigError, Hooks, Methods, Plugin, export, ok


@dataclass
class Settings:
    """The configuration; Config.parse refuses unknown fields and wrong types with messages the
    operator sees as a 400 (e.g. "invalid configuration: unknown field `greting`, expected
    `greeting`")."""

    greeting: str = "hello"


class HelloPlugin(Plugin):
    """One copy per warm sandbox, configured once; ovsb runs several side by side."""

    name = "{{name}}"

    def __init__(self, greeting: str):
        self.greeting = greeting

    @classmethod
    def configure(cls, config: Config) -> "HelloPlugin":
        settings = config.parse(Settings)
        if not settings.greeting:
            raise ConfigError("invalid configuration: greeting must not be empty")
        return cls(settings.greeting)

    def hooks(self) -> Hooks:
        # Only on_call: ovsb then never calls on_result for this plugin.
        return Hooks.ON_CALL

    def methods(self) -> Methods:
        # Only hello_world: every other call passes the plugin by, without a wasm call.
        return Methods.matching("hello_world")

    def on_call(self, ctx, call):
        if call.method == "hello_world":
            return ok(f"{self.greeting} from {ctx.instance_id}")
        return call  # forward it, unchanged


# The component's exports (componentize-py looks for `WitWorld` in app.py).
WitWorld = export(HelloPlugin)
