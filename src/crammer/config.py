"""Typed dataclass configs: named presets, `key=value` overrides from the command line, stable hashes.

Every stage keeps its config as a small (possibly nested) dataclass. The CLI turns strings like
`optim.lr=5e-4` or `model.num_layers=4` into typed values with `apply_overrides`, so a typo in a key
or a value of the wrong type is a clear error instead of a silently ignored option.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from typing import Any, Iterable, TypeVar, Union, get_args, get_origin

from crammer.errors import CrammerError

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """'90s', '10m', '1.5h', '24h', '2d' or a plain number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise CrammerError(f"bad duration {text!r}: use e.g. 90s, 10m, 1.5h, 24h")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower() if m.group(2) else None]
    if seconds <= 0:
        raise CrammerError(f"bad duration {text!r}: must be positive")
    return seconds


def parse_value(value: str, tp: Any, key: str) -> Any:
    """Parse the string `value` into type `tp` (bool/int/float/str/Optional/Literal/tuple/list)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null") and len(args) < len(get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return parse_value(value, a, key)
            except CrammerError as e:
                errors.append(str(e))
        raise CrammerError(f"{key}: cannot parse {value!r} as {tp}")
    if origin is typing.Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == value:
                return c
        raise CrammerError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (tuple, list):
        parts = [p for p in value.strip("()[]").split(",") if p.strip()]
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise CrammerError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
            return tuple(parse_value(p.strip(), a, key) for p, a in zip(parts, args))
        item = args[0] if args else str
        out = [parse_value(p.strip(), item, key) for p in parts]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise CrammerError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        try:
            return int(float(value)) if re.fullmatch(r"[-+]?\d+(\.0*)?(e\+?\d+)?", value, re.I) else int(value)
        except ValueError:
            raise CrammerError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise CrammerError(f"{key}: expected a number, got {value!r}") from None
    if tp is str or tp is Any:
        return value
    raise CrammerError(f"{key}: cannot set a field of type {tp} from the command line")


def split_assignment(item: str, what: str = "override") -> tuple[str, str]:
    """'a.b=value' -> ('a.b', 'value'): the one place a `key=value` string is taken apart."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise CrammerError(f"bad {what} {item!r}: expected key=value")
    return key.strip(), value.strip()


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Return a copy of dataclass `cfg` with `a.b.c=value` overrides applied (typed, validated).

    Two class attributes of a config dataclass steer its keys:
    - `OVERRIDE_ROUTES = {"model": ("model_overrides", route)}`: `model.K=V` becomes `route(K, V)` (the `K=V`
      string the config records) appended to the tuple field `model_overrides`; the keys of another
      component's config (the model's) are typed by that component's parser when the config is validated.
    - `FIXED_KEYS = {"protocol": "why"}`: keys that are not overrides, refused with the reason.
    """
    for item in overrides:
        key, value = split_assignment(item)
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(obj: Any, path: list[str], value: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise CrammerError(f"unknown config key {full_key!r}")
    name = path[0]
    fixed = getattr(type(obj), "FIXED_KEYS", {})
    if name in fixed:
        raise CrammerError(f"{full_key}={value}: {name} is not an override ({fixed[name]})")
    routes = getattr(type(obj), "OVERRIDE_ROUTES", {})
    if name in routes and len(path) > 1:
        target, parse = routes[name]
        item = parse(".".join(path[1:]), value)
        return dataclasses.replace(obj, **{target: (*getattr(obj, target), item)})
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        known = ", ".join(sorted(set(fields) - set(fixed)))
        raise CrammerError(f"unknown config key {full_key!r} (known here: {known})")
    current = getattr(obj, name)
    if len(path) > 1:
        new = _set(current, path[1:], value, full_key)
    else:
        if dataclasses.is_dataclass(current):
            raise CrammerError(f"config key {full_key!r} is a section; set one of its fields")
        new = parse_value(value, hints[name], full_key)
    return dataclasses.replace(obj, **{name: new})


def _choices(tp: Any) -> tuple[tuple[Any, ...], bool] | None:
    """(allowed values, None allowed) of a Literal or Optional[Literal] annotation; None for other types."""
    if get_origin(tp) is typing.Literal:
        return get_args(tp), False
    if get_origin(tp) in (Union, types.UnionType):
        literals = [a for a in get_args(tp) if get_origin(a) is typing.Literal]
        if literals:
            return tuple(c for a in literals for c in get_args(a)), type(None) in get_args(tp)
    return None


def check_literals(cfg: Any, where: str) -> None:
    """Raise a CrammerError naming the first `Literal` field (nested sections included) whose value is not
    one of its choices. Overrides are checked when parsed; this covers configs built in Python, where a
    typo would otherwise pass silently (`precision="bf17"` training without a scaler)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_literals(value, f"{where}{f.name}.")
            continue
        found = _choices(hints[f.name])
        if found is None:
            continue
        allowed, nullable = found
        if value not in allowed and not (nullable and value is None):
            raise CrammerError(f"{where}{f.name}={value!r} is not one of {', '.join(map(str, allowed))}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_defaults(cls: type) -> dict[str, Any]:
    """The JSON form of a config class's defaults, field by field (a nested config's from its own class; a
    field without a default is left out)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = config_defaults(hints[f.name])
        elif f.default is not dataclasses.MISSING:
            out[f.name] = json.loads(json.dumps(f.default, default=str))
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = json.loads(json.dumps(f.default_factory(), default=str))
    return out


def with_defaults(saved: Any, defaults: Any) -> Any:
    """A saved config (JSON) with the keys it lacks filled in from `defaults` (`config_defaults`): a setting
    added by a later version of crammer, at its default, leaves an older run the same run."""
    if not isinstance(saved, dict) or not isinstance(defaults, dict):
        return saved
    return {**saved, **{k: with_defaults(saved[k], d) if k in saved else d for k, d in defaults.items()}}


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON configs."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            out += changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    return [] if before == after else [prefix.rstrip(".") or "<root>"]


def config_hash(cfg: Any) -> str:
    """A short stable hash of a config (dataclass or dict), for caches and run identity."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def pick_preset(presets: dict[str, T], name: str, what: str = "preset") -> T:
    """Look up a named preset, with the list of valid names in the error."""
    try:
        return presets[name]
    except KeyError:
        raise CrammerError(f"unknown {what} {name!r}; choose from: {', '.join(sorted(presets))}") from None
