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


from lbfood.cli import evaluation, export, pictures, sweep, training  # noqa: E402,F401 - registers the commands on `app`


def main() -> None:
    app()


if __name__ == "__main__":
    main()
