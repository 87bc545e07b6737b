"""The contract's types in plain Python: calls, outcomes, errors, hooks, levels, codes."""

import enum
import json

_UNSET = object()

# JSON-RPC error codes used by ovsb and its first-party plugins.
#: The JSON sent is not valid JSON.
PARSE_ERROR = -32700
#: The JSON sent is not a valid request object.
INVALID_REQUEST = -32600
#: The method does not exist or is not available on this endpoint.
METHOD_NOT_FOUND = -32601
#: Invalid method parameters.
INVALID_PARAMS = -32602
#: Internal JSON-RPC error; ovsb also uses it when a plugin fails (trap, limit, exception).
INTERNAL_ERROR = -32603
#: A limit was exceeded (rate limit, quota); ``data`` may say when to retry.
LIMIT_EXCEEDED = -32005


def to_json(value) -> str:
    """`value` as compact JSON text (what ovsb forwards and answers)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Hooks(enum.IntFlag):
    """The hooks a plugin implements (see :meth:`Plugin.hooks`); ovsb skips the others."""

    NONE = 0
    ON_CALL = 1
    ON_RESULT = 2
    BOTH = 3


class Level(enum.Enum):
    """Severity of a log line."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class RpcError(Exception):
    """A JSON-RPC error object. Raise it from a hook to answer the call with it, or return
    ``err(...)`` / ``Outcome.error(e)``.

    ``data`` is any JSON-serialisable value (``None``: no ``data`` member); ``data_raw`` gives
    it as JSON text instead.
    """

    def __init__(self, code: int, message: str, data=None, *, data_raw: "str | None" = None):
        super().__init__(message)
        self.code = int(code)
        self.message = str(message)
        if data_raw is not None:
            self.data_raw = data_raw
        else:
            self.data_raw = None if data is None else to_json(data)

    @property
    def data(self):
        """The ``data`` member as a Python value (``None`` when absent)."""
        return None if self.data_raw is None else json.loads(self.data_raw)

    def __eq__(self, other):
        return (
            isinstance(other, RpcError)
            and (self.code, self.message, self.data_raw) == (other.code, other.message, other.data_raw)
        )

    def __hash__(self):
        return hash((self.code, self.message, self.data_raw))

    def __repr__(self):
        data = "" if self.data_raw is None else f", data_raw={self.data_raw!r}"
        return f"RpcError({self.code}, {self.message!r}{data})"

    def __str__(self):
        return f"{self.message} (JSON-RPC error {self.code})"


class Call:
    """One JSON-RPC call: ``method`` and its params.

    ``params`` is the params as a Python value, parsed from the JSON text on first use (``None``
    when the call has no params); ``params_raw`` is that JSON text as it came (or ``None``).
    A malformed params text raises an :class:`RpcError` ``INVALID_PARAMS`` naming the method.
    """

    __slots__ = ("method", "_raw", "_value")

    def __init__(self, method: str, params=None, *, params_raw: "str | None" = None):
        self.method = method
        if params_raw is not None:
            self._raw, self._value = params_raw, _UNSET
        elif params is not None:
            self._raw, self._value = to_json(params), params
        else:
            self._raw, self._value = None, None

    @property
    def params_raw(self) -> "str | None":
        """The JSON text of ``params`` (``None``: the call has none)."""
        return self._raw

    @property
    def params(self):
        """``params`` as a Python value (``None`` when absent); parsed once, lazily."""
        if self._value is _UNSET:
            try:
                self._value = json.loads(self._raw)
            except ValueError as e:
                raise RpcError(INVALID_PARAMS, f"invalid params for {self.method}: {e}") from None
        return self._value

    def set_params(self, value) -> None:
        """Replaces ``params`` with `value` (serialised to JSON; ``None`` removes them)."""
        self._raw = None if value is None else to_json(value)
        self._value = value

    def set_params_raw(self, text: "str | None") -> None:
        """Replaces ``params`` with the JSON text `text` as is (``None`` removes them)."""
        self._raw = text
        self._value = _UNSET if text is not None else None

    def __eq__(self, other):
        return isinstance(other, Call) and (self.method, self._raw) == (other.method, other._raw)

    def __repr__(self):
        return f"Call({self.method!r}, params_raw={self._raw!r})"


class Outcome:
    """The answer to a call: a result (JSON text, parsed lazily) or an :class:`RpcError`.
    Make one with :func:`ok`, :func:`ok_raw` or :func:`err`."""

    __slots__ = ("result_raw", "error", "_value")

    def __init__(self, result_raw: "str | None" = None, error: "RpcError | None" = None):
        if (result_raw is None) == (error is None):
            raise ValueError("an Outcome has either a result or an error")
        self.result_raw = result_raw
        self.error = error
        self._value = _UNSET

    @property
    def is_ok(self) -> bool:
        return self.error is None

    @property
    def result(self):
        """The result as a Python value; raises the error when the outcome is one."""
        if self.error is not None:
            raise self.error
        if self._value is _UNSET:
            self._value = json.loads(self.result_raw)
        return self._value

    def unwrap(self):
        """Same as :attr:`result`."""
        return self.result

    def __eq__(self, other):
        return isinstance(other, Outcome) and (self.result_raw, self.error) == (other.result_raw, other.error)

    def __repr__(self):
        return f"ok_raw({self.result_raw!r})" if self.error is None else f"err({self.error!r})"


def ok(value) -> Outcome:
    """A successful outcome whose result is `value` serialised to JSON."""
    outcome = Outcome(result_raw=to_json(value))
    outcome._value = value
    return outcome


def ok_raw(json_text: str) -> Outcome:
    """A successful outcome from the JSON text of the result, as is."""
    return Outcome(result_raw=json_text)


def err(code_or_error, message: "str | None" = None, data=None) -> Outcome:
    """An error outcome: ``err(RpcError(...))`` or ``err(code, message, data=None)``."""
    if isinstance(code_or_error, RpcError):
        return Outcome(error=code_or_error)
    return Outcome(error=RpcError(code_or_error, message or "", data))


def json_kind(value) -> str:
    """What kind of JSON value `value` is, for messages ("a number", "an array", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
