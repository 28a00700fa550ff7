"""The sweep's configuration and search space: `--objective lff,bg-energy --delta 0.005,0.01 --mu auto,q0.25,1
--lambda 0.5,1 ...`.

A point of the space is a dict of five strings (kept as text so Optuna stores them as categorical
choices exactly as typed, normalised):

    objective  the fine-tuning objective (catalog.OBJECTIVES): lff | lff-rel | bg-energy | bg-head
    delta      δ (Eq. 5): a number in (0, 1), or "preset" (the dataset's fine-tuning preset)
    mu         μ (Eq. 6): a number >= 0, "auto" (median of the parent's background norms), "qX" (the X
               quantile of them, 0 < X < 1), or "relX" (lff-rel: X × the image's mean foreground norm);
               "-" for the objectives that have no μ
    lam        λ (Eq. 7): a number >= 0; λ = 0 is the CE-only control, added by the sweep itself
    mask_from  current | pretrained

The μ values an objective takes: lff-rel the relX values (rel0.5 if none is given), lff the others
(auto if none is given), bg-energy and bg-head none (`normalise`). The control is λ = 0 (its objective
is recorded as lff: at λ = 0 every objective is plain CE).

The base point is the first value of each list. `paper` varies one factor at a time around it (as the
paper's Fig. 6), `grid` takes every combination, `search` lets Optuna's TPE sampler pick `trials` points.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from lbfood.engine.config import FinetuneConfig, SweepConfig
from lbfood.engine.errors import ConfigError

FACTORS = ("objective", "delta", "mu", "lam", "mask_from")
FLAGS = {"objective": "--objective", "delta": "--delta", "mu": "--mu", "lam": "--lambda", "mask_from": "--mask-from"}
FIELDS = {"objective": "objectives", "delta": "delta", "mu": "mu", "lam": "lam", "mask_from": "mask_from"}
# Fields a trial sets itself; the recipe (epochs, lr, batch size, …) comes from `SweepConfig.recipe`.
TRIAL_FIELDS = ("objective", "delta", "mu", "mu_quantile", "lam", "mask_from", "holdout", "out")
NO_MU = "-"  # the μ of an objective that has none


def _number(text: str, flag: str, lo: float, hi: float | None = None, lo_open: bool = False) -> str:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v >= hi):
        want = (f"{'>' if lo_open else '>='} {lo:g}" if hi is None else
                f"in {'(' if lo_open else '['}{lo:g}, {hi:g})")
        raise ConfigError(f"{flag}: {text} is out of range; each value must be a number {want}")
    return f"{v:g}"


def parse_values(factor: str, text: str) -> tuple[str, ...]:
    """A comma-separated list for one factor, checked and normalised (e.g. "0.010" -> "0.01")."""
    flag = FLAGS[factor]
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value")
    out = []
    for t in items:
        if factor == "objective":
            out.append(_objective(t))
        elif factor == "delta":
            out.append("preset" if t == "preset" else _number(t, flag, 0, 1, lo_open=True))
        elif factor == "mu":
            if t == "auto":
                out.append(t)
            elif t.startswith("rel"):
                out.append("rel" + _number(t[3:], flag + " relX", 0, lo_open=True))
            elif t.startswith("q"):
                out.append("q" + _number(t[1:], flag + " qX", 0, 1, lo_open=True))
            else:
                out.append(_number(t, flag, 0))
        elif factor == "lam":
            out.append(_number(t, flag, 0))
        elif t in ("current", "pretrained"):
            out.append(t)
        else:
            raise ConfigError(f"{flag}: {t!r} is not current or pretrained")
    return tuple(dict.fromkeys(out))


def _objective(name: str) -> str:
    from lbfood.engine.catalog import OBJECTIVES

    if name in ("auroc", "fpr95"):
        raise ConfigError(f"--objective {name}: the validation metric is --select-by {name}; --objective names "
                          f"fine-tuning objectives: {', '.join(OBJECTIVES.names())}")
    if name not in OBJECTIVES:
        raise ConfigError(f"--objective: {name!r} is not one of {', '.join(OBJECTIVES.names())}")
    return name


def values(sc: SweepConfig, factor: str) -> tuple[str, ...]:
    """The values of one factor (the `--objective` list lives in `SweepConfig.objectives`)."""
    return getattr(sc, FIELDS[factor])


def mu_values(sc: SweepConfig, objective: str) -> tuple[str, ...]:
    """The μ values `objective` takes from the --mu list (see the module docstring)."""
    if objective not in ("lff", "lff-rel"):
        return (NO_MU,)
    rel = objective == "lff-rel"
    mine = tuple(m for m in sc.mu if m.startswith("rel") == rel)
    return mine or (("rel0.5",) if rel else ("auto",))


def normalise(sc: SweepConfig, p: dict[str, str]) -> dict[str, str]:
    """`p` with a μ its objective takes: kept if it is one, else the objective's first (NO_MU if none)."""
    mus = mu_values(sc, p["objective"])
    return {**p, "mu": p["mu"] if p["mu"] in mus else mus[0]}


