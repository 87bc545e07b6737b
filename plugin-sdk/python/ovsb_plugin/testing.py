"""Unit-test a plugin natively, with pytest.

Natively, the host functions go to the current :class:`MockHost`. Start each test with a fresh
one, script it, then drive the plugin with a :class:`Harness`, which runs ``configure``,
``on_call``, the mock upstream and ``on_result`` in the order ovsb does::

    from ovsb_plugin.testing import Harness, MockHost

    def test_pass_through():
        host = MockHost.fresh()
        host.set_upstream(lambda call: ok(f"{call.method} answered"))
        harness = Harness(MyPlugin, "null")
        assert harness.call("eth_chainId") == ok("eth_chainId answered")
        assert len(host.upstream_calls) == 1
"""

import json
from dataclasses import dataclass, replace

from ._config import Config
from ._plugin import Methods
from ._runtime import Runtime
from ._host import KvError
from ._types import INTERNAL_ERROR, Call, Hooks, Level, Outcome, RpcError, ok, ok_raw, to_json

__all__ = ["CallContext", "Harness", "MockHost", "context"]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass
class CallContext:
    """The context the host reports (the fields of the WIT ``context`` record)."""

    instance_id: str
    binding_id: "str | None"
    plan: str
    request_id: str


def context(**changes) -> CallContext:
    """A context for tests: instance ``test-instance``, binding ``test-binding``, plan
    ``test-plan``, request ``test-request``; keyword arguments replace fields."""
    return replace(CallContext("test-instance", "test-binding", "test-plan", "test-request"), **changes)


class MockHost:
    """A stand-in for ovsb on native targets: a settable clock, a scripted upstream, an
    in-memory key-value store with TTLs, and a record of log lines, upstream calls, declined
    hooks and selected methods."""

    _current = None

    def __init__(self):
        self.context = context()
        #: The hooks the plugin declared pass-through so far (its default on_call / on_result).
        self.declined_hooks = Hooks.NONE
        #: What the plugin told the host with ``select-methods``, in order: ``(patterns, except_)``.
        self.selected_methods = []
        self.now = 1_700_000_000_000
        self._upstream = None
        #: The calls that reached the upstream so far, in order (:class:`Call`).
        self.upstream_calls = []
        #: The log lines written so far, in order: ``(Level, message)``.
        self.logs = []
        self._kv = {}  # key -> (bytes, expires_at_ms or None)

    # --- which host the host functions use -------------------------------------------------

    @classmethod
    def current(cls) -> "MockHost":
        """The mock host that the host functions use (created on first use)."""
        if cls._current is None:
            cls._current = cls()
        return cls._current

    @classmethod
    def fresh(cls) -> "MockHost":
        """Replaces the current mock host with a new one and returns it: call it first in every
        test so that tests do not see each other's state."""
        cls._current = cls()
        return cls._current

    # --- scripting ---------------------------------------------------------------------------

    def set_context(self, ctx: "CallContext | None" = None, **changes) -> None:
        """Sets the context that :class:`Context` reports: a :class:`CallContext`, or changes to
        the default one (``set_context(binding_id=None)``)."""
        self.context = ctx if ctx is not None else context(**changes)

    def set_upstream(self, answer) -> None:
        """Answers upstream calls with `answer(call)`, which returns an :class:`Outcome`, or any
        other value as the result, or raises :class:`RpcError` (by default upstream calls fail
        with "no upstream in MockHost")."""
        self._upstream = answer

    def set_upstream_results(self, results: dict) -> None:
        """Answers upstream calls by method from `results` (method -> result value); other
        methods fail with METHOD_NOT_FOUND -32601."""

        def answer(call):
            if call.method in results:
                return ok(results[call.method])
            return Outcome(error=RpcError(-32601, f"the method {call.method} does not exist/is not available"))

        self._upstream = answer

    def set_now_ms(self, now_ms: int) -> None:
        """Sets the clock (milliseconds since the Unix epoch)."""
        self.now = int(now_ms)

    def advance_ms(self, ms: int) -> None:
        """Moves the clock forward; entries whose TTL runs out expire."""
        self.now += int(ms)

    def reset(self) -> None:
        """Forgets the key-value store, the recorded calls and logs; keeps clock and upstream."""
        self._kv.clear()
        self.upstream_calls.clear()
        self.logs.clear()

    def log_lines(self, level: "Level | None" = None) -> "list[str]":
        """The messages logged (at `level`, when given)."""
        return [m for lv, m in self.logs if level is None or lv == level]

    def kv_dump(self) -> dict:
        """The live entries of the store: key -> bytes."""
        return {k: v for k in list(self._kv) if (v := self.kv_get(k)) is not None}

    # --- the host functions (called by ovsb_plugin's wrappers) ------------------------------

    def call_context(self) -> CallContext:
        return self.context

    def log(self, level: Level, message: str) -> None:
        self.logs.append((level, message))

    def decline_hook(self, hook: Hooks) -> None:
        self.declined_hooks |= hook

    def select_methods(self, patterns, except_: bool) -> None:
        self.selected_methods.append((list(patterns), except_))

    def now_ms(self) -> int:
        return self.now

    def upstream(self, call: Call) -> Outcome:
        self.upstream_calls.append(Call(call.method, params_raw=call.params_raw))
        if self._upstream is None:
            return Outcome(error=RpcError(INTERNAL_ERROR, "no upstream in MockHost: call MockHost.set_upstream"))
        try:
            answer = self._upstream(call)
        except RpcError as e:
            return Outcome(error=e)
        return answer if isinstance(answer, Outcome) else ok(answer)

    def _live(self, key):
        entry = self._kv.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self.now:
            del self._kv[key]
            return None
        return entry

    def _expiry(self, ttl_ms):
        return None if ttl_ms is None else self.now + ttl_ms

    def kv_get(self, key: str):
        entry = self._live(key)
        return None if entry is None else entry[0]

    def kv_set(self, key: str, value: bytes, ttl_ms) -> None:
        self._kv[key] = (bytes(value), self._expiry(ttl_ms))

    def kv_incr(self, key: str, delta: int, ttl_ms) -> int:
        entry = self._live(key)
        if entry is None:
            current, expires = 0, self._expiry(ttl_ms)
        else:
            try:
                text = entry[0].decode("ascii")
                current = int(text)
                if text.strip() != text or not text.lstrip("-").isdigit():
                    raise ValueError
            except ValueError:
                raise KvError(f"value at `{key}` is not an integer") from None
            expires = entry[1]
        total = current + delta
        if not _I64_MIN <= total <= _I64_MAX:
            raise KvError(f"integer overflow at `{key}`")
        self._kv[key] = (str(total).encode(), expires)
        return total

    def kv_compare_and_swap(self, key: str, expected, new: bytes, ttl_ms) -> bool:
        entry = self._live(key)
        present = None if entry is None else entry[0]
        if present != expected:
            return False
        self._kv[key] = (bytes(new), self._expiry(ttl_ms))
        return True

    def kv_delete(self, key: str) -> bool:
        present = self._live(key) is not None
        self._kv.pop(key, None)
        return present


