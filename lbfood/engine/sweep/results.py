"""After the study: fix the selection on validation numbers, then (only then) evaluate the test OOD sets.

Order matters and is the point of the sweep: `finalize` selects the trial (and scorer) from the trials'
validation objective under the accuracy constraint, writes it to `sweep.json` and emits `Selected`
before any test image is read; the test sets are then evaluated for every trial and only shown.
Files: `sweep.json` (every trial: point, validation and test metrics, run folder) and the symlink
`best` to the selected run; `lbfood.sweep_files` writes `sweep.md` and `sensitivity.png` from the
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
                     "state": "complete" if complete else "pruned", "point": a["point"],
                     "objective": a["point"].get("objective", "lff"),
                     "delta": a.get("delta"), "mu": a.get("mu"), "val_acc": a.get("val_acc"),
                     # Optuna gives a pruned trial its last reported value (an accuracy): not the objective.
                     "value": t.value if complete else None, "method": a.get("method"), "methods": a.get("methods", {}),
                     "run": a.get("run"), "train_seconds": a.get("train_seconds")}
    return sorted(rows.values(), key=lambda r: r["number"])


def select(rows: list[dict[str, Any]], objective: str, max_acc_drop: float) -> tuple[dict[str, Any], float]:
    """(selected row, accuracy floor): the best validation objective among complete trials whose ID
    validation accuracy is at least the control's minus `max_acc_drop` points; a tie goes to the control,
    then to the earlier trial."""
    control = next((r for r in rows if r["role"] == "control" and r["state"] == "complete"), None)
    if control is None:
        raise RunError("the control (λ = 0) has not finished; rerun the same command to complete the sweep")
    floor = control["val_acc"] - max_acc_drop / 100
    best = control
    for r in rows:
        if r["state"] == "complete" and r["val_acc"] >= floor - 1e-12 and better(r["value"], best["value"], objective):
            best = r
    return best, floor


def per_objective(rows: list[dict[str, Any]], objective: str, max_acc_drop: float) -> dict[str, dict[str, Any]]:
    """For each training objective in the sweep, from validation only: its best complete trial within the
    accuracy floor ("trial", None if none is) and whether that trial beats the control ("beats_control",
    strictly, as `select` requires)."""
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
                    "beats_control": best is not None and better(best["value"], control["value"], objective)}
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
    best, floor = select(rows, sc.objective, sc.max_acc_drop)
    control = next(r for r in rows if r["role"] == "control")
    doc: dict[str, Any] = {
        "status": "selected", "objective": sc.objective, "max_acc_drop": sc.max_acc_drop, "accuracy_floor": floor,
        "holdout": sc.holdout, "holdout_seed": HOLDOUT_SEED, "val_ood": sc.val_ood or
        [f"pseudo-{p}" for p in sc.pseudo], "methods": list(sc.methods), "mode": sc.mode, "storage": storage_url(sc),
        "control": control["number"], "selected": {"number": best["number"], "key": best["key"],
                                                   "method": best["method"], "value": best["value"],
                                                   "run": best["run"]},
        "per_objective": per_objective(rows, sc.objective, sc.max_acc_drop), "trials": rows}
    out = Path(sc.out)
    atomic_write_json(out / "sweep.json", doc)
    _point_best(out, best["run"])
    on_event(Selected(best["number"], best["key"], best["method"], best["value"], best["val_acc"], floor))

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
        cfg = ReportConfig(model=str(run_dir), ood=sc.ood, benchmark=sc.benchmark,
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
    """The scorers that apply to the run: bghead only to a bg-head run (it reads that run's head)."""
    from lbfood.engine import runs
    from lbfood.engine.config import has_bg_head
    from lbfood.engine.evaluation import scorers

    bg = has_bg_head(runs.read(run_dir).config)
    return tuple(m for m in methods if scorers.scorer_class(m).reads == "head" or bg)


def _point_best(out: Path, run: str) -> None:
    tmp = out / f".best.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run)
    os.replace(tmp, out / "best")


def test_cell(row: dict[str, Any], method: str, key: str) -> float | None:
    """A trial's average test metric `key` for `method`, None if it was not tested."""
    t = row.get("test")
    return t["metrics"][method]["average"][key] if t and method in t["metrics"] else None
