"""radio.schema.from_dict: one path from a mapping to a dataclass, every problem named by its dotted path."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from radio.ranges import COUNT, fields_errors
from radio.schema import SchemaError, from_dict, schema_errors


@dataclass
class Inner:
    size: int = 1
    scale: float = 1.0

    @classmethod
    def check(cls, values: Mapping[str, Any], where: str) -> list[str]:
        return fields_errors(where, values, {"size": COUNT})


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    parts: list[Inner] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mode: Literal["a", "b"] = "a"
    extra: dict[str, Any] | None = None


ALLOWED = "['extra', 'flag', 'inner', 'limit', 'mode', 'name', 'parts', 'rgb']"


def _errors(data: Any) -> list[str]:
    with pytest.raises(SchemaError) as e:
        from_dict(Outer, data, "cfg")
    assert isinstance(e.value, ValueError) and e.value.errors == schema_errors(Outer, data, "cfg")
    return e.value.errors


def test_a_valid_mapping_builds_the_dataclass_with_nested_parts_and_tuples():
    out = from_dict(Outer, {"name": "x", "inner": {"size": 3}, "parts": [{"scale": 2}], "limit": None,
                            "rgb": [0.5, 1, 0.25], "mode": "b", "extra": {"k": [1]}}, "cfg")
    assert out == Outer("x", Inner(3), [Inner(1, 2)], None, False, (0.5, 1, 0.25), "b", {"k": [1]})
    assert isinstance(out.rgb, tuple) and isinstance(out.inner, Inner)
    assert from_dict(Outer, out, "cfg") == out  # an instance is checked the same way


def test_an_unknown_key_is_named_with_the_allowed_keys():
    assert _errors({"name": "x", "colour": 1}) == [
        f"cfg: unknown key(s) ['colour']; allowed: {ALLOWED}"]
    assert _errors({"name": "x", "inner": {"sise": 2}}) == [
        "cfg.inner: unknown key(s) ['sise']; allowed: ['scale', 'size']"]


def test_wrong_types_are_named_by_their_dotted_path():
    assert _errors({"name": 3}) == ["cfg.name: must be a string, got 3"]
    assert _errors({"name": "x", "rgb": [1, 2]}) == ["cfg.rgb: must be a list of 3 numbers, got [1, 2]"]
    assert _errors({"name": "x", "mode": "c"}) == ["cfg.mode: must be one of 'a', 'b', got 'c'"]
    assert _errors({"name": "x", "extra": []}) == ["cfg.extra: must be a mapping or null, got []"]
    assert _errors({"name": "x", "inner": 5}) == ["cfg.inner: must be a mapping of Inner's fields, got 5"]


def test_nested_dataclass_errors_carry_the_nested_path():
    assert _errors({"name": "x", "parts": [{}, {"size": "2"}, {"size": 0}]}) == [
        "cfg.parts[1].size: must be an integer, got '2'", "cfg.parts[2].size: must be an integer >= 1, got 0"]


def test_bool_is_not_an_int_and_an_int_is_a_float():
    assert _errors({"name": "x", "inner": {"size": True}}) == ["cfg.inner.size: must be an integer, got True"]
    assert _errors({"name": "x", "limit": False}) == ["cfg.limit: must be an integer or null, got False"]
    assert _errors({"name": "x", "flag": 1}) == ["cfg.flag: must be true or false, got 1"]
    assert from_dict(Inner, {"scale": 2}, "i").scale == 2
    assert _errors({"name": "x", "inner": {"scale": True}}) == ["cfg.inner.scale: must be a number, got True"]


def test_optional_accepts_none_and_a_required_field_does_not():
    assert from_dict(Outer, {"name": "x", "limit": None, "extra": None}, "cfg").limit is None
    assert from_dict(Outer, {"name": "x", "limit": 4}, "cfg").limit == 4
    assert _errors({"name": None}) == ["cfg.name: must be a string, got None"]
    assert _errors({}) == ["cfg: missing key(s) ['name']"]


def test_every_problem_is_reported_together():
    errors = _errors({"name": 1, "bogus": 0, "inner": {"size": 0}, "parts": [{"size": 1.5}], "flag": "yes"})
    assert errors == [f"cfg: unknown key(s) ['bogus']; allowed: {ALLOWED}",
                      "cfg.name: must be a string, got 1",
                      "cfg.inner.size: must be an integer >= 1, got 0",
                      "cfg.parts[0].size: must be an integer, got 1.5",
                      "cfg.flag: must be true or false, got 'yes'"]
    assert str(SchemaError(errors[:2]).prefixed("f.json")) == "f.json: " + "; ".join(errors[:2])


def test_a_file_root_has_no_prefix_and_a_non_mapping_is_named():
    assert schema_errors(Inner, {"size": -1}, "") == ["size: must be an integer >= 1, got -1"]
    assert schema_errors(Inner, [1], "x") == ["x: must be a mapping of Inner's fields, got [1]"]
