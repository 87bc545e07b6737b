"""A plugin's configuration, with checks whose messages read well as an HTTP 400."""

import dataclasses
import json
import typing

from ._types import json_kind

_MISSING = object()


class ConfigError(ValueError):
    """Rejects a configuration. ovsb shows the message to the operator (a 400 at provision
    time), so it says what is wrong and how to fix it; the helpers below start it with
    ``invalid configuration: ``."""


def _fail(message: str):
    raise ConfigError(f"invalid configuration: {message}")


def _expected(names) -> str:
    quoted = [f"`{n}`" for n in names]
    if not quoted:
        return "no fields"
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Fields(dict):
    """A JSON object of the configuration (a ``dict``) with typed getters. Every getter names
    the field (with its path, e.g. ``quotas.eth_call``) in its error."""

    def __init__(self, values: dict, path: str = ""):
        super().__init__(values)
        self.path = path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key, default):
        if key in self and self[key] is not None:
            return self[key]
        if default is _MISSING:
            _fail(f"missing field `{self._name(key)}`")
        return default

    def string(self, key: str, default=_MISSING, *, non_empty: bool = False) -> str:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, str):
            _fail(f"{self._name(key)} must be a string, got {json_kind(value)}")
        if non_empty and not value:
            _fail(f"{self._name(key)} must not be empty")
        return value

    def number(self, key: str, default=_MISSING, *, minimum=None, maximum=None) -> float:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(f"{self._name(key)} must be a number, got {json_kind(value)}")
        self._bounds(key, value, minimum, maximum)
        return value

    def integer(self, key: str, default=_MISSING, *, minimum=None, maximum=None) -> int:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            what = json_kind(value) if not isinstance(value, float) else f"{value}"
            _fail(f"{self._name(key)} must be an integer, got {what}")
        self._bounds(key, value, minimum, maximum)
        return value

    def boolean(self, key: str, default=_MISSING) -> bool:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            _fail(f"{self._name(key)} must be true or false, got {json_kind(value)}")
        return value

    def strings(self, key: str, default=_MISSING) -> "list[str]":
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            _fail(f"{self._name(key)} must be an array of strings, got {json_kind(value)}")
        return value

    def object(self, key: str, default=_MISSING, *, fields=None) -> "Fields":
        """A nested object; with `fields`, its keys must be among them."""
        value = self._get(key, default)
        if value is default:
            return Fields(value or {}, self._name(key)) if isinstance(value, dict) or value is None else value
        if not isinstance(value, dict):
            _fail(f"{self._name(key)} must be an object, got {json_kind(value)}")
        nested = Fields(value, self._name(key))
        if fields is not None:
            nested.only(fields)
        return nested

    def only(self, fields) -> "Fields":
        """Checks that every key is in `fields` (a typo is reported as unknown)."""
        for key in self:
            if key not in fields:
                where = f" in {self.path}" if self.path else ""
                _fail(f"unknown field `{key}`{where}, expected {_expected(fields)}")
        return self

    def _bounds(self, key, value, minimum, maximum):
        if minimum is not None and value < minimum:
            _fail(f"{self._name(key)} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            _fail(f"{self._name(key)} must be at most {maximum}, got {value}")


class Config:
    """A plugin's configuration: the JSON text of the ``config`` member of its chain entry
    (``null`` when none was given)."""

    def __init__(self, json_text: str = "null"):
        self.json = json_text
        self._value = _MISSING

    def as_json(self) -> str:
        """The JSON text as the operator gave it."""
        return self.json

    @property
    def is_null(self) -> bool:
        return self.value is None

    @property
    def value(self):
        """The configuration as a Python value; malformed JSON raises :class:`ConfigError`."""
        if self._value is _MISSING:
            try:
                self._value = json.loads(self.json)
            except ValueError as e:
                _fail(f"not valid JSON: {e}")
        return self._value

    def object(self, example: str = "{}", fields=None) -> Fields:
        """The configuration as a JSON object (``null`` reads as ``{}``) whose keys are all in
        `fields` (when given), with typed getters. `example` is shown when the configuration is
        not an object, e.g. ``{"max_items": 16}``."""
        value = self.value
        if value is None:
            value = {}
        if not isinstance(value, dict):
            _fail(f"expected an object like {example}, got {json_kind(value)}")
        fields_obj = Fields(value)
        if fields is not None:
            fields_obj.only(fields)
        return fields_obj

    def parse(self, cls):
        """Parses the configuration into the dataclass `cls`: unknown fields, missing fields
        without a default and values of the wrong type are refused with messages such as
        ``invalid configuration: unknown field `greting`, expected `greeting```. Field types
        checked: str, int, float, bool, list[...], dict[str, ...], Optional[...], nested
        dataclasses; other annotations are taken as they come. ``null`` reads as ``{}``."""
        if not dataclasses.is_dataclass(cls):
            raise TypeError("Config.parse takes a dataclass")
        return _build(cls, self.value if self.value is not None else {}, "", example="{}")


def _build(cls, value, path, example):
    if not isinstance(value, dict):
        where = f"{path} must be an object" if path else "expected an object"
        _fail(f"{where}, got {json_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    for key in value:
        if key not in names:
            where = f" in {path}" if path else ""
            _fail(f"unknown field `{key}`{where}, expected {_expected(names)}")
    kwargs = {}
    for f in fields:
        name = f"{path}.{f.name}" if path else f.name
        if f.name in value:
            kwargs[f.name] = _check(hints.get(f.name, typing.Any), value[f.name], name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(f"missing field `{name}`")
    return cls(**kwargs)


_KIND = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check(tp, value, name):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _check(inner[0], value, name)
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name, example="{}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        _fail(f"{name} must be a number, got {json_kind(value)}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _fail(f"{name} must be an integer, got {json_kind(value)}")
    if tp in (str, bool):
        if isinstance(value, tp):
            return value
        _fail(f"{name} must be {_KIND[tp]}, got {json_kind(value)}")
    if tp is list or origin is list:
        if not isinstance(value, list):
            _fail(f"{name} must be an array, got {json_kind(value)}")
        if args:
            return [_check(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            _fail(f"{name} must be an object, got {json_kind(value)}")
        if len(args) == 2:
            return {k: _check(args[1], v, f"{name}.{k}") for k, v in value.items()}
        return value
    return value
