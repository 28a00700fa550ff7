"""lbfood.engine.evaluation.score and its far-OOD gate (scorers/fargate.py, calibrate.fitted_gate) on a tiny
*trained* run (conftest.trained_run): noise, blank frames and text are OOD for the `far` reason, the gate
keeps the ID test images, `far_gate=False` gives the paper's verdicts, and an older run gets its gate on
first use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TRAINED_LIMIT
from PIL import Image, ImageDraw, ImageFont

from lbfood.engine import runs
from lbfood.engine.config import ScoreConfig
from lbfood.engine.data import backdrops
from lbfood.engine.evaluation import score
from lbfood.engine.evaluation.calibrate import fitted_gate
from lbfood.engine.evaluation.scorers import fargate
from lbfood.engine.evaluation.store import RunEval, data_root
from lbfood.engine.runtime import make_runtime


def _text(words: str, rng) -> np.ndarray:
    """A screenshot-like image: lines of text on a plain page, drawn at 128 px."""
    page, ink = (245, 20) if rng.random() < 0.75 else (20, 235)
    im = Image.new("RGB", (128, 128), (page,) * 3)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=int(rng.integers(14, 26)))
    for i, y in enumerate(range(4, 128, 30)):
        draw.text((int(rng.integers(0, 10)), y), f"{words} {i}", fill=(ink,) * 3, font=font)
    return np.asarray(im)


def far_images(folder, seed: int = 0) -> dict[str, list]:
    """PNG files nothing like backdrops, made here: uniform and Gaussian noise (σ = 80: the gate of this tiny
    run misses a few % of σ = 50, benchmarks/far_gate.py measures those), black, white and mid-grey frames,
    rendered text. {kind: [paths]}."""
    rng = np.random.default_rng(seed)
    kinds = {
        "noise": [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
        + [np.clip(rng.normal(128, 80, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(2)],
        "constant": [np.full((32, 32, 3), v, np.uint8) for v in (0, 255, 128)],
        "text": [_text(w, rng) for w in ("invoice total", "error: file not found", "lorem ipsum dolor",
                                         "Settings > Login", "page 12 of 40")],
    }
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, arrays in kinds.items():
        out[kind] = []
        for i, a in enumerate(arrays):
            out[kind].append(folder / f"{kind}-{i}.png")
            Image.fromarray(a).save(out[kind][-1])
    return out


def id_images(folder, n: int = 24) -> list:
    """The first `n` backdrops test images as PNG files (the run calibrated on them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(backdrops.generate("test")[0][:n].numpy()):
        paths.append(folder / f"id-{i:02d}.png")
        Image.fromarray(a).save(paths[-1])
    return paths


@pytest.fixture
def run(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return trained_run


def test_noise_constant_and_text_images_are_ood_for_the_far_reason(run, tmp_path):
    made = far_images(tmp_path / "far")
    rows = score.score_images(ScoreConfig(paths=(str(tmp_path / "far"),), model=str(run), device="cpu"))
    gate = runs.read(run).far_gate
    assert len(rows) == sum(map(len, made.values())) == 14
    for r in rows:
        assert (r.verdict, r.reason, r.error) == ("OOD", "far", None), r
        assert r.far_threshold == gate["value"] and r.far_score < r.far_threshold
        assert r.method == "react" and r.score is not None
    assert {k for k, v in rows[0].to_dict().items() if v is None} == {"error"}
    # The same images with the paper's score alone: no gate in the rows, and whatever react decides.
    plain = score.score_images(ScoreConfig(paths=(str(tmp_path / "far"),), model=str(run), device="cpu",
                                           far_gate=False))
    assert [p.score for p in plain] == [r.score for r in rows]
    assert all(p.far_score is None and p.far_threshold is None for p in plain)
    assert [p.reason for p in plain] == [None if p.verdict == "ID" else "score" for p in plain]


def test_the_gate_keeps_99_percent_of_the_id_test_split(run):
    meta = runs.read(run)
    g = meta.far_gate  # written when the run was calibrated
    assert (g["method"], g["keep"], g["split"], g["images"], g["limit"]) == (
        "fargate", fargate.KEEP, "train", TRAINED_LIMIT, TRAINED_LIMIT)
    rt = make_runtime("cpu")
    model, meta = runs.load_run(run)
    notes = []
    gate, thr = fitted_gate(model, meta, rt, notes=notes)
    assert thr == g["value"] and notes == []  # loaded from run.json and <run>/scorers/, not refitted
    ev = RunEval(meta.run_dir, model, meta, rt, id_data="backdrops", data_root=data_root(meta, None), workers=0,
                 limit=TRAINED_LIMIT)
    test = ev.features("backdrops", "test")
    assert len(test) == min(TRAINED_LIMIT, backdrops.SPLITS["test"]) and ev.extractions == 0  # cached
    kept = (gate.score(test) >= thr).double().mean().item()
    assert kept >= 0.99, kept
    # In sample the gate keeps at least the 99.7 % its cross-fitted threshold promises.
    assert (gate.score(ev.features("backdrops", "train")) >= thr).double().mean().item() >= fargate.KEEP


def test_no_far_gate_gives_the_previous_verdicts_exactly(run, tmp_path):
    id_images(tmp_path / "mixed")
    far_images(tmp_path / "mixed")
    paths = (str(tmp_path / "mixed"),)
    gated = score.score_images(ScoreConfig(paths=paths, model=str(run), device="cpu"))
    plain = score.score_images(ScoreConfig(paths=paths, model=str(run), device="cpu", far_gate=False))
    thr = runs.read(run).threshold["value"]
    # Before the gate a verdict was ID exactly when score ≥ γ (paper Eq. 3): --no-far-gate gives that back.
    assert [p.verdict for p in plain] == ["ID" if p.score >= thr else "OOD" for p in plain]
    assert [p.score for p in plain] == [g.score for g in gated] and all(p.threshold == thr for p in plain)
    assert [g.verdict for g in gated] == [
        "ID" if p.verdict == "ID" and g.far_score >= g.far_threshold else "OOD" for p, g in zip(plain, gated, strict=True)]
    assert [g.reason for g in gated] == [
        None if g.verdict == "ID" else "far" if g.far_score < g.far_threshold else "score" for g in gated]
    ids = [g for g in gated if g.file.split("/")[-1].startswith("id-")]
    assert sum(g.verdict == "ID" for g in ids) >= 18  # most ID images pass both tests
    assert all(g.reason == "far" for g in gated if not g.file.split("/")[-1].startswith("id-"))


def test_a_run_calibrated_before_the_gate_gets_it_on_first_use(run, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns(".lock"))
    want = runs.read(old).far_gate
    raw = json.loads((old / "run.json").read_text())
    del raw["far_gate"]  # as lbfood wrote it before the gate: no "far_gate" key, no fitted statistics
    runs.write(old, runs.RunMeta.from_dict(raw))
    for f in (old / "scorers").glob("fargate*"):
        f.unlink()
    assert runs.read(old).far_gate is None
    far_images(tmp_path / "far")
    notes = []
    rows = score.score_images(ScoreConfig(paths=(str(tmp_path / "far"),), model=str(old), device="cpu"), notes=notes)
    (note,) = [n for n in notes if "far-OOD gate" in n]
    assert f"fitted it now on {TRAINED_LIMIT} backdrops training images" in note and "--no-far-gate" in note
    got = runs.read(old).far_gate
    assert got == {**want, "weights": got["weights"]} and got["weights"] == want["weights"]  # the same gate
    assert [f.name for f in (old / "scorers").glob("fargate*")] == [f"fargate.first{TRAINED_LIMIT}.safetensors"]
    assert {r.reason for r in rows} == {"far"}
    again = []
    score.score_images(ScoreConfig(paths=(str(tmp_path / "far"),), model=str(old), device="cpu"), notes=again)
    assert not [n for n in again if "far-OOD gate" in n]  # stored: fitted once


def test_a_stale_gate_is_fitted_again(run, tmp_path):
    """A gate whose weights fingerprint is another model's (the weights were replaced) is not used."""
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns(".lock"))
    runs.update(other, far_gate={**runs.read(other).far_gate, "weights": "0" * 16, "value": 1e9})
    notes = []
    rt = make_runtime("cpu")
    model, meta = runs.load_run(other)
    _, thr = fitted_gate(model, meta, rt, notes=notes)
    assert thr == runs.read(run).far_gate["value"] and len(notes) == 1
    torch.testing.assert_close(torch.tensor(runs.read(other).far_gate["value"]), torch.tensor(thr))
