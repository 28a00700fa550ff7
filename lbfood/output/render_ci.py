"""The lines a CI log shows: `lbfood report --gate` results and `lbfood score --max-ood-share`'s summary.

Both go to stderr, one line each (soft-wrapped, so a log keeps a line whole), after the table on stdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from lbfood.output import render


def gate_line(c: Any) -> str:
    """`react average fpr95 = 42.10 %, bound <= 30 % (gate fpr95<=30)`; id_acc as a fraction."""
    if c.metric == "id_acc":
        where, value, bound = "ID", f"{c.value:.4f}", f"{c.bound:g}"
    else:
        where, value, bound = f"{c.method} {c.dataset}", f"{c.value:.2f} %", f"{c.bound:g} %"
    return f"{where} {c.metric} = {value}, bound {c.op} {bound} (gate {c.gate})"


def gates(checks: Sequence[Any]) -> int:
    """One red line per violated gate, or one green line when all held; returns how many failed."""
    failed = [c for c in checks if not c.passed]
    for c in failed:
        render.err_console.print(f"[bold red]gate failed:[/] {escape(gate_line(c))}", highlight=False,
                                 soft_wrap=True)
    if checks and not failed:
        render.err_console.print(f"[green]gates held:[/] {len(checks)} check(s) of "
                                 f"{len({c.gate for c in checks})} gate(s)", highlight=False, soft_wrap=True)
    return len(failed)


def share_line(s: Any) -> str:
    """`OOD share: 3 of 40 scored image(s) called OOD = 7.50 % > max 5.00 %`."""
    op = ">" if s.exceeded else "<="
    return (f"{s.ood} of {s.scored} scored image(s) called OOD = {100 * s.share:.2f} % {op} max "
            f"{100 * s.threshold:.2f} %")


def ood_share(s: Any) -> None:
    if s.unread:
        render.err_console.print(f"[bold red]OOD share not checked:[/] none of the {s.files} file(s) could be read "
                                 "(see the errors above), so no image was scored", highlight=False, soft_wrap=True)
        return
    style, head = ("bold red", "OOD share exceeded:") if s.exceeded else ("green", "OOD share:")
    render.err_console.print(f"[{style}]{head}[/] {escape(share_line(s))}", highlight=False, soft_wrap=True)
