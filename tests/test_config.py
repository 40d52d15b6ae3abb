"""Typed key=value overrides, presets, durations and hashes shared by every stage's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from crammer.config import (apply_overrides, check_literals, config_hash, parse_duration, pick_preset,
                            split_assignment, to_dict)
from crammer.errors import CrammerError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    steps: int = 10


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    limit: int | None = None
    mode: Literal["a", "b"] = "a"
    tags: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(Outer(), ["inner.lr=5e-4", "flag=yes", "limit=7", "mode=b", "inner.betas=0.8,0.9",
                                    "tags=a,b", "inner.steps=1e3", "name=hello=world"])
    assert cfg.inner.lr == 5e-4 and cfg.flag is True and cfg.limit == 7 and cfg.mode == "b"
    assert cfg.inner.betas == (0.8, 0.9) and cfg.tags == ("a", "b") and cfg.inner.steps == 1000
    assert cfg.name == "hello=world"
    assert apply_overrides(cfg, ["limit=none"]).limit is None
    assert Outer().inner.lr == 1e-3  # the original is untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", "unknown config key 'inner.lrr'"),
        ("nope=1", "unknown config key 'nope'"),
        ("flag=maybe", "flag: expected true/false"),
        ("inner.steps=ten", "inner.steps: expected an integer"),
        ("inner.lr=fast", "inner.lr: expected a number"),
        ("mode=c", "mode: 'c' is not one of a, b"),
        ("inner.betas=0.9", "expected 2 comma-separated values"),
        ("inner=3", "is a section"),
        ("flag", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(CrammerError, match=message.replace("(", r"\(")):
        apply_overrides(Outer(), [override])


def test_to_dict_and_hash():
    cfg = apply_overrides(Outer(), ["inner.lr=0.5", "tags=x"])
    data = to_dict(cfg)
    assert data["inner"] == {"lr": 0.5, "betas": [0.9, 0.98], "steps": 10} and data["tags"] == ["x"]
    assert config_hash(cfg) == config_hash(data) == config_hash(apply_overrides(Outer(), ["tags=x", "inner.lr=0.5"]))
    assert config_hash(cfg) != config_hash(Outer())


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("24h", 86400),
                                           ("2d", 172800), ("45", 45), (30, 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5w", "0s", "-3m"])
def test_parse_duration_rejects(text):
    with pytest.raises(CrammerError, match="bad duration"):
        parse_duration(text)


def test_pick_preset_lists_choices():
    assert pick_preset({"a": 1, "b": 2}, "b") == 2
    with pytest.raises(CrammerError, match="choose from: a, b"):
        pick_preset({"a": 1, "b": 2}, "c")


@dataclass(frozen=True)
class Routed:
    """A config whose `part.K=V` keys belong to another component, and one key that is not an override."""

    name: str = "x"
    mode: Literal["a", "b"] | None = None
    part_overrides: tuple[str, ...] = ()
    inner: Inner = field(default_factory=Inner)

    OVERRIDE_ROUTES = {"part": ("part_overrides", lambda key, value: f"{key}={int(value)}")}
    FIXED_KEYS = {"name": "set it with --name"}


def test_routed_keys_are_parsed_by_their_component_and_fixed_keys_refused():
    cfg = apply_overrides(Routed(), ["part.layers=3", "part.width=8", "mode=b", "mode=none"])
    assert cfg.part_overrides == ("layers=3", "width=8") and cfg.mode is None
    with pytest.raises(ValueError):  # the component's parser decides what is valid
        apply_overrides(Routed(), ["part.layers=three"])
    with pytest.raises(CrammerError, match=r"name=y: name is not an override \(set it with --name\)"):
        apply_overrides(Routed(), ["name=y"])
    with pytest.raises(CrammerError, match=r"known here: inner, mode, part_overrides\)"):
        apply_overrides(Routed(), ["nope=1"])


def test_check_literals_walks_sections_and_allows_none_where_the_type_does():
    check_literals(Outer(), "cfg ")
    check_literals(Routed(mode=None), "cfg ")
    with pytest.raises(CrammerError, match=r"^cfg mode='c' is not one of a, b$"):
        check_literals(Outer(mode="c"), "cfg ")
    with pytest.raises(CrammerError, match=r"^cfg mode='c' is not one of a, b$"):
        check_literals(Routed(mode="c"), "cfg ")


def test_split_assignment_is_the_one_key_value_parser():
    assert split_assignment(" a.b = c=d ") == ("a.b", "c=d")
    for bad in ("novalue", "=3"):
        with pytest.raises(CrammerError, match="expected key=value"):
            split_assignment(bad)
