"""Checks a CI pipeline gates on: metric gates for `lbfood report --gate` and the OOD share of
`lbfood score --max-ood-share` (drift in incoming data).

A gate is `[METHOD.][DATASET.]METRIC OP BOUND`, e.g. `fpr95<=30`, `react.auroc>=90`,
`backdrops-noise.fpr95<20`, `react.backdrops-noise.fpr95<20`, `id_acc>=0.9`:

* METRIC: fpr95, auroc, aupr_in, aupr_out in percent, as the report's table shows them (`%` may
  follow the bound: `fpr95<=30%`); id_acc, the ID test accuracy of the run, as a fraction
  (`id_acc>=0.9`), or in percent when the bound ends in `%` (`id_acc>=90%`).
* OP: <=, <, >=, >. A value within 1e-9 (as a fraction) of the bound counts as equal to it.
* METHOD: a scorer the report runs; none named = every method reported.
* DATASET: an OOD set of the report as the table names it (`svhn`, `folder:PATH`); none named = the
  average over the OOD sets. id_acc takes neither.

With `--compare`, gates apply to the `--model` run only. The functions are pure: `parse` checks the
syntax, `check_names` the names against a resolved report (before any computing), `evaluate` the
numbers of a finished one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from lbfood.engine.errors import ConfigError

PERCENT_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out")  # in the report as fractions, gated in %
METRICS = (*PERCENT_METRICS, "id_acc")
OPS = ("<=", "<", ">=", ">")
TOLERANCE = 1e-9  # on fractions: a value this close to the bound is equal to it
_FORM = "[METHOD.][DATASET.]METRIC OP BOUND, e.g. fpr95<=30, react.auroc>=90 or id_acc>=0.9"
_GATE = re.compile(r"^\s*([^<>=]+?)\s*(<=|>=|<|>)\s*([^<>=]+?)\s*$")


@dataclass(frozen=True)
class Gate:
    """One parsed gate. `bound` is in the metric's gate unit: percent for fpr95/auroc/aupr_in/aupr_out,
    a fraction for id_acc (`id_acc>=90%` is stored as 0.9)."""

    method: str | None
    dataset: str | None
    metric: str
    op: str
    bound: float
    text: str = ""  # as the user wrote it (stripped)

    @classmethod
    def parse(cls, text: str, methods: Collection[str] | None = None) -> Gate:
        """Parse `text`; `methods` are the scorer names that may start it (default: the registry).
        Raises ConfigError for a malformed expression, an unknown metric or an out-of-range bound."""
        return parse(text, methods)

    def bound_fraction(self) -> float:
        return self.bound / 100.0 if self.metric in PERCENT_METRICS else self.bound


@dataclass(frozen=True)
class GateCheck:
    """A gate applied to one method and dataset ("average" for the mean over OOD sets; both None for
    id_acc): the value in the gate's unit, and whether it held."""

    gate: str
    method: str | None
    dataset: str | None
    metric: str
    op: str
    bound: float
    value: float
    passed: bool


