"""Image folders (data/folders.py): links, flat folders, --val-split."""

from __future__ import annotations

import fakedata as fd
import pytest
from cli_checks import one_error_line
from hostile_checks import (
    TINY,
    deadline,
    invoke,
    tree,
)

from lbfood.engine import data
from lbfood.engine.data import LoadOptions


def test_imagefolder_self_links_load_each_image_once(tmp_path):
    root = tmp_path / "d"
    fd.write_image_folder(root / "train", ["a", "b"], 4)
    fd.write_image_folder(root / "test", ["a", "b"], 2)
    for c in ("a", "b"):
        (root / "train" / c / "self").symlink_to(".")
        (root / "test" / c / "loop").symlink_to("..")
    (root / "train" / "loop").symlink_to(".")  # not a class: a link back up the tree
    opts = LoadOptions(root=tmp_path)
    with deadline(20):
        tr = data.get(f"imagefolder:{root}").load(opts, "train")
        te = data.get(f"imagefolder:{root}").load(opts, "test")
    assert tr.classes == ("a", "b") and tr.labels.tolist() == [0] * 4 + [1] * 4
    assert te.labels.tolist() == [0, 0, 1, 1]
    # the same as a pool with --val-split: 12 files in all, each in exactly one split
    pool = tmp_path / "pool"
    fd.write_image_folder(pool, ["a", "b"], 6)
    (pool / "loop").symlink_to(".")
    (pool / "a" / "self").symlink_to(".")
    opts = LoadOptions(root=tmp_path, val_split=0.5)
    tr = data.get(f"imagefolder:{pool}").load(opts, "train")
    te = data.get(f"imagefolder:{pool}").load(opts, "test")
    assert tr.classes == ("a", "b") and len(tr) == 6 and len(te) == 6


def test_imagefolder_link_from_train_into_test_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "d"
    fd.write_image_folder(root / "train", ["a", "b"], 3)
    fd.write_image_folder(root / "test", ["a", "b"], 1)
    (root / "train" / "a" / "peek").symlink_to("../../test/a")
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{root}", *TINY, "--out", tmp_path / "out")
    one_error_line(r, f"{root}/train/a/peek/img_000.png and {root}/test/a/img_000.png are the same file",
                   "both the train and the test split", "remove the link")
    assert tree(tmp_path) == before
    # a sibling class holding links to another class's files: one image, two labels
    (root / "train" / "a" / "peek").unlink()
    (root / "train" / "b" / "copy.png").symlink_to("../a/img_000.png")
    r = invoke("pretrain", "--data", f"imagefolder:{root}", *TINY, "--out", tmp_path / "out")
    one_error_line(r, "are the same file", "in two classes")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("val_split", ["2", "-0.1", "1", "nan"])
def test_val_split_outside_0_1_is_one_line(tmp_path, monkeypatch, val_split):
    monkeypatch.chdir(tmp_path)
    fd.write_flat_folder(tmp_path / "flat", n=4)
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'flat'}", *TINY, "--val-split", val_split,
               "--out", tmp_path / "out")
    one_error_line(r, "--val-split must be a share between 0 and 1", f"got {float(val_split)}")
    assert tree(tmp_path) == before


def test_imagefolder_empty_or_flat_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    fd.write_flat_folder(tmp_path / "flat", n=4)
    before = tree(tmp_path)
    r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'empty'}", *TINY)
    line = one_error_line(r, f"{tmp_path / 'empty'} is empty; expected")
    assert "has class folders" not in line and "--val-split (e.g." not in line
    for extra in ((), ("--val-split", "0.5")):
        r = invoke("pretrain", "--data", f"imagefolder:{tmp_path / 'flat'}", *TINY, *extra)
        line = one_error_line(r, f"no class folders in {tmp_path / 'flat'}: its 4 image(s) lie directly in it",
                              "put each class in its own folder")
        assert "has class folders" not in line
    assert tree(tmp_path) == before
