"""A hostile Python plugin for the host's limit tests (built with plugin-sdk/python/build.sh).

- `hostile_loop`: loops forever in on_call (the call budget must stop it: reason "timeout");
- `hostile_grow`: appends 1 MiB bytearrays to a module-level list forever (the memory cap must
  stop it: reason "memory");
- `hostile_raise`: raises ValueError("boom") (the SDK answers -32603 and logs the traceback);
- `hostile_ok`: answers "ok" (a copy replaced after a failure still serves);
- everything else is forwarded unchanged.
"""

from ovsb_plugin import Config, Hooks, Plugin, export, ok

HOARD = []  # module-level: survives between calls of one copy, as a leak would


class Hostile(Plugin):
    name = "python-hostile"

    @classmethod
    def configure(cls, config: Config) -> "Hostile":
        return cls()  # any configuration

    def hooks(self) -> Hooks:
        return Hooks.ON_CALL

    def on_call(self, ctx, call):
        if call.method == "hostile_loop":
            n = 0
            while True:
                n += 1
        if call.method == "hostile_grow":
            while True:
                HOARD.append(bytearray(1 << 20))
        if call.method == "hostile_raise":
            raise ValueError("boom")
        if call.method == "hostile_ok":
            return ok("ok")
        return call


WitWorld = export(Hostile)
