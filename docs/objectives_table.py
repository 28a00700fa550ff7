"""The README's "Does background training help?" table from the sweep.json of one sweep per seed.

    PYTHONPATH=. python docs/objectives_table.py sweeps/objectives-s0/sweep.json sweeps/objectives-s1/sweep.json

Per seed and objective: its best trial on validation within the accuracy floor (results.per_objective;
no test number is used to choose), ID test accuracy, test average FPR95/AUROC of energy, ReAct, KNN and
ViM, the change of each FPR95 relative to the control's, and the trial's training time; then, per
objective and scorer, whether the bar holds on every seed (≥ 10 % relative lower average FPR95 than the
control, ID test accuracy at most 1 point below the control's: a gain is no fault).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lbfood.engine.sweep.results import per_objective

SCORERS = ("energy", "react", "knn", "vim")
BAR = -0.10  # relative change of the average FPR95 against the control


def _avg(row: dict, method: str, key: str) -> float | None:
    m = (row.get("test") or {}).get("metrics", {}).get(method)
    return None if m is None else m["average"][key]


def main(paths: list[str]) -> None:
    head = ("| seed | objective | selected setting (validation) | beats control on val. | ID acc | " +
            " | ".join(f"{s} FPR95↓ (rel.) | {s} AUROC↑" for s in SCORERS) + " | train s |")
    print(head)
    print("|" + "---|" * 4 + "---:|" * (2 + 2 * len(SCORERS)))
    passes: dict[tuple[str, str], list[bool]] = {}
    for path in paths:
        doc = json.load(open(path))
        rows = {r["number"]: r for r in doc["trials"]}
        control = rows[doc["control"]]
        for r in rows.values():
            r.setdefault("objective", r["point"].get("objective", "lff"))
        per = per_objective(list(rows.values()), doc["objective"], doc["max_acc_drop"])
        seed = Path(path).parent.name  # the sweep folder, e.g. objectives-s0
        for obj, sel in [("control", {"trial": doc["control"], "beats_control": False}), *per.items()]:
            r = rows[sel["trial"]] if sel["trial"] is not None else None
            if r is None:
                print(f"| {seed} | {obj} | none within the accuracy floor | | " + " | " * (2 * len(SCORERS)) + " |")
                continue
            acc = r["test"]["id_accuracy"]
            cells = []
            for s in SCORERS:
                fpr, auc, c_fpr = _avg(r, s, "fpr95"), _avg(r, s, "auroc"), _avg(control, s, "fpr95")
                if None in (fpr, auc, c_fpr):  # not measured (e.g. KNN with fewer training images than k)
                    cells += ["—", "—"]
                    if obj != "control":
                        passes.setdefault((obj, s), []).append(False)
                    continue
                rel = "" if obj == "control" or None in (fpr, c_fpr) else f" ({(fpr - c_fpr) / c_fpr:+.0%})"
                cells += [f"{100 * fpr:.2f}{rel}", f"{100 * auc:.2f}"]
                if obj != "control":
                    ok = (fpr - c_fpr) / c_fpr <= BAR and acc >= control["test"]["id_accuracy"] - 0.01 - 1e-12
                    passes.setdefault((obj, s), []).append(ok)
            setting = "—" if obj == "control" else r["key"]
            beat = "" if obj == "control" else ("yes" if sel["beats_control"] else "no")
            print(f"| {seed} | {obj} | {setting} | {beat} | {100 * acc:.2f} | " + " | ".join(cells) +
                  f" | {r.get('train_seconds') or 0:.0f} |")
    print()
    met = sorted({o for (o, s), v in passes.items() if len(v) == len(paths) and all(v)})
    for obj in dict.fromkeys(o for o, _ in passes):
        ok = [s for s in SCORERS if len(passes.get((obj, s), [])) == len(paths) and all(passes[(obj, s)])]
        print(f"- {obj}: bar met on every seed for {', '.join(ok) if ok else 'no scorer'}")
    if not met:
        print("- no objective meets the bar on every seed for any of the four scorers")


if __name__ == "__main__":
    main(sys.argv[1:])
