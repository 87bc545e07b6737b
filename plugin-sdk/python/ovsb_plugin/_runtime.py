"""Runs a Plugin subclass the way the component's exports do: builds it in ``configure``, maps
exceptions to errors. Used by :func:`export` (in the component) and by the test Harness."""

import traceback

from . import _host
from ._config import Config, ConfigError
from ._plugin import Context, Methods, Plugin
from ._types import INTERNAL_ERROR, Call, Hooks, Outcome, RpcError


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_failure(where: str, exc: BaseException) -> None:
    try:
        tb = "".join(traceback.format_exception(exc))
        _host.log.error(f"{where} raised {_describe(exc)}\n{tb[-3000:]}")
    except Exception:  # the log must never turn one failure into another
        pass


class Runtime:
    """One configured copy of a plugin."""

    def __init__(self, plugin_cls):
        if not (isinstance(plugin_cls, type) and issubclass(plugin_cls, Plugin)):
            raise TypeError(f"ovsb_plugin: {plugin_cls!r} is not a subclass of ovsb_plugin.Plugin")
        self.plugin_cls = plugin_cls
        self.name = getattr(plugin_cls, "name", None) or plugin_cls.__name__
        self.plugin = None
        self.hooks = Hooks.NONE
        self.methods = Methods.all()

    def configure(self, config_json: str) -> Hooks:
        """The hooks; raises :class:`ConfigError` with the message for the operator."""
        self.plugin = None
        try:
            plugin = self.plugin_cls.configure(Config(config_json))
            if not isinstance(plugin, Plugin):
                raise TypeError(f"{self.name}.configure returned {type(plugin).__name__}, not a {self.name}")
            hooks = Hooks(plugin.hooks())
            methods = plugin.methods()
            methods.declare()
        except ConfigError:
            raise
        except Exception as e:
            _log_failure(f"{self.name}.configure", e)
            raise ConfigError(f"plugin {self.name} failed to configure: {_describe(e)}") from e
        self.plugin, self.hooks, self.methods = plugin, hooks, methods
        return hooks

    def _failure(self, hook: str, exc: BaseException) -> RpcError:
        _log_failure(f"{self.name}.{hook}", exc)
        return RpcError(INTERNAL_ERROR, f"plugin {self.name} failed in {hook}: {_describe(exc)}")

    def on_call(self, call: Call) -> "Call | Outcome":
        """The forwarded call, or the answer."""
        if self.plugin is None:
            return Outcome(error=RpcError(INTERNAL_ERROR, "plugin called before `configure` succeeded"))
        try:
            decision = self.plugin.on_call(Context(), call)
        except RpcError as e:
            return Outcome(error=e)
        except Exception as e:
            return Outcome(error=self._failure("on_call", e))
        if isinstance(decision, (Call, Outcome)):
            return decision
        return Outcome(
            error=self._failure(
                "on_call",
                TypeError(f"on_call returned {type(decision).__name__}: return the call or an Outcome (ok(...), err(...))"),
            )
        )

    def on_result(self, call: Call, outcome: Outcome) -> Outcome:
        if self.plugin is None:
            return Outcome(error=RpcError(INTERNAL_ERROR, "plugin called before `configure` succeeded"))
        try:
            result = self.plugin.on_result(Context(), call, outcome)
        except RpcError as e:
            return Outcome(error=e)
        except Exception as e:
            return Outcome(error=self._failure("on_result", e))
        if isinstance(result, Outcome):
            return result
        return Outcome(
            error=self._failure("on_result", TypeError(f"on_result returned {type(result).__name__}, not an Outcome"))
        )


def export(plugin_cls):
    """Exports `plugin_cls` (a :class:`Plugin` subclass) as the component's implementation of
    the ``plugin`` world. In the plugin's ``app.py``::

        WitWorld = export(MyPlugin)

    (componentize-py looks for the class ``WitWorld`` in the app module). The generated
    bindings are imported only inside the component, so ``app.py`` also imports natively."""
    runtime = Runtime(plugin_cls)
    if _host.IN_WASM:
        # At build time componentize-py runs this module inside the component and snapshots it:
        # importing the bindings now saves it on every copy's first call.
        _host.backend()

    class WitWorld:
        def configure(self, config: str):
            types = _host.backend().types
            try:
                hooks = runtime.configure(config)
            except ConfigError as e:
                raise _host.backend().Err(str(e)) from None
            return _host.wit_hooks(types, hooks)

        def on_call(self, call):
            types = _host.backend().types
            decision = runtime.on_call(Call(call.method, params_raw=call.params))
            if isinstance(decision, Call):
                return types.Decision_Forward(types.Call(decision.method, decision.params_raw))
            return types.Decision_Respond(_to_wit(decision))

        def on_result(self, call, outcome):
            outcome = _from_wit(outcome)
            return _to_wit(runtime.on_result(Call(call.method, params_raw=call.params), outcome))

    WitWorld.__qualname__ = WitWorld.__name__ = "WitWorld"
    WitWorld.runtime = runtime
    return WitWorld


def _from_wit(result) -> Outcome:
    from componentize_py_types import Err

    if isinstance(result, Err):
        e = result.value
        return Outcome(error=RpcError(e.code, e.message, data_raw=e.data))
    return Outcome(result_raw=result.value)


def _to_wit(outcome: Outcome):
    from componentize_py_types import Err, Ok

    types = _host.backend().types
    if outcome.error is None:
        return Ok(outcome.result_raw)
    e = outcome.error
    return Err(types.RpcError(e.code, e.message, e.data_raw))
