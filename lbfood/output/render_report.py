"""The `lbfood report` tables, sized to the terminal (120 columns when piped).

Rows are the OOD sets (short labels; full names in a legend below) and an Average row. A single run
gets one table with its methods side by side; several runs get one table per method, runs side by
side with the better value in bold green (as the paper's Table IV). Beside each metric stands the
paper's number for the run's setting: its "+Ours" row (Table IV) beside a fine-tuned LFF run, its
baseline row beside a pretrained run or the CE-only control; the column header says which. Column
groups that do not fit the width go to a further table rather than squeezing the numbers.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

PIPED_WIDTH = 120
_METRICS = (("fpr95", "FPR95↓", False), ("auroc", "AUROC↑", True), ("aupr_in", "AUPR-In↑", True),
            ("aupr_out", "AUPR-Out↑", True))
_PAPER_KEYS = ("fpr95", "auroc")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.2f}"


def run_labels(result: Any) -> list[str]:
    """Short column labels for runs: pretrained, LFF or CE-only (numbered when two share one)."""
    base = []
    for r in result.runs:
        if getattr(r, "lff", False):
            base.append("LFF")
        elif r.kind == "finetune":
            base.append("CE-only")
        elif r.kind == "pretrain":
            base.append("pretrained")
        else:
            base.append(r.kind or "run")
    return [f"{b} {base[:i + 1].count(b)}" if base.count(b) > 1 else b for i, b in enumerate(base)]


def _paper_columns(result: Any, m: str) -> list[tuple[str, dict]]:
    """(header, rows) of the paper's numbers shown for method `m`: the baseline row when a run is
    compared with it, the "+Ours" row when an LFF run is (and the paper has that row)."""
    cols = []
    if result.paper.get(m) and any(not getattr(r, "lff", False) for r in result.runs):
        cols.append(("paper", result.paper[m]))
    ours = getattr(result, "paper_ours", {}).get(m)
    if ours and any(getattr(r, "lff", False) for r in result.runs):
        cols.append(("paper +Ours", ours))
    return cols


def _groups(result: Any, all_metrics: bool) -> list[tuple[str, str, bool, list]]:
    """One group per (method, metric): its columns, as (method, key, up, [(header, run index | rows)])."""
    shown = _METRICS if all_metrics else _METRICS[:2]
    out = []
    for m in result.methods:
        paper = _paper_columns(result, m)
        for key, head, up in shown:
            cols: list[tuple[str, Any]] = [(head, i) for i in range(len(result.runs))]
            if key in _PAPER_KEYS:
                cols += [(f"{head}\n{which}", rows) for which, rows in paper]
            out.append((m, key, up, cols))
    return out


def _table(result: Any, groups: list, labels: list[str], title: str, many: bool, with_method: bool) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column("OOD set")
    cells: list[list[str]] = [[] for _ in (*result.ood, "average")]
    for m, key, up, cols in groups:
        name = result.labels.get(m, m)
        for head, src in cols:
            paper = not isinstance(src, int)
            text = head if paper else head + (f"\n{labels[src]}" if many else "")
            table.add_column((f"{escape(name)}\n" if with_method else "") + escape(text), justify="right",
                             style="dim" if paper else None, no_wrap=True)
            for row, ds in zip(cells, (*result.ood, "average"), strict=True):
                if paper:
                    row.append(_pct(src.get(ds, {}).get(key)))
                    continue
                v = result.runs[src].metrics[m][ds][key]
                text = _pct(v)
                others = [r.metrics[m][ds][key] for j, r in enumerate(result.runs) if j != src]
                if many and all((v > o) if up else (v < o) for o in others):
                    text = f"[bold green]{text}[/]"
                row.append(text)
    ood_labels = getattr(result, "ood_labels", {}) or {}
    for row, ds in zip(cells, (*result.ood, "average"), strict=True):
        label = "[bold]Average[/]" if ds == "average" else escape(ood_labels.get(ds, ds))
        table.add_row(label, *row, end_section=ds == result.ood[-1])
    return table


def _fits(console: Console, table: Table) -> bool:
    """Whether `table` at its natural width fits (Measurement clamps to the width it is given)."""
    natural = Measurement.get(console, console.options.update(max_width=10_000), table).maximum
    return natural <= console.width


def tables(result: Any, console: Console, all_metrics: bool = False) -> list[Table]:
    """The report's tables, each as wide as its content and no wider than `console` where possible."""
    labels = run_labels(result)
    many = len(result.runs) > 1
    groups = _groups(result, all_metrics)
    out: list[Table] = []
    if many:  # one table per method, split further only if even that is too wide
        for m in result.methods:
            title = escape(result.labels.get(m, m))
            out += _pack(result, console, [g for g in groups if g[0] == m], labels, title, many, False)
        return out
    title = "lbfood report: " + escape(result.runs[0].name)
    return _pack(result, console, groups, labels, title, many, True)


def _pack(result, console, groups, labels, title, many, with_method) -> list[Table]:
    out, current = [], []
    for g in groups:
        trial = current + [g]
        if current and not _fits(console, _table(result, trial, labels, title, many, with_method)):
            out.append(_table(result, current, labels, title, many, with_method))
            trial = [g]
        current = trial
    if current:
        out.append(_table(result, current, labels, title, many, with_method))
    return out


def legend(result: Any) -> list[str]:
    """Lines (rich markup) under the tables: accuracy, convention, which run is which, full OOD names."""
    labels = run_labels(result)
    conv = "paper: ID positive" if result.convention == "paper" else "openood: OOD positive"
    lines = [f"ID {escape(result.id_data)} · FPR95 convention {conv} · values in %"
             + (f" · benchmark {escape(result.benchmark)} (paper's numbers dimmed)" if result.benchmark else "")]
    for lab, r in zip(labels, result.runs, strict=True):
        lines.append(f"[bold]{escape(lab)}[/]: {escape(r.name)} ({escape(r.kind)}, {escape(r.arch)} ×{r.width:g}), "
                     f"ID accuracy {r.id_accuracy:.2%} · {escape(r.path)}")
    ood_labels = getattr(result, "ood_labels", {}) or {}
    for ds in result.ood:
        if ood_labels.get(ds, ds) != ds:
            lines.append(f"[bold]{escape(ood_labels[ds])}[/] = {escape(ds)}")
    return lines
