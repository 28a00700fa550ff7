"""Reading one image (data/images.py): FIFOs, devices and huge images refused safely."""

from __future__ import annotations

import os
import warnings

import fakedata as fd
import pytest
from cli_checks import clean, one_error_line
from hostile_checks import (
    deadline,
    invoke,
    png_header,
    score_rows,
    tree,
)

from lbfood.engine.data.images import MAX_PIXELS, decode
from lbfood.engine.errors import ConfigError, DataError


def test_score_dev_null_and_a_fifo_say_what_they_are(run, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "imgs").mkdir()
    fd.write_flat_folder(tmp_path / "imgs", n=1)
    os.mkfifo(tmp_path / "imgs" / "pipe.png")  # in a folder: not a file, skipped
    before = tree(tmp_path)
    with deadline(60):
        r = invoke("score", "/dev/null", tmp_path / "pipe.png", tmp_path / "imgs", f"{tmp_path}/imgs/*.png",
                   "--method", "energy", "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 1, r.output
    rows = score_rows(r)
    assert [(x["file"], x["error"]) for x in rows[:2]] == [
        ("/dev/null", "not a regular file (a character device); pass image files, folders or globs"),
        (str(tmp_path / "pipe.png"), "not a regular file (a named pipe); pass image files, folders or globs")]
    assert [x["file"] for x in rows[2:]] == [str(tmp_path / "imgs" / "img_000.png")] and rows[2]["error"] is None
    assert "file not found" not in r.output
    assert tree(tmp_path) == before


def test_decode_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    with deadline(10), pytest.raises(DataError, match=r"p\.png: not a regular file \(a named pipe\)"):
        decode(tmp_path / "p.png")
    with pytest.raises(DataError, match=r"d: not a regular file \(a folder\)"):
        (tmp_path / "d").mkdir()
        decode(tmp_path / "d")
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    with pytest.raises(DataError, match=r"dangling\.png: broken symbolic link"):
        decode(tmp_path / "dangling.png")


def test_huge_image_is_refused_before_decoding(run, tmp_path):
    png_header(tmp_path / "huge.png", 12000, 12000)
    fd.write_flat_folder(tmp_path, n=1)
    before = tree(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = invoke("score", tmp_path / "huge.png", tmp_path / "img_000.png", "--method", "energy",
                   "--threshold", "0", "--no-far-gate", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 1, r.output
    huge, ok = score_rows(r)
    assert huge["error"] == ("image is 12000×12000 (144 megapixels), more than the 64 megapixels lbfood "
                             "decodes; shrink it, or raise the limit with LBFOOD_MAX_PIXELS=144000000")
    assert ok["error"] is None and MAX_PIXELS == 64_000_000
    assert "DecompressionBomb" not in r.output
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]
    assert tree(tmp_path) == before


def test_max_pixels_from_the_environment(run, tmp_path, monkeypatch):
    fd.write_flat_folder(tmp_path, n=1, size=(20, 20))
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "399")
    r = invoke("score", tmp_path / "img_000.png", "--method", "energy", "--threshold", "0", "--json",
               "--device", "cpu")
    clean(r)
    assert r.exit_code == 1 and "raise the limit with LBFOOD_MAX_PIXELS=400" in score_rows(r)[0]["error"]
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "400")
    assert decode(tmp_path / "img_000.png").shape == (20, 20, 3)
    monkeypatch.setenv("LBFOOD_MAX_PIXELS", "lots")
    r = invoke("score", tmp_path / "img_000.png", "--method", "energy", "--threshold", "0", "--device", "cpu")
    one_error_line(r, "LBFOOD_MAX_PIXELS must be a positive whole number of pixels, got 'lots'")
    with pytest.raises(ConfigError):
        decode(tmp_path / "img_000.png")
