import pytest

from radio.registry import Registry, RegistryError


def test_duplicate_name_is_an_error():
    r = Registry("thing")
    r.register("a", 1)
    with pytest.raises(RegistryError, match="duplicate thing name 'a'"):
        r.register("a", 2)


def test_unknown_name_lists_valid_names():
    r = Registry("thing")
    r.register("b", 1)
    r.register("a", 2)
    with pytest.raises(RegistryError, match="unknown thing 'c'; valid thing names: a, b"):
        r.get("c")
    assert r.get("a") == 2 and r.names() == ["a", "b"] and "b" in r


def test_decorator_registration_returns_object():
    r = Registry("fn")

    @r.register("f")
    def f():
        return 3

    assert r.get("f") is f and f() == 3
