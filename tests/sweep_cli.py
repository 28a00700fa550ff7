"""Run `python -m lbfood ARGS` with the small `backdrops` of the `small_backdrops` fixture (for tests that
need a separate process: a killed worker, two workers sharing one study)."""

import sys

import torch

from lbfood.engine.data import backdrops

backdrops.SPLITS.update({"train": 200, "test": 100, "scenes": 100, "novel": 100, "noise": 100})
torch.set_num_threads(1)

if __name__ == "__main__":
    from lbfood.cli import main

    sys.argv = ["lbfood", *sys.argv[1:]]
    main()
