"""lbfood's command line: the Typer app, its one error guard and the registration of the commands.

The commands themselves are thin functions in lbfood/commands/ (training.py: pretrain, finetune, demo;
evaluation.py: report, score, datasets; pictures.py: explain; export.py; sweep.py; options.py: what they
share); what they print or write for the user is in lbfood/output/. torch is imported inside the commands,
never at module import, so `lbfood --help` stays fast. Every command runs inside `guard`: an engine error
(LbfoodError) becomes one red line and exit code 2, Ctrl-C exit code 130.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Annotated

import typer

from lbfood import __version__
from lbfood.commands import evaluation, export, imports, pictures, sweep, training
from lbfood.commands.options import rank

app = typer.Typer(
    name="lbfood",
    help="Local background feature fine-tuning (LFF) for out-of-distribution detection.\n\n"
    "Typical use: `lbfood pretrain`, `lbfood finetune`, `lbfood report`, `lbfood score image.jpg`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def guard():
    """Turn engine errors into one line on stderr and exit code 2; Ctrl-C into exit code 130."""
    from lbfood.engine.errors import LbfoodError
    from lbfood.output import render

    try:
        yield
    except LbfoodError as e:
        from lbfood.engine.errors import ConfigError

        me = rank()
        if me == 0:
            render.error(str(e))
        elif not isinstance(e, ConfigError):  # flag errors are the same on every rank: rank 0 says it
            render.error(f"rank {me}: {e}")
        raise typer.Exit(e.exit_code) from None
    except OSError as e:  # a folder or disk the engine met outside lbfood.engine.io (e.g. a run folder's mkdir)
        from lbfood.engine.io import STORAGE_ERRNOS, storage_error

        if e.errno not in STORAGE_ERRNOS or e.filename is None:
            raise
        render.error(("" if rank() == 0 else f"rank {rank()}: ") + str(storage_error(e.filename, e, verb="use")))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if rank() == 0:
            render.error("interrupted")
        raise typer.Exit(130) from None



def guarded(command: Callable) -> Callable:
    """`command` run inside `guard` (Typer reads its signature and help through functools.wraps)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with guard():
            return command(*args, **kwargs)

    return run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lbfood {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Local background feature fine-tuning (LFF) for OOD detection."""


app.command()(guarded(evaluation.report))
app.command()(guarded(evaluation.score))
app.command()(guarded(evaluation.datasets))
app.command()(guarded(export.export))
app.command("import")(guarded(imports.import_))
app.command()(guarded(pictures.explain))
app.command()(guarded(sweep.sweep))
app.command()(guarded(training.pretrain))
app.command()(guarded(training.finetune))
app.command()(guarded(training.demo))


def main() -> None:
    """The console script: Typer's app, but a value or option the parser cannot read is one `error:` line
    (exit 2) naming the help to read, like every other refusal, instead of Typer's boxed usage panel."""
    import sys

    if len(sys.argv) <= 1:  # `lbfood` alone: the help, as Typer draws it
        app()
        return
    try:
        rv = app(standalone_mode=False)
    except Exception as e:
        # Click's UsageError family (vendored by newer Typer, click's own in older ones): exit code 2 and
        # a message; anything else is not a parsing problem and goes on as before.
        if not (hasattr(e, "format_message") and getattr(e, "exit_code", None) == 2):
            raise
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "lbfood --help"
        print(f"error: {' '.join(e.format_message().split()).rstrip('.')}; see `{where}`", file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
