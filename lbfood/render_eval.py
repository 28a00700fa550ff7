"""Rich rendering of evaluation results: `lbfood report`, `lbfood score` and `lbfood datasets`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lbfood import render

_METRICS = (("fpr95", "FPR95↓", False), ("auroc", "AUROC↑", True), ("aupr_in", "AUPR-In↑", True),
            ("aupr_out", "AUPR-Out↑", True))


def _console() -> Console:
    """The shared console on a terminal; a wide one when piped, so tables are not squeezed."""
    if render.console.is_terminal:
        return render.console
    return Console(width=max(render.console.width, 200), soft_wrap=False)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.2f}"


@contextlib.contextmanager
def progress(quiet: bool = False) -> Iterator[Any]:
    """A status line on stderr fed by the engine's Step events; yields the callback to pass it."""
    if quiet or not render.err_console.is_terminal:
        yield None
        return
    with render.err_console.status("starting…") as status:
        yield lambda step: status.update(escape(step.message))


def _run_labels(result: Any) -> list[str]:
    """Short column labels for runs: their kind (pretrain, finetune) when that tells them apart."""
    kinds = [r.kind or r.name for r in result.runs]
    if len(set(kinds)) == len(kinds):
        return kinds
    return [r.name for r in result.runs]


def report(result: Any, all_metrics: bool = False) -> None:
    """One row per OOD dataset and an Average row; per method FPR95↓ and AUROC↑ (percentages), runs side
    by side (the better value in bold green, as the paper's Table IV), the paper's numbers beside them."""
    shown = _METRICS if all_metrics else _METRICS[:2]
    labels = _run_labels(result)
    many = len(result.runs) > 1
    conv = "paper: ID positive" if result.convention == "paper" else "openood: OOD positive"
    acc = ", ".join(f"{lab} {r.id_accuracy:.2%}" for lab, r in zip(labels, result.runs, strict=True)) if many \
        else f"{result.runs[0].id_accuracy:.2%}"
    caption = f"ID {escape(result.id_data)} accuracy {acc} · FPR95 convention {conv} · values in %"
    if result.benchmark:
        caption += f" · benchmark {escape(result.benchmark)}" + (" (paper's numbers dimmed)" if result.paper else "")
    title = "lbfood report: " + (" vs ".join(escape(r.name) for r in result.runs))
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("OOD dataset")
    columns: list[tuple[str, str, int | None, bool]] = []  # (method, metric key, run index or None=paper, up)
    for m in result.methods:
        name = result.labels.get(m, m)
        paper = result.paper.get(m, {})
        for key, head, up in shown:
            for i, lab in enumerate(labels):
                table.add_column(f"{escape(name)}\n{head}" + (f"\n{escape(lab)}" if many else ""), justify="right")
                columns.append((m, key, i, up))
            if paper and key in ("fpr95", "auroc"):
                table.add_column(f"{escape(name)}\n{head}\npaper", justify="right", style="dim")
                columns.append((m, key, None, up))
    for ds in [*result.ood, "average"]:
        cells = []
        for m, key, i, up in columns:
            if i is None:
                cells.append(_pct(result.paper.get(m, {}).get(ds, {}).get(key)))
                continue
            v = result.runs[i].metrics[m][ds][key]
            text = _pct(v)
            if many:
                others = [r.metrics[m][ds][key] for j, r in enumerate(result.runs) if j != i]
                if all((v > o) if up else (v < o) for o in others):
                    text = f"[bold green]{text}[/]"
            cells.append(text)
        label = "[bold]Average[/]" if ds == "average" else escape(ds)
        table.add_row(label, *cells, end_section=ds == result.ood[-1])
    out = _console()
    out.print(table)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}")
    cached = "all features from the cache" if result.extractions == 0 else f"{result.extractions} extraction(s)"
    out.print(f"[dim]{cached}, {result.odin_passes} ODIN pass(es), {result.fits} scorer fit(s), "
              f"{result.seconds:.1f} s · data root {escape(result.data_root)}[/]")
    if result.output:
        out.print(f"[green]wrote[/] {escape(result.output)}")


def score_table(rows: Sequence[Any]) -> None:
    """file, predicted class, confidence, score, verdict; failures in red with their reason."""
    method = next((r.method for r in rows if r.method), "")
    thr = next((r.threshold for r in rows if r.threshold is not None), None)
    caption = f"{escape(method)} score ≥ {thr:.4g} ⇒ ID (paper Eq. 3)" if thr is not None else None
    table = Table(title="lbfood score", caption=caption, header_style="bold")
    for col, justify in (("file", "left"), ("class", "left"), ("confidence", "right"), ("score", "right"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        if r.error is not None:
            table.add_row(escape(r.file), f"[red]{escape(r.error)}[/]", "", "", "[bold red]error[/]")
            continue
        verdict = "[green]ID[/]" if r.verdict == "ID" else "[magenta]OOD[/]"
        table.add_row(escape(r.file), escape(r.predicted or ""), f"{r.confidence:.2%}", f"{r.score:.4f}", verdict)
    _console().print(table)
    failed = sum(r.error is not None for r in rows)
    if failed:
        render.err_console.print(f"[yellow]{failed} of {len(rows)} file(s) could not be scored[/]")


def score_json(rows: Sequence[Any]) -> str:
    """One JSON object per line."""
    return "\n".join(json.dumps(r.to_dict()) for r in rows)


def datasets(rows: Sequence[dict[str, Any]], root: Path) -> None:
    table = Table(title=f"datasets under {escape(str(root))}", header_style="bold")
    for col in ("name", "role", "status", "images", "expected at", "how to obtain"):
        table.add_column(col, justify="right" if col == "images" else "left", overflow="fold")
    for r in rows:
        status = "[green]found[/]" if r["found"] else "[red]missing[/]"
        count = f"{r['count']:,}" if r.get("count") is not None else "—"
        table.add_row(escape(r["name"]), r["role"], status, count, escape(r["path"]), escape(r.get("obtain", "")))
    _console().print(table)


def pictures_line(pictures: Sequence[Any], folder: Path) -> None:
    """Where the PNGs went (the index page shows them all)."""
    render.console.print(f"pictures: {len(pictures)} PNG(s) in {escape(str(folder))}; open "
                         f"{escape(str(Path(folder) / 'index.html'))}", highlight=False, soft_wrap=True)
