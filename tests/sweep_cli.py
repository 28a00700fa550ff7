"""Run `python -m lbfood ARGS` with the small `backdrops` of the `small_backdrops` fixture (for tests that
need a separate process: a killed worker, two workers sharing one study). With LBFOOD_TEST_FAKE_HOST=NAME
the process calls its host NAME-<pid>, as if each worker ran on its own machine (so only Optuna's
heartbeat, not a same-host pid check, can tell that a killed worker is gone)."""

import os
import socket
import sys

import torch

from lbfood.engine.data import backdrops

backdrops.SPLITS.update({"train": 200, "test": 100, "scenes": 100, "novel": 100, "noise": 100})
torch.set_num_threads(1)
if os.environ.get("LBFOOD_TEST_FAKE_HOST"):
    socket.gethostname = lambda: f"{os.environ['LBFOOD_TEST_FAKE_HOST']}-{os.getpid()}"

if __name__ == "__main__":
    from lbfood.cli import main

    sys.argv = ["lbfood", *sys.argv[1:]]
    main()
