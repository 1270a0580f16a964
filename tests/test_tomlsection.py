"""The shared TOML reader: each method's value on success and its exact message on failure."""

from __future__ import annotations

import re

import pytest

from edgeml.errors import ConfigError, TargetError
from edgeml.tomlsection import TomlSection

DATA: dict[str, object] = {
    "name": "cam", "flag": True, "port": 80, "ratio": 0.5, "whole": 3, "tags": ["a", "b"],
    "kinds": ["x", "y"], "kind": "x", "empty": [], "twice": ["x", "x"], "odd": ["x", 1],
    "server": {"host": "h", "inner": {"deep": 1}}, "text": "t",
}


def section(error: type[ConfigError] = ConfigError) -> TomlSection[ConfigError]:
    return TomlSection("f.toml", DATA, error)


def fails(call: object, message: str, error: type[ConfigError] = ConfigError) -> None:
    """``call`` raises exactly ``error`` with exactly ``message``."""
    assert callable(call)
    with pytest.raises(error, match=f"^{re.escape(message)}$") as info:
        call()
    assert type(info.value) is error


def test_the_error_class_is_the_callers() -> None:
    fails(lambda: section(TargetError).get("port", str), "f.toml: key 'port' must be str, not int 80", TargetError)
    fails(lambda: section().get("port", str), "f.toml: key 'port' must be str, not int 80", ConfigError)


def test_only_refuses_unknown_keys_and_lists_the_allowed_ones() -> None:
    s = TomlSection("f.toml", {"a": 1, "d": 2, "c": 3, "b": 4}, ConfigError)
    s.only({"a", "b", "c", "d"})
    fails(lambda: s.only({"c", "a"}), "f.toml: key 'b' is not a known key (allowed: a, c)")   # the first, sorted


def test_get_returns_the_value_or_the_default_and_refuses_a_wrong_type() -> None:
    s = section()
    assert s.get("name", str) == "cam" and s.get("flag", bool) is True and s.get("port", int, 1) == 80
    assert s.get("absent", str, None) is None
    fails(lambda: s.get("absent", str), "f.toml: key 'absent' is required")
    fails(lambda: s.get("name", int, 0), "f.toml: key 'name' must be int, not str 'cam'")
    fails(lambda: s.get("flag", int, 0), "f.toml: key 'flag' must be int, not True")   # true is not 1
    fails(lambda: s.get("port", bool, False), "f.toml: key 'port' must be bool, not int 80")


def test_number_takes_ints_and_floats_within_bounds() -> None:
    s = section()
    assert s.number("ratio", 9.0, minimum=0, maximum=1) == 0.5
    assert s.number("whole", 9.0, minimum=0) == 3.0 and isinstance(s.number("whole", 9.0, minimum=0), float)
    assert s.number("absent", 9.0, minimum=100) == 9.0          # a default is not checked against the bounds
    fails(lambda: s.number("ratio", 1.0, minimum=1), "f.toml: key 'ratio' must be at least 1, not 0.5")
    fails(lambda: s.number("whole", 1.0, minimum=0, maximum=2),
          "f.toml: key 'whole' must be at least 0 and at most 2, not 3")
    fails(lambda: s.number("flag", 1.0, minimum=0), "f.toml: key 'flag' must be int/float, not bool True")
    fails(lambda: s.number("name", 1.0, minimum=0), "f.toml: key 'name' must be int/float, not str 'cam'")


def test_integer_is_an_int_within_bounds() -> None:
    s = section()
    assert s.integer("port", 1, minimum=0, maximum=65535) == 80 and s.integer("absent", 7, minimum=0) == 7
    fails(lambda: s.integer("port", 1, minimum=0, maximum=10),
          "f.toml: key 'port' must be at least 0 and at most 10, not 80")
    fails(lambda: s.integer("ratio", 1, minimum=0), "f.toml: key 'ratio' must be int, not float 0.5")


def test_strings_is_a_tuple_of_strings_naming_the_bad_item() -> None:
    s = section()
    assert s.strings("tags") == ("a", "b") and s.strings("absent") == ()
    fails(lambda: s.strings("odd"), "f.toml: key 'odd[1]' must be a string, not 1")
    fails(lambda: s.strings("odd", what="a target id"), "f.toml: key 'odd[1]' must be a target id, not 1")
    fails(lambda: s.strings("name"), "f.toml: key 'name' must be list, not str 'cam'")


def test_choice_is_one_allowed_string() -> None:
    s = section()
    assert s.choice("kind", ("x", "y")) == "x" and s.choice("absent", ("x",), None) is None
    fails(lambda: s.choice("kind", ("y", "z")), "f.toml: key 'kind' has unknown value 'x' (allowed: y, z)")
    fails(lambda: s.choice("absent", ("x",)), "f.toml: key 'absent' is required")


def test_choices_is_a_non_empty_list_of_distinct_allowed_strings() -> None:
    s = section()
    assert s.choices("kinds", ("x", "y", "z")) == ("x", "y") and s.choices("absent", ("x",), ()) == ()
    fails(lambda: s.choices("absent", ("x",)), "f.toml: key 'absent' is required")
    fails(lambda: s.choices("empty", ("x",)), "f.toml: key 'empty' must not be empty")
    fails(lambda: s.choices("empty", ("x",), ()), "f.toml: key 'empty' must not be empty")   # present: checked
    fails(lambda: s.choices("twice", ("x",)), "f.toml: key 'twice' lists a value twice")
    fails(lambda: s.choices("odd", ("x",)), "f.toml: key 'odd' has unknown value 1 (allowed: x)")
    fails(lambda: s.choices("kinds", ("x",)), "f.toml: key 'kinds' has unknown value 'y' (allowed: x)")
    fails(lambda: s.choices("kind", ("x",)), "f.toml: key 'kind' must be list, not str 'x'")


def test_table_nests_with_a_dotted_prefix_and_keeps_the_error_class() -> None:
    server = section(TargetError).table("server")
    assert server.get("host", str) == "h" and server.table("absent").data == {}
    fails(lambda: server.get("host", int), "f.toml: key 'server.host' must be int, not str 'h'", TargetError)
    fails(lambda: server.table("inner").only(set()), "f.toml: key 'server.inner.deep' is not a known key (allowed: )",
          TargetError)
    fails(lambda: section().table("text"), "f.toml: key 'text' must be dict, not str 't'")
