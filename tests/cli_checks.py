"""Checks shared by the tests that invoke the CLI in-process (Typer's CliRunner): no escaped exception,
and a refusal that is exactly one `error:` line with exit code 2."""


def clean(r) -> None:
    """No Python exception escaped the command (CliRunner keeps it in `exception`, not the output)."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output, r.output


def one_error_line(r, *needles: str) -> str:
    """The command refused with exit code 2 and one line starting `error:` holding every needle; returns it."""
    clean(r)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
