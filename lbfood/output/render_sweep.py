"""Rich rendering of `lbfood sweep`: one line per trial event, then the table of every trial."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from lbfood.output import render, sweep_files


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.2f}"


def progress(quiet: bool = False):
    """An `on_event` callback for `study.work` and `results.finalize`."""
    from lbfood.engine.events import EpochEnd, Note
    from lbfood.engine.sweep.results import Selected, Testing
    from lbfood.engine.sweep.study import TrialDone, TrialEvent, TrialStarted, Waiting

    c = render.console

    def on_event(ev: Any) -> None:
        if isinstance(ev, TrialStarted):
            point = ", ".join(f"{k} {v}" for k, v in ev.point.items())
            c.print(f"[bold]trial {ev.number}[/] {ev.key}: {point} → {ev.run_dir}")
        elif isinstance(ev, TrialEvent) and isinstance(ev.event, EpochEnd) and not quiet:
            m = ev.event.metrics
            c.print(f"  epoch {ev.event.epoch + 1}  {render.fmt_metrics(m)}  val acc {m['val_acc']:.2%}")
        elif isinstance(ev, TrialEvent) and isinstance(ev.event, Note) and ev.event.level == "warning":
            c.print(f"  [yellow]{escape(ev.event.message)}[/]")
        elif isinstance(ev, TrialDone):
            if ev.state == "duplicate":
                c.print(f"  trial {ev.number}: TPE proposed {ev.key} again; skipped")
            elif ev.state == "lost":
                c.print(f"  [yellow]trial {ev.number} was re-queued for another worker[/] (this one missed 4 heartbeats)")
            elif ev.state == "diverged":
                c.print("  [yellow]diverged[/]: a training loss became NaN or infinite; the sweep goes on without it")
            elif ev.state == "pruned":
                c.print(f"  [yellow]pruned[/]: val acc {_pct(ev.val_acc)} % fell below the control's")
            else:
                c.print(f"  done: val acc {_pct(ev.val_acc)} %, validation objective {_pct(ev.value)} ({ev.method})")
        elif isinstance(ev, Waiting):
            c.print(f"waiting for {ev.running} trial(s) running on other workers (re-queued if their worker dies)")
        elif isinstance(ev, Selected):
            c.print(f"[green]selected[/] trial {ev.number} ({ev.key}) with {ev.method}: validation "
                    f"{_pct(ev.value)}, val acc {_pct(ev.val_acc)} % (floor {_pct(ev.floor)} %); now the test sets")
            if ev.verdict:
                c.print(f"  {escape(ev.verdict)}")
        elif isinstance(ev, Testing) and not quiet:
            c.print(f"  testing {ev.key}")

    return on_event


def table(doc: dict[str, Any]) -> None:
    """Every trial: point, ID val accuracy, validation objective, test metrics (selected scorer), Δ control."""
    from lbfood.engine.sweep.results import test_cell

    sel = doc["selected"]
    method = sel["method"]
    control = next(r for r in doc["trials"] if r["role"] == "control")
    obj = "AUROC" if doc["objective"] == "auroc" else "FPR95"
    t = Table(title=f"sweep: selected trial {sel['number']} ({sel['key']}) with {method}; test columns: {method}, "
                    f"average over {', '.join(doc['test']['ood']) or 'no test set'}")
    for col in ("#", "trial", "objective", "δ", "μ", "λ", "mask", "val acc", f"val {obj}", "Δ val", "test acc", "FPR95↓",
                "Δ", "AUROC↑", "Δ"):
        t.add_column(col, justify="left" if col in ("trial", "objective", "mask") else "right")
    c_fpr, c_auc = test_cell(control, method, "fpr95"), test_cell(control, method, "auroc")
    for r in doc["trials"]:
        fpr, auc = test_cell(r, method, "fpr95"), test_cell(r, method, "auroc")
        name = r["key"] + (" ★" if r["number"] == sel["number"] else "") + (f" ({r['state']})" if r["state"] != "complete" else "")
        p = r["point"]
        style = "bold" if r["role"] == "control" else ("green" if r["number"] == sel["number"] else None)
        t.add_row(str(r["number"]), name, p.get("objective", "lff"), f"{r['delta']:.4g}" if r["delta"] is not None else p["delta"],
                  f"{r['mu']:.4g}" if isinstance(r["mu"], float) else p["mu"], p["lam"], p["mask_from"],
                  sweep_files.val_acc(r, "—"),
                  f"{sweep_files.with_ci(r['value'], r.get('value_ci'))} ({r['method']})" if r["value"] is not None
                  else "—", sweep_files.gain(r, "—"), _pct((r.get("test") or {}).get("id_accuracy")), _pct(fpr),
                  _pct(fpr - c_fpr) if None not in (fpr, c_fpr) else "—", _pct(auc),
                  _pct(auc - c_auc) if None not in (auc, c_auc) else "—", style=style)
    from lbfood.output.render_eval import _console

    _console().print(t)  # wide when piped, so the table is not squeezed
    render.console.print("validation: ± half the width of the 95 % bootstrap interval over the held-out images; Δ val: "
                         f"gain over the control (paired); ✗: below the accuracy floor ({_pct(doc['accuracy_floor'])} %)")
    if doc.get("verdict"):
        render.console.print(f"[bold]verdict:[/] {escape(doc['verdict'])}")
    if doc["test"].get("note"):
        render.warn(doc["test"]["note"])
