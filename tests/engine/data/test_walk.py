"""Folder walks (data/walk.py): each real file once, link loops cannot hang them."""

from __future__ import annotations

import json
import os

from cli_checks import clean
from hostile_checks import (
    CPU,
    _looping_folder,
    deadline,
    invoke,
    score_rows,
    tree,
)

from lbfood.engine.data.walk import glob_files, walk_files


def test_walk_lists_each_real_file_once(tmp_path):
    f = _looping_folder(tmp_path)
    os.mkfifo(f / "pipe.png")
    names = ["f/img_000.png", "f/img_001.png", "f/img_002.png"]
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    with deadline(20):
        assert rel(walk_files(f)) == names
        assert rel(walk_files(tmp_path)) == names  # the direct path wins over g/'s links
        assert rel(glob_files(f"{f}/**/*.png")) == names
        assert rel(glob_files(f"{tmp_path}/*/**")) == names
        assert rel(walk_files(f, recursive=False)) == names


def test_score_a_folder_with_self_links_once_per_image(run, tmp_path):
    f = _looping_folder(tmp_path)
    before = tree(tmp_path)
    with deadline(60):
        r = invoke("score", f, f"{f}/**/*.png", f / "self" / "img_002.png", "--method", "energy",
                   "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")  # nothing to fit: no write
    clean(r)
    assert r.exit_code == 0, r.output
    assert [x["file"] for x in score_rows(r)] == [str(f / f"img_00{i}.png") for i in range(3)]
    assert tree(tmp_path) == before


def test_report_ood_folder_with_self_links(run, tmp_path):
    f = _looping_folder(tmp_path)
    with deadline(60):
        r = invoke("report", "--method", "energy", "--ood", f"folder:{f}", "--output", tmp_path / "r.json", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["num_images"][f"folder:{f}"] == 3
