"""`lbfood explain` (Fig. 7): heat maps and masks against an independent computation, the PNGs, bad input."""

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from lbfood.cli import app
from lbfood.engine import runs
from lbfood.engine.data.backdrops import CLASSES
from lbfood.engine.evaluation.explain import ExplainConfig, explain, run_delta
from lbfood.engine.runs import RunMeta
from lbfood.output import plots


def png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def _meta(config=None, **kw):
    base = dict(kind="pretrain", arch="resnet18", width=1.0, input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                data="backdrops", classes=["a", "b"])
    return RunMeta(**{**base, **kw, "config": config or {}})


def test_run_delta():
    ten, hundred = [f"c{i}" for i in range(10)], [f"c{i}" for i in range(100)]
    assert run_delta(_meta(config={"delta": 0.05}, preset="cifar10", input_size=32, classes=ten)) == 0.05
    assert run_delta(_meta(config={"lr": 0.1}, preset="cifar10", input_size=32, classes=ten)) == 0.1
    assert run_delta(_meta(config={}, preset="cifar100", input_size=32, classes=hundred)) == 0.01
    assert run_delta(_meta(preset="imagenet100", input_size=224, classes=hundred)) == 0.01
    assert run_delta(_meta(preset="backdrops", input_size=32, classes=ten)) == 0.1
    assert run_delta(_meta(preset="custom", input_size=224, classes=ten[:8])) == 1 / 8


@pytest.fixture
def setup(tmp_path, make_run, small_backdrops, monkeypatch):
    """Two runs, two readable 32×32 images, one 48×40 image and one file that is not an image."""
    monkeypatch.chdir(tmp_path)
    pre = make_run(tmp_path, name="pretrained")
    lff = make_run(tmp_path, seed=1, name="lff", kind="finetune")
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    arrays = {"a.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              "b.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
    for name, a in arrays.items():
        Image.fromarray(a).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "c.png")
    (folder / "d.png").write_bytes(b"not an image")
    return pre, lff, folder, arrays


def _set_delta(run_dir, delta):
    meta = runs.read(run_dir)
    runs.write(run_dir, meta.replace(config={**meta.config, "delta": delta}))


def test_maps_equal_an_independent_computation(setup):
    pre, lff, folder, arrays = setup
    # δ for the LFF run: the median of p_j(predicted) over image a's locations, so its mask is mixed.
    model, meta = runs.load_run(lff)
    x = (torch.from_numpy(arrays["a.png"]).permute(2, 0, 1)[None].float() / 255
         - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
    with torch.no_grad():
        z = model.forward_features(x)
        p = torch.softmax(torch.einsum("bchw,kc->bkhw", z, model.head.weight) + model.head.bias[:, None, None], 1)
        c = int(model.head(z.mean((2, 3))).argmax())
    _set_delta(lff, float(p[0, c].median()) + 1e-6)

    label = CLASSES[3]
    exps = explain(ExplainConfig(paths=(str(folder),), model=str(pre), compare=(str(lff),), label=label,
                                 method="msp", threshold=0.105, device="cpu"))
    assert [e.file.rsplit("/", 1)[-1] for e in exps] == ["a.png", "b.png", "c.png", "d.png"]
    assert exps[3].error and "not an image" in exps[3].error and exps[3].maps == ()
    assert exps[2].image.shape == (32, 32, 3) and exps[2].error is None  # resized, then centre-cropped
    for e in exps[:2]:
        name = e.file.rsplit("/", 1)[-1]
        np.testing.assert_array_equal(e.image, arrays[name])  # 32 px: the image as it is
        assert [m.run for m in e.maps] == ["pretrained", "lff"] and e.label == label
        for m, run_dir in zip(e.maps, (pre, lff), strict=True):
            model, meta = runs.load_run(run_dir)
            x = (torch.from_numpy(arrays[name]).permute(2, 0, 1)[None].float() / 255
                 - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
            with torch.no_grad():
                z = model.forward_features(x)
                logits = model.head(z.mean((2, 3)))
                p = torch.softmax(torch.einsum("bchw,kc->bkhw", z, model.head.weight)
                                  + model.head.bias[:, None, None], 1)[0]
            c = int(logits.argmax())
            norms = z[0].pow(2).sum(0).sqrt()
            assert m.norms.shape == (4, 4) and m.heat.shape == (32, 32)
            np.testing.assert_allclose(m.norms, norms.numpy(), rtol=1e-5)
            np.testing.assert_allclose(m.heat, F.interpolate(norms[None, None], size=(32, 32), mode="bilinear")[0, 0],
                                       rtol=1e-5)
            want_delta = 0.1 if run_dir == pre else float(json.loads((lff / "run.json").read_text())["config"]["delta"])
            assert m.delta == want_delta
            np.testing.assert_array_equal(m.mask, (p[c] < m.delta).numpy())
            np.testing.assert_array_equal(m.label_mask, (p[CLASSES.index(label)] < m.delta).numpy())
            probs = torch.softmax(logits, 1)[0]
            assert m.predicted == CLASSES[c] and m.confidence == pytest.approx(float(probs.max()), abs=1e-5)
            assert m.method == "msp" and m.threshold == 0.105
            assert m.score == pytest.approx(float(probs.max()), abs=1e-5)
            assert m.verdict == ("OOD" if m.reason == "far" else "ID" if m.score >= 0.105 else "OOD")  # as `score`
            assert m.reason in ((None,) if m.verdict == "ID" else ("far", "score"))
    lff_a = exps[0].maps[1].mask
    assert 0 < lff_a.sum() < lff_a.size  # the chosen δ splits image a's locations

    drawn, failed = plots.write_explanations(exps[:1], folder.parent / "out")
    assert failed == [] and [p.path.name for p in drawn] == ["001-a.png"]
    # (1 image + 2 runs) × 2.9 in + 0.9 in for the colour bar, 3.9 in high, at 150 dpi.
    assert png_size(drawn[0].path) == (drawn[0].width, drawn[0].height) == (1440, 585)


def test_explain_from_the_command_line(setup, tmp_path):
    pre, lff, folder, _ = setup
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    runner = CliRunner()
    r = runner.invoke(app, ["explain", str(folder / "a.png"), "--model", str(pre), "--out", str(blocked / "pics"),
                            "--device", "cpu"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and r.output.startswith("error: --out")
    assert not (pre / "cache").exists() and not (pre / "scorers").exists()  # refused before any work
    r = runner.invoke(app, ["explain", str(folder / "a.png"), "--model", str(pre), "--label", "nonsense",
                            "--out", str(tmp_path / "pics"), "--device", "cpu"])
    assert r.exit_code == 2 and "--label nonsense is not a class" in r.output and not (tmp_path / "pics").exists()

    r = runner.invoke(app, ["explain", str(folder / "a.png"), str(folder / "d.png"), "--model", str(pre),
                            "--compare", str(lff), "--method", "msp", "--threshold", "0.105",
                            "--out", str(tmp_path / "pics"), "--device", "cpu"])
    assert r.exit_code == 1, r.output  # one file failed; the other was drawn
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "d.png" in warnings[0]
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [".lbfood-output", "001-a.png", "index.html"]
    assert png_size(tmp_path / "pics" / "001-a.png") == (1440, 585)
    index = (tmp_path / "pics" / "index.html").read_text()
    assert "001-a.png" in index and "d.png" in index and "Not drawn" in index


def test_help_imports_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from lbfood.cli import app; "
            "codes = [CliRunner().invoke(app, [c, '--help']).exit_code for c in ('explain', 'report')]; "
            "print(*codes, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "False", "False"]
