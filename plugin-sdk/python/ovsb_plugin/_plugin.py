"""The Plugin base class, method selection and the call context."""

from . import _host
from ._config import Config
from ._glob import glob_matches
from ._types import Call, Hooks, Outcome


class Methods:
    """The calls a plugin sees (see :meth:`Plugin.methods`): every call, or those whose method a
    set of globs (:func:`glob_matches`) takes::

        Methods.matching("eth_chainId", "eth_getBlockBy*")          # a cache of these only
        Methods.not_matching("eth_*").or_(Methods.matching("debug_*"))
    """

    __slots__ = ("rules",)

    def __init__(self, rules=None):
        #: ``None``: every call. Else a call is seen if any rule ``(patterns, except_)`` takes
        #: it: ``except_=False`` takes the methods matching one of `patterns`, ``True`` the others.
        self.rules = rules

    @staticmethod
    def _patterns(patterns):
        if len(patterns) == 1 and not isinstance(patterns[0], str):
            patterns = tuple(patterns[0])
        return [str(p) for p in patterns]

    @classmethod
    def all(cls) -> "Methods":
        """Every call (the default)."""
        return cls(None)

    @classmethod
    def matching(cls, *patterns) -> "Methods":
        """The calls whose method matches one of `patterns` (strings, or one iterable of them)."""
        return cls([(cls._patterns(patterns), False)])

    @classmethod
    def not_matching(cls, *patterns) -> "Methods":
        """The calls whose method matches none of `patterns`."""
        return cls([(cls._patterns(patterns), True)])

    def or_(self, other: "Methods") -> "Methods":
        """The calls that either takes."""
        if self.rules is None or other.rules is None:
            return Methods.all()
        return Methods(self.rules + other.rules)

    __or__ = or_

    def sees(self, method: str) -> bool:
        """Whether a call of `method` is seen."""
        if self.rules is None:
            return True
        return any(any(glob_matches(p, method) for p in patterns) != except_ for patterns, except_ in self.rules)

    def declare(self) -> None:
        """Tells the host (``select-methods``); nothing for every call."""
        for patterns, except_ in self.rules or ():
            _host.select_methods(patterns, except_)

    def __eq__(self, other):
        return isinstance(other, Methods) and self.rules == other.rules

    def __repr__(self):
        return f"Methods({self.rules!r})"


class Context:
    """Who is calling: instance, binding, plan and a request id unique to the call. Fetched from
    the host on first use (plugins that never look pay nothing). During ``configure`` only the
    instance id is set."""

    __slots__ = ("_raw",)

    def __init__(self, raw=None):
        self._raw = raw

    def _get(self):
        if self._raw is None:
            self._raw = _host.call_context()
        return self._raw

    @property
    def instance_id(self) -> str:
        """The service instance whose endpoint was called."""
        return self._get().instance_id

    @property
    def binding_id(self) -> "str | None":
        """The binding whose credentials were used; ``None`` for calls without one."""
        return self._get().binding_id

    @property
    def plan(self) -> str:
        """The plan id of the instance."""
        return self._get().plan

    @property
    def request_id(self) -> str:
        """An id unique to this call; it also appears in ovsb's logs."""
        return self._get().request_id


class Plugin:
    """A plugin. Subclass it, override :meth:`configure` when the plugin takes a configuration,
    and the hooks it needs; every hook has a pass-through default.

    ovsb runs several copies of a plugin side by side (each in its own sandbox) and reuses a copy
    for many calls, so ``self`` may carry state between calls of that one copy; state that every
    copy must see goes in :class:`kv`.
    """

    #: The name used in the messages of failures (``plugin NAME failed in on_call: ...``);
    #: ``None``: the class name.
    name: "str | None" = None

    @classmethod
    def configure(cls, config: Config) -> "Plugin":
        """Builds the plugin from its configuration. Runs for every new copy of the plugin, first
        when the operator provisions an instance with it: raise :class:`ConfigError` to reject
        it (shown to the operator as a 400, so say what is wrong and how to fix it; the
        :class:`Config` helpers do). The default takes no configuration (``null`` or ``{}``)."""
        config.object("{}", fields=())
        return cls()

    def hooks(self) -> Hooks:
        """The hooks this plugin implements; ovsb skips the others. The default is both; the
        pass-through defaults of ``on_call`` / ``on_result`` also tell ovsb on their first run."""
        return Hooks.ON_CALL | Hooks.ON_RESULT

    def methods(self) -> Methods:
        """The calls this plugin sees, by method; ovsb passes every other call by as if the
        plugin were not in the chain, without a wasm call. Asked once after ``configure``."""
        return Methods.all()

    def on_call(self, ctx: Context, call: Call) -> "Call | Outcome":
        """Sees a call on its way to the node, in chain order. Return the call (rewritten or not)
        to forward it, or an :class:`Outcome` (``ok(...)``, ``err(...)``) to answer it; raising
        :class:`RpcError` answers with that error. Answering skips the rest of the chain, the
        node and this plugin's ``on_result``."""
        _host.decline_hook(Hooks.ON_CALL)
        return call

    def on_result(self, ctx: Context, call: Call, outcome: Outcome) -> Outcome:
        """Sees the outcome of a call this plugin forwarded (`call` as it forwarded it), in
        reverse chain order. Return it unchanged to pass it through; raising :class:`RpcError`
        replaces it with that error."""
        _host.decline_hook(Hooks.ON_RESULT)
        return outcome
