"""What a training run checks before its first step (training/setup.py)."""

from __future__ import annotations

import fakedata as fd
from cli_checks import one_error_line
from hostile_checks import (
    TINY,
    invoke,
)


def test_one_class_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split in ("train", "test"):
        fd.write_image_folder(tmp_path / "one" / split, ["cat"], n_per_class=4)
    one_error_line(invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'one'}", *TINY, "--out", "r"),
                   "has 1 class (cat); a classifier needs at least 2 classes")
