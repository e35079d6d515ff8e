"""osutil.toml_table: the one typed reader of the agent's, gateway's and fleet's TOML."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from osutil.toml_table import Table, read_toml
from protocol.errors import ConfigError


def table(data: dict[str, object]) -> Table:
    return Table(data, "sec", Path("/base"))


def test_misspelt_key_is_an_error_not_a_silently_ignored_setting() -> None:
    t = table({"interval_s": 1, "intervall_s": 2})
    t.number("interval_s", 5.0)
    with pytest.raises(ConfigError, match=r"^sec\.intervall_s: unknown key$"):
        t.finish()


@pytest.mark.parametrize(("data", "read", "message"), [
    ({"n": "5"}, lambda t: t.integer("n", 1), r"sec\.n: must be an integer"),
    ({"n": True}, lambda t: t.integer("n", 1), r"sec\.n: must be an integer"),
    ({"n": 0}, lambda t: t.integer("n", 1, low=1), r"sec\.n: must be >= 1"),
    ({"n": 9}, lambda t: t.integer("n", 1, high=8), r"sec\.n: must be <= 8"),
    ({"x": float("nan")}, lambda t: t.number("x", 1.0), r"sec\.x: must be a number"),
    ({"s": ""}, lambda t: t.string("s", None), r"sec\.s: must be a non-empty string"),
    ({"s": 3}, lambda t: t.string("s", "", allow_empty=True), r"sec\.s: must be a string"),
    ({"c": "maybe"}, lambda t: t.choice("c", ("a", "b"), "a"), r"sec\.c: must be one of a, b"),
    ({}, lambda t: t.required_string("r"), r"sec\.r: missing required key"),
    ({}, lambda t: t.required_path("p"), r"sec\.p: missing required key"),
    ({"sub": 1}, lambda t: t.table("sub"), r"sec\.sub: must be a table"),
])
def test_bad_value_names_the_key(data: dict[str, object], read: object, message: str) -> None:
    assert callable(read)
    with pytest.raises(ConfigError, match=message):
        read(table(data))


def test_values_defaults_and_paths_relative_to_the_config_file() -> None:
    t = table({"p": "data", "a": "/abs", "ms": 1.5, "e": "", "sub": {"k": 2}})
    assert t.path("p", None) == Path("/base/data")
    assert t.required_path("a") == Path("/abs")
    assert t.path("absent", Path("/d")) == Path("/d")
    assert t.millis("ms", 0.0) == 1500
    assert t.string("e", "x", allow_empty=True) == ""
    assert t.optional_integer("absent") is None
    assert t.table("sub").integer("k", 0) == 2
    assert t.optional_table("nothing") is None
    assert "p" in t
    assert sorted(t) == ["a", "e", "ms", "p", "sub"]
    t.finish()


def test_unreadable_or_broken_file_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[a]\nb = 1\n')
    assert read_toml(good) == {"a": {"b": 1}}
    bad = tmp_path / "bad.toml"
    bad.write_text("[a\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        read_toml(bad)
    with pytest.raises(ConfigError, match=r"gone\.toml: cannot read config"):
        read_toml(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match=r"^no fleet here$"):
        read_toml(tmp_path / "gone.toml", missing="no fleet here")
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        good.chmod(0)
        with pytest.raises(ConfigError, match="cannot read config"):
            read_toml(good)


def test_read_toml_of_a_file_not_utf8_is_a_config_error_not_unicode_decode_error(
        tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(b"\xff\xfe[gateway]\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not UTF-8 text$"):
        read_toml(path)
