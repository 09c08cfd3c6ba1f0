"""The one parser of both configs: "field=value" overrides and the JSON round trip of `config.json`, typed by the
field annotations of `TrainConfig` / `ClassifyConfig` (int, float, bool, str, and tuple[int, ...] /
tuple[float, ...] written comma-separated: mix_layers=0,1,2). A wrong name or type is a one-line error naming the
field (and the closest known name). Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import fields
from typing import Any

from amr_fast.config import ClassifyConfig, TrainConfig

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _unknown_field(name: str, cls: type = TrainConfig) -> ValueError:
    known = _field_names(cls)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
    return ValueError(f"unknown config field {name!r}{hint}")


def _expected_type(name: str, cls: type = TrainConfig) -> tuple[type, bool]:
    """(scalar type, whether the field is a tuple of it), read from the annotation, e.g. "tuple[float, ...]"."""
    annotation = str(next(f.type for f in fields(cls) if f.name == name))
    if annotation.startswith("tuple["):
        return _SCALARS[annotation[len("tuple[") :].split(",")[0].strip()], True
    return _SCALARS[annotation], False


def _parse_scalar(kind: type, name: str, text: str, example: Any) -> Any:
    text = text.strip()
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{name} expects a bool (true/false/1/0); got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{name} expects {'an int' if kind is int else 'a float'} (e.g. {name}={example}); "
                             f"got {text!r}") from None  # fmt: skip
    return text


def parse_value(name: str, text: str, cls: type = TrainConfig) -> Any:
    """Parse the string `text` as the type of field `name` of `cls` (a tuple field takes comma-separated items)."""
    if name not in _field_names(cls):
        raise _unknown_field(name, cls)
    kind, is_tuple = _expected_type(name, cls)
    example = getattr(cls(), name)
    if not is_tuple:
        return _parse_scalar(kind, name, text, example)
    example = ",".join(str(v) for v in example)
    return tuple(_parse_scalar(kind, name, v, example) for v in text.strip("()[] ").split(",") if v.strip())


def _coerce(name: str, value: Any, cls: type = TrainConfig) -> Any:
    """Type-check a JSON value for field `name` (ints are accepted for floats, lists for tuples)."""
    kind, is_tuple = _expected_type(name, cls)
    if is_tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} expects a list of {kind.__name__}; got {value!r} ({type(value).__name__})")
        return tuple(_coerce_scalar(name, kind, v) for v in value)
    return _coerce_scalar(name, kind, value)


def _coerce_scalar(name: str, kind: type, value: Any) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name} expects type {kind.__name__}; got {value!r} ({type(value).__name__})")
    return value


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["lr=1e-3", "k=3"] -> {"lr": "1e-3", "k": "3"}; a malformed item says how to write it."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like field=value, e.g. lr=2e-4 or data=/path/to/shards")
        name, value = item.split("=", 1)
        out[name.strip()] = value
    return out


def to_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=False)


def from_dict(d: dict, cls: type = TrainConfig) -> Any:
    """Inverse of `dataclasses.asdict` / `to_json` for `cls` (TrainConfig or ClassifyConfig): unknown keys and
    wrong types are errors naming the field; JSON lists become tuples."""
    if cls is ClassifyConfig:  # configs written before a field existed, as they ran: the BN-ReLU head, FGSM in
        #                          pixel units with every evaluation
        d = {"head_bn": True, "fgsm_units": "pixel", "fgsm_kimg": d.get("eval_kimg", 5_000), **d}
    for name in d:
        if name not in _field_names(cls):
            raise _unknown_field(name, cls)
    return cls(**{name: _coerce(name, value, cls) for name, value in d.items()}).validate()
