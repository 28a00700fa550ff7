"""A sweep's files for people, from the document `engine.sweep.results.finalize` returns (and writes as
sweep.json): `sweep.md`, one row per trial with the selected scorer's test numbers and their Δ against
the control, and `sensitivity.png`, the paper's Fig. 6 on validation data (drawn by `lbfood.output.plots`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lbfood.engine.io import atomic_write_bytes
from lbfood.engine.sweep.results import test_cell


def write(doc: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Write sweep.md and sensitivity.png into the sweep folder `out`; returns their paths."""
    from lbfood.output import plots

    out = Path(out)
    atomic_write_bytes(out / "sweep.md", markdown(doc).encode("utf-8"))
    return [out / "sweep.md", plots.sensitivity(doc, out / "sensitivity.png").path]


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def with_ci(v: float | None, ci: list[float] | None, none: str = "") -> str:
    """A validation value in % with half the width of its 95 % bootstrap interval: "86.31 ±1.20"."""
    if v is None:
        return none
    return f"{100 * v:.2f}" + (f" ±{50 * (ci[1] - ci[0]):.2f}" if ci else "")


def gain(row: dict[str, Any], none: str = "") -> str:
    """A trial's validation gain over the control in points, ± half its paired 95 % interval."""
    g = row.get("gain")
    return none if not g else f"{100 * g['value']:+.2f} ±{50 * (g['high'] - g['low']):.2f}"


def val_acc(row: dict[str, Any], none: str = "") -> str:
    """The ID validation accuracy with its interval, ✗ when below the accuracy floor."""
    return with_ci(row["val_acc"], row.get("val_acc_ci"), none) + (" ✗" if row.get("below_floor") else "")


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
             "All values are percentages.", "", f"**Verdict:** {doc['verdict']}." if doc.get("verdict") else "",
             "", "Validation values ± half the width of their 95 % bootstrap interval over the held-out images; "
             "Δ val: the trial's gain over the control (paired bootstrap; positive is better); "
             "✗: below the accuracy floor.", "",
             f"| # | trial | objective | δ | μ | λ | mask | val acc | val {obj} (scorer) | Δ val | test acc | test FPR95 | "
             f"Δ FPR95 | test AUROC | Δ AUROC |", "|" + "---|" * 7 + "---:|" * 8]
    c_fpr, c_auc = test_cell(control, method, "fpr95"), test_cell(control, method, "auroc")
    for r in doc["trials"]:
        fpr, auc = test_cell(r, method, "fpr95"), test_cell(r, method, "auroc")
        mark = (" **selected**" if r["number"] == sel["number"] else "") + (f" ({r['state']})" if r["state"] != "complete" else "")
        p = r["point"]
        t = r.get("test") or {}
        lines.append("| " + " | ".join([
            str(r["number"]), r["key"] + mark, p.get("objective", "lff"), f"{r['delta']:.4g}" if r["delta"] is not None else p["delta"],
            f"{r['mu']:.4g}" if isinstance(r["mu"], float) else p["mu"], p["lam"], p["mask_from"],
            val_acc(r),
            f"{with_ci(r['value'], r.get('value_ci'))} ({r['method']})" if r["value"] is not None else "",
            gain(r), _pct(t.get("id_accuracy")), _pct(fpr), _pct(fpr - c_fpr) if None not in (fpr, c_fpr) else "",
            _pct(auc), _pct(auc - c_auc) if None not in (auc, c_auc) else ""]) + " |")
    per = doc.get("per_objective") or {}
    if len(per) > 1 or any(o != "lff" for o in per):
        lines += ["", "Per objective, its best trial on validation within the accuracy floor: " + "; ".join(
            f"{o}: " + ("none" if v["trial"] is None else f"trial {v['trial']}" +
                        (" (beats the control beyond noise)" if v["beats_control"] else " (does not beat the control beyond noise)"))
            for o, v in per.items()) + "."]
    if doc["test"].get("note"):
        lines += ["", doc["test"]["note"]]
    return "\n".join(lines) + "\n"
