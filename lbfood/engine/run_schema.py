"""run.json's nested entries as types, and `fields_of`: RunMeta's fields checked on load (only runs.py uses it).

`RunMeta`'s own annotations (runs.py) name these types, so the one description of run.json is its
dataclass: `first_mismatch` walks a field's type hint and returns where the JSON value differs from it,
nested objects and lists included. A hand-written walk rather than a validation library: the hints are
plain typing constructs (str, int, `Finite`, lists, dicts, unions, Literal, TypedDict), and the message
must be one line naming the key path (`threshold.value`), which is ten lines here.
"""

import dataclasses
import math
import reprlib
import types
import typing
from typing import Annotated, Any, Literal, NotRequired, Required, TypedDict, Union

from lbfood.engine import models
from lbfood.engine.errors import ConfigError, RunError

FINITE = "finite"
Finite = Annotated[float, FINITE]  # a number that is not NaN or ±inf (a threshold, a width, a mean)
Kind = Literal["pretrain", "finetune", "imported"]
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


class FarGate(TypedDict, total=False):
    """`score`'s far-OOD gate (evaluation/scorers/fargate.py): its method, γ_far and the ID share it keeps."""

    method: Required[str]
    value: Required[Finite]
    keep: Required[float]
    params: dict[str, Any]


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
    """The first `config` value whose type its stage's config (TrainConfig, FinetuneConfig, ImportConfig) does
    not allow."""
    from lbfood.engine.config import FinetuneConfig, ImportConfig, TrainConfig

    hints = typing.get_type_hints({"finetune": FinetuneConfig, "imported": ImportConfig}.get(kind, TrainConfig))
    return next((m for k, v in config.items() if k in hints
                 and (m := first_mismatch(v, hints[k], f"config.{k}"))), None)


def fields_of(cls: type, d: dict[str, Any], where: Any) -> dict[str, Any]:
    """The dataclass `cls`'s (RunMeta's) fields from run.json's object `d`, each checked against its type
    hint (nested entries too) and range; any problem raises RunError naming the file and the key path."""
    names = {f.name for f in dataclasses.fields(cls)} - {"run_dir"}
    kw = {k: v for k, v in d.items() if k in names}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name in names and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in kw]
    if missing:
        raise RunError(f"{where} lacks {', '.join(missing)}; the run is incomplete or from another tool: "
                       "re-run the training that made it")

    def bad(key: str, want: str = "", problem: str = "") -> RunError:
        problem = problem or f"must be {want}, got {short(kw[key])}"
        todo = ("remove it from run.json and `lbfood score` calibrates it again"
                if key.split(".")[0] in ("threshold", "thresholds") else "re-run the training that made it")
        return RunError(f"{where}: {key} {problem}; the file was edited or damaged: {todo}")

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    if not (number(kw["width"]) and kw["width"] > 0):
        raise bad("width", "a finite number > 0")
    if not (isinstance(kw["input_size"], int) and not isinstance(kw["input_size"], bool) and kw["input_size"] > 0):
        raise bad("input_size", "a positive integer")
    if not (isinstance(kw["classes"], list) and kw["classes"] and all(isinstance(c, str) for c in kw["classes"])):
        raise bad("classes", "a non-empty list of class names")
    for key in ("mean", "std"):
        v = kw[key]
        if not (isinstance(v, list) and len(v) == 3 and all(number(x) for x in v)) or \
                (key == "std" and min(v) <= 0):
            raise bad(key, "three finite numbers (RGB)" + (" > 0" if key == "std" else ""))
    if not isinstance(kw["config"], dict):
        raise bad("config", "a JSON object")
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in kw.items():
        if found := first_mismatch(value, hints[key], key):
            raise bad(found[0], problem=found[1])
    if kw.get("epochs_done", 0) < 0:
        raise bad("epochs_done", "a whole number >= 0")
    if found := config_mismatch(kw["kind"], kw["config"]):
        raise bad(found[0], problem=found[1])
    try:  # a model lbfood would refuse to build, or an input size it would refuse to resize to
        models.check(kw["arch"], kw["width"])
        models.check_input_size(kw["input_size"])
    except ConfigError as e:
        raise RunError(f"{where}: {e}; the file was edited or damaged: re-run the training that made it") from None
    return kw