def base_point(sc: SweepConfig) -> dict[str, str]:
    return normalise(sc, {f: values(sc, f)[0] for f in FACTORS})


def control_point(sc: SweepConfig) -> dict[str, str]:
    """The CE-only control: λ = 0 (δ, μ, the mask and the objective do nothing when λ = 0)."""
    return normalise(sc, {**base_point(sc), "objective": "lff", "lam": "0"})


def key(p: dict[str, str]) -> str:
    """A point's name (its trial folder): "control", e.g. "d0.01-muq0.25-l1-current" (lff), or with the
    objective first, e.g. "bg-energy-d0.01-l1-current" (no μ) or "lff-rel-d0.1-murel0.5-l1-current"."""
    if p["lam"] == "0":
        return "control"
    obj = p.get("objective", "lff")
    mu = "" if p["mu"] == NO_MU else f"-mu{p['mu']}"
    return ("" if obj == "lff" else f"{obj}-") + f"d{p['delta']}{mu}-l{p['lam']}-{p['mask_from']}"


def grid_points(sc: SweepConfig) -> list[dict[str, str]]:
    """Every combination of the factors' values (μ: those each objective takes)."""
    points = []
    for obj in sc.objectives:
        rest = (sc.delta, mu_values(sc, obj), sc.lam, sc.mask_from)
        points += [dict(zip(FACTORS, (obj, *combo), strict=True)) for combo in itertools.product(*rest)]
    return points


def planned_points(sc: SweepConfig) -> list[dict[str, str]]:
    """The control first, then the points of `paper` or `grid` (none for `search`); λ = 0 points other
    than the control are dropped (every CE-only fine-tune of one recipe is the control). The mode was
    checked by `SweepConfig.check()`."""
    points = [control_point(sc)]
    if sc.mode == "grid":
        points += grid_points(sc)
    elif sc.mode == "paper":
        base = base_point(sc)
        points.append(base)
        for f in FACTORS:
            vals = mu_values(sc, base["objective"]) if f == "mu" else values(sc, f)
            points += [normalise(sc, {**base, f: v}) for v in vals if v != base[f]]
    seen, out = set(), []
    for p in points:
        if key(p) not in seen:
            seen.add(key(p))
            out.append(p)
    return out


def trial_config(sc: SweepConfig, point: dict[str, str], out: str) -> FinetuneConfig:
    """The fine-tune config of one trial (fields left None: the dataset preset, filled by `resolve`)."""
    fields: dict = {"objective": point.get("objective", "lff"), "lam": float(point["lam"]),
                    "mask_from": point["mask_from"], "holdout": sc.holdout, "out": out}
    if point["delta"] != "preset":
        fields["delta"] = float(point["delta"])
    mu = point["mu"]
    if mu == NO_MU:
        pass  # the objective has no μ: the preset's is recorded, unused
    elif mu.startswith("rel"):
        fields["mu"] = mu
    elif mu == "auto" or mu.startswith("q"):
        fields["mu"] = "auto"
        if mu.startswith("q"):
            fields["mu_quantile"] = float(mu[1:])
    else:
        fields["mu"] = float(mu)
    return dataclasses.replace(sc.recipe, **fields)
