"""Test hook for crash safety: die like SIGKILL at a named write step of a run.

`LBFOOD_TEST_KILL_AT=NAME` (or `NAME@N`, the N-th time the step is reached) makes `kill_point(NAME)`
end the process at once with `os._exit`: no clean-up, no `finally`, as a power cut or the OOM killer
would. The kill-safety tests set it to every step between an epoch's writes and check that each state
left behind resumes to the uninterrupted run bit for bit.
"""

from __future__ import annotations

import os

ENV = "LBFOOD_TEST_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Die here if $LBFOOD_TEST_KILL_AT names this step (and this passage of it)."""
    want = os.environ.get(ENV)
    if not want:
        return
    _reached[name] = _reached.get(name, 0) + 1
    point, _, nth = want.partition("@")
    if point == name and _reached[name] == int(nth or 1):
        die()


def die() -> None:
    os._exit(137)