def parse(text: str, methods: Collection[str] | None = None) -> Gate:
    """`[METHOD.][DATASET.]METRIC OP BOUND` → Gate (see the module docstring); ConfigError if malformed."""
    raw = text.strip()
    m = _GATE.match(raw)
    if m is None:
        raise ConfigError(f"--gate {text!r}: expected {_FORM}")
    lhs, op, rhs = m.groups()
    prefix, dot, metric = lhs.rpartition(".")
    metric = metric.strip().lower()
    if dot and not prefix.strip():
        raise ConfigError(f"--gate {text!r}: nothing before the dot; expected {_FORM}")
    if metric not in METRICS:
        raise ConfigError(f"--gate {text!r}: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    percent = rhs.endswith("%")
    try:
        bound = float(rhs.removesuffix("%").strip())
    except ValueError:
        raise ConfigError(f"--gate {text!r}: the bound {rhs!r} is not a number; expected {_FORM}") from None
    if not math.isfinite(bound):
        raise ConfigError(f"--gate {text!r}: the bound must be a finite number, got {rhs!r}")
    if metric == "id_acc":
        if prefix:
            raise ConfigError(f"--gate {text!r}: id_acc is the run's ID accuracy, the same for every method "
                              f"and dataset; write id_acc{op}{rhs}")
        if percent:
            bound /= 100.0
        if not 0.0 <= bound <= 1.0:
            raise ConfigError(f"--gate {text!r}: id_acc is a fraction from 0 to 1 (id_acc>=0.9), or a percent "
                              f"with % (id_acc>=90%)")
        return Gate(None, None, metric, op, bound, raw)
    if not 0.0 <= bound <= 100.0:
        raise ConfigError(f"--gate {text!r}: {metric} is in percent, from 0 to 100 (as the table shows it)")
    method, dataset = _scope(prefix.strip(), methods, text)
    return Gate(method, dataset, metric, op, bound, raw)


def _scope(prefix: str, methods: Collection[str] | None, text: str) -> tuple[str | None, str | None]:
    """METHOD, DATASET or METHOD.DATASET → (method, dataset). Dataset names may hold dots
    (`folder:a.b`), so only a leading scorer name is taken as the method."""
    if not prefix:
        return None, None
    if methods is None:
        from lbfood.engine.evaluation import scorers

        methods = scorers.names()
    head, dot, rest = prefix.partition(".")
    if head not in methods:
        return None, prefix
    if dot and not rest.strip():
        raise ConfigError(f"--gate {text!r}: nothing between the dots; expected {_FORM}")
    return head, rest.strip() or None


def parse_all(texts: Sequence[str], methods: Collection[str] | None = None) -> tuple[Gate, ...]:
    return tuple(parse(t, methods) for t in texts)


def check_names(gates: Sequence[Gate], methods: Sequence[str], ood: Sequence[str]) -> None:
    """Every method and dataset a gate names must be in the report (`methods`, the OOD sets `ood`)."""
    for g in gates:
        if g.method is not None and g.method not in methods:
            raise ConfigError(f"--gate {g.text!r}: method {g.method} is not reported; add --method {g.method} "
                              f"or gate on one of {', '.join(methods)}")
        if g.dataset is not None and g.dataset not in ood:
            what = "neither a scorer nor an OOD dataset" if g.method is None else "not an OOD dataset"
            raise ConfigError(f"--gate {g.text!r}: {g.dataset} is {what} of this report; OOD datasets: "
                              f"{', '.join(ood)}; methods: {', '.join(methods)}")


def holds(value: float, op: str, bound: float, tol: float = TOLERANCE) -> bool:
    """`value OP bound`, with values within `tol` of the bound counted as equal to it."""
    if op == "<=":
        return value <= bound + tol
    if op == "<":
        return value < bound - tol
    if op == ">=":
        return value >= bound - tol
    if op == ">":
        return value > bound + tol
    raise ConfigError(f"unknown gate operator {op!r}; valid: {', '.join(OPS)}")


def evaluate(gates: Sequence[Gate], metrics: dict[str, dict[str, dict[str, float]]],
             id_accuracy: float) -> tuple[GateCheck, ...]:
    """Apply `gates` to one run's numbers: `metrics[method][dataset][metric]` as fractions (dataset
    "average" included), as `RunResult.metrics` holds them. One check per gate and method it covers."""
    out: list[GateCheck] = []
    for g in gates:
        if g.metric == "id_acc":
            out.append(GateCheck(g.text, None, None, g.metric, g.op, g.bound, id_accuracy,
                                 holds(id_accuracy, g.op, g.bound)))
            continue
        dataset = g.dataset or "average"
        for method in [g.method] if g.method else list(metrics):
            value = metrics[method][dataset][g.metric]
            out.append(GateCheck(g.text, method, dataset, g.metric, g.op, g.bound, 100.0 * value,
                                 holds(value, g.op, g.bound_fraction())))
    return tuple(out)


# ---- drift: `lbfood score --max-ood-share` ---------------------------------------------------------


@dataclass(frozen=True)
class OodShare:
    """Of the images scored (readable), how many were called OOD; `exceeded` when share > threshold."""

    scored: int
    ood: int
    threshold: float
    files: int = 0  # every file given, readable or not

    @property
    def unread(self) -> bool:
        """No file could be read: there is no share to check (a failure, not a pass)."""
        return self.scored == 0

    @property
    def share(self) -> float:
        return self.ood / self.scored if self.scored else 0.0

    @property
    def exceeded(self) -> bool:
        return self.scored > 0 and self.share > self.threshold


def check_share(max_share: float) -> None:
    """--max-ood-share must be a fraction in [0, 1] (0.05 = 5 %)."""
    if not (math.isfinite(max_share) and 0.0 <= max_share <= 1.0):
        raise ConfigError(f"--max-ood-share is a fraction from 0 to 1 (0.05 = 5 %), got {max_share}")


def ood_share(verdicts: Sequence[str | None], max_share: float) -> OodShare:
    """Count the "OOD" verdicts among the scored images (None = a file that could not be scored)."""
    check_share(max_share)
    scored = [v for v in verdicts if v is not None]
    return OodShare(len(scored), sum(v == "OOD" for v in scored), max_share, len(verdicts))
