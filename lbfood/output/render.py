"""Rich rendering of engine events and results. The only place (with cli.py) that prints."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

# Short labels for the metrics the training loop reports.
_SHOW = (("ce", "CE"), ("lff", "LFF"), ("bg_share", "bg"), ("bg_norm", "|z|bg"), ("fg_norm", "|z|fg"),
         ("train_acc", "acc"))


def fmt_metrics(m: dict[str, float]) -> str:
    parts = []
    for key, label in _SHOW:
        if key in m:
            v = m[key]
            parts.append(f"{label} {v:.1%}" if key in ("train_acc", "bg_share") else f"{label} {v:.3f}")
    return "  ".join(parts)


def training(events: Iterable[Any], quiet: bool = False) -> Any:
    """Render training events with a progress bar; returns the final Finished/Interrupted event."""
    from lbfood.engine.events import EpochEnd, Finished, Interrupted, Note, Progress, Started, Step

    last = None
    bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[metrics]}"), TextColumn("{task.fields[speed]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
                   disable=quiet or not console.is_terminal)
    task = None
    with bar:
        for ev in events:
            if isinstance(ev, Started):
                what = "resuming" if ev.start_epoch else "training"
                console.print(f"[bold]{ev.kind}[/] {what} {ev.arch} (width {ev.width}) on {ev.data}: "
                              f"{ev.num_train} train / {ev.num_test} {ev.eval_split} images, {ev.device}, {ev.precision}"
                              f" → {ev.run_dir}")
                total = (ev.epochs - ev.start_epoch) * ev.steps_per_epoch
                task = bar.add_task(f"epoch {ev.start_epoch + 1}/{ev.epochs}", total=total, metrics="", speed="")
                epochs, first_epoch = ev.epochs, ev.start_epoch
            elif isinstance(ev, Progress) and task is not None:
                bar.update(task, completed=(ev.epoch - first_epoch) * ev.steps + ev.step,
                           description=f"epoch {ev.epoch + 1}/{epochs}", metrics=fmt_metrics(ev.metrics),
                           speed=f"{ev.images_per_s:,.0f} img/s")
            elif isinstance(ev, EpochEnd):
                m = ev.metrics
                acc = "val" if "val_acc" in m else "test"  # a --holdout run evaluates its held-out images
                line = f"epoch {ev.epoch + 1:>3}  {fmt_metrics(m)}  {acc} acc {m[acc + '_acc']:.2%}  " \
                       f"{m.get('images_per_s', 0):,.0f} img/s"
                bar.console.print(line)
            elif isinstance(ev, Step):
                bar.console.print(f"[dim]{escape(ev.message)}…[/]")
            elif isinstance(ev, Note):
                style = "yellow" if ev.level == "warning" else "cyan"
                bar.console.print(f"[{style}]{escape(ev.message)}[/]")
            elif isinstance(ev, Finished | Interrupted):
                last = ev
    return last


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def kv_table(title: str, rows: list[tuple[str, str]]) -> None:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def flush() -> None:
    sys.stdout.flush()