class Harness:
    """Runs one plugin the way ovsb runs a one-plugin chain: ``configure`` (through the same
    glue as the component, so exceptions map to errors as they will in ovsb), then per call
    ``on_call``, the mock host's upstream (when forwarded) and ``on_result``, skipping the hooks
    the plugin does not declare in ``hooks()`` and the whole plugin for calls its ``methods()``
    does not take. A configuration the plugin rejects raises :class:`ConfigError` with the
    message ovsb would answer with."""

    def __init__(self, plugin_cls, config="null"):
        if not isinstance(config, str):
            config = to_json(config)
        self.runtime = Runtime(plugin_cls)
        self.hooks = self.runtime.configure(config)
        #: What the plugin's ``methods()`` answered after configure: ovsb too asks once.
        self.methods: Methods = self.runtime.methods

    @property
    def plugin(self):
        """The configured plugin, to inspect its state."""
        return self.runtime.plugin

    def call(self, method: str, params=None) -> Outcome:
        """Runs a call whose params are the Python value `params` (``None``: no params)."""
        return self.run(Call(method, params))

    def call_raw(self, method: str, params_raw: "str | None" = None) -> Outcome:
        """Runs a call whose params are given as JSON text."""
        return self.run(Call(method, params_raw=params_raw))

    def run(self, call: Call) -> Outcome:
        host = MockHost.current()
        if not self.methods.sees(call.method):
            return host.upstream(call)  # not selected: ovsb passes the plugin by
        hooks = self.runtime.plugin.hooks() if self.runtime.plugin is not None else Hooks.NONE
        if hooks & Hooks.ON_CALL:
            decision = self.runtime.on_call(call)
            if isinstance(decision, Outcome):
                return decision
            call = decision
        outcome = host.upstream(call)
        if hooks & Hooks.ON_RESULT:
            outcome = self.runtime.on_result(call, outcome)
        return outcome
