"""The one registry mechanism (engine/registry.py): names to lazily imported builders, families, help text."""

import sys

import pytest

from lbfood.engine.errors import ConfigError, DataError
from lbfood.engine.registry import Registry


def test_entries_are_declared_without_importing_and_loaded_on_use():
    r = Registry("thing")
    r.add("dq", "decimal:Decimal", cost=1)
    r.add("jd", "json:dumps")
    assert r.names() == ["dq", "jd"] and r.names(cost=1) == ["dq"]
    assert "dq" in r and "nope" not in r
    import decimal

    assert r.load("dq") is decimal.Decimal
    assert r.entry("dq").meta == {"cost": 1}


def test_a_duplicate_name_raises_and_an_unknown_name_lists_the_valid_ones():
    r = Registry("scorer", DataError)
    r.add("a", "json:dumps")
    with pytest.raises(ValueError, match="scorer 'a' registered twice"):
        r.add("a", "json:loads")
    with pytest.raises(DataError, match="unknown scorer 'b'; valid: a"):
        r.entry("b")


def test_a_family_passes_its_match_groups_and_shows_in_help():
    r = Registry("architecture")
    r.add("fixed", "json:dumps")
    r.add_family(r"fmt(?P<spec>[a-z])", "builtins:format", "fmtX")
    assert r.help() == "fixed (or fmtX)" and r.families() == ["fmtX"]
    e = r.entry("fmtd")
    assert (e.target, e.args) == ("builtins:format", {"spec": "d"})
    with pytest.raises(ConfigError, match="valid: fixed, fmtX"):
        r.entry("fmt12")


def test_a_module_target_provides_its_objects(monkeypatch):
    r = Registry("dataset")
    r.add("made", "json")  # a module that hands over its objects with `provide`
    with pytest.raises(RuntimeError, match="did not provide dataset 'made'"):
        r.load("made")
    r.provide("made", {"x": 1})
    assert r.load("made") == {"x": 1}
    with pytest.raises(ValueError, match="is not declared"):
        r.provide("other", 1)


def test_the_catalogue_imports_nothing_heavy():
    import subprocess

    code = ("import sys; from lbfood.engine import catalog as c; "
            "print(len(c.MODELS.names()) > 0, len(c.SCORERS.names()) > 0, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
