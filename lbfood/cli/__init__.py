"""lbfood's command line: thin Typer commands over `lbfood.engine`.

torch is imported inside the commands, never at module import, so `lbfood --help` stays fast.
The commands live beside this file: training.py (pretrain, finetune, demo) and evaluation.py (report,
score, datasets); common.py holds what they share (the error guard, the launcher, shared options).
"""

from __future__ import annotations

from typing import Annotated

import typer

from lbfood import __version__

app = typer.Typer(
    name="lbfood",
    help="Local background feature fine-tuning (LFF) for out-of-distribution detection.\n\n"
    "Typical use: `lbfood pretrain`, `lbfood finetune`, `lbfood report`, `lbfood score image.jpg`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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


from lbfood.cli import evaluation, export, imports, pictures, sweep, training  # noqa: E402,F401 - registers the commands on `app`


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
