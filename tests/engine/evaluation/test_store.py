"""RunEval's store: feature caches and fitted scorers, checked before use; a run it cannot write to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fakedata as fd
from cli_checks import clean, one_error_line
from hostile_checks import (
    CPU,
    invoke,
    score_rows,
    temp_files,
    tree,
)


def test_well_formed_but_wrong_scorer_and_cache_files_are_recomputed(run, tmp_path):
    """A scorer or cache file that reads fine but cannot belong to this model (another model's shapes,
    non-finite statistics) is refitted or re-extracted, as a damaged one is: same numbers, no traceback."""
    import torch

    from lbfood.engine.io import load_tensors, read_metadata, save_tensors

    args = ("report", "--method", "react,mahalanobis", "--ood", "backdrops-noise", *CPU)
    clean(invoke(*args, "--output", tmp_path / "a.json"))
    before = json.loads((tmp_path / "a.json").read_text())

    def rewrite(path, change):
        meta, tensors = read_metadata(path), load_tensors(path)
        change(tensors)
        save_tensors(path, tensors, metadata=meta)

    (react,) = run.glob("scorers/react*.safetensors")
    (maha,) = run.glob("scorers/mahalanobis*.safetensors")
    rewrite(react, lambda d: d.update(weight=torch.ones(3, 7)))  # another model's head
    rewrite(maha, lambda d: d["precision"].fill_(float("nan")))
    (cache,) = run.glob("cache/*backdrops-noise*.safetensors")
    rewrite(cache, lambda d: d.update(features=d["features"][:, :7].contiguous()))
    r = invoke(*args, "--output", tmp_path / "b.json")
    clean(r)
    assert r.exit_code == 0, r.output
    after = json.loads((tmp_path / "b.json").read_text())
    assert after["fits"] == 2 and after["extractions"] == 1  # both scorers refitted, the noise split re-extracted
    assert after["runs"][0]["metrics"] == before["runs"][0]["metrics"]


def test_full_disk_report_notes_cache_and_refuses_output(run, tmp_path, full_disk):
    before = tree(tmp_path)
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", *CPU)
    clean(r)
    assert r.exit_code == 0, r.output
    assert "(no space left on the device (or over quota))" in " ".join(r.output.split())
    assert "backdrops-noise" in r.output  # the table was printed
    # the cache folder may now exist (mkdir needs no space), but holds no file and no temp file
    assert temp_files(tmp_path) == [] and list((run / "cache").iterdir()) == []
    r = invoke("report", "--method", "energy", "--ood", "backdrops-noise", "--output", tmp_path / "r.md", *CPU)
    one_error_line(r, f"cannot write {tmp_path / 'r.md'}: no space left on the device", "free some space")
    assert not (tmp_path / "r.md").exists() and temp_files(tmp_path) == []
    (run / "cache").rmdir()
    assert tree(tmp_path) == before


def test_score_on_a_read_only_run_uses_the_threshold_without_storing_it(run, tmp_path, read_only):
    fd.write_flat_folder(tmp_path / "imgs", n=2)
    read_only(run)
    before = tree(tmp_path)
    r = invoke("score", tmp_path / "imgs", "--method", "energy", "--json", "--device", "cpu")
    clean(r)
    assert r.exit_code == 0, r.output
    rows = score_rows(r)
    assert [Path(x["file"]).name for x in rows] == ["img_000.png", "img_001.png"]
    assert all(x["error"] is None and math.isfinite(x["threshold"]) for x in rows)
    assert "note: could not save to" in r.stderr and "permission denied" in r.stderr
    assert tree(tmp_path) == before
