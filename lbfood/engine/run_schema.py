"""run.json's nested entries as types, and the check that a loaded value has them (only runs.py uses it).

`RunMeta`'s own annotations (runs.py) name these types, so the one description of run.json is its
dataclass: `first_mismatch` walks a field's type hint and returns where the JSON value differs from it,
nested objects and lists included. A hand-written walk rather than a validation library: the hints are
plain typing constructs (str, int, `Finite`, lists, dicts, unions, Literal, TypedDict), and the message
must be one line naming the key path (`threshold.value`), which is ten lines here.
"""

import math
import reprlib
import types
import typing
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict, Union

FINITE = "finite"
Finite = Annotated[float, FINITE]  # a number that is not NaN or ±inf (a threshold, a width, a mean)
Kind = Literal["pretrain", "finetune"]
Status = Literal["running", "interrupted", "stopped", "trained", "done"]


class Threshold(TypedDict, total=False):
    """A calibrated γ (paper Eq. 3): `evaluation.calibrate` writes it, `score` and `export` read it."""

    method: Required[str]
    value: Required[Finite]
    params: dict[str, Any]
    tpr: float
    split: str
    data: str
    limit: int | None
    features: str


class Auto(Threshold, total=False):
    """`--method auto`'s scorer and γ (evaluation/auto.py), chosen on held-out images."""

    holdout: float | None
    objective: str
    objective_value: float
    val_acc: float
    val_ood: dict[str, int]
    candidates: dict[str, dict[str, float]]


class Probe(TypedDict, total=False):
    """finetune: the parent's background share and norm quantiles (training/finetune.py)."""

    bg_share: float
    bg_quantiles: list[float]
    fg_quantiles: list[float]


class MethodValidation(TypedDict):
    sets: dict[str, dict[str, float]]
    average: dict[str, float]
    threshold: float


class Validation(TypedDict):
    """`evaluation.validation.validate`'s result: held-out accuracy and each scorer's validation."""

    val_acc: float
    num_held_out: int
    val_ood: dict[str, int]
    methods: dict[str, MethodValidation]


def first_mismatch(value: Any, hint: Any, path: str) -> tuple[str, str] | None:
    """(key path, what is wrong there: "must be a number, got 'high'") for the first part of `value` that
    `hint` does not allow; None if it conforms. Keys a TypedDict does not name are allowed (not checked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Required, NotRequired):
        return first_mismatch(value, args[0], path)
    if hint is Any:
        return None
    if origin in (Union, types.UnionType):
        if any(first_mismatch(value, a, path) is None for a in args):
            return None
        if value is not None:  # report inside the one non-None alternative (e.g. `Threshold | None`)
            real = [a for a in args if a is not type(None)]
            if len(real) == 1:
                return first_mismatch(value, real[0], path)
        return path, _wrong(" or ".join(_describe(a) for a in args), value)
    if _is_typeddict(hint):
        if not isinstance(value, dict):
            return path, _wrong("a JSON object", value)
        missing = sorted(hint.__required_keys__ - value.keys())
        if missing:
            return f"{path}.{missing[0]}", "is missing"
        hints = typing.get_type_hints(hint, include_extras=True)
        return next((m for k, h in hints.items() if k in value
                     and (m := first_mismatch(value[k], h, f"{path}.{k}"))), None)
    if origin in (list, tuple):
        if not isinstance(value, list):
            return path, _wrong(_describe(hint), value)
        return next((m for i, v in enumerate(value) if (m := first_mismatch(v, args[0], f"{path}[{i}]"))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return path, _wrong("a JSON object", value)
        return next((m for k, v in value.items() if (m := first_mismatch(v, args[1], f"{path}.{k}"))), None)
    return None if _plain(value, hint) else (path, _wrong(_describe(hint), value))


def _plain(value: Any, hint: Any) -> bool:
    """Does `value` match a leaf hint: a Python type, None, a Literal or a `Finite`?"""
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if typing.get_origin(hint) is Annotated:
        return _plain(value, typing.get_args(hint)[0]) and (FINITE not in hint.__metadata__ or math.isfinite(value))
    if hint is None or hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is Annotated:
        return "a finite number" if FINITE in hint.__metadata__ else _describe(args[0])
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or _is_typeddict(hint):
        return "a JSON object"
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false", type(None): "null"}
    return names.get(hint, "null" if hint is None else getattr(hint, "__name__", str(hint)))


def _is_typeddict(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, dict) and hasattr(hint, "__required_keys__")


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel, _short.maxlist, _short.maxdict = 40, 40, 2, 4, 3


def _wrong(want: str, value: Any) -> str:
    return f"must be {want}, got {short(value)}"


def short(value: Any) -> str:
    """`value`'s repr cut to about 40 characters (an edited run.json can hold anything, nested deep)."""
    return _short.repr(value)


def config_mismatch(kind: str, config: dict[str, Any]) -> tuple[str, str] | None:
    """The first `config` value whose type its stage's config (TrainConfig, FinetuneConfig) does not allow."""
    from lbfood.engine.config import FinetuneConfig, TrainConfig

    hints = typing.get_type_hints(FinetuneConfig if kind == "finetune" else TrainConfig)
    return next((m for k, v in config.items() if k in hints
                 and (m := first_mismatch(v, hints[k], f"config.{k}"))), None)
