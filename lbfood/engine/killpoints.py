"""The one test hook for crash safety: die like SIGKILL at a named point of a run.

`LBFOOD_TEST_KILL_AT=NAME` (or `NAME@N`, the N-th time the point is reached) makes `kill_point(NAME)`
end the process at once with `os._exit(137)`: no clean-up, no `finally`, as a power cut or the OOM
killer would. A point reached by several processes or trials is qualified: `kill_point("step",
"rank1")` answers to `step:rank1` (one rank of a multi-process run), `kill_point("trial-epoch", "3")`
to `trial-epoch:3` (a sweep worker, after trial 3's first epoch). The kill-safety tests set it to every
step between an epoch's writes and check that each state left behind resumes to the uninterrupted run
bit for bit; others kill one rank or one sweep worker.
"""

from __future__ import annotations

import os

ENV = "LBFOOD_TEST_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str, where: str | None = None) -> None:
    """Die here if $LBFOOD_TEST_KILL_AT names this point (`name`, or `name:where`) and this passage of it."""
    want = os.environ.get(ENV)
    if not want:
        return
    here = name if where is None else f"{name}:{where}"
    _reached[here] = _reached.get(here, 0) + 1
    point, _, nth = want.partition("@")
    if point == here and _reached[here] == int(nth or 1):
        die()


def die() -> None:
    os._exit(137)
