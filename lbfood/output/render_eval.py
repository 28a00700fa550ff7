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

from lbfood.output import render


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


def report(result: Any, all_metrics: bool = False, console: Console | None = None) -> None:
    """The report's tables (see render_report: one per method when runs are compared, the paper's
    baseline or "+Ours" numbers beside each run, fitted to the terminal or 120 columns when piped), then
    the legend (runs, full OOD names), notes and what was computed."""
    from lbfood.output import render_report

    out = console or (render.console if render.console.is_terminal
                      else Console(width=render_report.PIPED_WIDTH, soft_wrap=False))
    for table in render_report.tables(result, out, all_metrics):
        out.print(table)
    for line in render_report.legend(result):
        out.print(line)
    for note in result.notes:
        out.print(f"[yellow]note:[/] {escape(note)}")
    cached = "all features from the cache" if result.extractions == 0 else f"{result.extractions} extraction(s)"
    out.print(f"[dim]{cached}, {result.odin_passes} ODIN pass(es), {result.fits} scorer fit(s), "
              f"{result.seconds:.1f} s · data root {escape(result.data_root)}[/]")


def wrote(path) -> None:
    _console().print(f"[green]wrote[/] {escape(str(path))}")


def score_table(rows: Sequence[Any]) -> None:
    """file, predicted class, confidence, score, verdict and why OOD (reason: `score` below γ, or `far`:
    the far-OOD gate failed); failures in red with their reason."""
    method = next((r.method for r in rows if r.method), "")
    thr = next((r.threshold for r in rows if r.threshold is not None), None)
    far = next((r.far_threshold for r in rows if r.far_threshold is not None), None)
    caption = None
    if thr is not None:
        caption = f"ID ⇔ {escape(method)} score ≥ {thr:.4g} (paper Eq. 3)"
        caption += (f" and far-OOD gate ≥ {far:.4g} (Mahalanobis; reason far = the gate failed)" if far is not None
                    else " (--no-far-gate: the paper's score alone)")
    table = Table(title="lbfood score", caption=caption, header_style="bold")
    for col, justify in (("file", "left"), ("class", "left"), ("confidence", "right"), ("score", "right"),
                         ("verdict", "left"), ("reason", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        if r.error is not None:
            table.add_row(escape(r.file), f"[red]{escape(r.error)}[/]", "", "", "[bold red]error[/]", "")
            continue
        verdict = "[green]ID[/]" if r.verdict == "ID" else "[magenta]OOD[/]"
        table.add_row(escape(r.file), escape(r.predicted or ""), f"{r.confidence:.2%}", f"{r.score:.4f}", verdict,
                      r.reason or "")
    _console().print(table)
    failed = sum(r.error is not None for r in rows)
    if failed:
        render.err_console.print(f"[yellow]{failed} of {len(rows)} file(s) could not be scored[/]")


def notes(lines: Sequence[str]) -> None:
    """What the user should know beside the results (on stderr, so --json output stays parseable)."""
    for line in lines:
        render.err_console.print(f"[yellow]note:[/] {escape(line)}")


def streamed(done: Any) -> None:
    """The summary of `score --out` (the rows are in the file, not on the screen)."""
    again = f", {done.resumed:,} already there" if done.resumed else ""
    rate = f" ({done.scored / done.seconds:,.0f} images/s)" if done.seconds > 0 and done.scored else ""
    _console().print(f"scored {done.scored:,} of {done.total:,} images{again} in {done.seconds:.1f} s{rate}: "
                     f"{done.ood:,} OOD, {done.errors:,} unreadable → {escape(str(done.out))}")


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
