"""After the study: fix the selection on validation numbers, then (only then) evaluate the test OOD sets.

Order matters and is the point of the sweep: `finalize` selects the trial (and scorer) from the trials'
validation objective under the accuracy constraint, writes it to `sweep.json` and emits `Selected`
before any test image is read; the test sets are then evaluated for every trial and only shown.
Files: `sweep.json` (every trial: point, validation and test metrics, run folder) and the symlink
`best` to the selected run; `lbfood.output.sweep_files` writes `sweep.md` and `sensitivity.png` from the
returned document.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbfood.engine.data.holdout import HOLDOUT_SEED
from lbfood.engine.errors import ConfigError, RunError
from lbfood.engine.evaluation.bootstrap import LEVEL, RESAMPLES, paired
from lbfood.engine.evaluation.validation import better
from lbfood.engine.io import atomic_write_json
from lbfood.engine.sweep.space import SweepConfig
from lbfood.engine.sweep.study import lock, open_study, reconcile, storage_url


@dataclass(frozen=True)
class Selected:
    """The selection is fixed (written to sweep.json); test sets are read only after this event."""

    number: int
    key: str
    method: str
    value: float
    val_acc: float
    floor: float
    verdict: str = ""  # `verdict`: one sentence, with the gain's uncertainty


@dataclass(frozen=True)
class Testing:
    key: str


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per point: its COMPLETE trial, else its latest PRUNED one; by trial number."""
    from optuna.trial import TrialState

    rows: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        a = t.user_attrs
        key = a.get("key")
        if key is None or a.get("duplicate") or (key in rows and rows[key]["state"] == "complete"):
            continue
        complete = t.state == TrialState.COMPLETE
        rows[key] = {"number": t.number, "key": key, "role": "control" if key == "control" else "trial",
                     "state": "complete" if complete else "diverged" if a.get("diverged") else "pruned",
                     "point": a["point"], "diverged": a.get("diverged"),
                     "objective": a["point"].get("objective", "lff"),
                     "delta": a.get("delta"), "mu": a.get("mu"), "val_acc": a.get("val_acc"),
                     # Optuna gives a pruned trial its last reported value (an accuracy): not the objective.
                     "value": t.value if complete else None, "method": a.get("method"), "methods": a.get("methods", {}),
                     "val_acc_ci": a.get("val_acc_ci"), "value_ci": a.get("value_ci"),
                     "bootstrap": a.get("bootstrap"), "replicates": a.get("replicates"),  # (not in sweep.json)
                     "run": a.get("run"), "train_seconds": a.get("train_seconds")}
    return sorted(rows.values(), key=lambda r: r["number"])


def compare(rows: list[dict[str, Any]], objective: str, max_acc_drop: float) -> tuple[dict[str, Any], float]:
    """(the control's row, the accuracy floor); marks each complete row `below_floor` (ID validation
    accuracy more than `max_acc_drop` points under the control's) and gives each complete trial its
    `gain` over the control: the objective's improvement (AUROC up, FPR95 down) with the 95 % interval of
    a paired bootstrap on the same resampled held-out images (`evaluation/bootstrap.py`); None when the
    two were not validated on the same images (or before bootstraps were recorded)."""
    control = next((r for r in rows if r["role"] == "control" and r["state"] == "complete"), None)
    if control is None:
        raise RunError("the control (λ = 0) has not finished; rerun the same command to complete the sweep")
    floor = control["val_acc"] - max_acc_drop / 100
    sign = 1.0 if objective == "auroc" else -1.0
    for r in rows:
        r["below_floor"] = r["state"] == "complete" and r["val_acc"] < floor - 1e-12
        same = all(x.get("replicates") and x.get("bootstrap") for x in (r, control)) and \
            {k: v for k, v in r["bootstrap"].items() if k != "method"} == \
            {k: v for k, v in control["bootstrap"].items() if k != "method"}
        r["gain"] = (paired(r["replicates"]["objective"], control["replicates"]["objective"], r["value"],
                            control["value"], sign)
                     if r is not control and r["state"] == "complete" and same else None)
    return control, floor


