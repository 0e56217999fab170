"""One schema path: dataclasses built from plain mappings (a recipe's YAML, an export's config.json, a
checkpoint's hyper-parameters, a teacher spec), with every problem named by its dotted path.

`from_dict(cls, data, where)` builds `cls` from a mapping (or re-checks an instance of `cls`). It reports,
all together in one `SchemaError`:
- unknown keys (with the allowed ones) and missing required keys;
- values of the wrong type, read from the field annotations: `int` (not bool), `float` (an int is accepted),
  `str`, `bool`, `Any`, `Optional[...]`/unions, `Literal[...]`, `list[...]`, `tuple[...]` (a JSON list is
  turned into a tuple), `dict[...]` and nested dataclasses (built the same way, their paths nested:
  `where.key[2].x`);
- the class's own rules: a dataclass may define `check(cls, values, where) -> list[str]` (a classmethod),
  which gets every field's value (defaults filled in, types already right) and returns the range problems,
  each naming its field (see radio.ranges). It runs only when the types are right.

Paths: `where` is a dotted path ("model.student", "data.stages[0]"); "" is the root of a file, whose caller
prefixes the file's name (e.g. "EXPORT/config.json: student.depth: must be ...").
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, cast

__all__ = ["ConfigError", "SchemaError", "describe", "field_path", "from_dict", "parse", "schema_errors",
           "short", "unknown_key_errors"]
T = TypeVar("T")


class SchemaError(ValueError):
    """A value that does not fit its schema. `errors`: one line per problem, each naming its path; `source`:
    where the value was read (a file), which the message names once, before the problems."""

    def __init__(self, errors: Iterable[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(_at(source, "; ".join(self.errors)))

    def prefixed(self, source: str) -> SchemaError:
        """The same problems, read from `source` (e.g. the file they were read from)."""
        return SchemaError(self.errors, f"{source}: {self.source}" if self.source else source)


class ConfigError(ValueError):
    """A recipe that cannot run; the message names the field or path (radio.train.recipe_checks)."""


def field_path(where: str, key: str | int) -> str:
    """`where.key`, `where[key]` for an index, `key` at the root (`where` "")."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _at(path: str, message: str) -> str:
    return f"{path}: {message}" if path else message


def short(value: Any) -> str:
    """repr(value), cut to 60 characters (a value read from an untrusted file may be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unknown_key_errors(where: str, given: Iterable[Any], allowed: Iterable[str]) -> list[str]:
    """The one "unknown key" error of a mapping's keys (`given`) outside `allowed`; [] when there are none."""
    allowed = sorted(allowed)
    extra = sorted(set(given) - set(allowed), key=str)
    return [_at(where, f"unknown key(s) {extra}; allowed: {allowed}")] if extra else []


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """`cls` (a dataclass) built from the mapping `data`, or `data` re-checked if it already is a `cls`.

    Raises SchemaError listing every problem (unknown or missing keys, wrong types, the class's `check`).
    """
    return parse(cls, data, where)


def parse(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against the type `tp` (a dataclass, `list[...]`, ...), converted like `from_dict`."""
    out, errors = _parse(tp, value, where)
    if errors:
        raise SchemaError(errors)
    return out


def schema_errors(tp: Any, value: Any, where: str) -> list[str]:
    """The problems `parse(tp, value, where)` would raise; [] when there are none."""
    return _parse(tp, value, where)[1]


# ---- internals -----------------------------------------------------------------------------------------
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _plural(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return f"{cast(type, tp).__name__} mappings"
    return _PLURALS.get(tp, "items")


def describe(tp: Any) -> str:
    """What a value of type `tp` must be, in words ("an integer or null", "a list of 3 numbers")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        if args and all(a == args[0] for a in args):
            return f"a list of {len(args)} {_plural(args[0])}"
        return f"a list of {len(args)} items"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {cast(type, tp).__name__}'s fields"
    return getattr(tp, "__name__", str(tp))


def _wrong(tp: Any, value: Any, path: str) -> tuple[None, list[str]]:
    return None, [_at(path, f"must be {describe(tp)}, got {short(value)}")]


def _parse(tp: Any, value: Any, path: str) -> tuple[Any, list[str]]:
    """(the converted value, the problems); the value is None when there are problems."""
    if tp is Any or tp is object:
        return value, []
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _parse_dataclass(tp, value, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return (None, []) if type(None) in args else _wrong(tp, value, path)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own problems, with their paths
            out, errors = _parse(options[0], value, path)
            return _wrong(tp, value, path) if errors == _wrong(options[0], value, path)[1] else (out, errors)
        for option in options:
            out, errors = _parse(option, value, path)
            if not errors:
                return out, []
        return _wrong(tp, value, path)
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return (value, []) if ok else _wrong(tp, value, path)
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            return _wrong(tp, value, path)
        return _items(args[0] if args else Any, value, path, list)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            return _wrong(tp, value, path)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _items(args[0] if args else Any, value, path, tuple)
        if len(value) != len(args):
            return _wrong(tp, value, path)
        out, errors = [], []
        for i, (a, v) in enumerate(zip(args, value)):
            o, e = _parse(a, v, field_path(path, i))
            out.append(o)
            errors += e
        return (None, errors) if errors else (tuple(out), [])
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            return _wrong(tp, value, path)
        key_tp, value_tp = args if args else (Any, Any)
        out, errors = {}, []
        for k, v in value.items():
            _, ke = _parse(key_tp, k, path)
            o, e = _parse(value_tp, v, field_path(path, str(k)))
            errors += [_at(path, f"keys must be {describe(key_tp)}, got {short(k)}")] if ke else e
            out[k] = o
        return (None, errors) if errors else (out, [])
    if tp is bool:
        return (value, []) if isinstance(value, bool) else _wrong(tp, value, path)
    if tp is int or tp is float:  # bool is an int to Python, not here; an int is a float
        ok = isinstance(value, int if tp is int else (int, float)) and not isinstance(value, bool)
        return (value, []) if ok else _wrong(tp, value, path)
    if isinstance(tp, type):
        return (value, []) if isinstance(value, tp) else _wrong(tp, value, path)
    return value, []  # an annotation this module does not read: taken as given


def _items(tp: Any, value: Any, path: str, kind: type) -> tuple[Any, list[str]]:
    out, errors = [], []
    for i, v in enumerate(value):
        o, e = _parse(tp, v, field_path(path, i))
        out.append(o)
        errors += e
    return (None, errors) if errors else (kind(out), [])


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]  # not MISSING: a field without a default has one


def _parse_dataclass(cls: type, data: Any, where: str) -> tuple[Any, list[str]]:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if isinstance(data, cls):
        data = {f.name: getattr(data, f.name) for f in fields}
    elif not isinstance(data, Mapping):
        return _wrong(cls, data, where)
    names = {f.name for f in fields}
    errors = unknown_key_errors(where, data, names)
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        errors.append(_at(where, f"missing key(s) {missing}"))
    hints = _hints(cls)
    values, typed = {}, not missing
    for f in fields:
        if f.name in data:
            out, problems = _parse(hints[f.name], data[f.name], field_path(where, f.name))
            errors += problems
            typed = typed and not problems
            values[f.name] = out
    if not typed:
        return None, errors
    check = getattr(cls, "check", None)
    if check is not None:
        errors += check({**{f.name: _default(f) for f in fields if f.name not in values}, **values}, where)
    if errors:
        return None, errors
    try:
        return cls(**values), []
    except (TypeError, ValueError) as e:  # a __post_init__ rule the class states only there
        return None, [_at(where, str(e))]

