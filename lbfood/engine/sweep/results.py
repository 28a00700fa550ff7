"""After the study: fix the selection on validation numbers, then (only then) evaluate the test OOD sets.

Order matters and is the point of the sweep: `finalize` selects the trial (and scorer) from the trials'
validation objective under the accuracy constraint, writes it to `sweep.json` and emits `Selected`
before any test image is read; the test sets are then evaluated for every trial and only shown.
Files: `sweep.json` (every trial: point, validation and test metrics, run folder), `sweep.md`,
`sensitivity.png` (the paper's Fig. 6: objective against each factor, the control dashed) and the
symlink `best` to the selected run.
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
from lbfood.engine.io import atomic_write_bytes, atomic_write_json
from lbfood.engine.sweep.space import FACTORS, SweepConfig
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
        rows[key] = {"number": t.number, "key": key, "role": "control" if key == "control" else "trial",
                     "state": "complete" if t.state == TrialState.COMPLETE else "pruned", "point": a["point"],
                     "delta": a.get("delta"), "mu": a.get("mu"), "val_acc": a.get("val_acc"),
                     "value": t.value, "method": a.get("method"), "methods": a.get("methods", {}),
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


def finalize(sc: SweepConfig, on_event: Callable[[Any], None] = lambda e: None) -> dict[str, Any]:
    """Select, write sweep.json, emit Selected; then evaluate the test sets and write every file."""
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
        "trials": rows}
    out = Path(sc.out)
    atomic_write_json(out / "sweep.json", doc)
    _point_best(out, best["run"])
    on_event(Selected(best["number"], best["key"], best["method"], best["value"], best["val_acc"], floor))

    doc["test"] = _test(sc, rows, on_event)
    doc.update(status="done", seconds=round(time.time() - t0, 2))
    atomic_write_json(out / "sweep.json", doc)
    atomic_write_bytes(out / "sweep.md", markdown(doc).encode("utf-8"))
    sensitivity_png(doc, out / "sensitivity.png")
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
        cfg = ReportConfig(model=str(Path(sc.out) / r["run"]), ood=sc.ood, benchmark=sc.benchmark,
                           methods=sc.methods, device=sc.recipe.device, precision=sc.recipe.precision,
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


def _point_best(out: Path, run: str) -> None:
    tmp = out / f".best.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run)
    os.replace(tmp, out / "best")


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def test_cell(row: dict[str, Any], method: str, key: str) -> float | None:
    t = row.get("test")
    return t["metrics"][method]["average"][key] if t and method in t["metrics"] else None


def markdown(doc: dict[str, Any]) -> str:
    """sweep.md: one row per trial; test columns under the selected scorer, Δ against the control."""
    sel, method = doc["selected"], doc["selected"]["method"]
    control = next(r for r in doc["trials"] if r["role"] == "control")
    obj = "AUROC" if doc["objective"] == "auroc" else "FPR95"
    lines = ["# lbfood sweep", "",
             f"Selected: trial {sel['number']} ({sel['key']}) with {method}; objective: validation {obj} "
             f"(average over {', '.join(doc['val_ood']) if isinstance(doc['val_ood'], list) else doc['val_ood']}), "
             f"ID validation accuracy at least {_pct(doc['accuracy_floor'])} % (control − {doc['max_acc_drop']:g} "
             f"points); {doc['holdout']:.0%} of the training split held out (split seed {doc['holdout_seed']}).",
             f"Test OOD sets (evaluated after the selection, shown only): {', '.join(doc['test']['ood']) or 'none'}. "
             "All values are percentages.", "",
             f"| # | trial | δ | μ | λ | mask | val acc | val {obj} (scorer) | test acc | test FPR95 | Δ FPR95 | "
             f"test AUROC | Δ AUROC |", "|" + "---|" * 6 + "---:|" * 7]
    c_fpr, c_auc = test_cell(control, method, "fpr95"), test_cell(control, method, "auroc")
    for r in doc["trials"]:
        fpr, auc = test_cell(r, method, "fpr95"), test_cell(r, method, "auroc")
        mark = (" **selected**" if r["number"] == sel["number"] else "") + (" (pruned)" if r["state"] == "pruned" else "")
        p = r["point"]
        t = r.get("test") or {}
        lines.append("| " + " | ".join([
            str(r["number"]), r["key"] + mark, f"{r['delta']:.4g}" if r["delta"] is not None else p["delta"],
            f"{r['mu']:.4g}" if isinstance(r["mu"], float) else p["mu"], p["lam"], p["mask_from"],
            _pct(r["val_acc"]), f"{_pct(r['value'])} ({r['method']})" if r["value"] is not None else "",
            _pct(t.get("id_accuracy")), _pct(fpr), _pct(fpr - c_fpr) if None not in (fpr, c_fpr) else "",
            _pct(auc), _pct(auc - c_auc) if None not in (auc, c_auc) else ""]) + " |")
    if doc["test"].get("note"):
        lines += ["", doc["test"]["note"]]
    return "\n".join(lines) + "\n"


def sensitivity_png(doc: dict[str, Any], path: Path) -> Path | None:
    """Fig. 6 of the paper: the validation objective against each factor that varies, the control dashed."""
    rows = [r for r in doc["trials"] if r["state"] == "complete" and r["role"] == "trial"]
    control = next(r for r in doc["trials"] if r["role"] == "control")
    factors = [f for f in FACTORS if len({r["point"][f] for r in rows}) > 1] or ["lam"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"delta": "δ (Eq. 5)", "mu": "μ (Eq. 6)", "lam": "λ (Eq. 7)", "mask_from": "mask from"}
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.0), squeeze=False)
    ylabel = f"validation {'AUROC' if doc['objective'] == 'auroc' else 'FPR95'} (%)"
    for ax, f in zip(axes[0], factors, strict=True):
        values = list(dict.fromkeys(r["point"][f] for r in rows))
        for ok in (True, False):  # hollow: below the accuracy floor, not eligible for selection
            sel = [r for r in rows if (r["val_acc"] >= doc["accuracy_floor"] - 1e-12) == ok]
            ax.scatter([values.index(r["point"][f]) for r in sel], [100 * r["value"] for r in sel], s=16,
                       color="tab:blue" if ok else "none", edgecolors="tab:blue",
                       label="LFF trials" if ok else "below the accuracy floor")
        ax.axhline(100 * control["value"], color="k", linestyle="--", linewidth=1, label="control (λ = 0)")
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(names[f])
        ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