def select(rows: list[dict[str, Any]], objective: str, max_acc_drop: float,
           min_gain: float = 0.0) -> tuple[dict[str, Any], float]:
    """(selected row, accuracy floor): among complete trials at or above the accuracy floor whose gain
    over the control is beyond noise — the lower end of its 95 % paired-bootstrap interval above
    `min_gain` points of the objective — the one with the best validation objective (a tie goes to the
    earlier trial); the control when there is none."""
    control, floor = compare(rows, objective, max_acc_drop)
    best = control
    for r in rows:
        if r["gain"] is not None and not r["below_floor"] and r["gain"]["low"] > min_gain / 100 and \
                (best is control or better(r["value"], best["value"], objective)):
            best = r
    return best, floor


def verdict(rows: list[dict[str, Any]], selected: dict[str, Any], objective: str, min_gain: float = 0.0) -> str:
    """The selection in one plain sentence, with the gain's 95 % paired-bootstrap interval."""
    name = f"validation {'AUROC' if objective == 'auroc' else 'FPR95'} points"

    def by(r: dict[str, Any], sign: str = "+") -> str:
        g = r["gain"]
        return (f"{100 * g['value']:{sign}.2f} ± {50 * (g['high'] - g['low']):.2f} {name} (95 % paired bootstrap "
                f"interval {100 * g['low']:+.2f} to {100 * g['high']:+.2f})")

    if selected["role"] != "control":
        return (f"trial {selected['number']} ({selected['key']}, {selected['method']}) beat the control by "
                + by(selected, ""))
    near = [r for r in rows if r.get("gain") is not None and not r["below_floor"]]
    text = "no setting beat the control beyond noise on validation data"
    if min_gain:
        text += f" (by more than --min-gain {min_gain:g} points)"
    if near:
        r = max(near, key=lambda r: r["gain"]["value"])
        text += f"; the closest, trial {r['number']} ({r['key']}), differed by {by(r)}"
    elif not any(r["role"] == "trial" and r["state"] == "complete" for r in rows):
        text += " (no other trial finished)"
    return text + "; the control is selected"
def _beats(row: dict[str, Any], control: dict[str, Any], objective: str, min_gain: float) -> bool:
    gain = row.get("gain")
    if gain is not None:
        return gain["low"] * 100 > min_gain
    return better(row["value"], control["value"], objective)


def per_objective(rows: list[dict[str, Any]], objective: str, max_acc_drop: float,
                  min_gain: float = 0.0) -> dict[str, dict[str, Any]]:
    """For each training objective in the sweep, from validation only: its best complete trial within the
    accuracy floor ("trial", None if none is) and whether that trial beats the control beyond noise
    ("beats_control": as `select` requires, the lower end of its paired-bootstrap gain above `min_gain`
    points; strictly better where a row has no interval)."""
    control = next((r for r in rows if r["role"] == "control" and r["state"] == "complete"), None)
    if control is None:
        raise RunError("the control (λ = 0) has not finished; rerun the same command to complete the sweep")
    floor = control["val_acc"] - max_acc_drop / 100
    out: dict[str, dict[str, Any]] = {}
    for obj in dict.fromkeys(r["objective"] for r in rows if r["role"] == "trial"):
        best = None
        for r in rows:
            if (r["role"] == "trial" and r["objective"] == obj and r["state"] == "complete"
                    and r["val_acc"] >= floor - 1e-12 and (best is None or better(r["value"], best["value"], objective))):
                best = r
        out[obj] = {"trial": None if best is None else best["number"],
                    "beats_control": best is not None and _beats(best, control, objective, min_gain)}
    return out


