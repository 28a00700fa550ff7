"""`lbfood score --out FILE.jsonl [--shard I/N]` (lbfood/engine/evaluation/score_stream.py): shards that
concatenate to the unsharded file image for image, a killed run resumed without rescoring, and refusals."""

import json

import numpy as np
import pytest
from cli_checks import one_error_line
from PIL import Image
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import score_stream

SCORE = ("--method", "energy", "--threshold", "-5", "--batch-size", "4", "--device", "cpu")


def test_shards_are_contiguous_parts_that_concatenate_to_the_whole():
    items = list(range(10))
    parts = [score_stream.shard_of(items, i, 3) for i in range(3)]
    assert parts == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]] and sum(parts, []) == items
    assert score_stream.parse_shard("1/3") == (1, 3) and score_stream.parse_shard(None) == (0, 1)
    for bad, why in (("3/2", "I must be in 0..N-1"), ("2/2", "I must be in 0..N-1"), ("0/0", "I must be"),
                     ("-1/2", "I must be"), ("a/b", "pass I/N"), ("1", "pass I/N")):
        with pytest.raises(ConfigError, match=why):
            score_stream.parse_shard(bad)


@pytest.fixture
def images(tmp_path):
    """11 images of different content (and one file that is not an image), sorted by name."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(11):
        Image.fromarray(rng.integers(0, 256, (20 + k, 24, 3), dtype=np.uint8)).save(folder / f"im{k:02d}.png")
    (folder / "im05b.png").write_text("not an image")
    return folder


def _score(*args):
    return CliRunner().invoke(app, ["score", *map(str, args), *SCORE])


def test_sharded_and_resumed_files_equal_the_unsharded_one(tmp_path, monkeypatch, make_run, images):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path)
    r = _score(images, "--model", run, "--out", tmp_path / "all.jsonl")
    assert r.exit_code == 1 and "scored 12 of 12 images" in r.output and "1 unreadable" in r.output, r.output
    whole = (tmp_path / "all.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in whole]
    assert [row["file"].rsplit("/", 1)[1] for row in rows] == sorted(p.name for p in images.iterdir())
    assert rows[6]["error"] and all(row["verdict"] in ("ID", "OOD") for k, row in enumerate(rows) if k != 6)
    parts = []
    for i in range(3):
        r = _score(images, "--model", run, "--out", tmp_path / f"s{i}.jsonl", "--shard", f"{i}/3")
        assert r.exit_code in (0, 1) and "of 4 images" in r.output, r.output
        parts += (tmp_path / f"s{i}.jsonl").read_text().splitlines()
    assert [json.loads(p)["file"] for p in parts] == [row["file"] for row in rows]
    for p, row in zip(parts, rows, strict=True):
        q = json.loads(p)
        assert {k: v for k, v in q.items() if k not in ("score", "confidence")} == \
            {k: v for k, v in row.items() if k not in ("score", "confidence")}
        assert q["score"] == pytest.approx(row["score"], rel=1e-5, abs=1e-6) if row["score"] is not None else q["score"] is None

    # A run killed in the middle of writing line 6: the same command keeps 5 lines and scores the other 7.
    cut = "\n".join(whole[:5]) + "\n" + whole[5][:17]
    (tmp_path / "killed.jsonl").write_text(cut)
    r = _score(images, "--model", run, "--out", tmp_path / "killed.jsonl")
    assert "scored 7 of 12 images, 5 already there" in " ".join(r.output.split()), r.output
    again = (tmp_path / "killed.jsonl").read_text().splitlines()
    assert again[:5] == whole[:5] and [json.loads(x)["file"] for x in again] == [row["file"] for row in rows]
    r = _score(images, "--model", run, "--out", tmp_path / "killed.jsonl")
    assert "scored 0 of 12 images, 12 already there" in " ".join(r.output.split())  # nothing is scored twice

    # Another shard's file, an impossible shard, --shard without --out: one line, the file untouched.
    before = (tmp_path / "s0.jsonl").read_bytes()
    one_error_line(_score(images, "--model", run, "--out", tmp_path / "s0.jsonl", "--shard", "1/3"),
                   "holds results for other images (line 1:", "not the first images of shard 1/3")
    assert (tmp_path / "s0.jsonl").read_bytes() == before
    one_error_line(_score(images, "--model", run, "--out", tmp_path / "x.jsonl", "--shard", "3/2"), "--shard 3/2")
    one_error_line(_score(images, "--model", run, "--shard", "0/2"), "pass --out FILE.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