def finalize(sc: SweepConfig, on_event: Callable[[Any], None] = lambda e: None) -> dict[str, Any]:
    """Select, write sweep.json, emit Selected; then evaluate the test sets and complete sweep.json."""
    from optuna.trial import TrialState

    t0 = time.time()
    study = open_study(sc)
    with lock(sc):
        reconcile(study, sc)
    pending = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if pending:
        raise RunError(f"{len(pending)} trial(s) of {sc.out} are queued or running; wait for the other workers, "
                       "or rerun the same command to work on them")
    rows = trial_rows(study)
    best, floor = select(rows, sc.objective, sc.max_acc_drop, sc.min_gain)
    said = verdict(rows, best, sc.objective, sc.min_gain)
    control = next(r for r in rows if r["role"] == "control")
    for r in rows:
        r.pop("replicates")
    doc: dict[str, Any] = {
        "status": "selected", "verdict": said, "objective": sc.objective, "min_gain": sc.min_gain,
        "bootstrap": {"resamples": RESAMPLES, "level": LEVEL, "seed": sc.recipe.seed, "over": "held-out images",
                      "beyond_noise": "paired interval of trial − control above min_gain"},
        "max_acc_drop": sc.max_acc_drop, "accuracy_floor": floor,
        "holdout": sc.holdout, "holdout_seed": HOLDOUT_SEED, "val_ood": sc.val_ood or
        [f"pseudo-{p}" for p in sc.pseudo], "methods": list(sc.methods), "mode": sc.mode, "storage": storage_url(sc),
        "control": control["number"], "selected": {"number": best["number"], "key": best["key"],
                                                   "method": best["method"], "value": best["value"],
                                                   "run": best["run"], "gain": best["gain"]},
        "per_objective": per_objective(rows, sc.objective, sc.max_acc_drop, sc.min_gain), "trials": rows}
    out = Path(sc.out)
    atomic_write_json(out / "sweep.json", doc)
    _point_best(out, best["run"])
    on_event(Selected(best["number"], best["key"], best["method"], best["value"], best["val_acc"], floor, said))

    doc["test"] = _test(sc, rows, on_event)
    doc.update(status="done", seconds=round(time.time() - t0, 2))
    atomic_write_json(out / "sweep.json", doc)
    return doc


def _test(sc: SweepConfig, rows: list[dict[str, Any]], on_event) -> dict[str, Any]:
    """Every trial on the test OOD sets (after the selection): per row, method → average metrics."""
    from lbfood.engine.config import ReportConfig
    from lbfood.engine.evaluation.report import report

    out: dict[str, Any] = {"ood": [], "note": None}
    for r in rows:
        if r["state"] != "complete":
            continue
        on_event(Testing(r["key"]))
        run_dir = Path(sc.out) / r["run"]
        cfg = ReportConfig(model=str(run_dir), ood=sc.ood, benchmark=sc.benchmark, data_root=sc.recipe.data_root,
                           methods=_applicable(sc.methods, run_dir), device=sc.recipe.device, precision=sc.recipe.precision,
                           workers=sc.recipe.workers)
        try:
            res = report(cfg)
        except ConfigError as e:
            if sc.ood or sc.benchmark:
                raise
            out["note"] = f"no test OOD sets: {e}"
            return out
        run = res.runs[0]
        out["ood"] = list(res.ood)
        r["test"] = {"id_accuracy": run.id_accuracy, "metrics": run.metrics}
    return out


def _applicable(methods: tuple[str, ...], run_dir: Path) -> tuple[str, ...]:
    """The scorers the trial's validation applied (`validation.validate` leaves out bghead on a run without
    the background head, `auto.calibrate_auto` a scorer it cannot fit, e.g. KNN with fewer training images
    than k): the test shows what was validated."""
    from lbfood.engine import runs

    validated = runs.read(run_dir).validation["methods"]
    return tuple(m for m in methods if m in validated)


def _point_best(out: Path, run: str) -> None:
    tmp = out / f".best.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run)
    os.replace(tmp, out / "best")


def test_cell(row: dict[str, Any], method: str, key: str) -> float | None:
    """A trial's average test metric `key` for `method`, None if it was not tested."""
    t = row.get("test")
    return t["metrics"][method]["average"][key] if t and method in t["metrics"] else None
